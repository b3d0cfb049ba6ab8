"""Coadd-PSF client against a local HTTP server on 127.0.0.1 serving per-band PSF FITS made from
the real PsfEx models of brick 2447p120 (g, r, z CCDs in tests/data/decam_ccds), with injected
500s, timeouts, malformed bodies and a missing band (the server: tests/coadd_psf_server.py)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from coadd_psf_server import PSFS, TIMEOUT_S
from coadd_psf_server import CoaddPsfServer as _Server
from coadd_psf_server import fits_body as _fits_body

from dhs_spark.config.experiment import PsfWingsConfig
from dhs_spark.survey import psf
from dhs_spark.survey.coadd_psf import BrickPsfCache, CoaddPsfClient, CoaddPsfError, brick_psf_spec, parse_coadd_psf_fits
from dhs_spark.survey.http import CachedHttpClient

BRICK, RA, DEC = "2447p120", 244.75, 12.0  # brick 2447p120's centre


@pytest.fixture()
def server():
    s = _Server()
    yield s
    s.close()


def _client(server, tmp_path, max_retries=3):
    http = CachedHttpClient(server.base_url, cache_dir=tmp_path / "cache", timeout_s=TIMEOUT_S, max_retries=max_retries, backoff_s=0.0, min_interval_s=0.0)
    return CoaddPsfClient(http)


def test_fetch_returns_the_served_per_band_psfs(server, tmp_path):
    got = _client(server, tmp_path).fetch(RA, DEC)
    for b in "grz":
        np.testing.assert_array_equal(got.images[b], PSFS[b].astype(np.float64), err_msg=b)
    assert got.pixscale_arcsec == psf.DR10_PIXSCALE_ARCSEC
    path, params = server.requests[0]
    assert path == "/viewer/coadd-psf/" and params == {"ra": "244.750000", "dec": "12.000000", "layer": "ls-dr10"}


def test_retries_recover_from_500s_and_timeouts(server, tmp_path):
    server.plan = ["500", "sleep", "500"]
    got = _client(server, tmp_path, max_retries=3).fetch(RA, DEC)
    np.testing.assert_array_equal(got.images["z"], PSFS["z"].astype(np.float64))
    assert len(server.requests) == 4


def test_persistent_500s_give_an_error_naming_the_position(server, tmp_path):
    server.plan = ["500"] * 3
    with pytest.raises(CoaddPsfError, match=r"ra=244\.750000, dec=12\.000000.*bands g,r,z unavailable.*HTTP 500") as err:
        _client(server, tmp_path, max_retries=2).fetch(RA, DEC)
    assert err.value.bands == ("g", "r", "z") and len(server.requests) == 3


def test_malformed_fits_is_retried_then_named(server, tmp_path):
    server.plan = ["garbage"] * 3
    with pytest.raises(CoaddPsfError, match=r"ra=244\.750000, dec=12\.000000: malformed FITS.*bands g,r,z") as err:
        _client(server, tmp_path, max_retries=2).fetch(RA, DEC)
    assert len(server.requests) == 3 and err.value.bands == ("g", "r", "z")
    assert not list((tmp_path / "cache").rglob("*.bin")), "a malformed body must not be cached"
    server.plan = ["truncated"] * 2 + ["ok"]
    got = _client(server, tmp_path, max_retries=2).fetch(RA, DEC)  # truncated FITS: retried, then fine
    np.testing.assert_array_equal(got.images["g"], PSFS["g"].astype(np.float64))
    with pytest.raises(CoaddPsfError, match=r"ra=1\.000000, dec=2\.000000: malformed FITS"):
        parse_coadd_psf_fits(_fits_body()[:3000], 1.0, 2.0)  # truncated inside the first band HDU


def test_missing_band_and_bad_band_data_name_the_band_and_position(server, tmp_path):
    server.plan = ["no_z", "nan_r", "nan_r"]
    client = _client(server, tmp_path, max_retries=1)
    with pytest.raises(CoaddPsfError, match=r"ra=244\.750000, dec=12\.000000: band z missing .*bands found: g,r") as err:
        client.fetch(RA, DEC)
    assert err.value.bands == ("z",) and len(server.requests) == 1  # a valid answer: not retried
    with pytest.raises(CoaddPsfError, match=r"ra=10\.000000, dec=-5\.000000: band r: PSF image has non-finite pixels") as err:
        client.fetch(10.0, -5.0)
    assert err.value.bands == ("r",) and len(server.requests) == 3  # unusable data: retried once
    again = pickle.loads(pickle.dumps(err.value))  # crosses the Spark executor boundary
    assert isinstance(again, CoaddPsfError) and again.bands == ("r",) and str(again) == str(err.value)


def test_brick_cache_makes_one_request_per_brick_and_remembers_failures(server, tmp_path):
    cache = BrickPsfCache(_client(server, tmp_path))
    for _ in range(5):  # five stamps of one brick
        cache.get(BRICK, RA, DEC)
    cache.get("2450p120", 245.0, 12.0)
    assert cache.requests == 2 and len(server.requests) == 2
    server.plan = ["no_z"]
    for _ in range(3):
        with pytest.raises(CoaddPsfError, match="brick 2447p117: .*band z missing"):
            cache.get("2447p117", RA, 11.75)
    assert cache.requests == 3 and len(server.requests) == 3
    # a fresh process (new cache object, same disk cache) makes no request for a brick it has on disk
    fresh = BrickPsfCache(_client(server, tmp_path))
    fresh.get(BRICK, RA, DEC)
    assert fresh.client.http.n_requests == 0 and fresh.client.http.n_cache_hits == 1


def test_brick_psf_spec_uses_the_coadd_psf_or_flags_the_analytic_fallback(server, tmp_path):
    cache = BrickPsfCache(_client(server, tmp_path))
    wings = PsfWingsConfig()
    spec = brick_psf_spec(cache, BRICK, RA, DEC, "grz", fallback_fwhm_arcsec=(1.3, 1.2, 1.1), kernel_size=65, wings=wings)
    assert spec.model == "pixel" and spec.source == f"coadd-psf:ls-dr10:brick={BRICK}" and not spec.is_fallback
    for b, k, f in zip("grz", spec.kernels, spec.fwhm_arcsec):
        assert k.shape == (65, 65) and abs(k.sum() - 1) < 1e-12
        # the wings leave the core's Gaussian-fit FWHM within 2% of the served core's
        assert f == pytest.approx(psf.gaussian_fwhm_arcsec(PSFS[b].astype(np.float64), psf.DR10_PIXSCALE_ARCSEC), rel=0.02), b

    server.plan = ["no_z"]
    fb = brick_psf_spec(cache, "2447p117", RA, 11.75, "grz", fallback_fwhm_arcsec=(1.3, 1.2, 1.1), fallback_model="moffat", moffat_beta=3.5)
    truth = fb.truth_fields()
    assert fb.model == "moffat" and fb.fallback_bands == ("z",) and truth["psf_fallback_analytic"] is True
    assert "band z missing" in truth["psf_fallback_reason"] and "dec=11.750000" in truth["psf_fallback_reason"]
    assert truth["psf_fwhm_used_r_arcsec"] == 1.2 and truth["psf_source"] == "analytic:brick-psfsize:brick=2447p117"
