"""Physical constants and unit conversions: the one home of the gas constant and of kT.

Conventions across cgflow: energies in kT unless a name says kJ/mol; lengths in nm; angles in
radians; temperatures in K.
"""

from __future__ import annotations

MOLAR_GAS_CONSTANT_KJ_PER_MOL_K: float = 0.00831446261815324
"""The molar gas constant R in kJ/(mol K) (CODATA 2018; equal to float precision to
``openmm.unit.MOLAR_GAS_CONSTANT_R`` in kJ/mol/K, checked by a test)."""


def kT_kJ_per_mol(temperature_K: float) -> float:
    """k_B T per mole, R T, in kJ/mol at ``temperature_K`` (K)."""
    return MOLAR_GAS_CONSTANT_KJ_PER_MOL_K * float(temperature_K)
