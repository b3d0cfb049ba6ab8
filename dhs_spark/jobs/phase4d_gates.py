"""Phase 4d: quality gates on the written stamps; a JSON and a markdown report.

Checks, read from the data (never from ``_SUCCESS``):

- counts: manifest rows = stamps + rejects, every task id exactly once; rejects by reason;
  stamps by split and label.
- non-finite values: NaN/inf pixels in any stamp image, and non-finite truth (magnification,
  lensed flux, arc SNR) among injections.
- truth distributions by theta_E bin (:data:`THETA_E_BIN_ARCSEC` wide): count, arc SNR (sum)
  and magnification quantiles.
- the shortcut gate (DESIGN.md §4): a logistic regression on the central
  :data:`CORE_PIX` x :data:`CORE_PIX` pixels of the three bands alone (standardised, 5-fold
  stratified cross-validation, out-of-fold ROC AUC), injections vs controls, on at most
  ``--gate-max-rows`` stamps chosen by a hash of the task id. An AUC far above 0.5 means the arc
  leaks into the core and a CNN could learn "bright core" instead of "arc". It is reported
  against ``evaluation.core_auc_max``.

The stage fails (``passed: false``; the entry point exits 1) when a non-finite value appears or
the counts do not reconcile; the shortcut AUC is reported (``shortcut_gate.passed``), not fatal.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from dhs_spark.errors import InputDataError
from dhs_spark.jobs import paths as P
from dhs_spark.schema import MANIFEST_COLUMNS, REJECT_COLUMNS, STAMP_COLUMNS, decode_image_column, spark_schema

log = logging.getLogger("dhs.jobs.4d")

CORE_PIX = 10
THETA_E_BIN_ARCSEC = 0.5
QUANTILES = (0.1, 0.5, 0.9)
CV_FOLDS = 5


def core_indices(stamp_size: int, n_bands: int = 3, core: int = CORE_PIX) -> list[int]:
    """Flat (C, H, W) indices of the central ``core`` x ``core`` pixels of every band.

    The core spans rows/columns N//2 - core//2 .. N//2 + core//2 - 1, so it holds the host pixel
    (N//2, N//2).
    """
    lo = stamp_size // 2 - core // 2
    return [c * stamp_size * stamp_size + y * stamp_size + x for c in range(n_bands) for y in range(lo, lo + core) for x in range(lo, lo + core)]


def core_auc(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float | None:
    """Out-of-fold ROC AUC of a standardised logistic regression; None without 2 classes x folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels).astype(int)
    if min(int(labels.sum()), int((1 - labels).sum())) < CV_FOLDS:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=seed)
    scores = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(labels, scores))


def _decoded(batch) -> np.ndarray:
    """The (N, C, H, W) images of an Arrow batch holding image, n_bands and stamp_size."""
    return decode_image_column(batch.column("image"), batch.column("n_bands").to_numpy(), batch.column("stamp_size").to_numpy(), "4d stamps")


def _nonfinite_pixels(batches):
    """mapInArrow: each batch of stamps -> one row, its count of NaN/inf pixels."""
    import pyarrow as pa

    for batch in batches:
        yield pa.RecordBatch.from_pydict({"n": pa.array([int((~np.isfinite(_decoded(batch))).sum())], pa.int64())})


def _core_pixels(idx: list[int]):
    """mapInArrow function: stamps -> (task_id, label, core), core = the flat pixels ``idx`` (float64)."""

    def run(batches):
        import pyarrow as pa

        for batch in batches:
            images = _decoded(batch)
            core = images.reshape(len(images), -1)[:, idx].astype(np.float64)
            offsets = pa.array(np.arange(len(core) + 1, dtype=np.int32) * len(idx))
            yield pa.RecordBatch.from_arrays([batch.column("task_id"), batch.column("label"), pa.ListArray.from_arrays(offsets, pa.array(core.ravel()))], ["task_id", "label", "core"])

    return run


def _stamps_marker(spark, paths):
    marker = P.read_marker(spark, paths.stage_dir("4c"))
    if marker is None:
        raise InputDataError(f"4d: no complete stamps at {paths.stage_dir('4c')} (run stage 4c first)")
    return marker


def evaluate(spark, cfg, paths: P.ExperimentPaths, max_rows: int) -> dict:
    """The gate report (a JSON-able dict; ``passed`` and ``failures`` summarise it)."""
    from pyspark.sql import functions as F

    stamps_marker = _stamps_marker(spark, paths)
    manifest = spark.read.schema(spark_schema(MANIFEST_COLUMNS)).parquet(paths.manifest)
    stamps = spark.read.schema(spark_schema(STAMP_COLUMNS)).parquet(paths.stamps)
    rejects = spark.read.schema(spark_schema(REJECT_COLUMNS)).parquet(paths.rejects)

    n_manifest = manifest.count()
    n_stamps = stamps.count()
    n_rejects = rejects.count()
    ids = stamps.select("task_id").union(rejects.select("task_id"))
    n_distinct = ids.distinct().count()
    n_unknown = ids.join(manifest.select("task_id"), "task_id", "left_anti").count()
    reconciled = n_manifest == n_stamps + n_rejects == n_distinct and n_unknown == 0

    image_cols = ["image", "n_bands", "stamp_size"]
    nonfinite_pixels = stamps.select(*image_cols).mapInArrow(_nonfinite_pixels, "n long").agg(F.sum("n").alias("n")).first()["n"] or 0
    truth_cols = ["magnification", "arc_snr_sum", "arc_snr_peak"] + [f"lensed_flux_{b}_nmgy" for b in "grz"]
    injections = stamps.filter(~F.col("is_control"))
    bad_truth = injections.filter(F.greatest(*[F.isnan(F.col(c)).cast("int") for c in truth_cols]) == 1).count()
    null_truth = injections.filter(F.greatest(*[F.col(c).isNull().cast("int") for c in truth_cols]) == 1).count()

    by_split = {f"{r['split']}/{'control' if r['is_control'] else 'injection'}": int(r["count"]) for r in stamps.groupBy("split", "is_control").count().collect()}
    reasons = {r["reason"]: int(r["count"]) for r in rejects.groupBy("reason").count().collect()}

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

    size = int(cfg.data.stamp_size)
    idx = core_indices(size)
    frac = min(1.0, max_rows / max(n_stamps, 1))
    sample = stamps.filter(F.conv(F.substring("task_id", 1, 8), 16, 10).cast("double") / float(2**32) < frac)
    core_df = sample.select("task_id", "label", *image_cols).mapInArrow(_core_pixels(idx), "task_id string, label int, core array<double>").orderBy("task_id").toPandas()
    auc = None
    if len(core_df):
        feats = np.stack(core_df["core"].map(lambda a: np.asarray(a, dtype=np.float64)).to_numpy())
        auc = core_auc(feats, core_df["label"].to_numpy(), seed=int(cfg.seeds.global_seed))
    threshold = float(cfg.evaluation.core_auc_max)

    failures = []
    if not reconciled:
        failures.append(f"counts: manifest {n_manifest} != stamps {n_stamps} + rejects {n_rejects} (distinct {n_distinct}, unknown {n_unknown})")
    if nonfinite_pixels:
        failures.append(f"{nonfinite_pixels} non-finite pixels in stamps")
    if bad_truth or null_truth:
        failures.append(f"{bad_truth} injections with NaN truth, {null_truth} with missing truth")
    return {
        "experiment_id": cfg.experiment_id,
        "stamps_run_id": stamps_marker["run_id"],
        "passed": not failures,
        "failures": failures,
        "counts": {
            "manifest": n_manifest,
            "stamps": n_stamps,
            "rejects": n_rejects,
            "distinct_tasks": n_distinct,
            "unknown_tasks": n_unknown,
            "reconciled": reconciled,
            "stamps_by_split": dict(sorted(by_split.items())),
            "reject_reasons": dict(sorted(reasons.items())),
        },
        "nonfinite": {"pixels": int(nonfinite_pixels), "injections_nan_truth": bad_truth, "injections_missing_truth": null_truth},
        "theta_e_bins": bins,
        "shortcut_gate": {
            "feature": f"central {CORE_PIX}x{CORE_PIX} pixels, g r z",
            "n_rows": int(len(core_df)),
            "n_injections": int(core_df["label"].sum()) if len(core_df) else 0,
            "auc": auc,
            "core_auc_max": threshold,
            "passed": None if auc is None else auc <= threshold,
            "note": "AUC needs >= 5 injections and >= 5 controls" if auc is None else "",
        },
    }


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown(report: dict) -> str:
    c, s = report["counts"], report["shortcut_gate"]
    lines = [
        f"# Phase 4d quality gates: {report['experiment_id']}",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**" + ("" if report["passed"] else ": " + "; ".join(report["failures"])),
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
        f"Non-finite pixels: {report['nonfinite']['pixels']}; injections with NaN / missing truth: "
        f"{report['nonfinite']['injections_nan_truth']} / {report['nonfinite']['injections_missing_truth']}",
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
        "## Shortcut gate (core-only logistic regression)",
        "",
        f"{s['feature']}; {s['n_rows']} stamps ({s['n_injections']} injections); out-of-fold AUC **{_fmt(s['auc'])}** "
        f"vs core_auc_max {s['core_auc_max']}: {'n/a' if s['passed'] is None else ('pass' if s['passed'] else 'FAIL (arc flux leaks into the core)')}. {s['note']}",
        "",
    ]
    return "\n".join(lines)


def produce(spark, cfg, paths: P.ExperimentPaths, inputs, opts, staging: str) -> dict:
    report = evaluate(spark, cfg, paths, opts.gate_max_rows)
    P.write_text(spark, P.join(staging, "gates.json"), json.dumps(report, indent=2, sort_keys=True))
    P.write_text(spark, P.join(staging, "gates.md"), markdown(report))
    log.info("4d gates: passed=%s failures=%s core AUC=%s", report["passed"], report["failures"], report["shortcut_gate"]["auc"])
    return report


def verify(spark, cfg, paths: P.ExperimentPaths, marker: dict) -> bool:
    """Whether the committed report was made from the current stamps."""
    current = P.read_marker(spark, paths.stage_dir("4c"))
    return current is not None and current.get("run_id") == marker.get("stamps_run_id") and P.exists(spark, paths.gates_json)
