"""Conditional normalizing flows q(x_fg | s).

Every flow implements :class:`~cgflow.flows.base.ConditionalFlow`; :func:`build_flow` makes one
from its config.
"""

from cgflow.flows.affine import ConditionalAffineFlow
from cgflow.flows.base import ConditionalFlow

__all__ = ["ConditionalFlow", "ConditionalAffineFlow"]
