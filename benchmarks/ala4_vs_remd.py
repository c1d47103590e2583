"""The shipped `cgflow run ala4` results and the plain-MD reference scored against the REMD reference.

Reads the final ``pmf.npz`` of each run (its 24 x 24 marginal PMFs of the 5 neighbouring pairs), the 300 K frames
of the REMD ladders (benchmarks/results/ala4-remd/ala4-remd-300K.npz) and the plain-MD reference
(benchmarks/results/ala4-reference/ala4-reference.npz). Prints and writes ``<remd dir>/ala4-vs-remd.json``: the
forward KLD sum P_remd ln(P_remd / Q) per pair (model probabilities floored at 1e-10, as `cgflow compare`), and
the alpha_L (phi_k > 0) population and free energy of each residue, from each source.
Usage: ``python benchmarks/ala4_vs_remd.py benchmarks/results/ala4-run/b-explore benchmarks/results/ala4-run/b-explore-seed1``.
``--validate DIR`` (repeatable) adds the reweighted marginals of a ``cgflow validate`` directory (biased MD, d > 3)
and its corrected marginals as sources; ``--out FILE`` writes the JSON elsewhere.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cgflow.analysis.marginals import histogram_marginals

REMD = Path("benchmarks/results/ala4-remd")
MD = Path("benchmarks/results/ala4-reference")


def pmf_file(run: Path) -> Path:
    """The run's pmf.npz, or the repository's small copy of it (pmf-slim.npz, benchmarks/slim_pmf.py)."""
    full = Path(run) / "pmf.npz"
    return full if full.is_file() else Path(run) / "pmf-slim.npz"


def kld(p: np.ndarray, q: np.ndarray, floor: float = 1e-10) -> float:
    q = np.maximum(q / q.sum(), floor)
    q = q / q.sum()
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def alpha_l(prob: np.ndarray, pair: tuple[int, int], names: list[str], edges: np.ndarray) -> float | None:
    """phi > 0 mass of a (phi_k, psi_k) marginal, or None if the pair is not one."""
    i, j = pair
    if not (names[i].startswith("phi") and names[j] == "psi" + names[i][3:]):
        return None
    centres = 0.5 * (edges[1:] + edges[:-1])
    return float(prob[centres > 0, :].sum() / prob.sum())


def alpha_l_error_bar(run: Path, names: list[str]) -> dict[str, float]:
    """The run's own error bar (kT) on F in alpha_L of each phi coordinate: the model-probability-weighted mean of its
    per-bin error bar (pmf.npz ``error_bar_kT``, the run's d-dimensional grid) over the bins with phi > 0."""
    z = np.load(pmf_file(run))
    if "error_bar_kT" not in z.files:
        return {}
    f, eb = np.asarray(z["pmf_kT"]), np.asarray(z["error_bar_kT"])
    p = np.exp(-(f - np.nanmin(f)))
    out = {}
    for k, name in enumerate(names):
        if name.startswith("phi"):
            e = np.asarray(z[f"edges_{k}"])
            c = 0.5 * (e[1:] + e[:-1])
            shape = [1] * f.ndim
            shape[k] = len(c)
            m = np.broadcast_to((c > 0).reshape(shape), f.shape)
            out[name] = float(np.sum(p[m] * eb[m]) / np.sum(p[m]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--validate", action="append", type=Path, default=[],
                    help="a cgflow validate directory of one of the runs (its reweighted marginals)")
    ap.add_argument("--out", type=Path, default=REMD / "ala4-vs-remd.json")
    args = ap.parse_args()
    z = np.load(REMD / "ala4-remd-300K.npz")
    names = [str(n) for n in z["cg_names"]]
    remd = np.concatenate([z["dihedrals_A"], z["dihedrals_B"]]).astype(np.float64)
    md = np.asarray(np.load(MD / "ala4-reference.npz")["dihedrals"], dtype=np.float64).reshape(-1, len(names))
    first = np.load(pmf_file(args.runs[0]))
    pairs = [tuple(int(v) for v in p) for p in first["marginal_pairs"]]
    edges = np.asarray(first["marginal_edges_0"])
    ref = histogram_marginals(remd, [edges] * len(names), pairs)
    sources = {"plain MD reference (8 x 2.25 ns, 9.4e6 evaluations)": histogram_marginals(md, [edges] * len(names),
                                                                                          pairs)}
    for run in args.runs:
        zz = np.load(pmf_file(run))
        assert [tuple(int(v) for v in p) for p in zz["marginal_pairs"]] == pairs
        f = np.asarray(zz["marginal_pmf_kT"])
        sources[f"cgflow run ala4: {run.name}"] = [np.exp(-(fk - np.nanmin(fk))) for fk in f]
    for vdir in args.validate:
        zz = np.load(vdir / "validate.npz")
        assert [tuple(int(v) for v in p) for p in zz["marginal_pairs"]] == pairs
        info = json.loads((vdir / "validate.json").read_text())
        label = f"cgflow validate {vdir.parent.name}/{vdir.name} ({info['evaluations']:.2g} MD evaluations)"
        for key, what in (("md_marginal_pmf_kT", "reweighted MD"), ("corrected_marginal_pmf_kT", "corrected run")):
            f = np.asarray(zz[key])
            sources[f"{label}: {what}"] = [np.nan_to_num(np.exp(-(fk - np.nanmin(fk)))) for fk in f]
    out = {"reference": "REMD 300 K frames, both ladders", "bins": len(edges) - 1,
           "pairs": [f"{names[i]}|{names[j]}" for i, j in pairs],
           "remd_alpha_L": [alpha_l(r, p, names, edges) for r, p in zip(ref, pairs)], "sources": {}}
    error_bars = {f"cgflow run ala4: {run.name}": alpha_l_error_bar(run, names) for run in args.runs}
    for name, probs in sources.items():
        probs = [np.nan_to_num(p) for p in probs]
        k = [kld(r / r.sum(), q) for r, q in zip(ref, probs)]
        a = [alpha_l(q, p, names, edges) for q, p in zip(probs, pairs)]
        out["sources"][name] = {"forward_kld_per_pair": k, "forward_kld_mean": float(np.mean(k)), "alpha_L": a}
        if error_bars.get(name):
            # the run's error bar on F(alpha_L), and how many of them the REMD population lies away:
            # z = ln(P_remd / P_run) / error bar (|z| <= 2: within 2 error bars)
            eb = [error_bars[name].get(names[i]) if x is not None else None for x, (i, _) in zip(a, pairs)]
            out["sources"][name]["alpha_L_error_bar_kT"] = eb
            out["sources"][name]["alpha_L_z"] = [
                None if (x is None or e is None or not x) else float(np.log(r_ / x) / e)
                for x, e, r_ in zip(a, eb, out["remd_alpha_L"])]
        zz = out["sources"][name].get("alpha_L_z")
        print(f"{name}: KLD mean {np.mean(k):.3f} per pair {np.round(k, 3).tolist()}; alpha_L "
              f"{[None if x is None else round(x, 4) for x in a]}"
              + (f"; REMD's alpha_L in units of the run's error bar {[None if v is None else round(v, 1) for v in zz]}"
                 if zz else ""))
    print("REMD alpha_L", [None if x is None else round(x, 4) for x in out["remd_alpha_L"]])
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
