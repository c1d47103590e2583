"""Reference MD for the ``ala4`` preset: plain Langevin MD of ACE-(ALA)3-NME, many independent replicas.

The molecule is built exactly as ``cgflow run ala4`` builds it (cgflow.systems.molecules.peptide_builder: tleap,
ff14SB, mbondi2 radii; OpenMM ``AmberPrmtopFile.createSystem(implicitSolvent=OBC1, nonbondedMethod=NoCutoff,
constraints=None)``), energy-minimized with cgflow's minimizer.  Every replica gets its own seed, is
equilibrated (``--equil-ps``, discarded) and then runs LangevinMiddle dynamics (default 2 fs, friction 1/ps,
300 K) on the OpenMM CPU platform with one thread, recording the 6 backbone dihedrals (phi/psi of the three
alanines, radians, mdtraj/IUPAC sign, ``mdtraj.compute_dihedrals``) every ``--frame-every-steps`` steps.

Replicas advance round-robin by ``--chunk-ps`` so that all of them have the same length whenever the script
stops; after every round the trajectories, the OpenMM checkpoints of every replica and the bookkeeping are
written atomically to ``--out``.  ``--resume`` continues (e.g. with a larger ``--wall-minutes``): the wall
budget counts the MD time of all sessions together.

Output ``<out>/ala4-reference.npz``:
    dihedrals      (n_replicas, n_frames, 6) float64, radians in [-pi, pi)
    cg_names       (6,) str, e.g. "phi:1" (mdtraj residue index, ACE = 0)
    n_md_steps     total MD steps = energy+force evaluations of all replicas (equilibration included)
    n_production_steps_per_replica, n_equilibration_steps_per_replica, frame_every_steps
    timestep_fs, friction_per_ps, temperature_K, wall_s (MD wall time of all sessions, set-up excluded)
and ``<out>/ala4-reference.json`` (settings, progress, speed, noise floor).

Run (one core): ``taskset -c 1 python benchmarks/ala4_reference_md.py --out benchmarks/results/ala4-reference``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

CG = ["phi:1", "psi:1", "phi:2", "psi:2", "phi:3", "psi:3"]
SEQUENCE = "ACE ALA ALA ALA NME"


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


def half_split_kld(dihedrals: np.ndarray, n_bins: int = 60) -> dict:
    """Forward KLD sum P ln(P/Q) between the 2-D marginal histograms (n_bins^2 over [-pi, pi)^2) of the
    first and second half of the replicas, for every pair of CG dihedrals (empty Q bins floored at 1e-8 of
    the mass, like the repo's MD-baseline numbers)."""
    n_rep = dihedrals.shape[0]
    a, b = dihedrals[: n_rep // 2].reshape(-1, dihedrals.shape[2]), dihedrals[n_rep // 2:].reshape(-1, dihedrals.shape[2])
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    out = {}
    for i in range(dihedrals.shape[2]):
        for j in range(i + 1, dihedrals.shape[2]):
            p = np.histogram2d(a[:, i], a[:, j], bins=[edges, edges])[0]
            q = np.histogram2d(b[:, i], b[:, j], bins=[edges, edges])[0]
            p, q = p / p.sum(), q / q.sum()
            q = np.maximum(q, 1e-8)
            q = q / q.sum()
            m = p > 0
            out[f"{CG[i]}|{CG[j]}"] = float(np.sum(p[m] * np.log(p[m] / q[m])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--wall-minutes", type=float, default=70.0, help="MD wall budget of all sessions together")
    ap.add_argument("--timestep-fs", type=float, default=2.0)
    ap.add_argument("--friction-per-ps", type=float, default=1.0)
    ap.add_argument("--temperature-K", type=float, default=300.0)
    ap.add_argument("--frame-every-steps", type=int, default=500)
    ap.add_argument("--chunk-ps", type=float, default=50.0, help="each replica advances this much per round")
    ap.add_argument("--equil-ps", type=float, default=100.0)
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
    npz_path, json_path = out / "ala4-reference.npz", out / "ala4-reference.json"
    if args.resume:
        if not json_path.is_file():
            sys.exit(f"error: cannot resume: {json_path} not found")
        info = json.loads(json_path.read_text())
        st = info["settings"]
        st["wall_minutes"] = args.wall_minutes
        data = np.load(npz_path)
        traj = [list(data["dihedrals"][r]) for r in range(st["replicas"])]
    else:
        if out.exists() and any(out.iterdir()):
            sys.exit(f"error: {out} is not empty (use --resume)")
        out.mkdir(parents=True, exist_ok=True)
        st = {k: getattr(args, k) for k in ("replicas", "wall_minutes", "timestep_fs", "friction_per_ps",
                                             "temperature_K", "frame_every_steps", "chunk_ps", "equil_ps",
                                             "forcefield", "seed")}
        info = {"settings": st, "sequence": SEQUENCE, "implicit_solvent": "OBC1", "cg_names": CG,
                "wall_s": 0.0, "n_md_steps": 0, "production_steps_per_replica": 0, "rounds": 0}
        traj = [[] for _ in range(st["replicas"])]

    prmtop_path, inpcrd_path = build_peptide(SEQUENCE, st["forcefield"], "OBC1")
    prmtop = app.AmberPrmtopFile(prmtop_path)
    system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC1, constraints=None)
    top = md.Topology.from_openmm(prmtop.topology)
    idx = np.array([find_dihedral(top, *parse_cg_spec(c)) for c in CG])
    info["cg_atoms"] = idx.tolist()
    pos0 = np.asarray(app.AmberInpcrdFile(inpcrd_path).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    pos0 = minimize_positions(system, pos0)

    dt = st["timestep_fs"] * unit.femtosecond
    platform = openmm.Platform.getPlatformByName("CPU")
    every = st["frame_every_steps"]
    chunk_frames = max(1, int(round(st["chunk_ps"] * 1000 / st["timestep_fs"])) // every)
    equil_steps = int(round(st["equil_ps"] * 1000 / st["timestep_fs"]))
    contexts = []
    for r in range(st["replicas"]):
        integ = openmm.LangevinMiddleIntegrator(st["temperature_K"] * unit.kelvin, st["friction_per_ps"] / unit.picosecond, dt)
        integ.setRandomNumberSeed(openmm_seed(st["seed"], f"ala4-ref-{r}"))
        ctx = openmm.Context(system, integ, platform, {"Threads": "1"})
        chk = out / "checkpoints" / f"replica{r}.chk"
        if args.resume:
            ctx.loadCheckpoint(chk.read_bytes())
        else:
            ctx.setPositions(pos0)
            ctx.setVelocitiesToTemperature(st["temperature_K"] * unit.kelvin, openmm_seed(st["seed"], f"ala4-v-{r}"))
        contexts.append((ctx, integ))

    def save() -> None:
        (out / "checkpoints").mkdir(exist_ok=True)
        for r, (ctx, _) in enumerate(contexts):
            _atomic_write_bytes(out / "checkpoints" / f"replica{r}.chk", ctx.createCheckpoint())
        dih = np.array(traj, dtype=np.float64).reshape(st["replicas"], -1, len(CG))
        if dih.shape[1] >= 2 and st["replicas"] >= 2:
            info["half_split_forward_kld_60x60"] = half_split_kld(dih)
            info["half_split_forward_kld_60x60_max"] = max(info["half_split_forward_kld_60x60"].values())
        info["frames_per_replica"] = int(dih.shape[1])
        info["production_ns_per_replica"] = info["production_steps_per_replica"] * st["timestep_fs"] * 1e-6
        info["production_ns_total"] = info["production_ns_per_replica"] * st["replicas"]
        info["steps_per_s"] = info["n_md_steps"] / max(info["wall_s"], 1e-9)
        _atomic_savez(npz_path, dihedrals=dih, cg_names=np.array(CG), cg_atoms=idx,
                      n_md_steps=info["n_md_steps"],
                      n_production_steps_per_replica=info["production_steps_per_replica"],
                      n_equilibration_steps_per_replica=equil_steps, frame_every_steps=every,
                      timestep_fs=st["timestep_fs"], friction_per_ps=st["friction_per_ps"],
                      temperature_K=st["temperature_K"], wall_s=info["wall_s"])
        _atomic_write_bytes(json_path, (json.dumps(info, indent=2) + "\n").encode())

    t_start = time.perf_counter()
    if not args.resume:
        for ctx, integ in contexts:
            integ.step(equil_steps)
        info["n_md_steps"] += equil_steps * st["replicas"]
        info["wall_s"] += time.perf_counter() - t_start
        print(f"equilibrated {st['replicas']} x {equil_steps} steps in {info['wall_s']:.1f} s "
              f"({equil_steps * st['replicas'] / info['wall_s']:.0f} steps/s)", flush=True)
        save()

    budget = st["wall_minutes"] * 60.0
    while True:
        per_round = info["wall_s"] / max(info["n_md_steps"], 1) * chunk_frames * every * st["replicas"]
        if info["wall_s"] + per_round > budget:
            break
        t0 = time.perf_counter()
        for r, (ctx, integ) in enumerate(contexts):
            for _ in range(chunk_frames):
                integ.step(every)
                x = ctx.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
                frame = md.compute_dihedrals(md.Trajectory(np.asarray(x)[None], top), idx)[0]
                traj[r].append(np.asarray(frame, dtype=np.float64))
        info["wall_s"] += time.perf_counter() - t0
        info["n_md_steps"] += chunk_frames * every * st["replicas"]
        info["production_steps_per_replica"] += chunk_frames * every
        info["rounds"] += 1
        save()
        print(f"round {info['rounds']}: {info['frames_per_replica']} frames/replica, "
              f"{info['production_ns_total']:.2f} ns in all, {info['wall_s']:.0f} s, {info['steps_per_s']:.0f} steps/s, "
              f"half-split KLD max {info.get('half_split_forward_kld_60x60_max', float('nan')):.3g}", flush=True)
    print(f"done: {info['n_md_steps']} MD steps, {info['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
