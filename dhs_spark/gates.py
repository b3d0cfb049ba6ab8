"""The one shape every gate reports in, and the one AUROC every gate uses.

A gate (4d data gates, trainer model gates, the anchor gate, the realism probe) is a
:class:`Gate`: a name, the measured value, the threshold it is held to and on which side, a
pass flag that is True, False or None, and when None a reason a user can act on, plus an
interval (bootstrap, percentile) where one was computed and a line saying what the number means.
:func:`judge` holds a value to a threshold; :func:`judge_effect` holds an effect size (an AUC,
a score shift) to a tolerance and fails only when the effect is also significant
(:func:`mann_whitney_p` below ``alpha``), so that a small sample cannot fail a gate by chance.

AUROC (:func:`auroc`): the Mann-Whitney statistic U / (n_pos n_neg) with tied scores counting
one half (average ranks), equal to ``sklearn.metrics.roc_auc_score`` and to the trapezoid area
under the ROC whose tied scores form one point (``trainer.metrics.roc_curve``). NaN when
either class is empty.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Optional, Sequence

import numpy as np

from dhs_spark.config.seeds import rng_from_seed


def average_ranks(values) -> np.ndarray:
    """1-based ranks of ``values`` with ties given their average rank (as scipy's rankdata)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    new_group = np.concatenate([[True], sorted_vals[1:] != sorted_vals[:-1]])
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.concatenate([starts[1:], [len(values)]])
    avg = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def auroc(pos_scores, neg_scores) -> float:
    """Area under the ROC of positives vs negatives, ties counting one half
    (Mann-Whitney U / (n_pos n_neg)); NaN when either set is empty."""
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([pos, neg]))
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def auroc_labels(labels, scores) -> float:
    """:func:`auroc` of ``scores`` with ``labels`` 1 (positive) / 0 (negative)."""
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return auroc(s[y == 1], s[y == 0])


def mann_whitney_p(a, b) -> float:
    """Two-sided p-value of the Mann-Whitney U test that ``a`` and ``b`` come from one
    distribution (equivalently, that :func:`auroc` (a, b) is 0.5).

    Normal approximation with the tie correction of the variance and a 0.5 continuity
    correction, as ``scipy.stats.mannwhitneyu(a, b, method="asymptotic")`` (checked in
    tests/test_gates.py); on 0/1 data it is the two-proportion test. NaN when either set is
    empty; 1.0 when every value is tied (no evidence of a difference).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        return float("nan")
    n = n1 + n2
    ranks = average_ranks(np.concatenate([a, b]))
    u1 = ranks[:n1].sum() - n1 * (n1 + 1) / 2.0
    u = max(u1, n1 * n2 - u1)
    _, counts = np.unique(np.concatenate([a, b]), return_counts=True)
    tie_term = float((counts.astype(np.float64) ** 3 - counts).sum())
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
    return float(min(1.0, math.erfc(z / math.sqrt(2.0))))


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_items: int, n_bootstrap: int = 1000, seed: int = 0,
                       confidence: float = 0.95) -> tuple[Optional[float], Optional[float]]:
    """Percentile interval of ``statistic(indices)`` over ``n_bootstrap`` resamples (with
    replacement) of ``range(n_items)``; non-finite resample values are dropped. (None, None)
    when nothing finite came out. Deterministic in ``seed``."""
    rng = rng_from_seed(seed)
    values = np.array([statistic(rng.integers(0, n_items, n_items)) for _ in range(n_bootstrap)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def two_sample_interval(statistic: Callable[[np.ndarray, np.ndarray], float], a, b, n_bootstrap: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[Optional[float], Optional[float]]:
    """Percentile bootstrap interval of ``statistic(a, b)`` with ``a`` and ``b`` resampled
    independently (e.g. a difference of means); (None, None) when either is empty."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if not len(a) or not len(b):
        return None, None
    rng = rng_from_seed(seed)
    values = np.array([statistic(a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]) for _ in range(n_bootstrap)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None, None
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def auroc_interval(pos_scores, neg_scores, n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95):
    """Percentile bootstrap interval of :func:`auroc`, the two classes resampled independently."""
    pos = np.asarray(pos_scores, dtype=np.float64).ravel()
    neg = np.asarray(neg_scores, dtype=np.float64).ravel()
    if not len(pos) or not len(neg):
        return None, None
    rng = rng_from_seed(seed)
    values = np.array([auroc(pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))]) for _ in range(n_bootstrap)])
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


@dataclass
class Gate:
    """One gate's verdict.

    ``direction``: 'max' passes when value <= threshold, 'min' when value >= threshold,
    'info' is never judged (pass None, with ``reason`` saying it is informational).
    ``passed`` is None when the value could not be computed; ``reason`` then says why and what
    to do. ``interval`` is (low, high) of the value where computed. ``meaning`` says in one line
    what the number measures and what a failure means.
    """

    name: str
    value: Optional[float]
    threshold: Optional[float]
    direction: Literal["max", "min", "info"]
    passed: Optional[bool]
    reason: str = ""
    interval: Optional[tuple[Optional[float], Optional[float]]] = None
    meaning: str = ""
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["pass"] = out.pop("passed")
        out["value"] = _finite_or_none(self.value)
        if self.interval is not None:
            out["interval"] = [_finite_or_none(v) for v in self.interval]
        return out


def _finite_or_none(v) -> Optional[float]:
    return float(v) if v is not None and math.isfinite(float(v)) else None


def judge(name: str, value: Optional[float], threshold: Optional[float], direction: Literal["max", "min", "info"], *,
          reason_if_missing: str = "", interval=None, meaning: str = "", details: Optional[dict] = None) -> Gate:
    """A :class:`Gate` from a value and its threshold. A missing or non-finite value gives
    ``passed=None`` with ``reason_if_missing`` (which must then say why and what to do)."""
    details = dict(details or {})
    if direction == "info":
        return Gate(name, _finite_or_none(value), threshold, direction, None, "informational: not a pass/fail gate", interval, meaning, details)
    if value is None or not math.isfinite(float(value)):
        if not reason_if_missing:
            raise ValueError(f"gate {name}: no value and no reason given")
        return Gate(name, None, threshold, direction, None, reason_if_missing, interval, meaning, details)
    value = float(value)
    passed = value <= threshold if direction == "max" else value >= threshold
    return Gate(name, value, threshold, direction, bool(passed), "", interval, meaning, details)


def judge_effect(name: str, value: Optional[float], threshold: float, p_value: Optional[float], alpha: float, *, reason_if_missing: str = "",
                 interval=None, meaning: str = "", details: Optional[dict] = None) -> Gate:
    """A 'max' gate on an effect size that fails only when the effect is both larger than its
    tolerance (``value > threshold``) and statistically real (two-sided ``p_value < alpha``).

    Either condition alone is not enough: with few stamps a value above the tolerance can be
    chance, and with millions a significant effect can be far below the tolerance. ``details``
    records ``p_value``, ``alpha`` and ``resolved``: whether the interval's upper end is at or
    below the threshold, i.e. the data exclude an effect of the tolerated size (False means more
    stamps are needed before a pass says much). A missing value or p-value gives ``passed=None``.
    """
    details = dict(details or {})
    details.update(p_value=_finite_or_none(p_value), alpha=alpha,
                   rule=f"fails when value > {threshold:g} and p < {alpha:g}")
    hi = interval[1] if interval is not None else None
    details["resolved"] = bool(hi is not None and math.isfinite(hi) and hi <= threshold)
    if value is None or p_value is None or not math.isfinite(float(value)) or not math.isfinite(float(p_value)):
        if not reason_if_missing:
            raise ValueError(f"gate {name}: no value and no reason given")
        return Gate(name, _finite_or_none(value), threshold, "max", None, reason_if_missing, interval, meaning, details)
    value = float(value)
    failed = value > threshold and float(p_value) < alpha
    return Gate(name, value, threshold, "max", not failed, "", interval, meaning, details)


def summarise(gates: Sequence[Gate]) -> dict:
    """``{'all_passed': bool, 'failed': [...], 'not_computable': [...], 'gates': {name: dict}}``;
    ``all_passed`` is False when any judged gate failed and ignores informational gates."""
    failed = [g.name for g in gates if g.passed is False]
    missing = [g.name for g in gates if g.passed is None and g.direction != "info"]
    return {"all_passed": not failed, "failed": failed, "not_computable": missing, "gates": {g.name: g.to_dict() for g in gates}}
