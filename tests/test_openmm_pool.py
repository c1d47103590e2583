"""Tests for cgflow.systems.molecules.energy.openmm_pool (OpenMM worker pool) and the shared energy interface."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest
import torch

from cgflow.systems.molecules.energy.backend import EnergyBackend, make_energy_backend
from cgflow.systems.molecules.energy.openmm_pool import OpenMMEnergyPool, reduced_energy_torch
from cgflow.systems.molecules.molecule_system import package_data_file

pytestmark = pytest.mark.slow  # worker pools / a whole aldp run: the full suite, not the fast lane

T = 300.0


@pytest.fixture(scope="module")
def system_and_x0():
    prmtop = app.AmberPrmtopFile(package_data_file("alanine-dipeptide", "alanine-dipeptide.prmtop"))
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    pdb = app.PDBFile(package_data_file("alanine-dipeptide", "alanine-dipeptide.pdb"))
    x0 = np.asarray(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return system, x0


@pytest.fixture(scope="module")
def configs(system_and_x0):
    _, x0 = system_and_x0
    return x0[None] + np.random.default_rng(1).normal(0.0, 0.01, (40, *x0.shape))


@pytest.fixture(scope="module")
def pool(system_and_x0):
    system, _ = system_and_x0
    with OpenMMEnergyPool(system, T, n_workers=2, max_chunk=8) as p:
        yield p


def _reference_energies_forces(system, xs):
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    kT = (unit.MOLAR_GAS_CONSTANT_R * T * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    es, fs = [], []
    for x in xs:
        ctx.setPositions(x)
        st = ctx.getState(getEnergy=True, getForces=True)
        es.append(st.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT)
        fs.append(st.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / kT)
    return np.array(es), np.array(fs)


def test_matches_reference_context(system_and_x0, configs, pool):
    system, _ = system_and_x0
    e_ref, f_ref = _reference_energies_forces(system, configs)
    # exactly the same numbers with Reference-platform workers
    with OpenMMEnergyPool(system, T, n_workers=2, platform="Reference") as ref_pool:
        e, f = ref_pool.reduced_energies_and_forces(configs)
    np.testing.assert_allclose(e, e_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-10, atol=1e-9)
    # CPU platform (mixed precision) to its precision
    e, f = pool.reduced_energies_and_forces(configs)
    assert e.shape == (len(configs),) and f.shape == configs.shape
    np.testing.assert_allclose(e, e_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(f, f_ref, rtol=1e-3, atol=1e-2 * np.abs(f_ref).max())


def test_bad_inputs_give_nan_not_exceptions(configs, pool):
    x = configs[:6].copy()
    x[1, 3, 0] = np.nan
    x[2, 5, 1] = np.inf
    x[3] *= 1e9  # absurd
    e, f = pool.reduced_energies_and_forces(x)
    assert np.isnan(e[[1, 2, 3]]).all() and np.isnan(f[[1, 2, 3]]).all()
    e_good, f_good = pool.reduced_energies_and_forces(configs[[0, 4, 5]])
    np.testing.assert_array_equal(e[[0, 4, 5]], e_good)
    np.testing.assert_array_equal(f[[0, 4, 5]], f_good)
    assert pool.reduced_energies_and_forces(np.zeros((0, *configs.shape[1:])))[0].shape == (0,)


def test_killed_worker_is_restarted(configs, pool):
    e0, f0 = pool.reduced_energies_and_forces(configs)
    restarts = pool.n_restarts
    victim = pool.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(0.05)
    e1, f1 = pool.reduced_energies_and_forces(configs)
    np.testing.assert_array_equal(e0, e1)
    np.testing.assert_array_equal(f0, f1)
    assert pool.n_restarts == restarts + 1 and victim not in pool.worker_pids


def test_n_evaluations_counts_every_configuration(configs, pool):
    n0 = pool.n_evaluations
    pool.reduced_energies_and_forces(configs[:7])
    pool.reduced_energies_and_forces(configs[0])  # one configuration (N, 3)
    bad = configs[:3].copy()
    bad[0] = np.nan
    pool.reduced_energies_and_forces(bad)
    assert pool.n_evaluations == n0 + 7 + 1 + 3


def test_torch_gradient_is_minus_forces(configs, pool):
    x = torch.tensor(configs[:10], dtype=torch.float64, requires_grad=True)
    u = reduced_energy_torch(pool, x)
    assert u.shape == (10,) and u.dtype == torch.float64
    (g,) = torch.autograd.grad(u.sum(), x)
    e, f = pool.reduced_energies_and_forces(configs[:10])
    np.testing.assert_array_equal(u.detach().numpy(), e)
    np.testing.assert_array_equal(g.numpy(), -f)
    # a configuration that does not enter the loss does not poison the gradient with NaN forces
    xb = torch.tensor(configs[:3], dtype=torch.float64)
    xb[1, 0, 0] = float("nan")
    xb.requires_grad_(True)
    u = pool.reduced_energy(xb)
    (g,) = torch.autograd.grad(u[torch.isfinite(u)].sum(), xb)
    assert torch.isfinite(g).all() and (g[1] == 0).all()


def test_shared_interface_matches_torch_energy(system_and_x0, configs, pool):
    system, _ = system_and_x0
    te = make_energy_backend("torch", system, T)
    assert isinstance(te, EnergyBackend) and isinstance(pool, EnergyBackend)
    x = torch.tensor(configs[:8], dtype=torch.float64)
    np.testing.assert_allclose(pool.reduced_energy(x).numpy(), te.reduced_energy(x).numpy(), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="unknown energy backend"):
        make_energy_backend("gromacs", system, T)


def test_close(system_and_x0):
    system, x0 = system_and_x0
    with make_energy_backend("openmm", system, T, n_workers=1) as p:
        procs = [w.process for w in p._workers]
        assert np.isfinite(p.reduced_energies_and_forces(x0)[0]).all()
    assert all(not pr.is_alive() for pr in procs)
    with pytest.raises(RuntimeError, match="closed"):
        p.reduced_energies_and_forces(x0)
    p.close()  # idempotent
