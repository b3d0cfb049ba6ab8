"""Anchor metrics against scikit-learn (ties included), each gate criterion on both sides of its
threshold, deterministic bootstrap, the arc-visibility measure on constructed stamps, the
end-to-end report from a score file and real DR10 .npz cutouts, the gates on the visible-arc
and top-grade subsets, and scoring at the checkpoint's training geometry (centre crop)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dhs_spark.anchors import anchor_gates, arc_visibility_snr, auroc, bootstrap_ci, compute_anchor_metrics, crop_centre, is_top_grade
from dhs_spark.cli import main
from dhs_spark.config.experiment import EvaluationConfig
from dhs_spark.errors import InputDataError, RejectError

CUTOUTS = Path(__file__).resolve().parent / "data" / "catalogs" / "cutouts"


@pytest.mark.parametrize("case", ["random_ties", "all_equal", "perfect", "reversed", "one_each"])
def test_auroc_equals_sklearn(case):
    rng = np.random.default_rng(7)
    pos, neg = {
        "random_ties": (rng.integers(0, 5, 200) / 4, rng.integers(0, 5, 300) / 4),  # 5 distinct values: many ties
        "all_equal": (np.full(10, 0.5), np.full(7, 0.5)),
        "perfect": (np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])),
        "reversed": (np.array([0.1, 0.2]), np.array([0.9, 0.8])),
        "one_each": (np.array([0.4]), np.array([0.4])),
    }[case]
    ref = roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(ref, abs=1e-12), case


def test_metrics_known_answer_and_defaults():
    m = compute_anchor_metrics([0.9, 0.8, 0.5, 0.2], [0.1, 0.6, 0.0, 0.05, 0.3])
    assert (m.n_known_lenses, m.n_recovered_at_0p5, m.n_hard_negatives, m.n_contaminated_at_0p5) == (4, 3, 5, 1)
    assert m.recovery_rate_0p5 == 0.75 and m.contamination_rate_0p5 == 0.2
    assert m.score_separation == pytest.approx(np.median([0.9, 0.8, 0.5, 0.2]) - 0.1)
    assert m.gate_criteria == {"min_recovery": 0.7, "max_contamination": 0.15, "min_separation": 0.4, "min_auroc": 0.8, "score_threshold": 0.5}
    assert not m.passes_anchor_gate and m.criteria_passed()["max_contamination"] is False
    with pytest.raises(InputDataError, match="index 1"):
        compute_anchor_metrics([0.5, np.nan], [0.1])


# A base set that passes every criterion: recovery 0.8, contamination 0.1, separation 0.8, AUROC 0.98.
LENS = np.array([0.95, 0.9, 0.9, 0.85, 0.9, 0.9, 0.9, 0.9, 0.2, 0.3])
NEG = np.array([0.05, 0.1, 0.1, 0.1, 0.05, 0.1, 0.1, 0.1, 0.1, 0.6])


@pytest.mark.parametrize("criterion,pass_value,fail_value", [
    ("min_recovery", 0.75, 0.85),        # recovery 0.8
    ("max_contamination", 0.15, 0.05),   # contamination 0.1
    ("min_separation", 0.75, 0.85),      # separation 0.9 - 0.1 = 0.8
    ("min_auroc", 0.9, 0.99),            # AUROC 0.93
])
def test_each_gate_criterion_on_both_sides(criterion, pass_value, fail_value):
    base = compute_anchor_metrics(LENS, NEG)
    assert base.passes_anchor_gate, base
    ok = compute_anchor_metrics(LENS, NEG, {criterion: pass_value})
    bad = compute_anchor_metrics(LENS, NEG, {criterion: fail_value})
    assert ok.passes_anchor_gate and ok.criteria_passed()[criterion]
    assert not bad.passes_anchor_gate and not bad.criteria_passed()[criterion]
    others = {k: v for k, v in bad.criteria_passed().items() if k != criterion}
    assert all(others.values()), f"only {criterion} may fail"


def test_criteria_from_config_and_threshold():
    cfg = EvaluationConfig(score_threshold=0.95)
    m = compute_anchor_metrics(LENS, NEG, cfg)
    assert m.n_recovered_at_0p5 == 1 and m.gate_criteria["score_threshold"] == 0.95
    with pytest.raises(InputDataError, match="unknown key"):
        compute_anchor_metrics(LENS, NEG, {"min_recall": 0.5})


def test_bootstrap_is_deterministic_and_brackets_the_estimate():
    a = bootstrap_ci(LENS, NEG, n_bootstrap=200, seed=5)
    b = bootstrap_ci(LENS, NEG, n_bootstrap=200, seed=5)
    c = bootstrap_ci(LENS, NEG, n_bootstrap=200, seed=6)
    assert a == b and a != c
    m = compute_anchor_metrics(LENS, NEG)
    lo, hi = a["recovery_rate_0p5"]
    assert lo <= m.recovery_rate_0p5 <= hi and lo < hi


def _stamp(q=1.0, arc_amp=0.0, seed=0, sigma=0.003):
    n, ps = 101, 0.262
    y, x = np.mgrid[0:n, 0:n]
    dx, dy = (x - 50) * ps, (y - 50) * ps
    r, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    xr, yr = dx * np.cos(0.3) + dy * np.sin(0.3), -dx * np.sin(0.3) + dy * np.cos(0.3)
    host = 0.5 * np.exp(-0.5 * (xr**2 * q + yr**2 / q))  # elliptical Gaussian host, sigma 1"
    arc = arc_amp * np.exp(-0.5 * ((r - 1.5) / 0.35) ** 2) * np.exp(-0.5 * (np.angle(np.exp(1j * (phi - np.deg2rad(22.5)))) / np.deg2rad(25)) ** 2)
    rng = np.random.default_rng(seed)
    return np.stack([f * host + c * arc + rng.normal(0, sigma, (n, n)) for f, c in ((0.3, 1.0), (1.0, 1.0), (2.0, 0.8))])


@pytest.mark.parametrize("q", [1.0, 0.6])
def test_arc_visibility_separates_arc_from_no_arc(q):
    """A 60-degree arc at 1.5" with peak 0.02 nmgy/pix (6.7 sigma/pixel) is visible; the same
    host without it is not (threshold 5; pure noise gives ~N(0,1) sector SNRs)."""
    for seed in range(3):
        without = arc_visibility_snr(_stamp(q, 0.0, seed)).arc_snr
        with_arc = arc_visibility_snr(_stamp(q, 0.02, seed), theta_e_arcsec=1.5)
        assert without < 3.0, (q, seed, without)
        assert with_arc.arc_snr > 5.0, (q, seed, with_arc)
        assert with_arc.best_sector == 0, "the arc centred at phi = 22.5 deg lies in sector 0 (0-45 deg)"
    ivar = np.full((3, 101, 101), 1 / 0.003**2)
    assert arc_visibility_snr(_stamp(1.0, 0.02, 1), ivar, 1.5).noise_from == "invvar"


@pytest.fixture()
def anchor_inputs(tmp_path):
    metas = [np.load(f) for f in sorted(CUTOUTS.glob("*.npz"))]
    lenses = pd.DataFrame({"name": ["L1", "L2", "L3"], "ra": [float(metas[0]["meta_ra"]), 60.0, 50.0],
                           "dec": [float(metas[0]["meta_dec"]), 5.0, 5.0],
                           "catalogue": ["desi_lenscat", "desi_lenscat|stein2021", "slacs"], "theta_e_arcsec": [np.nan, 1.2, 1.0]})
    negs = pd.DataFrame({"name": ["N1", "N2", "N3", "N4"], "ra": [float(metas[1]["meta_ra"]), 11.0, 12.0, 13.0],
                         "dec": [float(metas[1]["meta_dec"]), 1.0, 1.0, 1.0],
                         "hardneg_type": ["ring", "ring", "merger", "merger"]})
    lenses.to_parquet(tmp_path / "known_lenses_merged.parquet")
    negs.to_parquet(tmp_path / "hard_negatives_merged.parquet")
    pd.DataFrame({"name": ["L1", "L2", "L3", "N1", "N2", "N3"], "score": [0.9, 0.7, 0.2, 0.1, 0.6, 0.05]}).to_csv(tmp_path / "scores.csv", index=False)
    return tmp_path


def test_anchor_cli_end_to_end(anchor_inputs, capsys):
    d = anchor_inputs
    out = d / "report"
    rc = main(["anchors", "compute", "--known-lens-dir", str(d), "--hard-neg-dir", str(d), "--scores", str(d / "scores.csv"),
               "--cutout-dir", str(CUTOUTS), "--output-dir", str(out), "--n-bootstrap", "50"])
    assert rc == 0
    report = json.loads((out / "anchor_metrics.json").read_text())
    m = report["metrics"]
    assert (m["n_known_lenses"], m["n_recovered_at_0p5"], m["n_hard_negatives"], m["n_contaminated_at_0p5"]) == (3, 2, 3, 1)
    assert report["per_catalogue"]["desi_lenscat"]["n_known_lenses"] == 2 and report["per_catalogue"]["slacs"]["n_known_lenses"] == 1
    assert report["per_hardneg_type"]["ring"]["n_contaminated"] == 1
    assert report["arc_visible"]["n_lenses_with_cutout"] == 1
    assert report["rejects"]["by_reason"] == {"no_cutout": 5, "no_score": 1}
    for png in ("score_histograms.png", "gallery_top_hard_negatives.png", "gallery_lowest_lenses.png"):
        assert (out / png).stat().st_size > 1000, png
    md = (out / "anchor_report.md").read_text()
    assert "Gate: FAIL" in md and "| recovery |" in md
    scores = pd.read_parquet(out / "anchor_scores.parquet")
    assert scores["arc_snr"].notna().sum() == 1 and np.isfinite(scores.loc[scores["name"] == "L1", "arc_snr"]).all()
    assert main(["anchors", "compute", "--known-lens-dir", str(d), "--hard-neg-dir", str(d), "--output-dir", str(out)]) == 2


DR10 = Path(__file__).resolve().parent / "data" / "cutouts_dr10"


def test_crop_centre_keeps_the_host_pixel_and_rejects_small_cutouts():
    img = np.zeros((3, 101, 101), np.float32)
    img[:, 50, 50] = 1.0  # the cutout's centre pixel N // 2
    ivar = np.arange(3 * 101 * 101, dtype=np.float32).reshape(3, 101, 101)
    out, out_ivar = crop_centre(img, 64, ivar)
    assert out.shape == (3, 64, 64) and out[:, 32, 32].tolist() == [1.0, 1.0, 1.0] and out.sum() == 3.0
    assert out_ivar[0, 0, 0] == ivar[0, 50 - 32, 50 - 32]
    assert crop_centre(img, 101)[0] is not None and crop_centre(img, 101)[0].shape == (3, 101, 101)
    with pytest.raises(RejectError, match="cutout_too_small|101 px"):
        crop_centre(img, 128)


def test_anchor_gates_on_each_subset():
    """Recall gates on all lenses, the visible-arc subset and the top grade, each on both sides of
    its threshold; an empty subset is not computable with a reason, never a pass."""
    lens = np.array([0.9, 0.8, 0.6, 0.2, 0.1])  # recall 0.6 at 0.5
    neg = np.array([0.1, 0.2, 0.05, 0.6])
    gates = {g.name: g for g in anchor_gates(lens, neg, visible_scores=lens[:3], top_grade_scores=lens[3:], n_bootstrap=200)}
    assert set(gates) == {"anchor_recall_all", "anchor_recall_visible_arcs", "anchor_recall_top_grade", "anchor_contamination",
                          "anchor_score_separation", "anchor_auroc"}
    assert gates["anchor_recall_all"].value == pytest.approx(0.6) and gates["anchor_recall_all"].passed is False
    assert gates["anchor_recall_visible_arcs"].value == 1.0 and gates["anchor_recall_visible_arcs"].passed is True
    assert gates["anchor_recall_top_grade"].value == 0.0 and gates["anchor_recall_top_grade"].passed is False
    assert gates["anchor_contamination"].value == 0.25 and gates["anchor_contamination"].passed is False
    assert gates["anchor_auroc"].value == pytest.approx(auroc(lens, neg))
    lo, hi = gates["anchor_recall_all"].interval
    assert lo <= 0.6 <= hi and lo < hi
    empty = {g.name: g for g in anchor_gates(lens, [], visible_scores=[], top_grade_scores=lens, n_bootstrap=50)}
    for name in ("anchor_recall_visible_arcs", "anchor_contamination", "anchor_auroc", "anchor_score_separation"):
        assert empty[name].passed is None and empty[name].reason, name
    assert empty["anchor_recall_top_grade"].passed is False
    assert is_top_grade(["confident", " A", "probable", "B", "confirmed", "ring"]).tolist() == [True, True, False, False, True, False]


def test_anchor_cli_scores_at_the_checkpoint_geometry(tmp_path):
    """A 64-px checkpoint on the 101-px real DR10 cutouts: `dhs anchors compute` gives exactly the
    scores of the centre 64x64 crops scored directly (and not those of the uncropped cutouts,
    which the preprocessing normalises on a different annulus); grades are kept and gated."""
    from tiny_checkpoint import write_tiny_checkpoint

    from trainer.score import score_images

    files = sorted(DR10.glob("*.npz"))
    metas = [np.load(f) for f in files]
    ra, dec = [float(m["meta_ra"]) for m in metas], [float(m["meta_dec"]) for m in metas]
    pd.DataFrame({"name": [f.stem for f in files[:4]], "ra": ra[:4], "dec": dec[:4], "grade": ["confident", "probable", "A", "B"],
                  "catalogue": "desi_lenscat", "theta_e_arcsec": np.nan}).to_parquet(tmp_path / "known_lenses_merged.parquet")
    pd.DataFrame({"name": [f.stem for f in files[4:]], "ra": ra[4:], "dec": dec[4:], "grade": "ring",
                  "hardneg_type": "ring"}).to_parquet(tmp_path / "hard_negatives_merged.parquet")
    ckpt = write_tiny_checkpoint(tmp_path / "tiny.pt", stamp_size=64, seed=3)
    out = tmp_path / "report"
    rc = main(["anchors", "compute", "--known-lens-dir", str(tmp_path), "--hard-neg-dir", str(tmp_path), "--checkpoint", str(ckpt),
               "--cutout-dir", str(DR10), "--output-dir", str(out), "--n-bootstrap", "50"])
    assert rc == 0
    scores = pd.read_parquet(out / "anchor_scores.parquet").set_index("name")
    full = np.stack([np.load(f)["cutout"].transpose(2, 0, 1) for f in files]).astype(np.float32)
    direct = score_images(str(ckpt), full[:, :, 50 - 32 : 50 + 32, 50 - 32 : 50 + 32])
    np.testing.assert_allclose(scores.loc[[f.stem for f in files], "score"].to_numpy(), direct, rtol=0, atol=1e-6)
    uncropped = score_images(str(ckpt), full)
    assert np.abs(uncropped - direct).max() > 1e-3, "the crop must matter, or this test shows nothing"
    expected_snr = [arc_visibility_snr(im[:, 18:82, 18:82]).arc_snr for im in full[:4]]
    np.testing.assert_allclose(scores.loc[[f.stem for f in files[:4]], "arc_snr"].to_numpy(), expected_snr, rtol=1e-12)
    assert scores.loc[files[0].stem, "grade"] == "confident" and bool(scores.loc[files[2].stem, "top_grade"])
    report = json.loads((out / "anchor_metrics.json").read_text())
    assert report["inputs"]["stamp_size"] == 64
    gates = report["gates"]["gates"]
    assert gates["anchor_recall_top_grade"]["details"]["n"] == 2 and gates["anchor_recall_all"]["details"]["n"] == 4
    assert gates["anchor_recall_visible_arcs"]["details"]["n"] == int(np.sum(np.array(expected_snr) >= 5))
    assert report["per_grade"]["probable"]["n"] == 1 and report["per_grade"]["A"]["top_grade"] is True
    assert report["anchor_gate_passed"] is (not report["gates"]["failed"] and not report["gates"]["not_computable"])
    assert main(["anchors", "compute", "--known-lens-dir", str(tmp_path), "--hard-neg-dir", str(tmp_path), "--checkpoint", str(ckpt),
                 "--cutout-dir", str(DR10), "--output-dir", str(out), "--stamp-size", "48"]) == 2  # contradicts the checkpoint
