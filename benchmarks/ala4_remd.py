"""Temperature replica exchange (parallel tempering) reference for the ``ala4`` preset: one ladder per call.

The molecule and its System are built exactly as ``cgflow run ala4`` builds them (and as
benchmarks/ala4_reference_md.py does): tleap ``ACE ALA ALA ALA NME``, ff14SB, mbondi2 radii, OpenMM
``AmberPrmtopFile.createSystem(implicitSolvent=OBC1, nonbondedMethod=NoCutoff, constraints=None)``, minimized
with cgflow's minimizer.  ``--replicas`` OpenMM CPU contexts (one thread each) run LangevinMiddle dynamics
(2 fs, friction 1/ps) at a geometric temperature ladder ``--t-min``..``--t-max``; every ``--exchange-every``
steps the potential energies are evaluated and neighbouring temperatures are offered a swap (even pairs, then
odd pairs, alternately; Metropolis on (beta_i - beta_j)(U_i - U_j)); a swapped replica takes its new
temperature and has its velocities rescaled by sqrt(T_new / T_old).  The 6 backbone dihedrals of the replica at
*every* temperature (radians, IUPAC/mdtraj sign, ``mdtraj.compute_dihedrals``) and its potential energy are
recorded at each exchange, so the 300 K frames are the reference and the others allow reweighting.

Why a small exchange loop and not openmmtools' ``ParallelTemperingSampler``: the library keeps every replica's
full coordinates in a netCDF file at every iteration (here 8 x 42 atoms x ~1e4 iterations; we need 6 dihedrals)
and drives its own MCMC moves and integrators; the loop below is ~40 lines around OpenMM contexts, uses the
same integrator, platform and one-thread setting as every other baseline of the repo, and checkpoints
atomically like them (docs/benchmarks.md, "ala4 replica exchange").

Cost: every MD step of every replica is one energy+force evaluation, and every exchange attempt adds one
energy evaluation per replica; ``n_evaluations`` counts both (equilibration included).

Output ``<out>/remd.npz`` (rewritten atomically after every round of ``--round-cycles`` exchange cycles):
    dihedrals      (n_cycles, n_temperatures, 6) float32, radians in [-pi, pi): frame of the replica at
                   temperature k after cycle c
    energies_kJmol (n_cycles, n_temperatures) float64, its potential energy (kJ/mol)
    replica_of     (n_cycles, n_temperatures) int16, which replica sat at temperature k
    temperatures_K (n_temperatures,), cg_names (6,), exchange_every_steps, timestep_fs,
    n_evaluations, n_md_steps, n_energy_evaluations (per-cycle cumulative arrays as ``evaluations_at_cycle``)
and ``<out>/remd.json`` (settings, acceptance per neighbour pair, round trips, progress, speed);
``<out>/checkpoints/`` the OpenMM checkpoints and the exchange RNG, so ``--resume --wall-minutes M`` continues
exactly (the wall budget counts all sessions together).

Run two independent ladders (one core each) and compare them: benchmarks/ala4_remd_analysis.py.
``OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/ala4_remd.py --out benchmarks/results/ala4-remd/ladder-A --seed 1``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from cgflow.baselines.replica_exchange import exchange_step, geometric_ladder

CG = ["phi:1", "psi:1", "phi:2", "psi:2", "phi:3", "psi:3"]
SEQUENCE = "ACE ALA ALA ALA NME"
KB_KJMOL_PER_K = 0.00831446261815324  # Boltzmann constant in kJ/(mol K) (CODATA 2018, as openmm.unit)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_savez(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--t-min", type=float, default=300.0, help="K, the target temperature")
    ap.add_argument("--t-max", type=float, default=800.0, help="K")
    ap.add_argument("--wall-minutes", type=float, default=100.0, help="MD wall budget of all sessions together")
    ap.add_argument("--timestep-fs", type=float, default=2.0)
    ap.add_argument("--friction-per-ps", type=float, default=1.0)
    ap.add_argument("--exchange-every", type=int, default=100, help="MD steps between exchange attempts")
    ap.add_argument("--round-cycles", type=int, default=250, help="exchange cycles between checkpoints")
    ap.add_argument("--equil-ps", type=float, default=50.0, help="per replica, before the first exchange")
    ap.add_argument("--forcefield", default="ff14SB")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()

    import mdtraj as md
    import openmm
    import openmm.app as app
    import openmm.unit as unit

    from cgflow.systems.molecules.ic.internal_coordinates import find_dihedral
    from cgflow.systems.molecules.molecule_system import parse_cg_spec
    from cgflow.systems.molecules.peptide_builder import build_peptide
    from cgflow.systems.molecules.starting_data import minimize_positions, openmm_seed

    out = Path(args.out)
    npz_path, json_path, chk_dir = out / "remd.npz", out / "remd.json", out / "checkpoints"
    if args.resume:
        if not json_path.is_file():
            sys.exit(f"error: cannot resume: {json_path} not found")
        info = json.loads(json_path.read_text())
        st = info["settings"]
        st["wall_minutes"] = args.wall_minutes
        z = np.load(npz_path)
        rec = {k: list(z[k]) for k in ("dihedrals", "energies_kJmol", "replica_of", "evaluations_at_cycle")}
        replica_at = np.array(info["replica_at"], dtype=np.int64)
    else:
        if out.exists() and any(out.iterdir()):
            sys.exit(f"error: {out} is not empty (use --resume)")
        if args.replicas < 2 or not 0 < args.t_min < args.t_max:
            sys.exit("error: need --replicas >= 2 and 0 < --t-min < --t-max")
        out.mkdir(parents=True, exist_ok=True)
        st = {k: getattr(args, k) for k in ("replicas", "t_min", "t_max", "wall_minutes", "timestep_fs",
                                             "friction_per_ps", "exchange_every", "round_cycles", "equil_ps",
                                             "forcefield", "seed")}
        info = {"settings": st, "sequence": SEQUENCE, "implicit_solvent": "OBC1", "cg_names": CG,
                "temperatures_K": geometric_ladder(args.t_min, args.t_max, args.replicas).tolist(),
                "wall_s": 0.0, "n_md_steps": 0, "n_energy_evaluations": 0, "cycles": 0, "rounds": 0,
                "attempts": [0] * (args.replicas - 1), "accepted": [0] * (args.replicas - 1),
                "round_trips": 0, "replica_direction": [0] * args.replicas}
        rec = {"dihedrals": [], "energies_kJmol": [], "replica_of": [], "evaluations_at_cycle": []}
        replica_at = np.arange(args.replicas)
    temps = np.array(info["temperatures_K"])
    betas = 1.0 / (KB_KJMOL_PER_K * temps)
    n = len(temps)

    prmtop_path, inpcrd_path = build_peptide(SEQUENCE, st["forcefield"], "OBC1")
    prmtop = app.AmberPrmtopFile(prmtop_path)
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    top = md.Topology.from_openmm(prmtop.topology)
    idx = np.array([find_dihedral(top, *parse_cg_spec(c)) for c in CG])
    info["cg_atoms"] = idx.tolist()
    pos0 = np.asarray(app.AmberInpcrdFile(inpcrd_path).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    pos0 = minimize_positions(system, pos0)

    platform = openmm.Platform.getPlatformByName("CPU")
    temp_of = np.empty(n, dtype=np.int64)  # temperature index of each replica
    temp_of[replica_at] = np.arange(n)
    contexts = []
    for r in range(n):
        integ = openmm.LangevinMiddleIntegrator(temps[temp_of[r]] * unit.kelvin,
                                                st["friction_per_ps"] / unit.picosecond,
                                                st["timestep_fs"] * unit.femtosecond)
        integ.setRandomNumberSeed(openmm_seed(st["seed"], f"ala4-remd-{r}"))
        ctx = openmm.Context(system, integ, platform, {"Threads": "1"})
        if args.resume:
            ctx.loadCheckpoint((chk_dir / f"replica{r}.chk").read_bytes())
        else:
            ctx.setPositions(pos0)
            ctx.setVelocitiesToTemperature(temps[temp_of[r]] * unit.kelvin, openmm_seed(st["seed"], f"ala4-remd-v-{r}"))
        contexts.append((ctx, integ))
    rng = np.random.default_rng(st["seed"])
    if args.resume:
        rng.bit_generator.state = json.loads((chk_dir / "rng.json").read_text())

    def save() -> None:
        chk_dir.mkdir(exist_ok=True)
        for r, (ctx, _) in enumerate(contexts):
            _atomic_write_bytes(chk_dir / f"replica{r}.chk", ctx.createCheckpoint())
        _atomic_write_bytes(chk_dir / "rng.json", json.dumps(rng.bit_generator.state).encode())
        info["replica_at"] = replica_at.tolist()
        info["n_evaluations"] = info["n_md_steps"] + info["n_energy_evaluations"]
        info["acceptance"] = [a / max(t, 1) for a, t in zip(info["accepted"], info["attempts"])]
        info["ns_per_replica"] = info["n_md_steps"] / n * st["timestep_fs"] * 1e-6
        info["evaluations_per_s"] = info["n_evaluations"] / max(info["wall_s"], 1e-9)
        _atomic_savez(npz_path, dihedrals=np.array(rec["dihedrals"], dtype=np.float32).reshape(-1, n, len(CG)),
                      energies_kJmol=np.array(rec["energies_kJmol"], dtype=np.float64).reshape(-1, n),
                      replica_of=np.array(rec["replica_of"], dtype=np.int16).reshape(-1, n),
                      evaluations_at_cycle=np.array(rec["evaluations_at_cycle"], dtype=np.int64),
                      temperatures_K=temps, cg_names=np.array(CG), cg_atoms=idx,
                      exchange_every_steps=st["exchange_every"], timestep_fs=st["timestep_fs"],
                      n_evaluations=info["n_evaluations"], n_md_steps=info["n_md_steps"],
                      n_energy_evaluations=info["n_energy_evaluations"], wall_s=info["wall_s"])
        _atomic_write_bytes(json_path, (json.dumps(info, indent=2) + "\n").encode())

    if not args.resume:
        t0 = time.perf_counter()
        equil_steps = int(round(st["equil_ps"] * 1000 / st["timestep_fs"]))
        for ctx, integ in contexts:
            integ.step(equil_steps)
        info["n_md_steps"] += equil_steps * n
        info["wall_s"] += time.perf_counter() - t0
        info["equilibration_steps_per_replica"] = equil_steps
        save()
        print(f"equilibrated {n} x {equil_steps} steps at {np.round(temps, 1).tolist()} K in {info['wall_s']:.1f} s",
              flush=True)

    budget = st["wall_minutes"] * 60.0
    every = st["exchange_every"]
    direction = info["replica_direction"]  # +1: last visited the lowest T, -1: the highest, 0: neither yet
    while True:
        per_round = info["wall_s"] / max(info["n_md_steps"], 1) * every * n * st["round_cycles"]
        if info["wall_s"] + per_round > budget:
            break
        t0 = time.perf_counter()
        for _ in range(st["round_cycles"]):
            u = np.empty(n)
            xyz = np.empty((n, system.getNumParticles(), 3))
            for r, (ctx, integ) in enumerate(contexts):
                integ.step(every)
                s = ctx.getState(getEnergy=True, getPositions=True)
                u[r] = s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
                xyz[r] = s.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            info["n_md_steps"] += every * n
            info["n_energy_evaluations"] += n
            dih = md.compute_dihedrals(md.Trajectory(xyz[replica_at], top), idx)  # (n_temperatures, 6)
            rec["dihedrals"].append(dih.astype(np.float32))
            rec["energies_kJmol"].append(u[replica_at].copy())
            rec["replica_of"].append(replica_at.astype(np.int16))
            rec["evaluations_at_cycle"].append(info["n_md_steps"] + info["n_energy_evaluations"])
            parity = info["cycles"] % 2
            before = replica_at.copy()
            swapped = exchange_step(u, replica_at, betas, parity, rng)
            for k in range(parity, n - 1, 2):
                info["attempts"][k] += 1
                info["accepted"][k] += int(swapped[k])
            for k in np.flatnonzero(before != replica_at):  # replica now at temperature k: new T, rescaled v
                r = replica_at[k]
                ctx, integ = contexts[r]
                integ.setTemperature(temps[k] * unit.kelvin)
                v = ctx.getState(getVelocities=True).getVelocities(asNumpy=True)
                ctx.setVelocities(v * np.sqrt(temps[k] / temps[temp_of[r]]))
                temp_of[r] = k
            for r in range(n):  # round trips: lowest -> highest -> lowest
                if temp_of[r] == 0:
                    if direction[r] == -1:
                        info["round_trips"] += 1
                    direction[r] = 1
                elif temp_of[r] == n - 1:
                    direction[r] = -1
            info["cycles"] += 1
        info["wall_s"] += time.perf_counter() - t0
        info["rounds"] += 1
        save()
        d300 = np.array(rec["dihedrals"])[:, 0, :]
        phi_pos = [float(np.mean(d300[:, CG.index(f"phi:{k}")] > 0)) for k in (1, 2, 3)]
        print(f"round {info['rounds']}: {info['ns_per_replica']:.2f} ns/replica, {info['n_evaluations']:.3g} evals, "
              f"{info['wall_s']:.0f} s ({info['evaluations_per_s']:.0f}/s), acceptance "
              f"{np.round(info['acceptance'], 2).tolist()}, round trips {info['round_trips']}, "
              f"300 K phi>0 {np.round(phi_pos, 4).tolist()}", flush=True)
    print(f"done: {info['n_evaluations']} evaluations, {info['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
