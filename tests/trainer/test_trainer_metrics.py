"""trainer.metrics against sklearn (test-only reference) and hand-computed cases."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from trainer.metrics import auroc, completeness_by_bins, roc_curve, threshold_at_fpr, tpr_at_fpr, tpr_at_fpr_report


def tied_scores(n, n_levels, seed):
    """Scores with heavy ties (n_levels distinct values) and a saturated block at 1.0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    raw = rng.normal(labels * 1.0, 1.0)
    scores = np.round(1 / (1 + np.exp(-raw)) * n_levels) / n_levels
    scores[rng.random(n) < 0.1] = 1.0
    return labels, scores


@pytest.mark.parametrize("n_levels", [3, 10, 1000])
def test_roc_curve_equals_sklearn_with_ties(n_levels):
    labels, scores = tied_scores(5000, n_levels, seed=n_levels)
    f, t, thr = roc_curve(labels, scores)
    fs, ts, thrs = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(f, fs, err_msg=f"fpr, {n_levels} levels")
    np.testing.assert_array_equal(t, ts, err_msg=f"tpr, {n_levels} levels")
    np.testing.assert_array_equal(thr, thrs, err_msg=f"thresholds, {n_levels} levels")


@pytest.mark.parametrize("n_levels", [3, 10, 1000])
@pytest.mark.parametrize("fpr", [1e-4, 1e-3, 1e-2, 0.05, 0.3])
def test_tpr_at_fpr_is_interp_on_sklearn_roc(n_levels, fpr):
    labels, scores = tied_scores(5000, n_levels, seed=7 * n_levels)
    fs, ts, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    # exact equality: the definition in the issue is np.interp on sklearn's curve
    assert tpr_at_fpr(labels, scores, fpr) == np.interp(fpr, fs, ts)


def test_tie_is_one_roc_point_not_a_staircase():
    # 4 negatives and 4 positives all at score 0.5: the ROC is (0,0) -> (1,1) only,
    # so TPR at FPR 0.25 is 0.25 by interpolation (a staircase through the tie could give 1).
    labels = np.r_[np.zeros(4), np.ones(4)]
    scores = np.full(8, 0.5)
    f, t, _ = roc_curve(labels, scores)
    np.testing.assert_array_equal(f, [0, 1])
    np.testing.assert_array_equal(t, [0, 1])
    assert tpr_at_fpr(labels, scores, 0.25) == 0.25
    assert auroc(labels, scores) == 0.5


def test_auroc_equals_sklearn():
    labels, scores = tied_scores(3000, 20, seed=3)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_report_flags_targets_below_resolution():
    labels, scores = tied_scores(2000, 1000, seed=5)
    n_neg = int((labels == 0).sum())
    rep = tpr_at_fpr_report(labels, scores, [1e-2, 1e-4])
    assert rep["1e-02"]["n_negatives"] == n_neg
    assert rep["1e-02"]["below_resolution"] is False  # ~1000 negatives >= 100
    assert rep["1e-04"]["below_resolution"] is True  # ~1000 negatives < 10^4
    assert rep["1e-02"]["tpr"] == tpr_at_fpr(labels, scores, 1e-2)


def test_threshold_at_fpr_keeps_fpr_under_target():
    labels, scores = tied_scores(4000, 50, seed=11)
    thr = threshold_at_fpr(labels, scores, 0.05)
    fpr_at_thr = np.mean(scores[labels == 0] >= thr)
    assert fpr_at_thr <= 0.05


def test_completeness_by_bins_hand_case():
    scores = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.95])
    positive = np.array([1, 1, 1, 1, 1, 0])
    theta = np.array([0.6, 0.7, 1.2, 1.4, np.nan, 2.0])
    rows = completeness_by_bins(scores, positive, theta, (0.5, 1.0, 1.5, 2.5), threshold=0.5)
    assert [r["n"] for r in rows] == [2, 2, 0]  # the NaN and the negative are not binned
    assert [r["completeness"] for r in rows] == [0.5, 1.0, None]


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="non-finite"):
        roc_curve([0, 1], [np.nan, 0.2])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_curve([0, 2], [0.1, 0.2])


def test_auroc_is_the_one_project_auroc_and_needs_both_classes():
    from dhs_spark.gates import auroc as gates_auroc

    labels, scores = tied_scores(2000, 7, seed=13)
    assert auroc(labels, scores) == gates_auroc(scores[labels == 1], scores[labels == 0])
    f, t, _ = roc_curve(labels, scores)  # and the trapezoid over this module's tie points
    assert auroc(labels, scores) == pytest.approx(float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2.0)), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auroc(np.ones(5), np.arange(5.0))
    with pytest.raises(ValueError, match="non-finite"):
        auroc([0, 1], [0.5, np.nan])
