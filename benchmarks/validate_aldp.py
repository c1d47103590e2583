"""`cgflow validate` measured against the shipped alanine-dipeptide reference (docs/results.md,
"Checking a PMF without a reference").

    python benchmarks/validate_aldp.py RUN_DIR [RUN_DIR ...] --out DIR [--walkers 64] [--steps 5000]
        [--timestep-fs 2] [--damage-kT 1.0]

For each finished aldp run (e.g. benchmarks/calibration_all.sh's aldp-fast runs): the biased-MD
validation of its PMF, and of the same PMF deliberately damaged (the alpha_R basin, phi < 0 and
-2.2 < psi < 0.9 rad, raised by --damage-kT with smooth edges). For each: the MD residual against the
reference's (F_ref - F on the same coarse bins, centred the same way), the MD estimate of the
Boltzmann-weighted error vs the reference's, the fraction of bins where |MD - ref| <= 2 MD error
bars, the KLD of the corrected PMF vs the original's, the verdict; and from the per-chunk counts the
same at growing prefixes of the MD (how many evaluations resolve an error of 0.05 and 0.2 kT:
the MD noise floor). Writes DIR/validate_aldp.json and DIR/validate_aldp.md. One core:
``OMP_NUM_THREADS=1 taskset -c 1 python ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def damage(s: np.ndarray | torch.Tensor, kT: float):
    """+kT in alpha_R (phi < 0, -2.2 < psi < 0.9 rad), smooth over ~0.15 rad; numpy or torch."""
    lib = torch if isinstance(s, torch.Tensor) else np
    sig = (lambda x: 1 / (1 + lib.exp(-x / 0.15)))
    phi, psi = s[..., 0], s[..., 1]
    return kT * sig(-phi) * sig(psi + 2.2) * sig(0.9 - psi)


def reference_coarse(ref_prob_fine, fine_coarse, n_coarse):
    p = np.bincount(fine_coarse, weights=ref_prob_fine.reshape(-1), minlength=n_coarse)
    with np.errstate(divide="ignore"):
        return -np.log(p)


def compare(result, ref_fine_prob, fine_pmf, fine_coarse) -> dict:
    from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf

    Bc = result.residual_kT.size
    p_model_fine = probabilities_from_pmf(fine_pmf)
    f_model = -np.log(np.bincount(fine_coarse, weights=p_model_fine, minlength=Bc))
    r_ref = reference_coarse(ref_fine_prob, fine_coarse, Bc) - f_model
    ok = result.resolved & np.isfinite(r_ref)
    pm = np.where(ok, result.p_model, 0)
    pm = pm / pm.sum()
    r_ref = r_ref - np.sum(pm[ok] * r_ref[ok])
    r_md = result.residual_kT - np.sum(pm[ok] * result.residual_kT[ok])
    dev = np.abs(r_md[ok] - r_ref[ok])
    return {
        "ref_abs_error_kT": float(np.sum(pm[ok] * np.abs(r_ref[ok]))),
        "md_abs_error_kT": float(np.sum(pm[ok] * np.abs(r_md[ok]))),
        "md_within_2se_of_ref": float(np.mean(dev <= 2 * result.residual_se_kT[ok])),
        "md_ref_correlation": float(np.corrcoef(r_md[ok], r_ref[ok])[0, 1]),
        "kld_original": float(forward_kld(ref_fine_prob, p_model_fine.reshape(ref_fine_prob.shape))),
        "kld_corrected": float(forward_kld(ref_fine_prob, probabilities_from_pmf(result.corrected_fine_pmf_kT)
                                           .reshape(ref_fine_prob.shape))),
        "n_compared_bins": int(ok.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--walkers", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--equilibration-steps", type=int, default=500)
    ap.add_argument("--timestep-fs", type=float, default=2.0)
    ap.add_argument("--damage-kT", type=float, default=1.0)
    ap.add_argument("--ceiling-kT", type=float, default=10.0)
    ap.add_argument("--record-every", type=int, default=10)
    ap.add_argument("--chunk-steps", type=int, default=500)
    a = ap.parse_args()
    torch.set_num_threads(1)
    from machine import describe_machine

    from cgflow.core.simulation_view import simulation_view
    from cgflow.learning.run import ActiveLearningRun
    from cgflow.validation.biased_md import BiasedMDValidation, LearnedPMF, ValidationSettings, learned_pmf_of_run

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rd in map(Path, a.runs):
        run = ActiveLearningRun(None, rd, resume=True)
        view = simulation_view(run.system)
        base = learned_pmf_of_run(run, rd / "pmf.npz")
        with np.load(rd / "pmf.npz") as z:
            ref = z["reference_prob"]
        centres = torch.as_tensor(np.stack([m.ravel() for m in np.meshgrid(
            *[0.5 * (e[1:] + e[:-1]) for e in base.edges], indexing="ij")], -1))
        for dmg in ((0.0, a.damage_kT) if a.damage_kT else (0.0,)):  # --damage-kT 0: the PMF as it is only
            pmf = base if dmg == 0 else LearnedPMF(
                mean_kT=lambda s, f=base.mean_kT, k=dmg: f(s) + damage(s, k), sample_fg=base.sample_fg,
                configurations=base.configurations, edges=base.edges,
                fine_pmf_kT=base.fine_pmf_kT + damage(centres, dmg).numpy(), fine_error_bar_kT=base.fine_error_bar_kT,
                cg_names=base.cg_names, cg_periodic=base.cg_periodic, cg_domain=base.cg_domain)
            st = ValidationSettings(walkers=a.walkers, steps=a.steps, equilibration_steps=a.equilibration_steps,
                                    timestep_fs=a.timestep_fs, ceiling_kT=a.ceiling_kT, seed=0,
                                    record_every=a.record_every, chunk_steps=a.chunk_steps)
            vdir = out / f"{rd.name}_damage{dmg:g}"
            v = BiasedMDValidation(pmf, view, vdir, st, resume=(vdir / "validate_checkpoint.pt").is_file(),
                                   progress=False)
            result, info = v.run()
            from cgflow.validation.figure import plot_validation

            plot_validation(vdir, vdir / "validate.png")
            counts = np.load(vdir / "validate.npz")["counts_by_chunk"]
            prefixes = []
            n_chunks = counts.shape[0]
            for m in sorted({max(1, round(n_chunks * f)) for f in (0.125, 0.25, 0.5, 1.0)}):
                if counts[:m].sum() == 0:  # equilibration only
                    continue
                r = v.evaluate(counts[:m].sum(0))
                steps = min(m * st.chunk_steps, st.equilibration_steps + st.steps)
                prefixes.append({"md_steps_per_walker": steps, "evaluations": st.walkers * (1 + steps),
                                 "md_noise_floor_kT": r.summary["md_noise_floor_kT"],
                                 "md_abs_error_kT": r.summary["md_abs_error_kT"], "consistent": r.summary["consistent"],
                                 **compare(r, ref, pmf.fine_pmf_kT, v.fine_coarse)})
            row = {"run": rd.name, "damage_kT": dmg, **{k: info[k] for k in (
                "evaluations", "wall_s", "nonfinite_energies", "md_abs_error_kT", "md_abs_error_se_kT",
                "md_noise_floor_kT", "run_error_bar_kT", "flagged_bins", "n_resolved_bins", "consistent",
                "flatness_cv", "verdict")}, **compare(result, ref, pmf.fine_pmf_kT, v.fine_coarse),
                "prefixes": prefixes}
            rows.append(row)
            print(json.dumps({k: v_ for k, v_ in row.items() if k != "prefixes"}), flush=True)
    (out / "validate_aldp.json").write_text(json.dumps({"machine": describe_machine(), "settings": vars(a),
                                                        "rows": rows}, indent=1) + "\n")
    lines = ["| run | damage (kT) | MD evals | MD est. error (kT) | reference error (kT) | run's error bar (kT) | "
             "MD within 2 se of ref | corr(MD, ref) | KLD original | KLD corrected | verdict |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['run']} | {r['damage_kT']:g} | {r['evaluations']:,} | {r['md_abs_error_kT']:.3f} ± "
                     f"{r['md_abs_error_se_kT']:.3f} | {r['ref_abs_error_kT']:.3f} | {r['run_error_bar_kT']:.3f} | "
                     f"{r['md_within_2se_of_ref']:.0%} | {r['md_ref_correlation']:.2f} | {r['kld_original']:.2e} | "
                     f"{r['kld_corrected']:.2e} | {'consistent' if r['consistent'] else 'NOT consistent'} |")
    lines += ["", "Prefixes (noise floor of the MD estimate vs MD evaluations):", "",
              "| run | damage | MD evals | noise floor (kT) | MD est. (kT) | ref (kT) | verdict |", "|" + "---|" * 7]
    for r in rows:
        for p in r["prefixes"]:
            lines.append(f"| {r['run']} | {r['damage_kT']:g} | {p['evaluations']:,} | {p['md_noise_floor_kT']:.3f} | "
                         f"{p['md_abs_error_kT']:.3f} | {p['ref_abs_error_kT']:.3f} | "
                         f"{'consistent' if p['consistent'] else 'NOT consistent'} |")
    (out / "validate_aldp.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
