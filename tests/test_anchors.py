"""Anchor metrics against scikit-learn (ties included), each gate criterion on both sides of its
threshold, deterministic bootstrap, the arc-visibility measure on constructed stamps, and the
end-to-end report from a score file and real DR10 .npz cutouts."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dhs_spark.anchors import arc_visibility_snr, auroc, bootstrap_ci, compute_anchor_metrics
from dhs_spark.cli import main
from dhs_spark.config.experiment import EvaluationConfig
from dhs_spark.errors import InputDataError

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
