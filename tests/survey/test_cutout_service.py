"""Cutout-service client and the HTTP client under it, against a local server on 127.0.0.1
serving the six real DR10 cutouts (tests/data/cutouts_dr10), with injected failures."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
from survey_test_helpers import load_real_cutouts, robust_invvar

from dhs_spark.errors import RejectError
from dhs_spark.survey.cutout_service import CutoutServiceClient
from dhs_spark.survey.http import CachedHttpClient, HttpRequestError

REAL = load_real_cutouts()


def _client(server, tmp_path, **kw):
    opts = dict(cache_dir=tmp_path / "cache", timeout_s=1.0, max_retries=3, backoff_s=0.0, min_interval_s=0.0)
    opts.update(kw)
    return CutoutServiceClient(base_url=server.base_url, **opts)


@pytest.mark.parametrize("gid", sorted(REAL))
def test_returns_the_real_cutout_exactly(cutout_server, tmp_path, gid):
    real = REAL[gid]
    cut = _client(cutout_server, tmp_path).fetch(real["ra"], real["dec"], size=101, bands="grz", with_invvar=True)
    assert cut.image.shape == (3, 101, 101) and cut.image.dtype == np.float32
    np.testing.assert_array_equal(cut.image, real["chw"], err_msg=gid)  # bit-exact through FITS
    np.testing.assert_array_equal(cut.invvar, robust_invvar(real["chw"]))
    assert cut.bad_pixel_frac == 0.0 and cut.source == "cutout_service" and cut.maskbits is None
    path, q = cutout_server.requests[-1]
    assert path == "/viewer/fits-cutout" and q["layer"] == "ls-dr10" and q["pixscale"] == "0.262" and q["bands"] == "grz" and "invvar" in q


def test_band_order_and_even_size(cutout_server, tmp_path):
    real = REAL["0001m040_4091"]
    client = _client(cutout_server, tmp_path)
    zg = client.fetch(real["ra"], real["dec"], size=101, bands="zg", with_invvar=False)
    np.testing.assert_array_equal(zg.image, real["chw"][[2, 0]])
    assert zg.invvar is None and "invvar" not in cutout_server.requests[-1][1]
    even = client.fetch(real["ra"], real["dec"], size=64)
    # asks for 65 px (centred on pixel 32) and keeps [:64, :64]: the object stays on pixel (32, 32)
    assert cutout_server.requests[-1][1]["size"] == "65"
    np.testing.assert_array_equal(even.image, real["chw"][:, 50 - 32 : 50 + 32, 50 - 32 : 50 + 32])


def test_cache_hit_makes_no_request(cutout_server, tmp_path):
    real = REAL["0003m005_293"]
    client = _client(cutout_server, tmp_path)
    first = client.fetch(real["ra"], real["dec"])
    n = len(cutout_server.requests)
    again = _client(cutout_server, tmp_path).fetch(real["ra"], real["dec"])  # a new client, same cache dir
    assert len(cutout_server.requests) == n
    np.testing.assert_array_equal(first.image, again.image)


@pytest.mark.parametrize("failures", [["500", "500"], ["timeout"], ["truncated"], ["500", "timeout", "truncated"]])
def test_retries_recover(cutout_server, tmp_path, failures):
    real = REAL["0001m060_2396"]
    cutout_server.plan = list(failures)
    cut = _client(cutout_server, tmp_path).fetch(real["ra"], real["dec"])
    np.testing.assert_array_equal(cut.image, real["chw"])
    assert len(cutout_server.requests) == len(failures) + 1


def test_persistent_failures_become_rejects(cutout_server, tmp_path):
    real = REAL["0006p270_2574"]
    cutout_server.plan = ["500"] * 4
    with pytest.raises(RejectError) as exc:
        _client(cutout_server, tmp_path).fetch(real["ra"], real["dec"])
    assert exc.value.reason == "download_failed" and "HTTP 500" in exc.value.detail and "4 attempt" in exc.value.detail
    for mode, reason in (("short", "corrupt_fits"), ("garbage", "corrupt_fits"), ("noband", "missing_band")):
        cutout_server.plan = [mode] * 4
        with pytest.raises(RejectError) as exc:
            _client(cutout_server, tmp_path / mode).fetch(real["ra"], real["dec"])
        assert exc.value.reason == reason, mode
        assert not list((tmp_path / mode / "cache").rglob("*.bin")), "an invalid body must never be cached"


def test_backoff_and_rate_limit(cutout_server, tmp_path):
    sleeps = []
    http = CachedHttpClient(cutout_server.base_url, None, timeout_s=1.0, max_retries=3, backoff_s=0.25, min_interval_s=0.0, sleep=sleeps.append)
    cutout_server.plan = ["500", "500", "500"]
    real = REAL["3598m030_3212"]
    CutoutServiceClient(http=http).fetch(real["ra"], real["dec"])
    assert sleeps == [0.25, 0.5, 1.0]  # backoff_s * 2**k before retry k+1
    # rate limit: requests start at least min_interval_s apart (the waits are requested of sleep)
    waits = []
    polite = CachedHttpClient(cutout_server.base_url, None, timeout_s=1.0, min_interval_s=5.0, sleep=waits.append)
    t0 = time.monotonic()
    polite.get_bytes("fits-cutout", {"ra": real["ra"], "dec": real["dec"], "size": 11})
    polite.get_bytes("fits-cutout", {"ra": real["ra"], "dec": real["dec"], "size": 13})
    elapsed_s = time.monotonic() - t0  # bounds the wait from below however slow the machine is
    assert len(waits) == 1 and 5.0 - elapsed_s <= waits[0] <= 5.0


def test_http_client_errors_and_pickle(cutout_server, tmp_path):
    http = CachedHttpClient(cutout_server.base_url, tmp_path, timeout_s=1.0, max_retries=2, backoff_s=0.0, min_interval_s=0.0)
    with pytest.raises(HttpRequestError) as exc:
        http.get_bytes("no-such-endpoint", {"a": 1})
    assert exc.value.status == 404 and exc.value.attempts == 1  # 4xx: no retry
    clone = pickle.loads(pickle.dumps(http))
    assert clone.url("x", {"b": 2, "a": 1}) == f"{cutout_server.base_url}/x?a=1&b=2"
    assert clone.cache_path("x", {"a": 1, "b": 2}) == http.cache_path("x", {"b": 2, "a": 1})
    err = pickle.loads(pickle.dumps(exc.value))
    assert err.status == 404 and "no-such-endpoint" in str(err)
