"""Classification metrics in plain numpy: ROC with ties, AUROC, TPR at low FPR, completeness.

Conventions: ``labels`` are 1 (lens) / 0 (non-lens); ``scores`` are larger for "more lens-like".
Tied scores form ONE ROC point (the whole tie moves across the threshold at once), which is
what makes TPR at FPR 1e-4 honest: a model that saturates many negatives at score 1.0 gets the
vertical jump it deserves, not an optimistic staircase through the tie.

``roc_curve`` reproduces ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``
(checked in tests/trainer); sklearn is not imported here. :func:`auroc` is
:func:`dhs_spark.gates.auroc`, the one AUROC that every gate and report uses.
"""

from __future__ import annotations

import math

import numpy as np

from dhs_spark.gates import auroc_labels

# Default completeness bins (upper edge open-ended where inf): Einstein radius in arcsec
# (DESIGN §3 prior 0.5-3"), arc SNR summed over bands and pixels, and r-band PSF FWHM in arcsec.
THETA_E_BINS_ARCSEC = (0.0, 0.75, 1.0, 1.5, 2.0, 3.0, math.inf)
ARC_SNR_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, math.inf)
PSF_FWHM_R_BINS_ARCSEC = (0.0, 1.0, 1.2, 1.4, 1.6, math.inf)


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores: {int((~np.isfinite(s)).sum())} non-finite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:5].tolist()}")
    return y.astype(np.int64), s


def _json_float(x: float) -> float | None:
    """``x`` as a float, or None when infinite (strict JSON has no Infinity)."""
    return float(x) if math.isfinite(x) else None


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with one point per distinct score, starting at (0, 0).

    thresholds[0] is +inf; point k counts the samples with score >= thresholds[k]. Raises if
    either class is absent (a ROC needs both).
    """
    y, s = _check(labels, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes: {n_pos} positives, {n_neg} negatives")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # The last index of each run of equal scores: a tie is one threshold.
    last_of_tie = np.flatnonzero(np.diff(s_sorted) != 0)
    last_of_tie = np.r_[last_of_tie, len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last_of_tie]
    fps = last_of_tie + 1 - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s_sorted[last_of_tie]]
    return fpr, tpr, thresholds


def auroc(labels, scores) -> float:
    """Area under the ROC, ties counting one half: :func:`dhs_spark.gates.auroc_labels` (the one
    AUROC of the project, equal to the trapezoid over this module's tie points) after this
    module's checks of labels and scores. Raises if either class is absent."""
    y, s = _check(labels, scores)
    if y.all() or not y.any():
        raise ValueError(f"AUROC needs both classes: {int(y.sum())} positives, {int((y == 0).sum())} negatives")
    return auroc_labels(y, s)


def tpr_at_fpr(labels, scores, fpr: float) -> float:
    """TPR at false-positive rate ``fpr``, linearly interpolated between ROC points.

    Equal to ``numpy.interp(fpr, f, t)`` with ``f, t, _ = sklearn.metrics.roc_curve(labels,
    scores, drop_intermediate=False)``. Below ``1 / n_negatives`` the value is an interpolation
    inside the first ROC step, not a measurement: see :func:`tpr_at_fpr_report`.
    """
    f, t, _ = roc_curve(labels, scores)
    return float(np.interp(fpr, f, t))


def threshold_at_fpr(labels, scores, fpr: float) -> float:
    """The lowest ROC threshold whose false-positive rate is <= ``fpr`` (+inf if none)."""
    f, _, thr = roc_curve(labels, scores)
    ok = np.flatnonzero(f <= fpr)
    return float(thr[ok[-1]])


def tpr_at_fpr_report(labels, scores, fprs) -> dict:
    """For each target FPR: ``tpr``, ``threshold``, ``n_negatives``, ``n_positives`` and
    ``below_resolution`` (True when there are fewer than 1/fpr negatives, so the target lies
    under one false positive and the TPR is an interpolation, a bound rather than a measure).

    Keys are formatted ``"1e-04"`` so JSON readers see the target exactly.
    """
    y, s = _check(labels, scores)
    n_neg = int((y == 0).sum())
    out = {}
    for target in fprs:
        out[f"{target:.0e}"] = {
            "fpr": float(target),
            "tpr": tpr_at_fpr(y, s, target),
            "threshold": _json_float(threshold_at_fpr(y, s, target)),
            "n_negatives": n_neg,
            "n_positives": int(len(y) - n_neg),
            "below_resolution": bool(n_neg < 1.0 / target),
        }
    return out


def completeness_by_bins(scores, is_positive, values, edges, threshold: float) -> list[dict]:
    """Fraction of positives with score >= ``threshold`` in each bin ``[lo, hi)`` of ``values``.

    ``values`` is a per-sample quantity (theta_E in arcsec, arc SNR, PSF FWHM in arcsec); only
    positives with finite values are binned. Each bin reports ``lo``, ``hi``, ``n`` and
    ``completeness`` (None when the bin is empty).
    """
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(is_positive).astype(bool)
    v = np.asarray(values, dtype=np.float64)
    keep = pos & np.isfinite(v)
    s, v = s[keep], v[keep]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (v >= lo) & (v < hi)
        n = int(in_bin.sum())
        rows.append({"lo": float(lo), "hi": _json_float(hi), "n": n, "completeness": float((s[in_bin] >= threshold).mean()) if n else None})
    return rows


def classification_report(labels, scores, fprs, threshold: float, truth: dict | None = None) -> dict:
    """AUROC, TPR at each FPR target (with resolution flags) and, when ``truth`` gives per-sample
    ``theta_e_arcsec`` / ``arc_snr_sum`` / ``psf_fwhm_r_arcsec`` arrays, completeness in bins at
    ``threshold`` and at the threshold of the first FPR target."""
    y, s = _check(labels, scores)
    report = {"n": int(len(y)), "n_positives": int(y.sum()), "n_negatives": int((y == 0).sum())}
    if report["n_positives"] == 0 or report["n_negatives"] == 0:
        report["auroc"] = None
        report["tpr_at_fpr"] = {}
        return report
    report["auroc"] = auroc(y, s)
    report["tpr_at_fpr"] = tpr_at_fpr_report(y, s, fprs)
    if truth:
        thresholds = {"score_threshold": float(threshold)}
        if fprs:
            thresholds[f"fpr_{fprs[0]:.0e}"] = threshold_at_fpr(y, s, fprs[0])  # +inf: nothing passes
        bins = {"theta_e_arcsec": THETA_E_BINS_ARCSEC, "arc_snr_sum": ARC_SNR_BINS, "psf_fwhm_r_arcsec": PSF_FWHM_R_BINS_ARCSEC}
        report["completeness"] = {
            name: {key: completeness_by_bins(s, y == 1, truth[name], edges, thr) for key, thr in thresholds.items()}
            for name, edges in bins.items()
            if name in truth
        }
    return report
