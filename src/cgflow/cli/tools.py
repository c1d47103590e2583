"""`cgflow export` and `simulate`: the learned PMF of a finished run as a bias for other tools, and CG dynamics on it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cgflow.cli.common import app, fail, set_threads, threads_option

FORMATS = ("openmm", "plumed")
SIGNS = ("bias", "pmf")


def load_run(run_dir: Path):
    """The run of ``run_dir`` (from its checkpoint), or a one-line failure."""
    from cgflow.core.run_directory import CHECKPOINT, RunDirectoryError

    if not run_dir.is_dir():
        fail(f"no such run directory: {run_dir}")
    if not (run_dir / CHECKPOINT).is_file():
        fail(f"{run_dir} has no {CHECKPOINT}: not a cgflow run directory, or its run stopped before the first "
             f"checkpoint")
    from cgflow.learning.run import ActiveLearningRun

    try:
        run = ActiveLearningRun(None, run_dir, resume=True)
    except (RunDirectoryError, FileNotFoundError, ValueError) as err:
        fail(str(err).splitlines()[0] if str(err) else repr(err))
    return run


def require_fitted(run, run_dir: Path) -> None:
    """A one-line failure unless the run's ensemble is fitted (at least one finished iteration)."""
    if not bool(run.ensemble.fitted) or run.state.iteration < 1:
        fail(f"{run_dir} has no fitted PMF yet (its checkpoint is from before the first iteration); run it first "
             f"(cgflow run --resume --out {run_dir})")


def ensemble_mean(run):
    """s (B, d) -> the ensemble mean F (B,) kT, differentiable (on the run's device)."""
    import torch

    def f(s):
        return run.ensemble(s.to(device=run.device, dtype=torch.float64)).mean(0)

    return f


def plumed_names(names, has_atoms: bool) -> list[str]:
    """CV labels PLUMED accepts: the run's CG names where they are plain identifiers (phi, psi), else cv1, cv2 ..."""
    import re

    ok = has_atoms and all(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", n) for n in names) and len(set(names)) == len(names)
    return list(names) if ok else [f"cv{i + 1}" for i in range(len(names))]


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory with a fitted PMF."),
    format: str = typer.Option(..., "--format", help="openmm (serialized CustomCVForce XML) or plumed (a grid for "
                                                     "EXTERNAL, plus FILE.plumed.dat)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (must not exist)."),
    bins: Optional[int] = typer.Option(None, "--bins", min=2,
                                       help="Grid bins per CG dimension [default: 72 (5 degrees) per periodic "
                                            "dimension, 100 otherwise]."),
    ceiling_kT: float = typer.Option(12.0, "--ceiling-kT",
                                     help="The bias is flat where F - F_min exceeds this (kT, > 0)."),
    sign: str = typer.Option("bias", "--sign", help="bias: V = -min(F - F_min, ceiling); pmf: +min(F - F_min, "
                                                    "ceiling)."),
    temperature_K: Optional[float] = typer.Option(None, "--temperature-K",
                                                  help="Temperature of the kT -> kJ/mol conversion [default: the "
                                                       "run's system's]."),
    label: str = typer.Option("external", "--label", help="PLUMED label of the EXTERNAL bias."),
    threads: Optional[int] = threads_option(),
):
    """Export the run's ensemble-mean PMF as a static bias: an OpenMM force or a PLUMED grid file.

    The PMF F(s) is tabulated on a grid over the CG domain; V = -min(F - F_min, ceiling) (kJ/mol at the
    run's temperature).  openmm: a CustomCVForce of the CG dihedrals with a periodic tabulated function,
    serialized XML (add it with cgflow.pmf.export.add_pmf_bias).  plumed: a grid file as PLUMED writes it,
    with derivatives, and FILE.plumed.dat with the TORSION and EXTERNAL lines.  Molecule systems only for
    openmm; for systems without CG atoms, plumed writes the grid with CVs named cv1, cv2 ... for the user
    to define."""
    import math

    from cgflow.core.run_directory import atomic_write_text
    from cgflow.pmf import export as ex

    if format not in FORMATS:
        fail(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if sign not in SIGNS:
        fail(f"--sign {sign!r}: choose one of {', '.join(SIGNS)}")
    if not (math.isfinite(ceiling_kT) and ceiling_kT > 0):
        fail(f"--ceiling-kT must be > 0, got {ceiling_kT:g}")
    if temperature_K is not None and not (math.isfinite(temperature_K) and temperature_K > 0):
        fail(f"--temperature-K must be > 0, got {temperature_K:g}")
    input_file = Path(str(out) + ".plumed.dat")
    targets = [out] + ([input_file] if format == "plumed" else [])
    for t in targets:
        if t.exists():
            fail(f"{t} exists; choose another --out")
    if not out.parent.is_dir():
        fail(f"no such directory for --out: {out.parent}")
    set_threads(threads)
    run = load_run(run_dir)
    system = run.system
    d = system.cg_dim
    if d > ex.MAX_EXPORT_DIM:
        fail(f"the CG space of {system.name} has {d} dimensions; export supports 1 to {ex.MAX_EXPORT_DIM} "
             f"(a grid of bins^d points)")
    require_fitted(run, run_dir)
    cg_atoms = getattr(system, "cg_atoms", None)
    if format == "openmm" and cg_atoms is None:
        fail(f"system {system.name!r} has no CG dihedral atoms (not a molecule): --format openmm needs them; "
             f"--format plumed writes the grid with generic CV names")
    if temperature_K is None:
        temperature_K = getattr(system, "temperature_K", None)
        if temperature_K is None:
            fail(f"system {system.name!r} has no temperature: give --temperature-K for the kJ/mol conversion")
    n_bins = [bins if bins is not None else (72 if p else 100) for p in system.cg_periodic]
    try:
        tab = ex.tabulate_bias(ensemble_mean(run), system.cg_domain, system.cg_periodic, n_bins,
                               temperature_K=float(temperature_K), ceiling_kT=ceiling_kT, sign=sign, device=run.device)
    except ValueError as err:
        fail(str(err))
    grid = "x".join(str(len(a)) for a in tab.axes)
    v = tab.values_kJ_per_mol
    summary = (f"{grid} grid, {tab.temperature_K:g} K (kT = {tab.kT_kJ_per_mol:.4f} kJ/mol), ceiling {ceiling_kT:g} kT, "
               f"{sign} from {v.min():.3f} to {v.max():.3f} kJ/mol; {100 * (tab.pmf_kT >= ceiling_kT).mean():.1f}% of "
               f"the grid capped")
    if format == "openmm":
        import openmm

        force = ex.openmm_bias_force(tab, cg_atoms)
        atomic_write_text(out, openmm.XmlSerializer.serialize(force))
        quads = "; ".join(",".join(str(int(a)) for a in q) for q in cg_atoms)
        typer.echo(f"wrote {out}: OpenMM CustomCVForce of {d} CG dihedral(s) (atoms {quads}), {summary}")
        typer.echo(f"use it: from cgflow.pmf.export import add_pmf_bias; add_pmf_bias(system, {str(out)!r}) "
                   f"(atom_indices=... if your atom numbering differs)")
        return
    names = plumed_names(system.cg_names, cg_atoms is not None)
    comment = (f"cgflow export of {run_dir} ({system.name}, CG {', '.join(system.cg_names)}): {summary}"
               + ("" if cg_atoms is not None else f"; CVs {', '.join(names)} stand for {', '.join(system.cg_names)}"))
    grid_text = ex.plumed_grid_text(tab, names, label=label)
    input_text = ex.plumed_input_text(names, out.name, cg_atoms=cg_atoms, label=label, comment=comment)
    atomic_write_text(out, grid_text)
    atomic_write_text(input_file, input_text)
    typer.echo(f"wrote {out} (PLUMED grid, CVs {', '.join(names)}) and {input_file}: {summary}")


@app.command()
def simulate(
    run_dir: Path = typer.Argument(..., help="A run directory with a fitted PMF."),
    steps: int = typer.Option(..., "--steps", min=1, help="Langevin steps (after --burn-in)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (must not exist)."),
    dt: float = typer.Option(0.01, "--dt", help="Time step (reduced units: F in kT, unit mass)."),
    friction: float = typer.Option(1.0, "--friction", help="Friction (1 / reduced time)."),
    walkers: int = typer.Option(64, "--walkers", min=1, help="Independent walkers, started from exp(-beta F) draws."),
    every: int = typer.Option(10, "--every", min=1, help="Keep every this many steps."),
    burn_in: int = typer.Option(0, "--burn-in", min=0, help="Steps before the first kept frame."),
    beta: float = typer.Option(1.0, "--beta", help="Inverse temperature relative to the run's (> 0)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    all_atom: Optional[Path] = typer.Option(None, "--all-atom",
                                            help="Also write all-atom structures (.pdb/.dcd), one flow draw per "
                                                 "frame, with importance weights in FILE.weights.csv."),
    all_atom_frames: int = typer.Option(1000, "--all-atom-frames", min=1,
                                        help="At most this many frames (evenly spaced) for --all-atom."),
    threads: Optional[int] = threads_option(),
):
    """Langevin dynamics (BAOAB) in CG space on the run's ensemble-mean PMF.

    Periodic CG coordinates wrap, non-periodic ones reflect at the domain edges; the stationary density is
    exp(-beta F).  Writes OUT (npz: cg (frames, walkers, d), time, pmf_kT, the settings) and prints how far the
    histogram is from exp(-beta F)."""
    import json
    import math

    import numpy as np
    import torch

    from cgflow.core.run_directory import atomic_savez, atomic_write_text
    from cgflow.sampling import cg_langevin as cl

    for name, value in (("--dt", dt), ("--friction", friction), ("--beta", beta)):
        if not (math.isfinite(value) and value > 0):
            fail(f"{name} must be > 0, got {value:g}")
    targets = [out] + ([all_atom, Path(str(all_atom) + ".weights.csv")] if all_atom is not None else [])
    for t in targets:
        if t.exists():
            fail(f"{t} exists; choose another {'--all-atom' if t != out else '--out'}")
    for t in targets:
        if not t.parent.is_dir():
            fail(f"no such directory: {t.parent}")
    settings = cl.LangevinSettings(dt=dt, friction=friction, beta=beta, n_steps=steps, every=every, burn_in=burn_in)
    if steps // every < 1:
        fail(f"--steps {steps} with --every {every} keeps no frame")
    set_threads(threads)
    run = load_run(run_dir)
    require_fitted(run, run_dir)
    system = run.system
    if all_atom is not None and not hasattr(system, "topology"):
        fail(f"system {system.name!r} has no all-atom topology to write (--all-atom)")
    pmf = ensemble_mean(run)
    edges = [np.asarray(e, dtype=np.float64) for e in run.edges]
    with torch.no_grad():
        f_grid = pmf(run.grid).cpu().numpy().reshape([len(e) - 1 for e in edges])
    f_min = float(f_grid.min())
    rng = np.random.default_rng(seed)
    s0 = torch.as_tensor(cl.boltzmann_draws(f_grid, edges, walkers, beta, rng), dtype=torch.float64)
    gen = torch.Generator(device=run.device).manual_seed(seed)
    try:
        traj = cl.baoab(pmf, s0.to(run.device), settings, periodic=system.cg_periodic, domain=system.cg_domain,
                        generator=gen)
    except FloatingPointError as err:
        fail(str(err))
    names = list(system.cg_names)
    atomic_savez(out, cg=traj.positions, time=traj.times, pmf_kT=traj.pmf_kT - f_min, start=s0.numpy(),
                 cg_names=np.array(names), cg_periodic=np.array(system.cg_periodic),
                 cg_domain=np.array(system.cg_domain, dtype=np.float64), settings=json.dumps(
                     {**settings.as_dict(), "walkers": walkers, "seed": seed, "run_dir": str(run_dir),
                      "potential": "ensemble mean F (kT), minus its minimum on the run's grid",
                      "n_force_evaluations": traj.n_force_evaluations}))
    t, w, d = traj.positions.shape
    msg = f"wrote {out}: {t} frames x {w} walkers in {d}-D ({traj.n_force_evaluations} force evaluations)"
    if w >= 4:
        agreement = cl.histogram_agreement(traj.positions, cl.binned_pmf(pmf, edges, beta), edges, beta)
        msg += (f"; histogram vs exp(-beta F) on the run's grid: chi2 {agreement.chi2:.1f} over {agreement.dof} "
                f"dof ({'within' if agreement.ok else 'BEYOND'} the 4-sigma bound {agreement.threshold:.1f}), KL "
                f"{agreement.kl:.2e} (noise ~{agreement.kl_noise:.1e})")
    typer.echo(msg)
    if all_atom is None:
        return
    import mdtraj as md

    from cgflow.cli.run import draw_structures

    flat = traj.positions.reshape(t * w, d)
    pick = np.unique(np.linspace(0, t * w - 1, min(all_atom_frames, t * w)).round().astype(int))
    s = torch.as_tensor(flat[pick], dtype=torch.float64)
    xyz, ok, log_p, log_q = draw_structures(run, s)
    f_model = traj.pmf_kT.reshape(t * w)[pick]
    # frames come from exp(-F_model(s)) q(x | s): the joint weight towards p(s, x) is p~ / q * exp(F_model)
    log_w = log_p - log_q + f_model
    log_w[~ok] = -np.inf
    md.Trajectory(xyz, system.topology).save(str(all_atom))
    finite = np.isfinite(log_w)
    nw = np.zeros_like(log_w)
    if finite.any():
        nw[finite] = np.exp(log_w[finite] - log_w[finite].max())
        nw /= nw.sum()
    lines = ["frame,time,walker,accepted,log_weight_kT,normalized_weight"]
    lines += [f"{i},{traj.times[k // w]:.6g},{k % w},{bool(a)},{lw:.6f},{x:.6e}"
              for i, (k, a, lw, x) in enumerate(zip(pick, ok, log_w, nw))]
    atomic_write_text(Path(str(all_atom) + ".weights.csv"), "\n".join(lines) + "\n")
    ess = 1.0 / float((nw**2).sum()) if finite.any() else 0.0
    typer.echo(f"wrote {len(pick)} structures to {all_atom} ({int(ok.sum())} accepted by the filter; "
               f"{int(ok.sum())} energy evaluations); effective sample size {ess:.1f} (joint weights p~/q "
               f"exp(F_model)); weights in {all_atom}.weights.csv")
