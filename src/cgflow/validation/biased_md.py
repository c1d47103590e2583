"""``cgflow validate``: MD of the fine-grained system biased by the learned PMF, to check the PMF
without a reference (the estimator and its figures: :mod:`cgflow.validation.flatness`).

How.  Many independent walkers, each started from its own configuration drawn through the flow:
a CG point from the distribution the bias makes flat (bins drawn ∝ w(b) of ``flatness``, uniform
within the bin), its fine-grained coordinates from q(x_FG | s), so every walker starts close to the
biased ensemble wherever the PMF is right and no walker has to cross a barrier to get anywhere.
Each walker runs ``equilibration_steps`` (not recorded), then ``steps`` of BAOAB Langevin dynamics
(:class:`cgflow.baselines.langevin.BatchedLangevin`, all walkers as one batch, the system's
differentiable torch energy, the same energy as OpenMM's) on ``u(x) - min(F(s(x)) - F_min, C)``,
F the ensemble mean evaluated on the fly (any CG dimension). For d <= 3 its CG coordinates are
binned every ``record_every`` steps, per walker and per chunk of ``chunk_steps``, so the estimate
can be redone for any prefix (how many steps resolve an error); for d > 3, where the CG space cannot
be histogrammed, every recorded frame's CG point and F(s) are kept and the run's 2-D marginals are
checked by reweighting (:mod:`cgflow.validation.reweighting`).

Every walker step is one energy evaluation (equilibration and the first force evaluation
included): ``evaluations = walkers * (1 + equilibration_steps + steps)``. The run is checkpointed
after every chunk (atomic; ``--resume`` continues bit-identically).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from cgflow.baselines.langevin import BatchedLangevin, LangevinState
from cgflow.core.run_directory import atomic_savez, atomic_torch_save, atomic_write_text
from cgflow.core.simulation_view import SimulationView
from cgflow.validation.flatness import FlatnessEstimate, bias_weights, coarse_index, estimate
from cgflow.validation.reweighting import ReweightedMarginals, estimate_marginals, project_error_bar

VALIDATE_JSON = "validate.json"
VALIDATE_NPZ = "validate.npz"
VALIDATE_CHECKPOINT = "validate_checkpoint.pt"
VALIDATE_PNG = "validate.png"
VALIDATE_FRAMES = "validate_frames.npz"  # d > 3: every recorded frame, (W, T, d) CG points and F - F_min (kT)
MAX_CG_DIM = 3
DEFAULT_CEILING_KT = 10.0  # the run's "low free energy" region (learning.run.LOW_FREE_ENERGY_KT)


class ValidationSettings(BaseModel):
    """Settings of ``cgflow validate`` (saved in validate.json; a resume must not change them)."""

    model_config = ConfigDict(extra="forbid")

    walkers: int = Field(64, gt=1, description="independent walkers (the blocks of the bootstrap)")
    steps: int = Field(5000, gt=0, description="recorded MD steps per walker")
    equilibration_steps: int = Field(500, ge=0, description="MD steps per walker before recording")
    record_every: int = Field(10, gt=0, description="steps between recorded frames")
    chunk_steps: int = Field(1000, gt=0, description="steps between checkpoints (and time blocks of the counts)")
    ceiling_kT: float = Field(DEFAULT_CEILING_KT, gt=0,
                              description="kT over the PMF minimum above which the bias stays flat")
    bins: int | None = Field(None, gt=1, description="coarse bins per CG dimension of the histogram "
                                                     "(default 50 in 1-D, 20 in 2-D, 10 in 3-D)")
    timestep_fs: float | None = Field(None, gt=0, description="MD time step (fs); default the system's")
    friction_per_ps: float = Field(1.0, gt=0, description="Langevin friction (1/ps)")
    n_bootstrap: int = Field(200, gt=1, description="bootstrap replicates over walkers")
    seed: int = 0

    def coarse_bins(self, d: int) -> int:
        return self.bins or {1: 50, 2: 20}.get(d, 10)


@dataclass
class LearnedPMF:
    """What validate needs of a finished run.

    Attributes:
        mean_kT: s (B, d) float64 -> ensemble-mean PMF (B,) kT, differentiable, on the same zero as
            ``fine_pmf_kT`` (the bias's ceiling is measured from that zero).
        sample_fg: s (B, d) -> (x_fg (B, fg_dim), valid (B,) bool) drawn through the flow.
        configurations: (s, x_fg) -> configurations of the system (what ``from_internal`` returns).
        edges: fine bin edges per CG dimension (the run's evaluation grid); fine_pmf_kT,
            fine_error_bar_kT: (n_fine,) on those bins (C order); cg_names, cg_periodic, cg_domain.
    """

    mean_kT: object
    sample_fg: object
    configurations: object
    edges: list[np.ndarray]
    fine_pmf_kT: np.ndarray
    fine_error_bar_kT: np.ndarray
    cg_names: tuple[str, ...]
    cg_periodic: tuple[bool, ...]
    cg_domain: tuple[tuple[float, float], ...]
    marginal_pairs: list[tuple[int, int]] | None = None
    """For d > 3: the run's 2-D marginals (pairs, bin edges per CG dimension, (n_i, n_j) PMFs in kT)."""
    marginal_edges: list[np.ndarray] | None = None
    marginal_pmf_kT: list[np.ndarray] | None = None


class BiasedMDValidation:
    """One validation of a learned PMF in ``out`` (a new directory unless ``resume``)."""

    def __init__(self, pmf: LearnedPMF, view: SimulationView, out, settings: ValidationSettings, *,
                 resume: bool = False, progress: bool = True):
        d = len(pmf.cg_names)
        self.marginal_mode = d > MAX_CG_DIM
        if self.marginal_mode and not pmf.marginal_pairs:
            raise ValueError(f"validate histograms the CG space for d <= {MAX_CG_DIM}; with d = {d} it checks the "
                             f"run's 2-D marginals, and this run has none (metrics.pairs)")
        self.pmf, self.view, self.out, self.settings, self.progress = pmf, view, Path(out), settings, progress
        n = settings.coarse_bins(d) if not self.marginal_mode else 2
        self.coarse_edges = [np.linspace(lo, hi, n + 1) for lo, hi in pmf.cg_domain]
        centres = np.stack([m.ravel() for m in np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in pmf.edges],
                                                            indexing="ij")], axis=-1)
        self.fine_centres = centres
        self.fine_coarse = coarse_index(centres, self.coarse_edges)
        self.f_min = float(np.nanmin(pmf.fine_pmf_kT))
        self.dt_fs = settings.timestep_fs or view.timestep_fs
        if settings.chunk_steps % settings.record_every or settings.equilibration_steps % settings.record_every:
            raise ValueError(f"chunk_steps ({settings.chunk_steps}) and equilibration_steps "
                             f"({settings.equilibration_steps}) must be multiples of record_every ({settings.record_every})")
        if resume:
            saved = json.loads((self.out / VALIDATE_JSON).read_text())["settings"]
            if saved != settings.model_dump():
                changed = sorted(k for k in saved if saved[k] != settings.model_dump().get(k))
                raise ValueError(f"--resume with other settings than the saved ones ({', '.join(changed)}); "
                                 f"drop them or choose another --out")
        self.resume = resume

    # --- the bias ------------------------------------------------------------------------------
    def biased_energy(self, x: torch.Tensor) -> torch.Tensor:
        """u(x) - min(F(s(x)) - F_min, C) (kT, (B,)), differentiable in x."""
        s = self.view.cg_of_positions(x)
        f = self.pmf.mean_kT(s) - self.f_min
        return self.view.reduced_energy_of_positions(x) - torch.clamp(f, max=self.settings.ceiling_kT)

    def _starting_positions(self, gen: np.random.Generator) -> np.ndarray:
        """(W, n_particles, 3) nm: flow samples at CG points drawn from the flat-bias distribution."""
        W = self.settings.walkers
        w = bias_weights(self.pmf.fine_pmf_kT, self.settings.ceiling_kT)
        out: list[np.ndarray] = []
        widths = np.array([e[1] - e[0] for e in self.pmf.edges])
        for _attempt in range(20):
            b = gen.choice(w.size, size=W, p=w / w.sum())
            s = self.fine_centres[b] + (gen.random((W, widths.size)) - 0.5) * widths
            s_t = torch.as_tensor(s, dtype=torch.float64)
            with torch.no_grad():
                x_fg, ok = self.pmf.sample_fg(s_t)
                conf = self.pmf.configurations(s_t, x_fg)
            pos = self.view.positions_of(conf).numpy()
            out.extend(pos[ok.numpy()])
            if len(out) >= W:
                return np.stack(out[:W])
        raise RuntimeError("the flow gave too few valid configurations to start the walkers")

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> tuple[FlatnessEstimate, dict]:
        from tqdm.auto import tqdm

        from cgflow.core.progress import bars_disabled

        st, view = self.settings, self.view
        W, Bc = st.walkers, int(np.prod([len(e) - 1 for e in self.coarse_edges]))
        gen = torch.Generator()
        gen.manual_seed(int(st.seed))
        dyn = BatchedLangevin(self.biased_energy, view.masses_amu, view.temperature_K, self.dt_fs,
                              st.friction_per_ps, gen)
        total = st.equilibration_steps + st.steps
        n_chunks = math.ceil(total / st.chunk_steps)
        if self.resume:
            ck = torch.load(self.out / VALIDATE_CHECKPOINT, weights_only=False)
            state = LangevinState(*(torch.as_tensor(ck[k]) for k in ("positions", "velocities", "forces",
                                                                       "energies_kT")))
            gen.set_state(ck["generator"])
            counts, done, dyn.n_nonfinite, wall = ck["counts"], ck["steps_done"], ck["n_nonfinite"], ck["wall_s"]
            n_out, frames, f_rel = ck["n_outside"], ck.get("frames"), ck.get("f_rel_kT")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / VALIDATE_JSON, json.dumps({"settings": st.model_dump(), "finished": False},
                                                                   indent=1) + "\n")
            x0 = self._starting_positions(np.random.default_rng(st.seed))
            state = dyn.init_state(torch.as_tensor(x0))
            counts = np.zeros((n_chunks, W, 1 if self.marginal_mode else Bc), dtype=np.int64)
            done, wall, n_out = 0, 0.0, 0
            n_rec = st.steps // st.record_every if self.marginal_mode else 0  # frames recorded per walker
            frames = np.full((W, n_rec, len(self.pmf.cg_names)), np.nan, dtype=np.float32) if n_rec else None
            f_rel = np.full((W, n_rec), np.nan) if n_rec else None
        t0 = time.perf_counter() - wall
        with tqdm(total=total, initial=done, desc=f"validate: biased MD ({W} walkers)", unit="step",
                  disable=bars_disabled(self.progress), leave=False) as bar:
            while done < total:
                chunk = done // st.chunk_steps
                end = min(total, (chunk + 1) * st.chunk_steps)
                while done < end:
                    n = min(st.record_every, end - done)
                    state = dyn.step(state, n)
                    done += n
                    bar.update(n)
                    if done > st.equilibration_steps and done % st.record_every == 0:
                        s = view.cg_numpy(state.positions.numpy())
                        inside = self._inside(s)
                        n_out += int(np.sum(~inside))
                        if self.marginal_mode:  # every frame (CG point and F) for the reweighted marginals
                            t = (done - st.equilibration_steps) // st.record_every - 1
                            frames[:, t] = s
                            with torch.no_grad():
                                f_rel[:, t] = self.pmf.mean_kT(torch.as_tensor(s, dtype=torch.float64)).numpy() \
                                    - self.f_min
                            counts[chunk, :, 0] += 1
                        else:
                            np.add.at(counts[chunk], (np.flatnonzero(inside), self._bin_index(s[inside])), 1)
                ck = {"positions": state.positions, "velocities": state.velocities, "forces": state.forces,
                      "energies_kT": state.energies_kT, "generator": gen.get_state(), "counts": counts,
                      "steps_done": done, "n_nonfinite": dyn.n_nonfinite, "wall_s": time.perf_counter() - t0,
                      "n_outside": n_out, "frames": frames, "f_rel_kT": f_rel}
                atomic_torch_save(self.out / VALIDATE_CHECKPOINT, ck)
        wall = time.perf_counter() - t0
        result = self.evaluate_marginals(frames, f_rel) if self.marginal_mode else self.evaluate(counts.sum(0))
        if self.marginal_mode:
            self.save_frames(frames, f_rel)
        info = {"settings": st.model_dump(), "finished": True, "evaluations": W * (1 + total),
                "md_steps_per_walker": total, "timestep_fs": self.dt_fs, "wall_s": wall,
                "nonfinite_energies": dyn.n_nonfinite, "frames_outside_domain": n_out,
                "cg_names": list(self.pmf.cg_names), **result.summary}
        self.save(result, counts, info)
        return result, info

    def _bin_index(self, s: np.ndarray) -> np.ndarray:
        """Coarse bin (C order) of CG points inside the domain (n, d) -> (n,) int."""
        return coarse_index(s, self.coarse_edges)

    def _inside(self, s: np.ndarray) -> np.ndarray:
        dom = np.asarray(self.pmf.cg_domain)
        return np.all((s >= dom[:, 0]) & (s <= dom[:, 1]), axis=1)

    def evaluate(self, counts_per_walker: np.ndarray) -> FlatnessEstimate:
        """The flatness estimate from (W, Bc) counts (all chunks, or a prefix of them)."""
        return estimate(counts_per_walker, self.pmf.fine_pmf_kT, self.pmf.fine_error_bar_kT, self.fine_coarse,
                        self.coarse_edges, self.settings.ceiling_kT, self.pmf.cg_names,
                        n_bootstrap=self.settings.n_bootstrap, seed=self.settings.seed)

    def evaluate_marginals(self, frames: np.ndarray, f_rel_kT: np.ndarray) -> ReweightedMarginals:
        """For d > 3: the reweighted 2-D marginals of the frames (W, T, d) with F - F_min (W, T) against the run's."""
        pmf = self.pmf
        pairs = list(pmf.marginal_pairs or [])
        edges = list(pmf.marginal_edges or [])
        eb = [project_error_bar(pmf.edges, pmf.fine_pmf_kT, pmf.fine_error_bar_kT, p, edges[p[0]], edges[p[1]])
              for p in pairs]
        return estimate_marginals(frames, f_rel_kT, self.settings.ceiling_kT, edges, pairs,
                                  list(pmf.marginal_pmf_kT or []), pmf.cg_names, eb,
                                  n_bootstrap=self.settings.n_bootstrap, seed=self.settings.seed)

    def save(self, result, counts: np.ndarray, info: dict) -> None:
        if isinstance(result, ReweightedMarginals):
            self._save_marginals(result, info)
            return
        shape = tuple(len(e) - 1 for e in self.coarse_edges)
        fine_shape = tuple(len(e) - 1 for e in self.pmf.edges)
        atomic_savez(self.out / VALIDATE_NPZ, **{f"coarse_edges_{i}": e for i, e in enumerate(self.coarse_edges)},
                     **{f"edges_{i}": e for i, e in enumerate(self.pmf.edges)},
                     counts_by_chunk=counts, residual_kT=result.residual_kT.reshape(shape),
                     residual_se_kT=result.residual_se_kT.reshape(shape), z=result.z.reshape(shape),
                     expected_fraction=result.expected_fraction.reshape(shape),
                     p_model=result.p_model.reshape(shape),
                     run_error_bar_kT=result.run_error_bar_per_bin_kT.reshape(shape),
                     pmf_kT=(self.pmf.fine_pmf_kT - self.f_min).reshape(fine_shape),
                     corrected_pmf_kT=result.corrected_fine_pmf_kT.reshape(fine_shape),
                     fine_coarse_index=self.fine_coarse)
        atomic_write_text(self.out / VALIDATE_JSON, json.dumps(info, indent=1) + "\n")

    def _save_marginals(self, result: ReweightedMarginals, info: dict) -> None:
        arrays = {"marginal_pairs": np.array(result.pairs, dtype=np.int64),
                  **{f"marginal_edges_{i}": e for i, e in enumerate(result.edges)}}
        for key, value in (("md_marginal_pmf_kT", result.md_pmf_kT), ("run_marginal_pmf_kT", result.run_pmf_kT),
                           ("residual_kT", result.residual_kT), ("residual_se_kT", result.residual_se_kT),
                           ("z", result.z), ("resolved", result.resolved), ("run_error_bar_kT", result.run_error_bar_kT),
                           ("corrected_marginal_pmf_kT", result.corrected_pmf_kT)):
            arrays[key] = np.stack(value)
        atomic_savez(self.out / VALIDATE_NPZ, **arrays)
        atomic_write_text(self.out / VALIDATE_JSON, json.dumps(info, indent=1) + "\n")

    def save_frames(self, frames: np.ndarray, f_rel_kT: np.ndarray) -> None:
        atomic_savez(self.out / VALIDATE_FRAMES, frames=frames, f_rel_kT=f_rel_kT,
                     cg_names=np.array(self.pmf.cg_names))


def learned_pmf_of_run(run, pmf_npz) -> LearnedPMF:
    """The :class:`LearnedPMF` of a loaded run (a :class:`cgflow.learning.run.ActiveLearningRun`,
    duck-typed: ``ensemble``, ``flow``, ``system``) and its pmf.npz (the fine grid, the PMF and the
    per-bin error bar written with the checkpoint; ``std_kT`` stands in for runs made before the
    error bar existed)."""
    ens, flow, system = run.ensemble, run.flow, run.system
    dtype = next(ens.parameters()).dtype
    with np.load(pmf_npz) as z:
        d = len(system.cg_names)
        edges = [z[f"edges_{i}"] for i in range(d)]
        fine = z["pmf_kT"].reshape(-1).astype(np.float64)
        eb = (z["error_bar_kT"] if "error_bar_kT" in z.files else z["std_kT"]).reshape(-1).astype(np.float64)
        marginals = {}
        if "marginal_pmf_kT" in z.files:
            marginals = {"marginal_pairs": [tuple(int(v) for v in p) for p in z["marginal_pairs"]],
                         "marginal_edges": [z[f"marginal_edges_{i}"] for i in range(d)],
                         "marginal_pmf_kT": list(z["marginal_pmf_kT"])}

    centres = np.stack([m.ravel() for m in np.meshgrid(*[0.5 * (e[1:] + e[:-1]) for e in edges], indexing="ij")], -1)
    with torch.no_grad():  # pmf.npz holds mean - min(mean) on these bins: the same zero for the bias
        device = next(ens.parameters()).device
        offset = float(ens.mean_and_std(torch.as_tensor(centres, dtype=dtype, device=device))[0].min())

    def mean_kT(s: torch.Tensor) -> torch.Tensor:
        return ens.mean_and_std(s.to(dtype=dtype, device=device))[0].to(torch.float64).cpu() - offset

    def sample_fg(s: torch.Tensor):
        x_fg, _ = flow.sample(s)
        return x_fg, system.valid(s, x_fg)

    def configurations(s: torch.Tensor, x_fg: torch.Tensor) -> torch.Tensor:
        return system.from_internal(s, x_fg)[0]

    return LearnedPMF(mean_kT=mean_kT, sample_fg=sample_fg, configurations=configurations, edges=edges,
                      fine_pmf_kT=fine, fine_error_bar_kT=eb, cg_names=tuple(system.cg_names),
                      cg_periodic=tuple(system.cg_periodic), cg_domain=tuple(map(tuple, system.cg_domain)),
                      **marginals)
