"""The one home of each shared fact: wrap_angle, the gas constant, the dihedral, the checkpoint format."""

import math

import numpy as np
import pytest
import torch

from cgflow.core.geometry import compute_dihedrals, wrap_angle, wrap_periodic
from cgflow.core.units import MOLAR_GAS_CONSTANT_KJ_PER_MOL_K, kT_kJ_per_mol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_wrap_angle_lands_in_half_open_interval_at_the_edges(dtype):
    pi = torch.tensor(math.pi, dtype=dtype)
    edge = torch.stack([pi, -pi, torch.nextafter(-pi, -2 * pi), torch.nextafter(pi, 2 * pi), 3 * pi, -3 * pi,
                        torch.nextafter(-3 * pi, -4 * pi)])
    w = wrap_angle(edge)
    assert bool((w >= -pi).all()) and bool((w < pi).all()), w
    x = (torch.rand(100_000, dtype=dtype) - 0.5) * 40
    w = wrap_angle(x)
    assert bool((w >= -pi).all()) and bool((w < pi).all())
    # the same angle: a whole number of turns away
    turns = (x - w) / (2 * math.pi)
    assert torch.allclose(turns, turns.round(), atol=1e-4 if dtype == torch.float32 else 1e-9)


def test_wrap_periodic_leaves_open_coordinates_alone():
    s = torch.tensor([[4.0, 4.0]], dtype=torch.float64)
    out = wrap_periodic(s, (True, False))
    assert out[0, 1] == 4.0 and abs(float(out[0, 0]) - (4.0 - 2 * math.pi)) < 1e-12


def test_gas_constant_is_openmms():
    import openmm.unit as unit

    r = unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)
    assert MOLAR_GAS_CONSTANT_KJ_PER_MOL_K == r
    assert abs(kT_kJ_per_mol(300.0) - 2.494338785445972) < 1e-12


def test_dihedral_matches_mdtraj():
    md = pytest.importorskip("mdtraj")
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 4, 3)).astype(np.float32)
    top = md.Topology()
    chain = top.add_chain()
    res = top.add_residue("X", chain)
    for i in range(4):
        top.add_atom(f"C{i}", md.element.carbon, res)
    ref = md.compute_dihedrals(md.Trajectory(xyz, top), [[0, 1, 2, 3]])[:, 0]
    x = torch.as_tensor(xyz, dtype=torch.float64)
    ours = compute_dihedrals(x[:, 0], x[:, 1], x[:, 2], x[:, 3]).numpy()
    assert np.max(np.abs(np.angle(np.exp(1j * (ours - ref))))) < 1e-5


def test_checkpoint_of_another_format_is_refused_in_one_line(tmp_path):
    from cgflow.core.run_directory import RunDirectoryError
    from cgflow.learning.checkpoint import Checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({"iteration": 3, "rows": []}, path)  # what cgflow 0.1.0 wrote: no format_version
    with pytest.raises(RunDirectoryError, match=r"checkpoint format 1, this cgflow reads format 2") as err:
        Checkpoint.load(path)
    assert "\n" not in str(err.value)


def test_stopping_rule_is_shared_by_run_and_resume():
    from cgflow.config import load_config
    from cgflow.learning.stopping import Stopping

    cfg = load_config("mb", ["stopping.max_iterations=3", "stopping.kld_threshold=0.01"]).stopping
    rule = Stopping(cfg)
    assert rule.check(1, {"forward_kld": 0.5}) is None
    assert rule.check(1, {"forward_kld": 0.005}).kind == "kld_threshold"
    assert rule.check(3, {"forward_kld": 0.5}).kind == "max_iterations"
    assert rule.check_rows([{"forward_kld": 0.5}, {"forward_kld": 0.005}]).is_stopping_rule
