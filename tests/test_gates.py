"""dhs_spark.gates: the one AUROC against sklearn, the Mann-Whitney p-value against scipy, the
bootstrap intervals' coverage, and the verdict rules of judge / judge_effect / summarise."""

import json

import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score

from dhs_spark.gates import (
    Gate,
    auroc,
    auroc_interval,
    auroc_labels,
    bootstrap_interval,
    judge,
    judge_effect,
    mann_whitney_p,
    summarise,
    two_sample_interval,
)


def tied(n, n_levels, shift, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.normal(labels * shift, 1.0) * n_levels) / n_levels
    return labels, scores


@pytest.mark.parametrize("n_levels", [1, 5, 1000])
def test_auroc_equals_sklearn_with_ties(n_levels):
    labels, scores = tied(3000, n_levels, 0.7, seed=n_levels)
    assert auroc_labels(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc(scores[labels == 1], scores[labels == 0]) == auroc_labels(labels, scores)


def test_auroc_edge_cases():
    assert auroc([1.0, 1.0], [1.0]) == 0.5  # all tied: one half
    assert auroc([2.0, 3.0], [1.0]) == 1.0 and auroc([0.0], [1.0, 2.0]) == 0.0
    assert np.isnan(auroc([], [1.0])) and np.isnan(auroc([1.0], []))
    with pytest.raises(ValueError, match="differ in length"):
        auroc_labels([0, 1], [0.5])


@pytest.mark.parametrize("n_levels,shift,sizes", [(2, 0.0, (40, 60)), (5, 0.3, (200, 150)), (1000, 0.8, (25, 31)), (1, 0.5, (30, 30))])
def test_mann_whitney_p_equals_scipy(n_levels, shift, sizes):
    rng = np.random.default_rng(n_levels)
    a = np.round(rng.normal(shift, 1.0, sizes[0]) * n_levels) / n_levels
    b = np.round(rng.normal(0.0, 1.0, sizes[1]) * n_levels) / n_levels
    ours, ref = mann_whitney_p(a, b), mannwhitneyu(a, b, method="asymptotic").pvalue
    if np.isnan(ref):  # scipy: 0/0 when every value is tied; ours: no evidence of a difference
        assert ours == 1.0
    else:
        assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_mann_whitney_p_is_uniform_under_the_null_and_small_under_a_shift():
    rng = np.random.default_rng(7)
    p_null = np.array([mann_whitney_p(rng.normal(size=50), rng.normal(size=70)) for _ in range(400)])
    # P(p < 0.05) under the null: 0.05 +- 3 sigma of a binomial over 400 trials (0.033)
    assert abs((p_null < 0.05).mean() - 0.05) < 0.033
    assert mann_whitney_p(rng.normal(1.0, 1.0, 50), rng.normal(size=70)) < 1e-4
    assert np.isnan(mann_whitney_p([], [1.0]))


def test_bootstrap_intervals_cover_the_truth_and_are_deterministic():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(40):
        pos, neg = rng.normal(0.5, 1.0, 80), rng.normal(0.0, 1.0, 80)
        lo, hi = auroc_interval(pos, neg, n_bootstrap=200, seed=1)
        hits += lo <= 0.638 <= hi  # true AUC of N(0.5, 1) vs N(0, 1): Phi(0.5 / sqrt 2) = 0.6382
    # nominal 95%: >= 34 of 40 (a binomial(40, 0.95) falls below 34 with probability 0.003)
    assert hits >= 34
    pos, neg = rng.normal(size=30), rng.normal(size=40)
    assert auroc_interval(pos, neg, 200, seed=5) == auroc_interval(pos, neg, 200, seed=5)
    assert auroc_interval([], neg) == (None, None)
    x = rng.normal(2.0, 1.0, 100)
    lo, hi = bootstrap_interval(lambda i: x[i].mean(), len(x), 500, seed=2)
    assert lo < x.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * x.std() / 10, rel=0.2)
    lo2, hi2 = two_sample_interval(lambda a, b: a.mean() - b.mean(), x, x - 1.0, 500, seed=2)
    assert lo2 < 1.0 < hi2


def test_judge_directions_and_missing_values():
    assert judge("a", 0.4, 0.5, "max").passed is True and judge("a", 0.6, 0.5, "max").passed is False
    assert judge("b", 0.6, 0.5, "min").passed is True and judge("b", 0.4, 0.5, "min").passed is False
    info = judge("c", 0.9, 0.5, "info")
    assert info.passed is None and "informational" in info.reason
    missing = judge("d", float("nan"), 0.5, "max", reason_if_missing="no rows: write more stamps")
    assert missing.passed is None and missing.value is None and missing.reason == "no rows: write more stamps"
    with pytest.raises(ValueError, match="no value and no reason"):
        judge("e", None, 0.5, "max")


def test_judge_effect_needs_a_large_and_significant_effect():
    big_sig = judge_effect("g", 0.7, 0.55, 1e-6, 0.01, interval=(0.65, 0.75))
    assert big_sig.passed is False and big_sig.details["resolved"] is False
    assert judge_effect("g", 0.7, 0.55, 0.2, 0.01, interval=(0.4, 0.9)).passed is True  # large but chance at this sample size
    small_sig = judge_effect("g", 0.52, 0.55, 1e-9, 0.01, interval=(0.515, 0.525))
    assert small_sig.passed is True and small_sig.details["resolved"] is True  # real but within tolerance
    none = judge_effect("g", None, 0.55, None, 0.01, reason_if_missing="no null injections")
    assert none.passed is None and none.reason == "no null injections"


def test_summarise_and_json():
    gates = [judge("ok", 0.1, 0.5, "max"), judge("bad", 0.9, 0.5, "max"), judge("info", 0.9, 0.5, "info"),
             judge("na", None, 0.5, "max", reason_if_missing="why"), Gate("x", float("inf"), 1.0, "max", None, "overflow", (float("nan"), 1.0))]  # fmt: skip
    s = summarise(gates)
    assert s["all_passed"] is False and s["failed"] == ["bad"] and s["not_computable"] == ["na", "x"]
    text = json.dumps(s, allow_nan=False)  # strict JSON: non-finite values become null
    back = json.loads(text)["gates"]
    assert back["x"]["value"] is None and back["x"]["interval"] == [None, 1.0] and back["bad"]["pass"] is False
    assert summarise([judge("ok", 0.1, 0.5, "max"), judge("info", 0.9, 0.5, "info")])["all_passed"] is True
