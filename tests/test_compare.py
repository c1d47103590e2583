import json
import math

import numpy as np
import pytest
import yaml

from cgflow.analysis.compare import (
    Curve,
    crossing_table,
    evaluations_to_reach,
    kld_curve_from_md,
    kld_curve_from_snapshots,
    load_curves,
    run_compare,
    table_markdown,
)
from cgflow.core.system import ReferencePMF
from cgflow.pmf.history import PMFSnapshot, save_snapshot
from cgflow.pmf.reference_file import load_reference, save_reference


def _curve(evals, kld, label="m", method=""):
    e = np.asarray(evals, dtype=np.int64)
    k = np.asarray(kld, dtype=np.float64)
    return Curve(label, e, k, k, k, method)


def _ref_1d(n_bins=20):
    edges = np.linspace(-np.pi, np.pi, n_bins + 1)
    c = 0.5 * (edges[1:] + edges[:-1])
    p = np.exp(np.cos(c) + 0.5 * np.sin(2 * c))
    return ReferencePMF(edges=[edges], prob=p / p.sum(), description="test ref", meta={"noise_floor_forward_kld": 1e-4})


def _write_md_run(run_dir, ref, n_frames_per_chunk, R, k, rng, offset=None, outside=0):
    """MD fixture: CG samples drawn from the reference (bin by p_ref, uniform inside the bin)."""
    (run_dir / "cg_trajectory").mkdir(parents=True)
    e = ref.edges[0]
    chunks = []
    for n in n_frames_per_chunk:
        b = rng.choice(len(ref.prob), size=(n, R), p=ref.prob)
        x = (e[b] + rng.random((n, R)) * np.diff(e)[b])[..., None]
        chunks.append(x)
    if outside:
        chunks[0][:outside, 0, 0] = e[-1] + 1.0  # outside the edges: dropped from the histogram
    for i, x in enumerate(chunks):
        np.save(run_dir / "cg_trajectory" / f"chunk_{i:04d}.npy", x)
    info = {"method": "md", "n_replicas": R, "report_every_steps": k, "cg_dim": 1,
            "steps_done": k * sum(n_frames_per_chunk)}
    if offset is not None:
        info["evaluations_offset"] = offset
    (run_dir / "md.json").write_text(json.dumps(info))
    return np.concatenate(chunks)


# ---- crossings ---------------------------------------------------------------------------------

def test_crossing_of_power_law_is_exact():
    evals = np.round(np.geomspace(1e2, 1e8, 25)).astype(np.int64)
    c = 37.0
    curve = _curve(evals, c / evals)
    for level in (1e-2, 3e-3, 1e-3, 1e-5):
        assert evaluations_to_reach(curve, level) == pytest.approx(c / level, rel=1e-9)
    assert evaluations_to_reach(curve, 1e-9) is None
    assert evaluations_to_reach(curve, 1.0) == evals[0]  # first point already below


def test_first_crossing_of_non_monotone_curve():
    curve = _curve([1e2, 1e3, 1e4, 1e5], [1.0, 1e-3, 1.0, 1e-4])
    # first segment: log10 KLD = -3 (log10 x - 2), reaches -2 at log10 x = 2 + 2/3
    assert evaluations_to_reach(curve, 1e-2) == pytest.approx(10 ** (8 / 3), rel=1e-9)
    assert evaluations_to_reach(curve, 1e-3) == pytest.approx(1e3, rel=1e-12)
    assert evaluations_to_reach(_curve([1, 2, 3], [0.5, 0.4, 0.6]), 0.1) is None


def test_crossing_table_speedup_and_markdown():
    evals = np.round(np.geomspace(1e3, 1e9, 30)).astype(np.int64)
    md = _curve(evals, 50.0 / evals, "md (a)", "md")
    al = _curve(evals, 5.0 / evals, "al (b)", "active_learning")
    stuck = _curve(evals, np.full(len(evals), 0.05), "stuck (c)")
    rows = crossing_table([al, md, stuck], levels=(1e-2, 1e-3))
    by = {r["label"]: r for r in rows}
    assert by["md (a)"]["baseline"] and not by["al (b)"]["baseline"]
    assert by["al (b)"]["evals@0.01"] == evals[0] == 1000  # already below at the first point
    assert by["al (b)"]["speedup@0.01"] == pytest.approx(5e3 / 1e3, rel=1e-9)
    assert by["md (a)"]["evals@0.001"] == pytest.approx(5e4, rel=1e-9)
    assert by["al (b)"]["speedup@0.001"] == pytest.approx(10.0, rel=1e-9)
    assert by["md (a)"]["speedup@0.001"] == pytest.approx(1.0)
    assert by["stuck (c)"]["evals@0.01"] is None and by["stuck (c)"]["speedup@0.01"] is None
    assert by["al (b)"]["final_evaluations"] == evals[-1]
    # explicit baseline
    rows2 = crossing_table([al, md], levels=(1e-3,), baseline_label="al (b)")
    assert rows2[1]["speedup@0.001"] == pytest.approx(0.1, rel=1e-9)
    with pytest.raises(ValueError, match="baseline"):
        crossing_table([al, md], baseline_label="nope")
    md_text = table_markdown(rows)
    assert md_text.count("\n") == 2 + 3 and "—" in md_text and "speedup@0.001" in md_text


# ---- snapshot curves ---------------------------------------------------------------------------

def test_snapshot_equal_to_reference_has_zero_kld_and_shifted_pmf_known_kld():
    ref = _ref_1d()
    same = PMFSnapshot(ref.edges, ref.pmf_kT + 3.0, 100, "it 0")
    curve = kld_curve_from_snapshots([same], ref, "x")
    assert abs(curve.forward_kld[0]) < 1e-12 and abs(curve.reverse_kld[0]) < 1e-12
    assert curve.pmf_rmse_weighted_kT[0] < 1e-12

    two = ReferencePMF(edges=[np.array([0.0, 1.0, 2.0])], prob=np.array([0.5, 0.5]))
    d = math.log(3.0)  # model p = (3/4, 1/4)
    snaps = [PMFSnapshot(two.edges, np.array([0.0, d]), 200, "b"), PMFSnapshot(two.edges, np.zeros(2), 50, "a")]
    curve = kld_curve_from_snapshots(snaps, two, "two", epsilon=1e-15)
    assert curve.evaluations.tolist() == [50, 200]  # sorted by evaluations
    assert curve.forward_kld[1] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert curve.reverse_kld[1] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), rel=1e-9)
    assert curve.pmf_rmse_weighted_kT[1] == pytest.approx(d / 2, rel=1e-12)
    assert curve.forward_kld[0] == pytest.approx(0.0, abs=1e-15)


def test_snapshot_bin_mismatch_raises_naming_the_run():
    ref = _ref_1d(20)
    other = _ref_1d(10)
    with pytest.raises(ValueError, match="my-run"):
        kld_curve_from_snapshots([PMFSnapshot(other.edges, other.pmf_kT, 1, "s")], ref, "my-run")
    shifted = [ref.edges[0] + 0.1]
    with pytest.raises(ValueError, match="my-run"):
        kld_curve_from_snapshots([PMFSnapshot(shifted, ref.pmf_kT, 1, "s")], ref, "my-run")


# ---- MD curves ---------------------------------------------------------------------------------

def test_md_curve_converges_and_counts_evaluations(tmp_path):
    ref = _ref_1d(20)
    rng = np.random.default_rng(1)
    R, k = 4, 25
    traj = _write_md_run(tmp_path / "md", ref, [300, 1200, 500], R, k, rng, offset=1000, outside=3)
    curve = kld_curve_from_md(tmp_path / "md", ref, n_points=30, epsilon=1e-10)
    n_frames = (curve.evaluations - 1000) // (k * R)
    assert np.all((curve.evaluations - 1000) == n_frames * k * R) and n_frames[-1] == 2000
    assert n_frames[0] == 1 and np.all(np.diff(n_frames) > 0) and len(n_frames) <= 30
    assert curve.forward_kld[-1] < 0.01 and curve.forward_kld[-1] < curve.forward_kld[0] / 100
    # an independent check of one point: histogram of the first n frames by np.histogram
    for i in (len(n_frames) // 2, len(n_frames) - 1):
        n = n_frames[i]
        h, _ = np.histogram(traj[:n, :, 0].ravel(), bins=ref.edges[0])
        assert h.sum() == n * R - 3  # the three outside values are dropped
        q = np.maximum(h / h.sum(), 1e-10)
        q /= q.sum()
        assert curve.forward_kld[i] == pytest.approx(np.sum(ref.prob * np.log(ref.prob / q)), rel=1e-10)
        m = h > 0
        diff = -np.log(h[m] / h.sum()) + np.log(ref.prob[m])
        w = ref.prob[m] / ref.prob[m].sum()
        diff -= np.sum(w * diff)
        assert curve.pmf_rmse_weighted_kT[i] == pytest.approx(np.sqrt(np.sum(w * diff**2)), rel=1e-10)


def test_md_kld_of_unvisited_bins_depends_on_epsilon(tmp_path):
    ref = _ref_1d(20)
    _write_md_run(tmp_path / "md", ref, [2], 1, 10, np.random.default_rng(0))
    a = kld_curve_from_md(tmp_path / "md", ref, epsilon=1e-6)
    b = kld_curve_from_md(tmp_path / "md", ref, epsilon=1e-12)
    assert np.all(np.isfinite(a.forward_kld)) and np.all(b.forward_kld > a.forward_kld)
    assert a.evaluations.tolist() == [10, 20]


# ---- dispatch and run_compare ------------------------------------------------------------------

def _write_snapshot_run(run_dir, ref, mode="active_learning"):
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"mode": mode}))
    for i, (shift, ev) in enumerate([(1.0, 1000), (0.3, 5000), (0.05, 20000)]):
        c = ref.centers[0]
        save_snapshot(run_dir, i, ref.edges, ref.pmf_kT + shift * np.sin(c), ev, f"iteration {i}")


def test_load_curves_dispatch_labels_and_unknown_dir(tmp_path):
    ref = _ref_1d()
    _write_md_run(tmp_path / "runA", ref, [50], 2, 10, np.random.default_rng(0))
    _write_snapshot_run(tmp_path / "runB", ref, "grid")
    (tmp_path / "runC").mkdir()
    (tmp_path / "runC" / "metad.json").write_text(json.dumps({"method": "metadynamics"}))
    save_snapshot(tmp_path / "runC", 0, ref.edges, ref.pmf_kT, 7)
    curves = load_curves([tmp_path / "runA", tmp_path / "runB", tmp_path / "runC"], ref)
    assert [c.label for c in curves] == ["md (runA)", "grid (runB)", "metadynamics (runC)"]
    assert [c.method for c in curves] == ["md", "grid", "metadynamics"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="neither"):
        load_curves([tmp_path / "empty"], ref)


def test_run_compare_writes_files_and_refuses_existing_out_dir(tmp_path):
    ref = _ref_1d()
    ref_path = save_reference(tmp_path / "ref.npz", ref.edges[0], ref.prob,
                              {"description": "synthetic", "noise_floor_forward_kld": 1e-4})
    assert load_reference(ref_path).prob.shape == (20,)
    _write_md_run(tmp_path / "md_run", ref, [400, 400], 2, 10, np.random.default_rng(2))
    _write_snapshot_run(tmp_path / "al_run", ref)
    runs = [tmp_path / "md_run", tmp_path / "al_run"]
    out = tmp_path / "cmp"
    res = run_compare(runs, ref_path, out)
    assert {p.name for p in out.iterdir()} == {"comparison.png", "comparison.md", "curves.csv"}
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "comparison.md").read_text()
    assert "md (md_run)" in text and "active_learning (al_run)" in text and "speedup@0.001" in text
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0] == "label,evaluations,forward_kld,reverse_kld,pmf_rmse_weighted_kT,pmf_rmse_unweighted_kT,pmf_max_abs_error_kT,coverage"
    assert len(lines) == 1 + sum(len(c.evaluations) for c in res["curves"])
    assert [r["label"] for r in res["rows"]] == ["md (md_run)", "active_learning (al_run)"]
    with pytest.raises(FileExistsError, match="not empty"):
        run_compare(runs, ref_path, out)
    run_compare(runs, ref_path, out, overwrite=True)


def test_al_run_without_history_gives_its_final_pmf(tmp_path):
    """Runs made before pmf_history/ existed: pmf.npz + the last evals_total of metrics.csv."""
    from cgflow.core.run_directory import atomic_savez, write_metrics_csv

    ref = _ref_1d()
    d = tmp_path / "old_al"
    d.mkdir()
    (d / "config.yaml").write_text(yaml.safe_dump({"mode": "active_learning"}))
    write_metrics_csv(d / "metrics.csv", [{"iteration": 1, "evals_total": 100}, {"iteration": 2, "evals_total": 250}])
    atomic_savez(d / "pmf.npz", edges_0=ref.edges[0], pmf_kT=ref.pmf_kT + 0.0)
    (c,) = load_curves([d], ref)
    assert c.evaluations.tolist() == [250] and c.forward_kld[0] < 1e-12


def test_stays_below_uses_the_last_crossing():
    from cgflow.analysis.compare import evaluations_to_stay_below

    c = _curve([10, 100, 1000, 10000], [1.0, 1e-3, 1.0, 1e-2])
    # first crossing of 0.1 between 10 and 100; it stays below only after the 1000 -> 10000 crossing
    assert evaluations_to_reach(c, 0.1) == pytest.approx(10 ** (4 / 3), rel=1e-9)  # log KLD 0 -> -3
    assert evaluations_to_stay_below(c, 0.1) == pytest.approx(10 ** 3.5, rel=1e-9)
    assert evaluations_to_stay_below(c, 1e-3) is None
    assert evaluations_to_stay_below(_curve([5, 50], [1e-4, 1e-5]), 1e-3) == 5
