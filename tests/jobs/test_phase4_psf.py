"""Phase 4c with real coadd PSFs (``psf_model: pixel``) from a local coadd-psf server on 127.0.0.1
that serves the real PsfEx models of brick 2447p120 (tests/coadd_psf_server.py), and the COSMOS
render oversampling.

The mock survey has four real DR10 bricks; the server answers a malformed body for brick 1 and a
file without z for brick 2, a good file for bricks 0 and 3. Stamps are 48 px, so the pixel
kernels are 47 px (5.9" radius) with the documented wings; no arc Poisson noise, so that the
arc's flux can be compared with magnification x unlensed flux.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from coadd_psf_server import PSFS, CoaddPsfServer

from dhs_spark.config.experiment import PsfWingsConfig
from dhs_spark.jobs.phase4c_stamps import StampParams, _BrickPsf, _cosmos_loader, make_stamp, stamp_params
from dhs_spark.jobs.pipeline import main
from dhs_spark.schema import decode_image
from dhs_spark.survey import psf
from dhs_spark.survey.bricks import brick_center
from dhs_spark.survey.coadds import CoaddBrick

STAMP = 48
KERNEL = STAMP - 1
RETRIES = 1
MALFORMED, NO_Z = 1, 2  # brick indices the server answers badly


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    from dhs_spark.survey.mock import build_mock_survey

    mock = build_mock_survey(tmp_path_factory.mktemp("psfmock"), n_bricks=4, brick_size_pix=200, n_lrg_per_brick=3, n_neighbours_per_brick=3, n_stars_per_brick=1)
    return mock


@pytest.fixture(scope="module")
def server(survey):
    s = CoaddPsfServer()
    s.by_brick = {survey.bricknames[MALFORMED]: "garbage", survey.bricknames[NO_Z]: "no_z"}
    yield s
    s.close()


def _flags(survey, server, cache_dir):
    return [
        "--psf-model", "pixel", "--coadd-psf-url", server.base_url, "--log-level", "WARNING",
        "--set", f"data.stamp_size={STAMP}", "--set", "data.add_arc_poisson_noise=false", "--set", "data.control_fraction=0.3",
        "--set", f"data.coadd_psf_max_retries={RETRIES}", "--set", "data.coadd_psf_backoff_s=0", "--set", "data.coadd_psf_timeout_s=10",
        "--set", f"data.psf_cache_dir={cache_dir}", "--set", "population.mode=uniform",  # every mock host: the PSF mechanics
        "--parent-sample", str(survey.catalog_parquet), "--select-lrg", "--bricks-table", str(survey.bricks_table), "--coadd-root", str(survey.root),
    ]  # fmt: skip


def _read(path):
    return ds.dataset(str(path), format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def run(spark, survey, server, tmp_path_factory):
    out = tmp_path_factory.mktemp("psfrun")
    flags = _flags(survey, server, out / "psf_cache")
    for stage in ("4a", "4c"):
        assert main(["--stage", stage, "--output", str(out), "--experiment-id", "p10", "--partitions", "2", *flags], spark=spark) == 0, stage
    exp = out / "p10"
    return {
        "manifest": _read(exp / "phase4a_manifest" / "manifest"),
        "stamps": _read(exp / "phase4c_stamps" / "stamps"),
        "rejects": _read(exp / "phase4c_stamps" / "rejects"),
        "requests": server.requests_by_brick(),
        "flags": flags,
    }


def _where(brickname):
    ra, dec = brick_center(brickname)
    return f"ra={ra[0]:.6f}, dec={dec[0]:.6f}"


def test_one_request_per_brick_and_rows_reconcile(run, survey):
    m, s, r = run["manifest"], run["stamps"], run["rejects"]
    assert sorted(s.task_id.tolist() + r.task_id.tolist()) == sorted(m.task_id), "manifest rows = stamps + rejects, each once"
    assert len(r) == 0, f"the mock survey is clean; unexpected rejects {r.reason.tolist()}"
    per_brick = m.groupby("brickname").size()
    assert (per_brick >= 2).all() and set(per_brick.index) == set(survey.bricknames)
    # one fetch per brick, whatever its number of stamps; the malformed answer is retried by the
    # HTTP client (RETRIES times), a file without z is a valid answer and is not
    expected = {b: 1 + RETRIES if i == MALFORMED else 1 for i, b in enumerate(survey.bricknames)}
    assert run["requests"] == expected, (run["requests"], per_brick.to_dict())


def test_good_bricks_carry_the_coadd_psf_and_bad_ones_the_flagged_fallback(run, survey):
    s = run["stamps"]
    b = survey.bricknames
    inj, ctrl = s[~s.is_control], s[s.is_control]
    assert set(inj.brickname) == set(b), "every brick has injections"
    served_fwhm = {band: psf.gaussian_fwhm_arcsec(PSFS[band].astype(np.float64), psf.DR10_PIXSCALE_ARCSEC) for band in "grz"}
    for brick in (b[0], b[3]):
        good = inj[inj.brickname == brick]
        assert (good.psf_model == "pixel").all() and (good.psf_source == f"coadd-psf:ls-dr10:brick={brick}").all()
        assert (~good.psf_fallback_analytic).all() and (good.psf_fallback_reason == "").all()
        for band in "grz":
            # measured on the 47-px kernel with wings: the served core's Gaussian-fit FWHM within 2 %
            # (wings move it by < 1 %), not the brick's psfsize
            np.testing.assert_allclose(good[f"psf_fwhm_used_{band}_arcsec"], served_fwhm[band], rtol=0.02, err_msg=f"{brick} {band}")
    for idx, band_text in ((MALFORMED, r"malformed FITS.*bands g,r,z unavailable"), (NO_Z, r"band z missing from the coadd-psf file")):
        bad = inj[inj.brickname == b[idx]]
        assert len(bad) and bad.psf_fallback_analytic.all() and (bad.psf_model == "gaussian").all()
        assert (bad.psf_source == f"analytic:brick-psfsize:brick={b[idx]}").all()
        assert bad.psf_fallback_reason.str.contains(band_text).all(), bad.psf_fallback_reason.iloc[0]
        assert bad.psf_fallback_reason.str.contains(_where(b[idx]), regex=False).all() and bad.psf_fallback_reason.str.contains(f"brick {b[idx]}").all()
        for band in "grz":  # the fallback uses the brick's psfsize, as the manifest has it
            np.testing.assert_array_equal(bad[f"psf_fwhm_used_{band}_arcsec"], bad[f"psf_fwhm_{band}_arcsec"])
    assert (inj.render_oversample == 4).all()
    # a control has no arc: no PSF and no render recorded
    cols = ["psf_model", "psf_source", "psf_fallback_analytic", "psf_fallback_reason", "render_oversample"] + [f"psf_fwhm_used_{x}_arcsec" for x in "grz"]
    assert len(ctrl) and ctrl[cols].isna().all().all()


def test_injected_flux_matches_truth_and_is_conserved(run, survey):
    """stamp - cutout sums to the recorded arc flux; with the wings inside the 47-px kernel that is
    magnification x unlensed flux up to the PSF light falling outside the 48-px stamp."""
    inj = run["stamps"][~run["stamps"].is_control & ~run["stamps"].is_null_injection]  # null injections add nothing
    bricks = {}
    for row in inj.itertuples():
        brick = bricks.setdefault(row.brickname, CoaddBrick(survey.root, row.brickname))
        cut = brick.cutout(row.ra, row.dec, STAMP).image.astype(np.float64)
        img = decode_image(row.image, 3, STAMP)
        added = (img - cut).reshape(3, -1).sum(axis=1)
        truth = np.array([row.lensed_flux_g_nmgy, row.lensed_flux_r_nmgy, row.lensed_flux_z_nmgy])
        # float32 rounding of host + arc per pixel: << 1e-3 nmgy over the stamp
        np.testing.assert_allclose(added, truth, rtol=1e-4, atol=1e-3, err_msg=f"{row.task_id}: stamp - cutout vs truth")
        transmission = 10 ** (-0.4 * np.array([row.extinction_g_mag, row.extinction_r_mag, row.extinction_z_mag]))  # the brick's E(B-V)
        total = row.magnification * np.array([row.unlensed_flux_g_nmgy, row.unlensed_flux_r_nmgy, row.unlensed_flux_z_nmgy]) * transmission
        np.testing.assert_allclose(added, total, rtol=0.01, err_msg=f"{row.task_id} ({row.psf_model}): arc flux vs magnification x unlensed")


def real_psf_kernels(brickname, ra, dec, bands, pixscale_arcsec, stamp_size):
    """A psf_kernels_fn: the real PsfEx PSFs the server serves, made into kernels directly (no
    HTTP, no FITS) the way 4c makes a coadd PSF into kernels (47 px, documented wings)."""
    spec = psf.pixel_psf_spec({b: PSFS[b].astype(np.float64) for b in bands}, "direct", bands, psf.DR10_PIXSCALE_ARCSEC, pixscale_arcsec, stamp_size - 1, PsfWingsConfig())
    return list(spec.kernels)


def _cfg_params(survey, server, tmp_path, psf_model="pixel", **extra):
    from dhs_spark.jobs.pipeline import build_parser, resolve_config

    argv = ["--stage", "4c", "--experiment-id", "p10", "--output", str(tmp_path), *_flags(survey, server, tmp_path / "cache")]
    cfg = resolve_config(build_parser().parse_args(argv))
    cfg.data.psf_model = psf_model
    params = stamp_params(cfg, str(survey.root))
    return StampParams(**{**params.__dict__, **extra})


def test_spark_stamps_equal_in_process_renders_with_the_same_psfs(run, survey, server, tmp_path, caplog):
    """A good brick's stamp is bit-identical to one made in-process with kernels built straight
    from the real PsfEx arrays (so the PSF crossed HTTP, FITS and Spark intact); a fallback
    brick's is bit-identical to the plain Gaussian model at the brick's psfsize. The fallback is
    logged as a warning."""
    m = run["manifest"].set_index("task_id")
    s = run["stamps"]
    b = survey.bricknames
    hooked = _cfg_params(survey, server, tmp_path, coadd_psf=None, psf_kernels_fn=f"{__name__}:real_psf_kernels")
    gauss = _cfg_params(survey, server, tmp_path, psf_model="gaussian")
    for brick, params in ((b[0], hooked), (b[MALFORMED], gauss), (b[NO_Z], gauss)):
        row = s[(s.brickname == brick) & ~s.is_control].iloc[0]
        manifest_row = {**m.loc[row.task_id].to_dict(), "task_id": row.task_id}
        values, image, _, _ = make_stamp(manifest_row, CoaddBrick(survey.root, brick), params)
        assert image.tobytes() == decode_image(row.image, 3, STAMP).tobytes(), brick
        assert values["magnification"] == row.magnification
    # the fallback is logged (a fresh provider, as in a new partition): never silent
    params = _cfg_params(survey, server, tmp_path)
    row = m[m.brickname == b[NO_Z]].iloc[0].to_dict()
    with caplog.at_level(logging.WARNING):
        spec = _BrickPsf(params).spec(row, [row[f"psf_fwhm_{x}_arcsec"] for x in "grz"])
    assert spec.is_fallback and spec.fallback_bands == ("z",)
    assert any(rec.levelno == logging.WARNING and "PSF fallback" in rec.getMessage() and b[NO_Z] in rec.getMessage() for rec in caplog.records)


def test_pixel_needs_a_provider_before_any_stage_runs(spark, survey, server, tmp_path):
    flags = [f for f in _flags(survey, server, tmp_path) if f != server.base_url and f != "--coadd-psf-url"]
    assert main(["--stage", "all", "--output", str(tmp_path), "--experiment-id", "x", *flags], spark=spark) == 2
    assert not (tmp_path / "x").exists(), "the missing provider stops the run before 4a writes anything"
    both = [*_flags(survey, server, tmp_path), "--psf-kernels-fn", f"{__name__}:real_psf_kernels"]
    assert main(["--stage", "4c", "--output", str(tmp_path), "--experiment-id", "x", *both], spark=spark) == 2


def test_coadd_psf_settings_are_validated_and_pickle(survey, server, tmp_path):
    from dhs_spark.config import ExperimentConfig, from_dict
    from dhs_spark.errors import ConfigErrors

    with pytest.raises(ConfigErrors, match=r"data.coadd_psf_url: must be an http:// or https:// URL.*got 'ftp://x'"):
        from_dict({"output_dir": "o", "data": {"psf_model": "pixel", "coadd_psf_url": "ftp://x"}})
    with pytest.raises(ConfigErrors, match=r"data.moffat_beta: must be set when data.psf_fallback_model is 'moffat'"):
        from_dict({"output_dir": "o", "data": {"psf_model": "pixel", "coadd_psf_url": "https://v", "psf_fallback_model": "moffat"}})
    with pytest.raises(ConfigErrors, match=r"data.coadd_psf_max_retries: must be >= 0"):
        from_dict({"output_dir": "o", "data": {"coadd_psf_max_retries": -1}})
    assert ExperimentConfig().data.coadd_psf_url is None
    params = _cfg_params(survey, server, tmp_path)
    assert params.coadd_psf.url == server.base_url and params.coadd_psf.max_retries == RETRIES and params.coadd_psf.wings == PsfWingsConfig()
    assert pickle.loads(pickle.dumps(params)) == params, "StampParams with the coadd-PSF settings cross to executors"


def test_cosmos_sources_render_with_at_least_cosmos_oversample(run, survey, server, tmp_path):
    """data.oversample 2 and 8 give the same COSMOS stamp (both render at COSMOS_OVERSAMPLE = 8,
    recorded in render_oversample); 12 renders at 12, and differently."""
    from dhs_spark.sims.cosmos import COSMOS_OVERSAMPLE

    m = run["manifest"]
    row = m[(m.brickname == survey.bricknames[0]) & ~m.is_control].iloc[0].to_dict()
    brick = CoaddBrick(survey.root, row["brickname"])
    out = {}
    for oversample in (2, COSMOS_OVERSAMPLE, 12):
        params = _cfg_params(survey, server, tmp_path, psf_model="gaussian", source_mode="cosmos", cosmos_loader_mode="synthetic", oversample=oversample)
        values, image, _, _ = make_stamp(row, brick, params, _cosmos_loader(params))
        out[oversample] = (values["render_oversample"], image)
    assert out[2][0] == out[COSMOS_OVERSAMPLE][0] == COSMOS_OVERSAMPLE and out[12][0] == 12
    assert out[2][1].tobytes() == out[COSMOS_OVERSAMPLE][1].tobytes()
    assert out[12][1].tobytes() != out[COSMOS_OVERSAMPLE][1].tobytes()
    assert pd.notna(values["cosmos_ident"])
