"""How large is `cgflow validate`'s (d > 3) drift statistic when the walkers ARE stationary?

``drift / noise``: the model-weighted mean |F| difference between the first and second half of the walkers'
frames over the MD's own noise figure (cgflow.validation.reweighting; pure noise gives ~2 in expectation, and the
verdict turns INCONCLUSIVE above DRIFT_FACTOR = 3).  Frames: the test suite's synthetic biased ensembles
(tests/test_validate.py, i.i.d. frames: stationary by construction), 5 seeds per setting, and walkers whose first
half comes from another ensemble (``first half from`` a damage in kT: not stationary).
Usage: ``python benchmarks/validate_drift_null.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_validate as tv  # noqa: E402
from cgflow.validation.reweighting import estimate_marginals  # noqa: E402


def main() -> None:
    pairs = [(0, 1), (2, 3)]
    print("| walkers | frames each | run damage (kT) | first half from (kT) | drift / noise, seeds 0-4 |")
    print("|---:|---:|---:|---|---|")
    for walkers, frames, damage, first in [(40, 400, 1.0, None), (40, 400, 0.0, None), (40, 2000, 0.0, None),
                                           (64, 100, 0.0, None), (40, 400, 0.0, 0.5), (40, 400, 0.0, 1.0),
                                           (40, 400, 0.0, 3.0)]:
        ratios = []
        for seed in range(5):
            fr, f = tv._biased_frames(walkers, frames, damage, np.random.default_rng(seed), first_half_from=first)
            run = [tv._marginal_of(p, damage, tv._EDGES4) for p in pairs]
            res = estimate_marginals(fr, f, 50.0, tv._EDGES4, pairs, run, ("phi:1", "psi:1", "phi:2", "psi:2"), None,
                                     seed=seed)
            ratios.append(res.summary["drift_mean_kT"] / np.mean(res.summary["md_noise_floor_kT"]))
        print(f"| {walkers} | {frames} | {damage} | {'stationary' if first is None else first} | "
              f"{' '.join(f'{r:.2f}' for r in ratios)} |")


if __name__ == "__main__":
    main()
