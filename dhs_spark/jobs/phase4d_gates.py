"""Phase 4d: quality gates on the written stamps; a JSON and a markdown report.

Every check is a :class:`dhs_spark.gates.Gate` (name, value, threshold, pass True / False /
None with a reason, interval, meaning), read from the data, never from ``_SUCCESS``:

- ``counts``: manifest rows = stamps + rejects, every task id exactly once, none unknown.
- ``nonfinite_pixels`` and ``injection_truth``: NaN/inf pixels in any stamp image; injections
  with non-finite or missing truth (magnification, lensed flux, arc SNR).
- ``reject_rate``: rejected / manifest rows <= ``evaluation.max_reject_fraction``, and at least
  one stamp written; the top reject reasons are named (a mistyped ``--coadd-root`` rejects every
  row as ``missing_band``).
- ``cosmos_split``: no COSMOS galaxy (``cosmos_ident``) appears in two splits.
- ``host_only_core`` and ``host_only_full``: the shortcut gates. A logistic regression
  (standardised, :data:`CV_FOLDS`-fold stratified, out-of-fold AUC, the family of the core gate)
  separates injections from controls using only what is NOT the arc: ``image - arc_image`` for
  injections, ``image`` for controls. Features (:func:`stamp_features`): on the central
  :data:`CORE_PIX` x :data:`CORE_PIX` pixels (core), or the whole stamp block-averaged to
  :data:`FULL_GRID` x :data:`FULL_GRID` per band (full; 192 pixel features whatever the stamp
  size, so the fit stays well-posed with a few hundred stamps and fast with 10^5), each plus
  per-band distribution statistics (:data:`SUMMARY_NAMES`). The pixels catch a mean difference
  (host selection, normalisation); the statistics catch what a linear model on pixels cannot: a
  different noise level, or masked (zeroed) patches wherever they fall. The AUC must be
  consistent with 0.5: the gate fails when it exceeds ``evaluation.host_only_auc_max`` (0.55) and
  its Mann-Whitney p-value is below ``evaluation.gate_alpha`` (:func:`dhs_spark.gates.judge_effect`);
  the bootstrap interval is that of the out-of-fold scores (hosts resampled, folds not refit).
  Folds are grouped by host position and the AUC counts each host once per class: replicates
  of a host carry the same host-only image, and split across folds they would let the
  regression recognise hosts (a measured AUC of 0.97 on clean mock stamps with 2 replicates).
- ``core_auc``: the same regression on the raw core pixels (arc included). Informational: it
  measures arc flux landing in the core (PSF wings, small theta_E) plus any shortcut, so it rises
  with arc brightness and cannot tell a visible arc from a leak; ``host_only_*`` can.

Stamp classes: injections are ``label == 1`` rows, controls ``is_control`` rows; null injections
(``is_null_injection``: zero source flux through the injection path, label 0) are left out of the
classifier gates. They are neither arcs nor untouched cutouts from the control path, and the
trainer's null-injection gate compares them with controls at the model level; mixing them into
either class here would only dilute what the gates measure. Stamps written before
``arc_image`` / ``is_null_injection`` existed read as nulls: the host-only gates then say they
cannot be computed and why; nothing crashes.

The stage fails (``passed: false``; the entry point exits 1) when any judged gate fails;
informational gates and gates that could not be computed (reason given) do not fail it.
Pure functions over numpy/pandas compute every gate; :func:`evaluate` is the thin Spark wrapper
that counts, samples and computes the per-stamp features on the executors.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Optional

import numpy as np

from dhs_spark.errors import InputDataError
from dhs_spark.gates import Gate, auroc, auroc_interval, auroc_labels, judge, judge_effect, mann_whitney_p, summarise
from dhs_spark.jobs import paths as P
from dhs_spark.schema import MANIFEST_COLUMNS, REJECT_COLUMNS, STAMP_COLUMNS, decode_image_column, spark_schema

log = logging.getLogger("dhs.jobs.4d")

CORE_PIX = 10
FULL_GRID = 8
THETA_E_BIN_ARCSEC = 0.5
QUANTILES = (0.1, 0.5, 0.9)
CV_FOLDS = 5
TOP_REASONS = 5
MAX_LISTED = 5
MAD_TO_SIGMA = 1.4826  # sigma / MAD of a Gaussian
SUMMARY_NAMES = ("mean", "std", "median", "robust_sigma", "noise_sigma", "q01", "q99", "min", "max", "zero_fraction")
FEATURE_SETS = ("core_raw", "host_core", "host_full")
SHORTCUT_GATES = ("core_auc", "host_only_core", "host_only_full")
FEATURE_CHUNK = 64  # stamps per feature computation (a 3x101x101 float64 copy of 64 stamps is 16 MB)

HOST_ONLY_MEANING = (
    "out-of-fold AUC of a logistic regression separating injections from controls on {what}, the arc removed "
    "(image - arc_image); 0.5 = nothing but the arc tells them apart. A failure means noise, masking, normalisation "
    "or host selection differs between the classes, and a CNN can learn that instead of the arc."
)
CORE_MEANING = (
    "out-of-fold AUC of a logistic regression on the raw central 10x10 pixels (g r z), arc included: arc flux in the core "
    "(PSF wings, small theta_E) plus any shortcut. It rises with arc brightness, so it is information, not a gate; "
    "host_only_core is the shortcut gate."
)


# ---------------------------------------------------------------- per-stamp features (executors)


def core_indices(stamp_size: int, n_bands: int = 3, core: int = CORE_PIX) -> list[int]:
    """Flat (C, H, W) indices of the central ``core`` x ``core`` pixels of every band.

    The core spans rows/columns N//2 - core//2 .. N//2 + core//2 - 1, so it holds the host pixel
    (N//2, N//2).
    """
    lo = stamp_size // 2 - core // 2
    return [c * stamp_size * stamp_size + y * stamp_size + x for c in range(n_bands) for y in range(lo, lo + core) for x in range(lo, lo + core)]


def central_core(images: np.ndarray, core: int = CORE_PIX) -> np.ndarray:
    """The (N, C, core, core) central pixels of (N, C, H, W) images (same pixels as :func:`core_indices`)."""
    h, w = images.shape[-2:]
    y0, x0 = h // 2 - core // 2, w // 2 - core // 2
    return images[..., y0 : y0 + core, x0 : x0 + core]


def block_means(images: np.ndarray, grid: int = FULL_GRID) -> np.ndarray:
    """(N, C * grid * grid) means of (N, C, H, W) images over a grid x grid tiling of each band
    (tile edges at round(k H / grid), so any stamp size works)."""
    n, c, h, w = images.shape
    ey, ex = np.linspace(0, h, grid + 1).astype(int), np.linspace(0, w, grid + 1).astype(int)
    sums = np.add.reduceat(np.add.reduceat(images.astype(np.float64), ey[:-1], axis=2), ex[:-1], axis=3)
    return (sums / np.outer(np.diff(ey), np.diff(ex))).reshape(n, -1)


def band_summaries(images: np.ndarray) -> np.ndarray:
    """(N, C * len(SUMMARY_NAMES)) per-band statistics of (N, C, H, W) images, in the order of
    :data:`SUMMARY_NAMES`: mean, std, median, robust sigma (1.4826 MAD), noise sigma (robust sigma
    of horizontal neighbour differences / sqrt 2, insensitive to the smooth host), 1st and 99th
    percentiles, min, max, and the fraction of pixels exactly 0 (masked / no-data pixels)."""
    n, c = images.shape[:2]
    x = images.reshape(n, c, -1).astype(np.float64)
    q01, med, q99 = np.quantile(x, (0.01, 0.5, 0.99), axis=2)
    robust = MAD_TO_SIGMA * np.median(np.abs(x - med[..., None]), axis=2)
    d = (images[..., :, 1:].astype(np.float64) - images[..., :, :-1]).reshape(n, c, -1)
    noise = MAD_TO_SIGMA * np.median(np.abs(d - np.median(d, axis=2)[..., None]), axis=2) / math.sqrt(2.0)
    stats = [x.mean(axis=2), x.std(axis=2), med, robust, noise, q01, q99, x.min(axis=2), x.max(axis=2), (x == 0).mean(axis=2)]
    return np.stack(stats, axis=2).reshape(n, -1)


def stamp_features(images: np.ndarray, arc_images: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """The features of the classifier gates, per stamp, from (N, C, H, W) images (nanomaggies) and
    the arcs they hold (``arc_images``, zeros for controls and where unknown; None = all zeros).

    Returns ``core_raw`` (N, C*100: raw core pixels), ``host_core`` (core pixels of image - arc
    plus their :func:`band_summaries`), ``host_full`` (:func:`block_means` of image - arc plus
    summaries over the whole stamp), and ``finite`` (N,) bool: no NaN/inf in image or arc (the
    features of other rows are not meaningful).
    """
    images = np.asarray(images)
    arcs = np.zeros_like(images) if arc_images is None else np.asarray(arc_images)
    if arcs.shape != images.shape:
        raise ValueError(f"arc_images shape {arcs.shape} differs from the images' {images.shape}")
    if len(images) > FEATURE_CHUNK:  # bounded float64 temporaries on the executors
        parts = [stamp_features(images[i : i + FEATURE_CHUNK], arcs[i : i + FEATURE_CHUNK]) for i in range(0, len(images), FEATURE_CHUNK)]
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    finite = np.isfinite(images).all(axis=(1, 2, 3)) & np.isfinite(arcs).all(axis=(1, 2, 3))
    host = np.where(finite[:, None, None, None], images.astype(np.float64) - arcs, 0.0)
    core = central_core(host)
    return {
        "core_raw": central_core(np.where(finite[:, None, None, None], images, 0.0)).reshape(len(images), -1).astype(np.float64),
        "host_core": np.hstack([core.reshape(len(images), -1), band_summaries(core)]),
        "host_full": np.hstack([block_means(host), band_summaries(host)]),
        "finite": finite,
    }


# ---------------------------------------------------------------- gates (driver, pure)


def stamp_kinds(label, is_control, is_null_injection=None) -> np.ndarray:
    """'injection' (label 1), 'control' (is_control), 'null_injection', or 'other' per row;
    ``is_null_injection`` None or null entries count as False (stamps that predate the column)."""
    import pandas as pd

    label = np.asarray(label)
    ctrl = np.asarray(is_control, dtype=bool)
    null = np.zeros(len(label), bool) if is_null_injection is None else pd.array(list(is_null_injection), dtype="boolean").fillna(False).to_numpy(bool)
    kinds = np.full(len(label), "other", dtype=object)
    kinds[ctrl] = "control"
    kinds[(label == 1) & ~ctrl] = "injection"
    kinds[null] = "null_injection"
    return kinds


def oof_scores(features: np.ndarray, labels: np.ndarray, seed: int = 0, groups=None) -> Optional[np.ndarray]:
    """Out-of-fold decision values of a standardised logistic regression (stratified
    :data:`CV_FOLDS`-fold, shuffled with ``seed``); None without :data:`CV_FOLDS` groups per class.

    ``groups`` (one key per row, e.g. the host position): rows of one group share a fold
    (``StratifiedGroupKFold``). Replicates of a host have the same host-only image; split across
    folds, they would let the regression recognise the host instead of finding a shortcut.
    None: every row is its own group.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    groups = np.arange(len(labels)) if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].ravel()
    if min(len(np.unique(groups[labels == 1])), len(np.unique(groups[labels == 0]))) < CV_FOLDS:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    unique = len(np.unique(groups)) == len(groups)
    folds = (StratifiedKFold if unique else StratifiedGroupKFold)(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    return cross_val_predict(model, np.asarray(features, np.float64), labels, groups=None if unique else groups, cv=folds, method="decision_function")


def per_group_scores(scores: np.ndarray, labels: np.ndarray, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) scores with one value per (group, label): the mean over the group's
    rows of that label, so that a host written several times counts once in the AUC, its
    interval and its p-value."""
    labels = np.asarray(labels).astype(int)
    if groups is None:
        return scores[labels == 1], scores[labels == 0]
    import pandas as pd

    means = pd.DataFrame({"g": np.asarray(groups, dtype=str), "y": labels, "s": scores}).groupby(["g", "y"])["s"].mean().reset_index()
    return means.loc[means.y == 1, "s"].to_numpy(), means.loc[means.y == 0, "s"].to_numpy()


def core_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:  # used by tests/jobs/test_pipeline_units.py
    """Out-of-fold AUC (:func:`dhs_spark.gates.auroc`) of :func:`oof_scores`; None without
    :data:`CV_FOLDS` rows per class."""
    scores = oof_scores(features, labels, seed)
    return None if scores is None else auroc_labels(np.asarray(labels).astype(int), scores)


def _class_rows(kinds: np.ndarray, finite: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    keep = np.isin(kinds, ("injection", "control")) & finite
    y = (kinds[keep] == "injection").astype(int)
    counts = {"n_injections": int(y.sum()), "n_controls": int((1 - y).sum()), "n_nonfinite_left_out": int((np.isin(kinds, ("injection", "control")) & ~finite).sum()),
              "n_null_injections_left_out": int((kinds == "null_injection").sum())}  # fmt: skip
    return keep, y, counts


def classifier_gate(name: str, features: np.ndarray, y: np.ndarray, threshold: float, alpha: float, seed: int, n_bootstrap: int, meaning: str,
                    details: dict, informational: bool = False, groups=None) -> Gate:  # fmt: skip
    """Out-of-fold AUC of ``features`` for labels ``y`` (1 injection, 0 control) as a Gate:
    judged by :func:`dhs_spark.gates.judge_effect` (AUC above ``threshold`` and Mann-Whitney
    p < ``alpha`` fails), or informational. ``groups``: see :func:`oof_scores` and
    :func:`per_group_scores`."""
    details = dict(details, n_features=int(features.shape[1]) if features.ndim == 2 else 0, cv_folds=CV_FOLDS)
    scores = oof_scores(features, y, seed, groups) if len(y) else None
    if scores is None:
        why = (f"needs >= {CV_FOLDS} injections and >= {CV_FOLDS} controls on distinct hosts with finite pixels (have {details['n_injections']} "
               f"and {details['n_controls']} stamps): write more stamps or raise --gate-max-rows")  # fmt: skip
        if informational:
            return Gate(name, None, threshold, "info", None, why, None, meaning, details)
        return judge_effect(name, None, threshold, None, alpha, reason_if_missing=why, meaning=meaning, details=details)
    pos, neg = per_group_scores(scores, y, groups)
    details.update(n_host_injections=int(len(pos)), n_host_controls=int(len(neg)))
    auc = auroc(pos, neg)
    interval = auroc_interval(pos, neg, n_bootstrap=n_bootstrap, seed=seed)
    if informational:
        return judge(name, auc, threshold, "info", interval=interval, meaning=meaning, details=details)
    return judge_effect(name, auc, threshold, mann_whitney_p(pos, neg), alpha, interval=interval, meaning=meaning, details=details)


def shortcut_gates(features: dict[str, np.ndarray], kinds: np.ndarray, has_arc: np.ndarray, *, host_only_auc_max: float, core_auc_max: float,
                   alpha: float, seed: int, n_bootstrap: int, hosts=None) -> list[Gate]:  # fmt: skip
    """``core_auc`` (info), ``host_only_core`` and ``host_only_full`` from :func:`stamp_features`
    of the sampled stamps, their :func:`stamp_kinds`, whether each holds an ``arc_image``, and
    ``hosts`` (a key per stamp, e.g. its position; None = all distinct): see :func:`oof_scores`."""
    keep, y, counts = _class_rows(kinds, np.asarray(features["finite"], bool))
    groups = None if hosts is None else np.asarray(hosts, dtype=str)[keep]
    gates = [classifier_gate("core_auc", features["core_raw"][keep], y, core_auc_max, alpha, seed, n_bootstrap, CORE_MEANING,
                             dict(counts, feature=f"central {CORE_PIX}x{CORE_PIX} pixels, g r z, arc included"), informational=True, groups=groups)]  # fmt: skip
    no_arc = int(((kinds == "injection") & ~np.asarray(has_arc, bool)).sum())
    for name, key, what in (("host_only_core", "host_core", f"the central {CORE_PIX}x{CORE_PIX} pixels and their per-band statistics"),
                            ("host_only_full", "host_full", f"the whole stamp ({FULL_GRID}x{FULL_GRID} block means per band) and its per-band statistics")):  # fmt: skip
        meaning = HOST_ONLY_MEANING.format(what=what)
        if no_arc:
            why = (f"{no_arc} of {int((kinds == 'injection').sum())} sampled injections have no arc_image (stamps written before the column "
                   "existed, or 4c ran without writing it): rerun 4c to get the arc of every injection")  # fmt: skip
            gates.append(judge_effect(name, None, host_only_auc_max, None, alpha, reason_if_missing=why, meaning=meaning, details=counts))
            continue
        gates.append(classifier_gate(name, features[key][keep], y, host_only_auc_max, alpha, seed, n_bootstrap, meaning, counts, groups=groups))
    return gates


def reject_rate_gate(n_manifest: int, n_stamps: int, reject_reasons: dict[str, int], max_fraction: float) -> Gate:
    """Rejected / manifest rows against ``max_fraction``; fails also when no stamp was written.
    ``details['top_reasons']`` lists the :data:`TOP_REASONS` commonest reasons."""
    n_rejects = int(sum(reject_reasons.values()))
    top = sorted(reject_reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
    details = {"n_manifest": int(n_manifest), "n_stamps": int(n_stamps), "n_rejects": n_rejects,
               "top_reasons": [{"reason": r, "rows": int(n), "fraction": n / n_manifest if n_manifest else None} for r, n in top]}  # fmt: skip
    meaning = ("rejected / manifest rows. Rejects are rows 4c could not turn into a stamp (bad input, masking, PSF); many of them mean "
               "a wrong input path, a damaged survey area, or selection rules that shape the training set unseen")  # fmt: skip
    named = ", ".join(f"{r} ({n})" for r, n in top) or "none"
    if n_manifest == 0:
        return Gate("reject_rate", None, max_fraction, "max", False, "the manifest is empty: no stamp was written (check 4a's inputs)", None, meaning, details)
    gate = judge("reject_rate", n_rejects / n_manifest, max_fraction, "max", meaning=meaning, details=details)
    if n_stamps == 0:
        gate.passed = False
        gate.reason = f"no stamp was written: all {n_manifest} rows rejected; top reasons {named} (a wrong --coadd-root rejects every row as missing_band)"
    elif gate.passed is False:
        gate.reason = f"{n_rejects} of {n_manifest} rows rejected; top reasons {named}"
    return gate


def cosmos_split_gate(cosmos_ident, split) -> Gate:
    """Number of COSMOS galaxies found in more than one split (must be 0); a few are listed."""
    import pandas as pd

    pairs = pd.DataFrame({"cosmos_ident": list(cosmos_ident), "split": list(split)}).dropna().drop_duplicates()
    per = pairs.groupby("cosmos_ident")["split"].agg(lambda s: sorted(set(s)))
    shared = per[per.map(len) > 1]
    details = {"n_cosmos_idents": int(len(per)), "examples": [{"cosmos_ident": str(k), "splits": v} for k, v in shared.head(MAX_LISTED).items()]}
    meaning = ("COSMOS source galaxies used in more than one split: the same galaxy in train and test makes the test metrics "
               "optimistic. 4c must draw each split's sources only from that split's galaxies")  # fmt: skip
    if not len(per):
        details["note"] = "no stamp has a cosmos_ident (parametric sources): no source galaxy can be shared"
    gate = judge("cosmos_split", float(len(shared)), 0.0, "max", meaning=meaning, details=details)
    if gate.passed is False:
        gate.reason = f"{len(shared)} galaxies in two or more splits, e.g. " + ", ".join(f"{e['cosmos_ident']} {'/'.join(e['splits'])}" for e in details["examples"])
    return gate


def counts_gate(n_manifest: int, n_stamps: int, n_rejects: int, n_distinct: int, n_unknown: int) -> Gate:
    """Task ids out of place (must be 0): manifest rows without an output, outputs written twice,
    and outputs whose task id is not in the manifest."""
    missing = max(n_manifest - n_distinct, 0)
    duplicated = n_stamps + n_rejects - n_distinct
    details = {"manifest": n_manifest, "stamps": n_stamps, "rejects": n_rejects, "distinct_tasks": n_distinct, "unknown_tasks": n_unknown,
               "missing": missing, "duplicated": duplicated}  # fmt: skip
    gate = judge("counts", float(missing + duplicated + n_unknown), 0.0, "max", details=details,
                 meaning="task ids out of place: manifest rows with no stamp or reject, outputs written twice, outputs not in the manifest")  # fmt: skip
    if gate.passed is False:
        gate.reason = f"manifest {n_manifest} != stamps {n_stamps} + rejects {n_rejects} (distinct {n_distinct}, unknown {n_unknown}): a lost or duplicated file"
    return gate


def nonfinite_gates(n_pixels: int, n_nan_truth: int, n_missing_truth: int) -> list[Gate]:
    """``nonfinite_pixels`` and ``injection_truth`` (both must be 0)."""
    px = judge("nonfinite_pixels", float(n_pixels), 0.0, "max", meaning="NaN/inf pixels in written stamps (4c must reject them)")
    truth = judge("injection_truth", float(n_nan_truth + n_missing_truth), 0.0, "max", details={"nan": n_nan_truth, "missing": n_missing_truth},
                  meaning="injections whose truth (magnification, lensed flux, arc SNR) is NaN or missing")  # fmt: skip
    return [px, truth]


def failure_lines(gates: list[Gate]) -> list[str]:
    """One line per failed gate: name, value, threshold and why."""
    out = []
    for g in gates:
        if g.passed is False:
            value = "n/a" if g.value is None else f"{g.value:.4g}"
            out.append(f"{g.name}: {value} vs {g.threshold:g}" + (f" ({g.reason})" if g.reason else f" ({g.meaning})"))
    return out


# ---------------------------------------------------------------- Spark wrapper


def _decoded(batch) -> np.ndarray:
    """The (N, C, H, W) images of an Arrow batch holding image, n_bands and stamp_size."""
    return decode_image_column(batch.column("image"), batch.column("n_bands").to_numpy(), batch.column("stamp_size").to_numpy(), "4d stamps")


def _decoded_arcs(batch, shape) -> tuple[np.ndarray, np.ndarray]:
    """(arcs (N, C, H, W) with zeros where arc_image is null, has_arc (N,) bool)."""
    col = batch.column("arc_image")
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    arcs = np.zeros(shape, np.float32)
    if valid.any():
        import pyarrow as pa

        mask = pa.array(valid)
        arcs[valid] = decode_image_column(col.filter(mask), batch.column("n_bands").filter(mask).to_numpy(), batch.column("stamp_size").filter(mask).to_numpy(), "4d arc_image")
    return arcs, valid


def _nonfinite_pixels(batches):
    """mapInArrow: each batch of stamps -> one row, its count of NaN/inf pixels."""
    import pyarrow as pa

    for batch in batches:
        yield pa.RecordBatch.from_pydict({"n": pa.array([int((~np.isfinite(_decoded(batch))).sum())], pa.int64())})


FEATURE_SCHEMA = "task_id string, host string, label int, is_control boolean, is_null_injection boolean, has_arc boolean, finite boolean, " + ", ".join(
    f"{k} array<float>" for k in FEATURE_SETS
)


def _features(batches):
    """mapInArrow: stamps -> (task_id, label, is_control, is_null_injection, has_arc, finite, features)."""
    import pyarrow as pa

    for batch in batches:
        images = _decoded(batch)
        arcs, has_arc = _decoded_arcs(batch, images.shape)
        feats = stamp_features(images, arcs)
        cols = [batch.column(k) for k in ("task_id", "host", "label", "is_control", "is_null_injection")] + [pa.array(has_arc), pa.array(feats["finite"])]
        for k in FEATURE_SETS:
            f = feats[k].astype(np.float32)
            cols.append(pa.ListArray.from_arrays(pa.array(np.arange(len(f) + 1, dtype=np.int32) * f.shape[1]), pa.array(f.ravel())))
        yield pa.RecordBatch.from_arrays(cols, ["task_id", "host", "label", "is_control", "is_null_injection", "has_arc", "finite", *FEATURE_SETS])


#: Injections and controls (each, chosen by task-id hash) measured with
#: :func:`dhs_spark.realism.measure_arc` for the report's realism table: ~60 ms per 64-px stamp,
#: so ~30 CPU seconds per class, whatever the run's size.
REALISM_MAX_STAMPS = 500
REALISM_SCHEMA = ("task_id string, kind string, reject_reason string, arc_snr double, g_r double, r_z double, g_r_ok boolean, r_z_ok boolean, "
                  "host_g_r double, source_color_g_r double, source_color_r_z double")  # fmt: skip


def _arc_measurements(batches):
    """mapInArrow: stamps -> :func:`dhs_spark.realism.measure_set` (default annulus, MAD noise: as
    ``dhs realism arcs`` measures stamps), one row per stamp with its measurement or reject reason."""
    import pyarrow as pa

    from dhs_spark.realism import measure_set

    schema = pa.schema([(name, {"string": pa.string(), "double": pa.float64(), "boolean": pa.bool_()}[kind])
                        for name, kind in (field.split() for field in REALISM_SCHEMA.split(", "))])  # fmt: skip
    for batch in batches:
        meta = batch.select(["task_id", "kind", "source_color_g_r", "source_color_r_z"]).to_pandas()
        rows = measure_set(_decoded(batch), meta, "").reindex(columns=schema.names)
        rows[["g_r_ok", "r_z_ok"]] = rows[["g_r_ok", "r_z_ok"]].fillna(False).astype(bool)  # rejected stamps: not measured
        yield pa.RecordBatch.from_pandas(rows, schema=schema, preserve_index=False)


def realism_sets(stamps, by_split: dict, real_cutouts: Optional[str], stamp_size: int) -> dict:
    """Arc visibility and host-subtracted colours (:func:`dhs_spark.realism.summarise_arcs`) of up
    to :data:`REALISM_MAX_STAMPS` injections and controls, and of the real lens cutouts in
    ``real_cutouts`` (an ``.npz`` directory, cropped to ``stamp_size``) when given: the numbers of
    ``dhs realism arcs`` and of the demo report, side by side in the 4d report."""
    import pandas as pd
    from pyspark.sql import functions as F

    from dhs_spark.realism import SET_CONTROLS, SET_DR10, SET_INJECTED, load_cutout_dir, measure_set, summarise_arcs

    n = {k: sum(v for key, v in by_split.items() if key.endswith("/" + k)) for k in ("injection", "control")}
    u = F.conv(F.substring("task_id", 9, 8), 16, 10).cast("double") / float(2**32)
    kind = F.when(F.col("is_control"), SET_CONTROLS).otherwise(SET_INJECTED).alias("kind")
    picked = stamps.filter(~F.col("is_null_injection") & (F.col("is_control") | (F.col("label") == 1))).filter(
        F.when(F.col("is_control"), u < REALISM_MAX_STAMPS / max(n["control"], 1)).otherwise(u < REALISM_MAX_STAMPS / max(n["injection"], 1)))
    cols = ["task_id", kind, "source_color_g_r", "source_color_r_z", "image", "n_bands", "stamp_size"]
    # sorted here, not by Spark: an orderBy samples its input first, which would run the measurement twice
    rows = picked.select(*cols).mapInArrow(_arc_measurements, REALISM_SCHEMA).toPandas().sort_values("task_id", kind="stable").reset_index(drop=True)
    sets = {}
    if real_cutouts:
        images, invvars, meta = load_cutout_dir(real_cutouts, stamp_size)
        real = measure_set(images, meta, SET_DR10, invvars=invvars)
        sets[SET_DR10] = summarise_arcs(real[real["reject_reason"] == ""])
    ok = rows[rows["reject_reason"] == ""]
    for name in (SET_INJECTED, SET_CONTROLS):
        sets[name] = summarise_arcs(ok[ok["kind"] == name].reset_index(drop=True))
    return {"sets": sets, "real_cutouts": real_cutouts, "max_stamps_per_set": REALISM_MAX_STAMPS,
            "rejected": pd.Series(rows.loc[rows["reject_reason"] != "", "kind"]).value_counts().to_dict()}  # fmt: skip


def lens_population(theta_e_arcsec, host_abs_mag_r) -> dict:
    """theta_E of the injections (arcsec): median, 10-90%, the fraction above 2.5", and its
    Spearman rank correlation with host luminosity (-M_r, so positive means brighter hosts get
    larger Einstein radii; over rows with a host magnitude: uniform-prior rows have none)."""
    import pandas as pd

    te = pd.Series(np.asarray(theta_e_arcsec, dtype=np.float64))
    lum = -pd.Series(np.asarray(host_abs_mag_r, dtype=np.float64))
    both = te.notna() & lum.notna()
    known = te.dropna()
    if not len(known):
        return {"n": 0}
    return {"n": len(known), "theta_e_median_arcsec": float(known.median()),
            "theta_e_p10_p90_arcsec": [float(known.quantile(0.1)), float(known.quantile(0.9))],
            "fraction_above_2p5_arcsec": float((known > 2.5).mean()), "n_with_host_abs_mag": int(both.sum()),
            "spearman_theta_e_vs_host_luminosity": float(te[both].corr(lum[both], method="spearman")) if both.sum() > 2 else None}  # fmt: skip


def _stamps_marker(spark, paths):
    marker = P.read_marker(spark, paths.stage_dir("4c"))
    if marker is None:
        raise InputDataError(f"4d: no complete stamps at {paths.stage_dir('4c')} (run stage 4c first)")
    return marker


def evaluate(spark, cfg, paths: P.ExperimentPaths, max_rows: int, real_cutouts: Optional[str] = None) -> dict:
    """The gate report (a JSON-able dict; ``passed`` and ``failures`` summarise ``gates``);
    ``realism`` (:func:`realism_sets`) with the real cutouts of ``real_cutouts`` when given."""
    from pyspark.sql import functions as F

    ev = cfg.evaluation
    seed = int(cfg.seeds.global_seed)
    stamps_marker = _stamps_marker(spark, paths)
    manifest = spark.read.schema(spark_schema(MANIFEST_COLUMNS)).parquet(paths.manifest)
    stamps = spark.read.schema(spark_schema(STAMP_COLUMNS)).parquet(paths.stamps)
    stamps = stamps.withColumn("is_null_injection", F.coalesce(F.col("is_null_injection"), F.lit(False)))  # null in stamps that predate the column
    rejects = spark.read.schema(spark_schema(REJECT_COLUMNS)).parquet(paths.rejects)

    kind = F.when(F.col("is_null_injection"), "null_injection").when(F.col("is_control"), "control").when(F.col("label") == 1, "injection").otherwise("other")
    by_split = {f"{r['split']}/{r['kind']}": int(r["count"]) for r in stamps.groupBy("split", kind.alias("kind")).count().collect()}
    reasons = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}
    n_manifest = manifest.count()
    n_stamps = sum(by_split.values())
    n_rejects = sum(reasons.values())
    ids = stamps.select("task_id").union(rejects.select("task_id"))
    n_distinct = ids.distinct().count()
    n_unknown = ids.join(manifest.select("task_id"), "task_id", "left_anti").count()

    image_cols = ["image", "n_bands", "stamp_size"]
    nonfinite_pixels = stamps.select(*image_cols).mapInArrow(_nonfinite_pixels, "n long").agg(F.sum("n").alias("n")).first()["n"] or 0
    truth_cols = ["magnification", "arc_snr_sum", "arc_snr_peak"] + [f"lensed_flux_{b}_nmgy" for b in "grz"]
    injections = stamps.filter((F.col("label") == 1) & ~F.col("is_null_injection"))
    truth = injections.agg(
        F.sum(F.greatest(*[F.isnan(F.col(c)).cast("int") for c in truth_cols])).alias("nan"),
        F.sum(F.greatest(*[F.col(c).isNull().cast("int") for c in truth_cols])).alias("missing"),
    ).first()
    bad_truth, null_truth = int(truth["nan"] or 0), int(truth["missing"] or 0)

    cosmos = stamps.filter(F.col("cosmos_ident").isNotNull()).select("cosmos_ident", "split").distinct().toPandas()

    bins = []
    binned = injections.withColumn("theta_e_bin", F.floor(F.col("theta_e_arcsec") / THETA_E_BIN_ARCSEC) * THETA_E_BIN_ARCSEC)
    q = list(QUANTILES)
    agg = binned.groupBy("theta_e_bin").agg(
        F.count("*").alias("n"),
        F.percentile_approx("arc_snr_sum", q, 10000).alias("snr"),
        F.percentile_approx("magnification", q, 10000).alias("mu"),
    )
    for r in agg.orderBy("theta_e_bin").collect():
        bins.append(
            {
                "theta_e_lo_arcsec": float(r["theta_e_bin"]),
                "theta_e_hi_arcsec": float(r["theta_e_bin"]) + THETA_E_BIN_ARCSEC,
                "n": int(r["n"]),
                "arc_snr_sum_q10_q50_q90": [float(v) for v in r["snr"]],
                "magnification_q10_q50_q90": [float(v) for v in r["mu"]],
            }
        )

    frac = min(1.0, max_rows / max(n_stamps, 1))
    sample = stamps.filter(F.conv(F.substring("task_id", 1, 8), 16, 10).cast("double") / float(2**32) < frac)
    # replicates of a host share a CV fold; a row without a position is its own host
    host = F.when(F.col("ra").isNull() | F.col("dec").isNull(), F.col("task_id")).otherwise(F.format_string("%.7f %.7f", "ra", "dec")).alias("host")
    cols = ["task_id", host, "label", "is_control", "is_null_injection", "arc_image", *image_cols]
    # sorted here, not by Spark: an orderBy samples its input first, which would compute the features twice
    df = sample.select(*cols).mapInArrow(_features, FEATURE_SCHEMA).toPandas().sort_values("task_id", kind="stable").reset_index(drop=True)
    feats = {k: np.stack(df[k].to_numpy()).astype(np.float64) if len(df) else np.zeros((0, 1)) for k in FEATURE_SETS}
    feats["finite"] = df["finite"].to_numpy(bool)
    kinds = stamp_kinds(df["label"].to_numpy(), df["is_control"].to_numpy(bool), df["is_null_injection"].to_numpy())

    gates = [counts_gate(n_manifest, n_stamps, n_rejects, n_distinct, n_unknown), *nonfinite_gates(int(nonfinite_pixels), bad_truth, null_truth),
             reject_rate_gate(n_manifest, n_stamps, reasons, float(ev.max_reject_fraction)),
             cosmos_split_gate(cosmos["cosmos_ident"], cosmos["split"]),
             *shortcut_gates(feats, kinds, df["has_arc"].to_numpy(bool), host_only_auc_max=float(ev.host_only_auc_max), core_auc_max=float(ev.core_auc_max),
                             alpha=float(ev.gate_alpha), seed=seed, n_bootstrap=int(ev.n_bootstrap), hosts=df["host"].to_numpy())]  # fmt: skip
    report = report_dict(cfg.experiment_id, stamps_marker["run_id"], gates, by_split, reasons, bins)
    lenses = injections.select("theta_e_arcsec", "host_abs_mag_r").toPandas()
    report["lens_population"] = lens_population(lenses["theta_e_arcsec"], lenses["host_abs_mag_r"])
    report["realism"] = realism_sets(stamps, by_split, real_cutouts, int(cfg.data.stamp_size))
    return report


def report_dict(experiment_id: str, stamps_run_id: str, gates: list[Gate], by_split: dict, reasons: dict, bins: list) -> dict:
    """The report: ``gates`` (:func:`dhs_spark.gates.summarise`), ``passed`` / ``failures``, and the
    views other code reads (``counts``, ``nonfinite``, ``shortcut_gate``: the core AUC)."""
    g = {x.name: x for x in gates}
    summary = summarise(gates)
    c, core = g["counts"].details, g["core_auc"]
    return {
        "experiment_id": experiment_id,
        "stamps_run_id": stamps_run_id,
        "passed": summary["all_passed"],
        "failures": failure_lines(gates),
        "gates": summary,
        "counts": {
            **{k: c[k] for k in ("manifest", "stamps", "rejects", "distinct_tasks", "unknown_tasks")},
            "reconciled": bool(g["counts"].passed),
            "stamps_by_split": dict(sorted(by_split.items())),
            "reject_reasons": dict(sorted(reasons.items())),
        },
        "nonfinite": {"pixels": int(g["nonfinite_pixels"].value), "injections_nan_truth": g["injection_truth"].details["nan"],
                      "injections_missing_truth": g["injection_truth"].details["missing"]},  # fmt: skip
        "theta_e_bins": bins,
        "shortcut_gate": {
            "feature": core.details["feature"],
            "n_rows": core.details["n_injections"] + core.details["n_controls"],
            "n_injections": core.details["n_injections"],
            "auc": core.value,
            "core_auc_max": core.threshold,
            "passed": None,
            "note": core.reason if core.value is None else "informational: " + CORE_MEANING,
        },
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _verdict(g: dict) -> str:
    if g["direction"] == "info":
        return "info"
    if g["pass"] is None:
        return "n/a"
    return "pass" if g["pass"] else "**FAIL**"


def markdown(report: dict) -> str:
    c = report["counts"]
    gates = report["gates"]["gates"]
    rows = {"data": [], "shortcut": []}
    for name, g in gates.items():
        interval = "" if not g.get("interval") else f"[{_fmt(g['interval'][0])}, {_fmt(g['interval'][1])}]"
        side = {"max": "<=", "min": ">=", "info": "ref."}[g["direction"]]
        note = g["reason"] if g["reason"] and g["direction"] != "info" else g["meaning"]
        if g["details"].get("resolved") is False and g["pass"] is True:
            note = "unresolved: the interval reaches above the threshold (more stamps needed). " + note
        rows["shortcut" if name in SHORTCUT_GATES else "data"].append(f"| {name} | {_fmt(g['value'])} | {interval} | {side} {_fmt(g['threshold'])} | {_verdict(g)} | {note} |")
    header = ["| gate | value | 95% interval | threshold | verdict | meaning / reason |", "|---|---|---|---|---|---|"]
    lines = [
        f"# Phase 4d quality gates: {report['experiment_id']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**" + ("" if report["passed"] else ": " + "; ".join(report["failures"])),
        "",
        "## Data gates",
        "",
        *header,
        *rows["data"],
        "",
        "## Shortcut gates (host-only logistic regressions; core AUC for information)",
        "",
        *header,
        *rows["shortcut"],
        "",
        "host_only_* fail only when the AUC exceeds its threshold and its Mann-Whitney p-value is below evaluation.gate_alpha; "
        "core_auc is information (arc flux in the core plus any shortcut).",
        "",
        "## Counts",
        "",
        "| manifest | stamps | rejects | distinct tasks | reconciled |",
        "|---|---|---|---|---|",
        f"| {c['manifest']} | {c['stamps']} | {c['rejects']} | {c['distinct_tasks']} | {c['reconciled']} |",
        "",
        "| split / kind | stamps |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in c["stamps_by_split"].items()],
        "",
        "| reject reason | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in c["reject_reasons"].items()],
        "",
        "## Injections by theta_E bin",
        "",
        "| theta_E (arcsec) | n | arc SNR q10 / q50 / q90 | magnification q10 / q50 / q90 |",
        "|---|---|---|---|",
        *[
            f"| {b['theta_e_lo_arcsec']:.2f}-{b['theta_e_hi_arcsec']:.2f} | {b['n']} | "
            f"{' / '.join(_fmt(v) for v in b['arc_snr_sum_q10_q50_q90'])} | {' / '.join(_fmt(v) for v in b['magnification_q10_q50_q90'])} |"
            for b in report["theta_e_bins"]
        ],
        "",
    ]
    pop = report.get("lens_population") or {}
    if pop.get("n"):
        lines += ["## Lens population (injections)", "",
                  f"theta_E median {_fmt(pop['theta_e_median_arcsec'])}\" (10-90%: {' - '.join(_fmt(v) for v in pop['theta_e_p10_p90_arcsec'])}\"), "
                  f"{_fmt(100 * pop['fraction_above_2p5_arcsec'])}% above 2.5\"; Spearman correlation with host luminosity (-M_r) "
                  f"{_fmt(pop['spearman_theta_e_vs_host_luminosity'])} over {pop['n_with_host_abs_mag']} of {pop['n']} injections.", ""]  # fmt: skip
    if report.get("realism"):
        lines += realism_markdown(report["realism"])
    return "\n".join(lines)


def realism_markdown(realism: dict) -> list[str]:
    def stat(d: dict) -> str:
        return "n/a" if not d or not d.get("n") else f"{_fmt(d['median'])} ({_fmt(d['p10'])} - {_fmt(d['p90'])})"

    rows = [f"| {name} | {d['n']} | {stat(d.get('arc_snr'))} | {_fmt(d.get('fraction_below_5'))} | {stat(d.get('g_r'))} | {stat(d.get('r_z'))} |"
            for name, d in realism["sets"].items()]  # fmt: skip
    return [
        "## Arc visibility and colours, real and injected (dhs_spark.realism.measure_arc)",
        "",
        f"Up to {realism['max_stamps_per_set']} stamps per set; real cutouts: {realism['real_cutouts'] or 'none given (--real-cutouts)'}. "
        "Median (10% - 90%); colours host-subtracted, where the arc is detected (the estimator reads ~0.1 mag red).",
        "",
        "| set | n | arc visibility SNR | fraction below 5 | g-r | r-z |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def produce(spark, cfg, paths: P.ExperimentPaths, inputs, opts, staging: str) -> dict:
    report = evaluate(spark, cfg, paths, opts.gate_max_rows, opts.real_cutouts)
    P.write_text(spark, P.join(staging, "gates.json"), json.dumps(report, indent=2, sort_keys=True))
    P.write_text(spark, P.join(staging, "gates.md"), markdown(report))
    host = {k: report["gates"]["gates"][k]["value"] for k in ("host_only_core", "host_only_full")}
    log.info("4d gates: passed=%s failures=%s host-only AUC=%s core AUC (info)=%s", report["passed"], report["failures"], host, report["shortcut_gate"]["auc"])
    return report


def verify(spark, cfg, paths: P.ExperimentPaths, marker: dict) -> bool:
    """Whether the committed report was made from the current stamps."""
    current = P.read_marker(spark, paths.stage_dir("4c"))
    return current is not None and current.get("run_id") == marker.get("stamps_run_id") and P.exists(spark, paths.gates_json)
