"""Phase 4a -> 4c -> 4d in Spark local mode on the mock survey, with Sersic and real COSMOS sources.

One module-scoped survey carries deliberate damage, so every run also exercises the reject
paths: brick 0 has a corrupt g image, brick 1 has no z band, brick 2 has psfsize 0 in every band
(bricks table), brick 3 has psfsize_z = 0 (falls back to r, recorded), brick 4 has a NaN patch
3 px from one LRG. Stamps are 48 px with the arc's Poisson noise on (the default), so the
determinism checks cover the noise draws too.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from dhs_spark.jobs import paths as P
from dhs_spark.jobs.pipeline import FAIL_ONCE_ENV, main
from dhs_spark.schema import IMAGE_ENCODING, decode_image
from dhs_spark.survey.coadds import CoaddBrick, coadd_file_name

STAMP = 48
C = STAMP // 2
# The pipeline's mechanics on every mock host (uniform priors); the host-conditioned population
# keeps ~20% of hosts (theta_E >= 1"), tested row by row in test_pipeline_units and end to end by the demo.
COMMON = ["--set", f"data.stamp_size={STAMP}", "--set", "data.n_replicates=2", "--set", "data.control_fraction=0.4", "--set", "population.mode=uniform",
          # the fixture's corrupt and band-less bricks reject ~40% of rows on purpose
          "--set", "evaluation.max_reject_fraction=0.6", "--log-level", "WARNING"]  # fmt: skip


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from astropy.io import fits

    from dhs_spark.survey.mock import build_mock_survey

    root = tmp_path_factory.mktemp("mock")
    mock = build_mock_survey(root, n_bricks=6, brick_size_pix=300, n_lrg_per_brick=6, n_neighbours_per_brick=10, n_stars_per_brick=3)
    b = mock.bricknames
    corrupt = mock.brick_dir(b[0]) / coadd_file_name(b[0], "image", "g")
    corrupt.write_bytes(corrupt.read_bytes()[:2880] + b"\x00garbage" * 100)
    for kind in ("image", "invvar"):
        (mock.brick_dir(b[1]) / coadd_file_name(b[1], kind, "z")).unlink()
    table = pd.read_csv(mock.bricks_table, dtype={"brickname": str})
    table.loc[table.brickname == b[2], ["psfsize_g", "psfsize_r", "psfsize_z"]] = 0.0
    table.loc[table.brickname == b[3], "psfsize_z"] = 0.0
    table.to_csv(mock.bricks_table, index=False)
    cat = pd.read_parquet(mock.catalog_parquet)
    lrg = cat[(cat.BRICKNAME == b[4]) & (cat.MOCK_ROLE == "lrg")].iloc[0]
    fz = mock.brick_dir(b[4]) / coadd_file_name(b[4], "image", "r")
    with fits.open(fz) as hdul:
        data, header = hdul[1].data.astype(np.float32), hdul[1].header
    x, y = int(round(lrg.MOCK_X_PIX)), int(round(lrg.MOCK_Y_PIX))
    data[y + 3 : y + 6, x + 3 : x + 6] = np.nan
    fz.unlink()
    fits.PrimaryHDU(data, fits.Header([c for c in header.cards if c.keyword not in ("XTENSION", "PCOUNT", "GCOUNT")])).writeto(fz.with_suffix(""))
    inputs = ["--parent-sample", str(mock.catalog_parquet), "--select-lrg", "--bricks-table", str(mock.bricks_table), "--coadd-root", str(mock.root)]
    return {"mock": mock, "inputs": inputs, "nan_host": (float(lrg.RA), float(lrg.DEC))}


def _run(spark, survey, out, stage, *extra):
    return main(["--stage", stage, "--output", str(out), "--experiment-id", "t6", *COMMON, *survey["inputs"], *extra], spark=spark)


def _read(uri_dir):
    return ds.dataset(str(uri_dir), format="parquet", partitioning="hive").to_table().to_pandas()


def _images(df):
    return {r.task_id: decode_image(r.image, r.n_bands, r.stamp_size) for r in df.itertuples()}


@pytest.fixture(scope="module")
def sersic(spark, survey, tmp_path_factory):
    out = tmp_path_factory.mktemp("sersic")
    assert _run(spark, survey, out, "all", "--source-mode", "sersic", "--partitions", "8") == 0
    exp = out / "t6"
    return {"out": out, "exp": exp, "manifest": _read(exp / "phase4a_manifest" / "manifest"), "stamps": _read(exp / "phase4c_stamps" / "stamps"),
            "rejects": _read(exp / "phase4c_stamps" / "rejects")}  # fmt: skip


def test_stamp_files_hold_binary_float32_images_with_their_encoding(sersic):
    """The written image column is binary (one Parquet value per stamp), its encoding recorded in
    the footer by Spark, and plain pyarrow + numpy decode it to the stamp the decoder gives."""
    import pyarrow.parquet as pq

    part = sorted((sersic["exp"] / "phase4c_stamps" / "stamps").glob("split=*/*.parquet"))[0]
    pf = pq.ParquetFile(part)
    assert pf.schema_arrow.field("image").type == pa.binary()
    spark_fields = {f["name"]: f for f in json.loads(pf.metadata.metadata[b"org.apache.spark.sql.parquet.row.metadata"])["fields"]}
    assert spark_fields["image"]["metadata"]["encoding"] == IMAGE_ENCODING and spark_fields["image"]["type"] == "binary"
    row = pf.read_row_group(0, columns=["image", "n_bands", "stamp_size"]).slice(0, 1).to_pylist()[0]
    plain = np.frombuffer(row["image"], "<f4").reshape(row["n_bands"], row["stamp_size"], row["stamp_size"])
    np.testing.assert_array_equal(plain, decode_image(row["image"], 3, STAMP))
    assert plain.shape == (3, STAMP, STAMP) and np.isfinite(plain).all() and plain.std() > 0


def test_rows_reconcile_and_bad_input_becomes_rejects(sersic, survey):
    m, s, r = sersic["manifest"], sersic["stamps"], sersic["rejects"]
    assert len(m) > 40 and m.task_id.is_unique
    assert sorted(s.task_id.tolist() + r.task_id.tolist()) == sorted(m.task_id), "manifest rows = stamps + rejects, each once"
    b = survey["mock"].bricknames
    reasons = r.groupby("brickname").reason.agg(set).to_dict()
    assert reasons[b[0]] == {"corrupt_brick"} and (m.brickname == b[0]).sum() == (r.brickname == b[0]).sum()
    assert reasons[b[1]] == {"missing_band"} and (m.brickname == b[1]).sum() == (r.brickname == b[1]).sum()
    inj2 = m[(m.brickname == b[2]) & ~m.is_control]
    assert len(inj2) and set(r[r.brickname == b[2]].task_id) == set(inj2.task_id) and reasons[b[2]] == {"psf_missing"}
    assert b[3] not in reasons, "psfsize_z = 0 falls back to r instead of rejecting"
    fb = s[s.brickname == b[3]]
    assert len(fb) and (fb.psf_fallback_bands == "z").all()
    inj3 = fb[~fb.is_control]
    assert np.allclose(inj3.psf_fwhm_used_z_arcsec, inj3.psf_fwhm_used_r_arcsec), "the fallback uses r's FWHM and says so"
    nan_ra, nan_dec = survey["nan_host"]
    nan_rows = r[np.isclose(r.ra, nan_ra) & np.isclose(r.dec, nan_dec)]
    assert len(nan_rows) == 2 and set(nan_rows.reason) == {"nonfinite_pixels"}, "the NaN patch near the host rejects its stamps"
    assert r.detail.str.len().min() > 5, "every reject says why"
    assert (s.nan_count == 0).all() and all(np.isfinite(img).all() for img in _images(s).values())

    gates = json.loads((sersic["exp"] / "phase4d_gates" / "gates.json").read_text())
    assert gates["passed"] and gates["counts"]["reconciled"]
    assert gates["counts"]["stamps"] == len(s) and gates["counts"]["reject_reasons"]["corrupt_brick"] == (r.reason == "corrupt_brick").sum()
    assert gates["shortcut_gate"]["auc"] is not None and 0.0 <= gates["shortcut_gate"]["auc"] <= 1.0
    assert "Shortcut gate" in (sersic["exp"] / "phase4d_gates" / "gates.md").read_text()
    cfg = json.loads((sersic["exp"] / "phase4c_stamps" / "_stage_config.json").read_text())
    assert cfg["config"]["data"]["source_mode"] == "parametric" and cfg["config"]["data"]["stamp_size"] == STAMP


def _border_offset(stamp_r: np.ndarray, brick_r: np.ndarray, ix: int, iy: int, reach: int = 2) -> tuple[int, int]:
    """The shift (dx, dy) within +-reach px of a stamp centred on brick pixel (ix, iy) that best
    matches the brick image on the stamp's 4-px border (where an arc adds << the sky noise)."""
    border = np.ones((STAMP, STAMP), bool)
    border[4:-4, 4:-4] = False
    best = None
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            y0, x0 = iy + dy - C, ix + dx - C
            cost = np.abs(stamp_r - brick_r[y0 : y0 + STAMP, x0 : x0 + STAMP])[border].sum()
            best = min(best or (np.inf, 0, 0), (cost, dx, dy))
    return best[1], best[2]


def test_host_centred_controls_clean_and_flux_matches_truth(sersic, survey):
    """The host's true mock position (MOCK_X/Y_PIX, not the cutout code) lies in stamp pixel
    (24, 24); controls are the bare brick pixels; stamp - cutout sums to the recorded arc flux."""
    s = sersic["stamps"]
    images = _images(s)
    truth_xy = pd.read_parquet(survey["mock"].catalog_parquet).set_index(["RA", "DEC"])[["MOCK_X_PIX", "MOCK_Y_PIX"]]
    bricks = {}
    injections = 0
    for row in s.itertuples():
        img = images[row.task_id]
        brick = bricks.setdefault(row.brickname, CoaddBrick(survey["mock"].root, row.brickname))
        brick.load()
        x, y = truth_xy.loc[(row.ra, row.dec)]
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        assert _border_offset(img[1], brick.image[1], ix, iy) == (0, 0), f"{row.task_id}: host not on pixel ({C}, {C})"
        cut = brick.image[:, iy - C : iy + C, ix - C : ix + C]
        if row.is_control:
            assert np.array_equal(img, cut), f"control {row.task_id} must be the bare cutout"
            assert row.lensed_flux_r_nmgy == 0.0 and row.source_mode == "none"
        else:
            injections += 1
            added = (img.astype(np.float64) - cut).reshape(3, -1).sum(axis=1)
            truth = [row.lensed_flux_g_nmgy, row.lensed_flux_r_nmgy, row.lensed_flux_z_nmgy]
            # float32 rounding of host + arc per pixel (|host| <~ 10 nmgy): << 1e-3 nmgy over the stamp
            np.testing.assert_allclose(added, truth, rtol=1e-4, atol=1e-3, err_msg=f"{row.task_id}: stamp - cutout vs truth")
            if row.is_null_injection:  # zero source flux through the whole path: the bare cutout, label 0
                assert np.array_equal(img, cut) and row.label == 0 and row.arc_snr_sum == 0 and row.magnification > 1.0
                continue
            assert row.magnification > 1.0 and row.source_mode == "parametric" and row.arc_snr_sum > 0
    assert injections >= 10


def _failed_tasks(spark, group):
    tracker = spark.sparkContext.statusTracker()
    total = 0
    for job in tracker.getJobIdsForGroup(group):
        for stage in tracker.getJobInfo(job).stageIds:
            info = tracker.getStageInfo(stage)
            total += info.numFailedTasks if info else 0
    return total


def test_same_bytes_with_1_or_8_partitions_and_a_retried_task(spark, survey, sersic, tmp_path, monkeypatch):
    exp_b = tmp_path / "t6"
    shutil.copytree(sersic["exp"] / "phase4a_manifest", exp_b / "phase4a_manifest")
    victim = sersic["stamps"].sort_values("task_id").task_id.iloc[3]
    monkeypatch.setenv(FAIL_ONCE_ENV, victim)
    spark.sparkContext.setJobGroup("dhs-fail-once", "forced retry")
    try:
        assert _run(spark, survey, tmp_path, "4c", "--source-mode", "sersic", "--partitions", "1") == 0
    finally:
        spark.sparkContext.setJobGroup("dhs-after", "")
    assert _failed_tasks(spark, "dhs-fail-once") >= 1, "the forced failure must have happened (and been retried)"
    one = _read(exp_b / "phase4c_stamps" / "stamps").set_index("task_id").sort_index()
    eight = sersic["stamps"].set_index("task_id").sort_index()
    assert one.index.equals(eight.index)
    for tid in one.index:
        assert one.image[tid] == eight.image[tid], tid  # the raw float32 bytes
    truth = ["magnification", "lensed_flux_g_nmgy", "lensed_flux_r_nmgy", "lensed_flux_z_nmgy", "arc_snr_sum", "arc_snr_peak", "psf_fwhm_used_r_arcsec"]
    pd.testing.assert_frame_equal(one[truth], eight[truth], check_exact=True)
    assert json.loads((exp_b / "phase4c_stamps" / P.COMPLETE_MARKER).read_text())["partitions"] == 1


def test_rerun_replaces_and_resume_skips(spark, survey, sersic):
    exp = sersic["exp"]
    first = json.loads((exp / "phase4c_stamps" / P.COMPLETE_MARKER).read_text())
    assert _run(spark, survey, sersic["out"], "4c", "--source-mode", "sersic", "--partitions", "3") == 0
    second = json.loads((exp / "phase4c_stamps" / P.COMPLETE_MARKER).read_text())
    assert second["run_id"] != first["run_id"]
    stamps = _read(exp / "phase4c_stamps" / "stamps")
    assert len(stamps) == stamps.task_id.nunique() == len(sersic["stamps"]), "exactly one copy of every stamp"
    assert not list((exp / "_staging").iterdir()), "no staging leftovers"
    assert not (exp / "phase4c_stamps" / "_tmp").exists(), "the workers' temporary files are gone"
    names = {p.name for p in (exp / "phase4c_stamps" / "stamps").glob("split=*/*") if not p.name.startswith(".")}
    assert names <= {f"part-{i:05d}-c000.parquet" for i in range(3)} and names, "one file per partition and split, named by partition"
    assert _run(spark, survey, sersic["out"], "4c", "--source-mode", "sersic", "--resume") == 0
    assert json.loads((exp / "phase4c_stamps" / P.COMPLETE_MARKER).read_text())["run_id"] == second["run_id"], "--resume skipped"


def test_a_run_where_every_row_rejects_reconciles_and_fails_the_gates(spark, survey, sersic, tmp_path):
    """No brick anywhere (a mistyped --coadd-root): every manifest row is a reject, stamps/ exists
    and is empty, 4c commits; 4d then exits 1 on the reject-rate gate, naming the reason."""
    out = tmp_path / "allrej"
    shutil.copytree(sersic["exp"] / "phase4a_manifest", out / "t6" / "phase4a_manifest")
    inputs = [*survey["inputs"][:-1], str(tmp_path / "no_survey")]
    run = ["--output", str(out), "--experiment-id", "t6", *COMMON, *inputs, "--source-mode", "sersic"]
    assert main(["--stage", "4c", *run], spark=spark) == 0
    marker = json.loads((out / "t6" / "phase4c_stamps" / P.COMPLETE_MARKER).read_text())
    assert marker["n_stamps"] == 0 and marker["n_rejects"] == len(sersic["manifest"]) and set(marker["reject_reasons"]) == {"missing_band"}
    assert not [p for p in (out / "t6" / "phase4c_stamps" / "stamps").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert main(["--stage", "4d", *run], spark=spark) == 1, "a run that wrote no stamp must fail"
    gates = json.loads((out / "t6" / "phase4d_gates" / "gates.json").read_text())
    reject = gates["gates"]["gates"]["reject_rate"]
    assert not gates["passed"] and reject["pass"] is False and reject["value"] == 1.0
    assert "no stamp was written" in reject["reason"] and f"missing_band ({len(sersic['manifest'])})" in reject["reason"]
    assert gates["counts"]["reconciled"], "the rows still reconcile: the failure is the reject rate"


@pytest.fixture(scope="module")
def cosmos_library(tmp_path_factory, test_data):
    from dhs_spark.sims.cosmos_build import build_library

    path = tmp_path_factory.mktemp("cosmos") / "cosmos_f814w_10.h5"
    build_library(str(path), "real_galaxy_catalog_23.5.fits", galsim_dir=str(test_data / "cosmos" / "cosmos_f814w_10"), stamp_size=96, psf_treatment="hst_native")
    return path


def test_cosmos_sources_end_to_end(spark, survey, cosmos_library, tmp_path):
    """Real HST galaxies (10 COSMOS F814W stamps) through 4a -> 4c -> 4d; no arc noise, so the
    stamp's gained flux also equals magnification x unlensed flux up to the PSF's spill outside
    the 48-px stamp."""
    from dhs_spark.sims.cosmos import COSMOSLoaderV2

    rc = _run(spark, survey, tmp_path, "all", "--source-mode", "cosmos", "--cosmos-library", str(cosmos_library), "--psf-model", "moffat",
              "--moffat-beta", "3.5", "--set", "data.add_arc_poisson_noise=false")  # fmt: skip
    assert rc == 0
    exp = tmp_path / "t6"
    m, s, r = _read(exp / "phase4a_manifest" / "manifest"), _read(exp / "phase4c_stamps" / "stamps"), _read(exp / "phase4c_stamps" / "rejects")
    assert sorted(s.task_id.tolist() + r.task_id.tolist()) == sorted(m.task_id)
    inj = s[~s.is_control]
    assert len(inj) >= 10 and (inj.source_mode == "cosmos").all() and (inj.psf_model == "moffat").all()
    idents = set(COSMOSLoaderV2(cosmos_path=str(cosmos_library)).idents())
    assert set(inj.cosmos_ident) <= idents and len(set(inj.cosmos_ident)) >= 3, "galaxies come from the real library, chosen per task"
    images = _images(s)
    for row in inj[~inj.is_null_injection].itertuples():
        cut = CoaddBrick(survey["mock"].root, row.brickname).cutout(row.ra, row.dec, STAMP).image
        added = (images[row.task_id].astype(np.float64) - cut).reshape(3, -1).sum(axis=1)
        np.testing.assert_allclose(added, [row.lensed_flux_g_nmgy, row.lensed_flux_r_nmgy, row.lensed_flux_z_nmgy], rtol=1e-4, atol=1e-3)
        extinction = np.array([row.extinction_g_mag, row.extinction_r_mag, row.extinction_z_mag])
        assert row.ebv > 0 and np.allclose(extinction, np.array([3.214, 2.165, 1.211]) * row.ebv), "DECam R_b x the brick's E(B-V)"
        expected = row.magnification * np.array([row.unlensed_flux_g_nmgy, row.unlensed_flux_r_nmgy, row.unlensed_flux_z_nmgy]) * 10 ** (-0.4 * extinction)
        # Moffat beta 3.5 wings beyond ~8" lose < 3 % of the flux (arcs sit within ~4" of the centre)
        np.testing.assert_allclose(added, expected, rtol=0.03, err_msg=f"{row.task_id}: flux vs magnification x unlensed")
    ctrl = s[s.is_control]
    assert len(ctrl) and (ctrl.cosmos_ident.isna()).all() and (ctrl.lensed_flux_g_nmgy == 0).all()
    assert json.loads((exp / "phase4d_gates" / "gates.json").read_text())["passed"]


def test_gates_fail_the_step_on_nan_or_lost_rows(spark, survey, sersic, tmp_path):
    """4d exits 1 (and says why) when a stamp holds a NaN pixel or a stamp file went missing."""
    import pyarrow.parquet as pq

    for case in ("nan", "lost"):
        root = tmp_path / case
        shutil.copytree(sersic["exp"], root / "t6")
        part = sorted((root / "t6" / "phase4c_stamps" / "stamps").glob("split=*/*.parquet"), key=lambda p: p.stat().st_size)[-1]
        if case == "nan":
            table = pq.read_table(part)
            images = table.column("image").to_pylist()
            first = decode_image(images[0], table["n_bands"][0].as_py(), table["stamp_size"][0].as_py()).copy()
            first[1, 2, 3] = np.nan
            images[0] = first.tobytes()
            pq.write_table(table.set_column(table.schema.get_field_index("image"), "image", pa.array(images, table.schema.field("image").type)), part)
        else:
            part.unlink()
        assert _run(spark, survey, root, "4d") == 1, case
        gates = json.loads((root / "t6" / "phase4d_gates" / "gates.json").read_text())
        assert not gates["passed"]
        if case == "nan":
            assert gates["nonfinite"]["pixels"] == 1 and gates["counts"]["reconciled"]
        else:
            assert not gates["counts"]["reconciled"] and gates["nonfinite"]["pixels"] == 0
