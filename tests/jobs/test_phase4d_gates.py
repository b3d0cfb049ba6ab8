"""Phase 4d gates on planted shortcuts: each gate passes on a clean synthetic stamp set and fails
on one broken the way a pipeline breaks (extra noise only in injections, masked patches only in
controls, one galaxy in two splits, every row rejected). The gate functions are pure numpy /
pandas and are called directly; one Spark test runs the thin wrapper (:func:`evaluate`) on
Parquet files, old and new schema mixed.

The stamp sets are TEST FIXTURES, not simulation output: Gaussian sky noise (DR10-like per-band
sigma), an exponential red host on the centre pixel, and for injections a blue Gaussian arc
segment at theta_E whose own pixels are the ``arc_image``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.config.seeds import rng_from_seed
from dhs_spark.gates import summarise
from dhs_spark.jobs import phase4d_gates as G

NOISE_NMGY = np.array([0.004, 0.005, 0.009])  # per-band sky sigma, g r z
HOST_COLOUR = np.array([0.35, 1.0, 1.9])
ARC_COLOUR = np.array([1.0, 0.8, 0.6])
PIXEL_SCALE_ARCSEC = 0.262
KW = dict(host_only_auc_max=0.55, core_auc_max=0.70, alpha=0.01, seed=0, n_bootstrap=200)


def synthetic_stamps(n=400, size=32, seed=0, extra_noise=0.0, zero_patches=False):
    """(images, arcs, label, is_control): half controls, half injections (alternating rows).

    ``extra_noise``: Gaussian noise of that many sky sigmas added to injections only, and not to
    their arc_image (a pipeline adding noise on the injection path). ``zero_patches``: a 4x4
    zeroed (masked, no-data) patch within 8 px of the centre of every control.
    """
    rng = rng_from_seed(seed)
    y, x = np.indices((size, size)) - size // 2
    r, phi = np.hypot(x, y), np.arctan2(y, x)
    label = (np.arange(n) % 2).astype(np.int32)
    host_amp = np.exp(rng.normal(np.log(0.1), 0.5, n))
    host_scale_px = rng.uniform(1.2, 3.0, n)
    host = host_amp[:, None, None, None] * HOST_COLOUR[None, :, None, None] * np.exp(-r / host_scale_px[:, None, None])[:, None]
    noise = NOISE_NMGY[None, :, None, None] * rng.standard_normal((n, 3, size, size))
    theta_px = rng.uniform(0.6, 2.0, n) / PIXEL_SCALE_ARCSEC
    phi0 = rng.uniform(-np.pi, np.pi, n)
    dphi = np.angle(np.exp(1j * (phi[None] - phi0[:, None, None])))
    shape = np.exp(-0.5 * ((r[None] - theta_px[:, None, None]) / 1.2) ** 2) * np.exp(-0.5 * (dphi / 0.8) ** 2)
    amp = rng.uniform(0.01, 0.05, n) * label
    arcs = amp[:, None, None, None] * ARC_COLOUR[None, :, None, None] * shape[:, None]
    images = host + noise + arcs
    if extra_noise:
        images += (label == 1)[:, None, None, None] * extra_noise * NOISE_NMGY[None, :, None, None] * rng.standard_normal(images.shape)
    if zero_patches:
        for i in np.flatnonzero(label == 0):
            y0, x0 = rng.integers(size // 2 - 8, size // 2 + 4, 2)
            images[i, :, y0 : y0 + 4, x0 : x0 + 4] = 0.0
    return images.astype(np.float32), arcs.astype(np.float32), label, label == 0


def shortcut(images, arcs, label, is_control, has_arc=None, is_null=None):
    feats = G.stamp_features(images, arcs)
    has_arc = label == 1 if has_arc is None else has_arc
    return {g.name: g for g in G.shortcut_gates(feats, G.stamp_kinds(label, is_control, is_null), has_arc, **KW)}


@pytest.fixture(scope="module")
def clean():
    return synthetic_stamps()


# ---------------------------------------------------------------- features


def test_features_remove_the_arc_and_measure_noise_and_masking(clean):
    images, arcs, label, ctrl = clean
    blocks = G.block_means(images, grid=8)  # 32 px -> 4x4-px tiles
    np.testing.assert_allclose(blocks.reshape(-1, 3, 8, 8), images.astype(np.float64).reshape(-1, 3, 8, 4, 8, 4).mean(axis=(3, 5)), rtol=1e-12)
    assert G.block_means(np.ones((2, 3, 34, 34)), grid=8).shape == (2, 192) and np.allclose(G.block_means(np.ones((2, 3, 34, 34))), 1.0)

    # the noise estimate ignores the smooth host: within 6% of the true sigma (1000 differences per band: ~3% scatter)
    stats = G.band_summaries(images[ctrl]).reshape(-1, 3, len(G.SUMMARY_NAMES))
    noise = np.median(stats[:, :, G.SUMMARY_NAMES.index("noise_sigma")], axis=0)
    np.testing.assert_allclose(noise, NOISE_NMGY, rtol=0.06)
    patched = images[:1].copy()
    patched[0, :, 10:14, 10:14] = 0.0
    zero = G.band_summaries(patched).reshape(3, -1)[:, G.SUMMARY_NAMES.index("zero_fraction")]
    np.testing.assert_allclose(zero, 16 / 32**2)

    feats = G.stamp_features(images, arcs)
    core = G.central_core(images.astype(np.float64) - arcs).reshape(len(images), -1)
    np.testing.assert_allclose(feats["host_core"][:, : core.shape[1]], core, atol=1e-7)  # the arc is gone from the host features
    np.testing.assert_array_equal(feats["core_raw"], G.central_core(images).reshape(len(images), -1))  # and still in core_raw
    assert feats["core_raw"].shape[1] == 3 * G.CORE_PIX**2 and sorted(G.core_indices(32))[0] == 11 * 32 + 11
    bad = images[:3].copy()
    bad[1, 0, 0, 0] = np.nan
    assert G.stamp_features(bad)["finite"].tolist() == [True, False, True]
    chunked = G.stamp_features(images[:150], arcs[:150])  # > FEATURE_CHUNK rows: same as row by row
    np.testing.assert_allclose(chunked["host_full"][140], G.stamp_features(images[140:141], arcs[140:141])["host_full"][0])


# ---------------------------------------------------------------- host-only gate


def test_host_only_passes_on_clean_stamps_while_the_core_auc_sees_the_arcs(clean):
    gates = shortcut(*clean)
    core = gates["core_auc"]
    assert core.direction == "info" and core.passed is None and core.value > 0.9, "bright arcs reach the core: the raw core AUC is high"
    for name in ("host_only_core", "host_only_full"):
        g = gates[name]
        assert g.passed is True and 0.4 < g.value < 0.6, (name, g.value)
        lo, hi = g.interval
        assert lo < 0.5 < hi, f"{name}: consistent with 0.5"
        assert g.details["n_injections"] == g.details["n_controls"] == 200


def test_host_only_fails_when_injections_carry_extra_noise():
    gates = shortcut(*synthetic_stamps(seed=1, extra_noise=0.5))
    full = gates["host_only_full"]
    assert full.passed is False and full.value > 0.9 and full.details["p_value"] < 1e-6
    assert "host_only_full" in summarise(list(gates.values()))["failed"]


def test_host_only_fails_when_only_controls_have_masked_patches():
    gates = shortcut(*synthetic_stamps(seed=2, zero_patches=True))
    assert gates["host_only_full"].passed is False and gates["host_only_full"].value > 0.9
    assert gates["host_only_core"].passed is False and gates["host_only_core"].value > 0.9


def test_replicates_of_a_host_share_a_fold():
    """Each host written 3 times with different arcs (data.n_replicates = 3): the host-only images
    of a host are identical. Folds split by row let the regression recognise hosts (AUC ~1 on
    clean data); folds grouped by host do not."""
    images, arcs, label, ctrl = synthetic_stamps(n=200, seed=6)
    is_inj = (label == 1)[:, None, None, None]
    arcs3 = np.concatenate([arcs, np.roll(arcs, 2, axis=0) * is_inj, np.roll(arcs, 4, axis=0) * is_inj])
    images3 = np.concatenate([images - arcs] * 3) + arcs3
    label3, ctrl3, hosts = np.tile(label, 3), np.tile(ctrl, 3), np.tile(np.arange(200), 3)
    feats = G.stamp_features(images3, arcs3)
    by_row = {g.name: g for g in G.shortcut_gates(feats, G.stamp_kinds(label3, ctrl3), label3 == 1, **KW)}
    by_host = {g.name: g for g in G.shortcut_gates(feats, G.stamp_kinds(label3, ctrl3), label3 == 1, hosts=hosts, **KW)}
    assert by_row["host_only_full"].value > 0.9, "the leak the grouping prevents"
    for name in ("host_only_core", "host_only_full"):
        assert by_host[name].passed is True and 0.4 < by_host[name].value < 0.6
        assert by_host[name].details["n_host_injections"] == by_host[name].details["n_host_controls"] == 100


def test_null_injections_are_left_out_and_missing_arcs_are_not_computable(clean):
    images, arcs, label, ctrl = clean
    # 40 extra stamps flagged as null injections, with a wild noise level: left out of both classes
    extra, _, _, _ = synthetic_stamps(n=40, seed=9, extra_noise=3.0)
    with_null = shortcut(np.concatenate([images, extra]), np.concatenate([arcs, np.zeros_like(extra)]), np.r_[label, np.zeros(40, np.int32)],
                         np.r_[ctrl, np.zeros(40, bool)], np.r_[label == 1, np.zeros(40, bool)], np.r_[np.zeros(len(label), bool), np.ones(40, bool)])  # fmt: skip
    assert with_null["host_only_full"].passed is True and with_null["host_only_full"].details["n_null_injections_left_out"] == 40
    assert with_null["host_only_full"].value == shortcut(*clean)["host_only_full"].value

    old = shortcut(images, np.zeros_like(arcs), label, ctrl, has_arc=np.zeros(len(label), bool), is_null=[None] * len(label))
    for name in ("host_only_core", "host_only_full"):
        assert old[name].passed is None and "200 of 200 sampled injections have no arc_image" in old[name].reason
    assert old["core_auc"].value is not None, "the core AUC needs no arc_image"
    few = shortcut(images[:6], arcs[:6], label[:6], ctrl[:6])
    assert few["host_only_core"].passed is None and "needs >= 5 injections and >= 5 controls on distinct hosts" in few["host_only_core"].reason


# ---------------------------------------------------------------- reject, split, counts gates


def test_reject_rate_gate():
    all_rejected = G.reject_rate_gate(120, 0, {"missing_band": 120}, 0.05)
    assert all_rejected.passed is False and all_rejected.value == 1.0
    assert "no stamp was written" in all_rejected.reason and "missing_band (120)" in all_rejected.reason
    assert G.reject_rate_gate(1000, 970, {"edge": 20, "psf_missing": 10}, 0.05).passed is True
    many = G.reject_rate_gate(1000, 900, {"edge": 30, "nonfinite_pixels": 50, "psf_missing": 20}, 0.05)
    assert many.passed is False and many.value == pytest.approx(0.1)
    assert [r["reason"] for r in many.details["top_reasons"]] == ["nonfinite_pixels", "edge", "psf_missing"]
    assert "nonfinite_pixels (50), edge (30)" in many.reason
    assert G.reject_rate_gate(0, 0, {}, 0.05).passed is False, "an empty manifest writes no stamp"
    assert G.reject_rate_gate(10, 10, {}, 0.05).passed is True


def test_cosmos_split_gate():
    idents = ["a", "a", "b", "c", None]
    ok = G.cosmos_split_gate(idents, ["train", "train", "val", "test", "test"])
    assert ok.passed is True and ok.value == 0 and ok.details["n_cosmos_idents"] == 3
    leak = G.cosmos_split_gate(idents + ["b"], ["train", "train", "val", "test", "test", "test"])
    assert leak.passed is False and leak.value == 1 and leak.details["examples"] == [{"cosmos_ident": "b", "splits": ["test", "val"]}]
    assert "b test/val" in leak.reason
    none = G.cosmos_split_gate([], [])
    assert none.passed is True and "parametric" in none.details["note"]


def test_counts_and_nonfinite_gates_and_the_report():
    assert G.counts_gate(100, 90, 10, 100, 0).passed is True
    lost = G.counts_gate(100, 80, 10, 90, 0)
    assert lost.passed is False and lost.details["missing"] == 10 and "lost or duplicated" in lost.reason
    assert G.counts_gate(100, 95, 10, 100, 0).details["duplicated"] == 5
    px, truth = G.nonfinite_gates(1, 0, 2)
    assert px.passed is False and truth.passed is False and truth.value == 2

    images, arcs, label, ctrl = synthetic_stamps(n=60, seed=4)
    gates = [G.counts_gate(62, 60, 2, 62, 0), *G.nonfinite_gates(0, 0, 0), G.reject_rate_gate(62, 60, {"edge": 2}, 0.05),
             G.cosmos_split_gate(["g1", "g1"], ["train", "test"]), *shortcut(images, arcs, label, ctrl).values()]  # fmt: skip
    report = G.report_dict("exp", "run", gates, {"train/control": 30, "train/injection": 30}, {"edge": 2}, [])
    assert report["passed"] is False and report["failures"] == [next(f for f in report["failures"] if f.startswith("cosmos_split"))]
    assert report["counts"]["reconciled"] is True and report["nonfinite"]["pixels"] == 0
    assert report["shortcut_gate"]["passed"] is None and report["shortcut_gate"]["core_auc_max"] == 0.70
    assert set(report["gates"]["gates"]) == {"counts", "nonfinite_pixels", "injection_truth", "reject_rate", "cosmos_split", "core_auc",
                                             "host_only_core", "host_only_full"}  # fmt: skip
    json.dumps(report, allow_nan=False)
    md = G.markdown(report)
    assert "## Shortcut gates" in md and "| cosmos_split | 1 |" in md and "**FAIL**" in md


# ---------------------------------------------------------------- the Spark wrapper


def _table(schema, columns: dict, n: int) -> pa.Table:
    return pa.Table.from_arrays([pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema], schema=schema)


def test_evaluate_reads_old_and_new_stamps(spark, tmp_path):
    """4d on Parquet: new-schema stamps in train and val, old-schema ones (no arc_image, no
    is_null_injection) in test, two rejects, one COSMOS galaxy in two splits."""
    from dhs_spark.config import ExperimentConfig
    from dhs_spark.jobs import paths as P
    from dhs_spark.schema import MANIFEST_SCHEMA, REJECT_SCHEMA, STAMP_SCHEMA

    n = 120
    images, arcs, label, ctrl = synthetic_stamps(n=n, seed=5)
    task = np.array([f"{i:08x}{i:08x}" for i in range(n + 2)])
    split = np.array(["train", "val", "test"])[np.arange(n + 2) % 3]
    null = np.arange(n) % 10 == 4  # every 10th row of the controls is a null injection instead
    cfg = ExperimentConfig(output_dir=str(tmp_path / "exp"), experiment_id="e")
    paths = P.ExperimentPaths.from_config(cfg)
    root = P.local_path(paths.stage_dir("4c"))
    manifest = {"task_id": task, "split": split, "label": np.r_[label, 1, 0], "is_control": np.r_[ctrl & ~null, False, True],
                "is_null_injection": np.r_[null, False, False]}  # fmt: skip
    P.local_path(paths.manifest).mkdir(parents=True)
    pq.write_table(_table(MANIFEST_SCHEMA, manifest, n + 2), P.local_path(paths.manifest) / "part-0.parquet")
    stamps = {k: v[:n] for k, v in manifest.items()} | {
        "image": [im.tobytes() for im in images], "arc_image": [a.tobytes() if lab == 1 else None for a, lab in zip(arcs, label)],
        "n_bands": np.full(n, 3), "stamp_size": np.full(n, 32), "cosmos_ident": np.where(label == 1, "g1", None),
        "magnification": np.where(label == 1, 3.0, np.nan), "arc_snr_sum": np.full(n, 20.0), "arc_snr_peak": np.full(n, 3.0),
        **{f"lensed_flux_{b}_nmgy": np.ones(n) for b in "grz"}, "theta_e_arcsec": np.full(n, 1.2),
        "ra": 150.0 + (np.arange(n) // 2) * 1e-3, "dec": np.full(n, 2.0),  # rows 2k and 2k+1 share a host (a control and an injection)
    }  # fmt: skip
    stamps["cosmos_ident"] = np.where((label == 1) & (split[:n] == "train"), "g2", stamps["cosmos_ident"])  # g1 spans val and test
    table = _table(STAMP_SCHEMA, stamps, n)
    for s in ("train", "val", "test"):
        part = table.filter(pa.array(split[:n] == s)).drop(["split"])
        if s == "test":
            part = part.drop(["arc_image", "is_null_injection"])  # written before those columns existed
        (root / "stamps" / f"split={s}").mkdir(parents=True)
        pq.write_table(part, root / "stamps" / f"split={s}" / "part-0.parquet")
    (root / "rejects").mkdir()
    pq.write_table(_table(REJECT_SCHEMA, {"task_id": task[n:], "stage": ["4c", "4c"], "reason": ["edge", "edge"]}, 2), root / "rejects" / "part-0.parquet")
    (root / P.COMPLETE_MARKER).write_text(json.dumps({"run_id": "r1"}))

    real_dir = Path(__file__).resolve().parents[1] / "data" / "cutouts_dr10"
    report = G.evaluate(spark, cfg, paths, max_rows=10_000, real_cutouts=str(real_dir))
    gates = report["gates"]["gates"]
    assert report["counts"]["reconciled"] and gates["reject_rate"]["value"] == pytest.approx(2 / 122) and gates["reject_rate"]["pass"]
    assert gates["cosmos_split"]["pass"] is False and gates["cosmos_split"]["details"]["examples"][0]["cosmos_ident"] == "g1"
    assert report["passed"] is False and report["failures"][0].startswith("cosmos_split")
    n_test_inj = int(((label == 1) & (split[:n] == "test")).sum())
    assert gates["host_only_full"]["pass"] is None and f"{n_test_inj} of {int(label.sum())} sampled injections have no arc_image" in gates["host_only_full"]["reason"]
    by_split = report["counts"]["stamps_by_split"]
    assert by_split["train/null_injection"] == int((null & (split[:n] == "train")).sum()) and "test/null_injection" not in by_split
    # the wrapper's core AUC is the pure function's on the same rows (sorted by task id), null injections left out
    kinds = G.stamp_kinds(label, ctrl & ~null, np.where(split[:n] == "test", None, null))
    hosts = np.array([f"{r:.7f} {d:.7f}" for r, d in zip(stamps["ra"], stamps["dec"])])
    pure = G.shortcut_gates(G.stamp_features(images, arcs), kinds, label == 1, host_only_auc_max=0.55, core_auc_max=0.7, alpha=0.01, seed=cfg.seeds.global_seed,
                            n_bootstrap=cfg.evaluation.n_bootstrap, hosts=hosts)[0]  # fmt: skip
    assert gates["core_auc"]["value"] == pytest.approx(pure.value, abs=1e-12) and gates["core_auc"]["details"]["n_null_injections_left_out"] == int(null[split[:n] != "test"].sum())
    assert report["shortcut_gate"]["auc"] == gates["core_auc"]["value"]
    # realism table: dhs_spark.realism.measure_arc on every injection and control (fewer than
    # REALISM_MAX_STAMPS here; null injections in neither) and on the real cutouts, cropped to data.stamp_size
    from dhs_spark.realism import load_cutout_dir, measure_arc, measure_set

    sets = report["realism"]["sets"]
    is_null = null & (split[:n] != "test")  # the test split predates is_null_injection: its null rows are neither class
    for name, sel in (("injected", (label == 1) & ~is_null), ("controls", ctrl & ~null)):
        snr = [measure_arc(im)["arc_snr"] for im in images[sel]]
        assert sets[name]["n"] == int(sel.sum()) and sets[name]["arc_snr"]["median"] == pytest.approx(float(np.median(snr)), rel=1e-9)
    real_images, real_invvar, real_meta = load_cutout_dir(real_dir, cfg.data.stamp_size)
    real = measure_set(real_images, real_meta, "dr10_candidates", invvars=real_invvar)
    assert sets["dr10_candidates"]["n"] == len(real_images) == 6
    assert sets["dr10_candidates"]["arc_snr"]["median"] == pytest.approx(float(real["arc_snr"].median()), rel=1e-9)
    assert "dr10_candidates" in G.markdown(report) and "Arc visibility and colours" in G.markdown(report)
    assert report["lens_population"]["n"] == int(label.sum()) and report["lens_population"]["theta_e_median_arcsec"] == pytest.approx(1.2)


def test_lens_population_summary():
    """theta_E summary of the report: NaN rows left out, Spearman sign follows luminosity (-M_r)."""
    te = np.array([1.0, 1.2, 1.5, 3.0, np.nan])
    mag = np.array([-21.0, -21.5, -22.0, -23.0, -24.0])  # brighter host, larger theta_E
    pop = G.lens_population(te, mag)
    assert pop["n"] == 4 and pop["theta_e_median_arcsec"] == pytest.approx(1.35) and pop["fraction_above_2p5_arcsec"] == 0.25
    assert pop["spearman_theta_e_vs_host_luminosity"] == pytest.approx(1.0) and pop["n_with_host_abs_mag"] == 4
    assert G.lens_population(te, -mag)["spearman_theta_e_vs_host_luminosity"] == pytest.approx(-1.0)
    assert G.lens_population(te, np.full(5, np.nan))["spearman_theta_e_vs_host_luminosity"] is None  # uniform priors: no host magnitude
