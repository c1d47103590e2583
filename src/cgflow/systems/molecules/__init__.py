"""Molecular systems: OpenMM force fields re-implemented in batched PyTorch, data and coordinates."""
