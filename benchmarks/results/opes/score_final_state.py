"""Corrected FES of a finished OPES run's final state (its checkpoint), scored against the aldp reference."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from cgflow.analysis.metrics import forward_kld, probabilities_from_pmf
from cgflow.baselines.opes import CHECKPOINT, OPES_JSON, OpesRun, OpesSettings
from cgflow.pmf.history import read_history
from cgflow.pmf.reference_file import load_reference
from cgflow.systems.molecules.molecule_system import alanine_dipeptide, package_data_file

d = Path(sys.argv[1])
info = json.loads((d / OPES_JSON).read_text())
view = alanine_dipeptide(progress=False).simulation_view()
ref = load_reference(package_data_file("alanine-dipeptide", "reference-pmf.npz"))
r = -np.log(np.maximum(ref.prob, 1e-300)); r -= r.min(); m = (r < 10) & (ref.prob > 0)
def score(f):
    dd = f - r; dd = dd - dd[m].mean()
    return forward_kld(ref.prob, probabilities_from_pmf(f)), float(np.sqrt(np.mean(dd[m] ** 2))), float(np.abs(dd[m]).max())
out = {}
for corr in (False, True):
    st = OpesSettings(**{**info["settings"], "corrected_fes": corr})
    run = OpesRun(view, Path("/tmp/unused-opes-dir"), st, progress=False)
    opes = run._make_opes(view.make_openmm_system(1))
    ck = torch.load(d / CHECKPOINT, weights_only=False)
    opes.setState(ck["opes"])
    f = run.free_energy_on_bins(opes)
    out["corrected" if corr else "raw"] = score(f)
h = read_history(d)[-1]
out["snapshot_raw"] = score(h.pmf_kT)
print(json.dumps({"evaluations": h.evaluations, "wall_time_s": h.wall_time_s, "steps_per_s": info["steps_per_s"],
                  "n_kernels": info["n_kernels"], "scores (forward KLD, RMSE kT F_ref<10, max kT F_ref<10)": out}, indent=1))
