"""The "dask" energy backend (cgflow.systems.molecules.energy.dask_pool) on a LocalCluster of 2 single-thread worker
processes: equal to the local OpenMM pool, in order, NaN-safe, surviving a worker killed mid-batch with every
evaluation counted once; the config route and clear errors for a bad scheduler."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from cgflow.distributed.cluster import SchedulerError
from cgflow.systems.molecules.energy.backend import make_energy_backend
from cgflow.systems.molecules.energy.dask_pool import DaskEnergyPool
from cgflow.systems.molecules.energy.openmm_pool import OpenMMEnergyPool
from test_openmm_pool import system_and_x0  # noqa: F401  (fixture: the alanine dipeptide System and its pdb positions)

T = 300.0


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=40)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def local_reference(system_and_x0):
    system, _ = system_and_x0
    with OpenMMEnergyPool(system, T, n_workers=1, platform="Reference") as p:
        yield p


def _configs(x0, n, seed):
    x = x0[None] + np.random.default_rng(seed).normal(0.0, 0.01, (n, *x0.shape))
    return x


def _assert_equal_to_local(e, f, e_ref, f_ref):
    assert np.array_equal(np.isnan(e), np.isnan(e_ref)) and np.array_equal(np.isnan(f), np.isnan(f_ref))
    ok = np.isfinite(e_ref)
    np.testing.assert_allclose(e[ok], e_ref[ok], rtol=1e-10, atol=0)
    np.testing.assert_allclose(f[ok], f_ref[ok], rtol=1e-10, atol=1e-10 * np.abs(f_ref[ok]).max())


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_equal_to_local_pool_in_order_and_nan_safe(system_and_x0, client, local_reference):
    system, x0 = system_and_x0
    x = _configs(x0, 37, seed=1)
    x[4, 2, 0] = np.nan
    x[9, 0, 1] = np.inf
    x[20] *= 1e9  # beyond max_abs_coordinate
    x[30, 1] = x[30, 0]  # two atoms on top of each other: OpenMM's energy is not finite
    e_ref, f_ref = local_reference.reduced_energies_and_forces(x)
    with DaskEnergyPool(system, T, scheduler=client, platform="Reference", max_chunk=5) as pool:
        assert pool.n_workers == 2
        e, f = pool.reduced_energies_and_forces(x)
        assert e.shape == (37,) and f.shape == x.shape and e.dtype == np.float64
        _assert_equal_to_local(e, f, e_ref, f_ref)
        assert np.isnan(e[[4, 9, 20]]).all() and np.isnan(f[[4, 9, 20]]).all()
        assert np.isfinite(e).sum() >= 33  # the others are real energies
        # a permuted batch comes back permuted: results are in the order of the input
        perm = np.random.default_rng(2).permutation(37)
        e_p, _ = pool.reduced_energies_and_forces(x[perm])
        np.testing.assert_array_equal(e_p, e[perm])
        # one configuration, (N, 3), and the count: every configuration once
        e1, _ = pool.reduced_energies_and_forces(x[0])
        assert e1.shape == (1,) and e1[0] == e[0]
        assert pool.n_evaluations == 37 + 37 + 1
    assert pool._closed
    with pytest.raises(RuntimeError, match="closed"):
        pool.reduced_energies_and_forces(x)
    # the client given is not closed with the pool, and no Context plugin stays behind
    assert client.status == "running"


def test_differentiable_through_make_energy_backend(system_and_x0, client, local_reference):
    system, x0 = system_and_x0
    x = torch.tensor(_configs(x0, 6, seed=3), requires_grad=True)
    with make_energy_backend("dask", system, T, scheduler=client, platform="Reference") as backend:
        u = backend.reduced_energy(x)
        u.sum().backward()
    e_ref, f_ref = local_reference.reduced_energies_and_forces(x.detach().numpy())
    np.testing.assert_allclose(u.detach().numpy(), e_ref, rtol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), -f_ref, rtol=1e-10, atol=1e-10 * np.abs(f_ref).max())


@pytest.mark.slow  # fast lane: over 3 s (a subprocess or a tiny run)
def test_killed_worker_mid_batch_loses_and_double_counts_nothing(system_and_x0, client, local_reference):
    system, x0 = system_and_x0
    x = _configs(x0, 240, seed=4)  # ~1 s per worker on the Reference platform
    e_ref, f_ref = local_reference.reduced_energies_and_forces(x)
    with DaskEnergyPool(system, T, scheduler=client, platform="Reference", max_chunk=60) as pool:
        before = set(pool.worker_addresses)
        pids = client.run(os.getpid)
        out = {}
        t = threading.Thread(target=lambda: out.update(zip("ef", pool.reduced_energies_and_forces(x))))
        t.start()
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:  # a worker with one of our chunks running
            busy = [w for w, keys in client.processing().items()
                    if any(str(k).startswith(pool.plugin_name) for k in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.02)
        assert victim is not None, "no chunk was ever running"
        os.kill(pids[victim], signal.SIGKILL)  # kill -9 of a worker process with a chunk in flight
        t.join(timeout=120)
        assert not t.is_alive()
        _assert_equal_to_local(out["e"], out["f"], e_ref, f_ref)
        assert pool.n_evaluations == 240  # bookkeeping only; the equality above is the real check
        # the worker was really replaced, and the new one has a Context too
        client.wait_for_workers(2, timeout=60)
        assert victim not in pool.worker_addresses and set(pool.worker_addresses) != before
        e, _ = pool.reduced_energies_and_forces(x[:8])
        np.testing.assert_array_equal(e, out["e"][:8])
        assert pool.n_evaluations == 248


def test_config_route_with_a_scheduler_address(client, local_reference):
    from cgflow.systems.molecules.config import MoleculeConfig, build_molecule_system

    cfg = MoleculeConfig(preset="alanine-dipeptide", execution={"scheduler": client.scheduler.address, "n_workers": 2})
    assert cfg.energy_backend == "dask"  # execution alone selects the backend
    mol = build_molecule_system(cfg)
    try:
        assert isinstance(mol.energy, DaskEnergyPool) and mol.energy.n_workers == 2
        x = torch.as_tensor(mol.minimized_positions)[None] + 0.005 * torch.randn(4, mol.n_atoms, 3, dtype=torch.float64)
        e_ref, _ = local_reference.reduced_energies_and_forces(x.numpy())
        # CPU platform (mixed precision) against Reference
        np.testing.assert_allclose(mol.energy.reduced_energy(x).numpy(), e_ref, rtol=1e-5, atol=1e-3)
    finally:
        mol.close()
    assert client.status == "running"


def test_bad_scheduler_address_is_a_clear_error(system_and_x0):
    system, _ = system_and_x0
    t0 = time.monotonic()
    with pytest.raises(SchedulerError, match="cannot connect to the dask scheduler at 'tcp://127.0.0.1:9'"):
        DaskEnergyPool(system, T, scheduler="tcp://127.0.0.1:9", timeout_s=1)
    assert time.monotonic() - t0 < 20
    with pytest.raises(SchedulerError, match="scheduler must be 'local' or an address"):
        DaskEnergyPool(system, T, scheduler="not an address")


def test_cli_run_with_an_unreachable_scheduler_writes_nothing(tmp_path):
    from typer.testing import CliRunner

    from cgflow.cli import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "aldp-quick", "--out", str(out), "--no-plots",
                                   "--set", "system.execution.scheduler=tcp://127.0.0.1:9",
                                   "--set", "system.energy_backend=dask", "--set", "system.execution.timeout_s=1"])
    assert res.exit_code != 0
    err = res.output.strip().splitlines()
    assert err[-1].startswith("error: cannot connect to the dask scheduler at 'tcp://127.0.0.1:9'"), res.output
    assert not out.exists()
