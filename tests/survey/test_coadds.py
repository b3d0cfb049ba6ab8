"""Cutouts from mock coadd bricks: centring, invvar, maskbits, and every reject reason."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from dhs_spark.errors import RejectError
from dhs_spark.survey.coadds import MASKBITS, CoaddBrick, coadd_file_name


def windowed_centroid(img: np.ndarray, var: np.ndarray, x: float, y: float, sigma_pix: float = 3.0, n_iter: int = 100):
    """Gaussian-windowed centroid iterated to its fixed point (unbiased for a symmetric profile),
    with its 1-sigma noise from the pixel variances ``var`` (linear error propagation)."""
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    for _ in range(n_iter):
        win = np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma_pix**2)
        w = win * img
        x, y = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    err_x = np.sqrt((win**2 * (xx - x) ** 2 * var).sum()) / w.sum()
    err_y = np.sqrt((win**2 * (yy - y) ** 2 * var).sum()) / w.sum()
    return x, y, err_x, err_y


@pytest.fixture(scope="module")
def catalog(mock_survey):
    return pd.read_parquet(mock_survey.catalog_parquet)


@pytest.mark.parametrize("size", [101, 64])
def test_lrg_light_centroid_on_centre_pixel(mock_survey, catalog, size):
    lrgs = catalog[catalog["MOCK_ROLE"] == "lrg"]
    c0 = size // 2
    n = 0
    for name, rows in lrgs.groupby("BRICKNAME"):
        brick = CoaddBrick(mock_survey.root, name)
        for _, row in rows.iterrows():
            cut = brick.cutout(row["RA"], row["DEC"], size)
            assert cut.image.shape == cut.invvar.shape == (3, size, size) and cut.image.dtype == np.float32
            assert (cut.invvar > 0).all() and cut.maskbits.shape == (size, size)
            # the WCS recovers the pixel where the mock drew the object (TAN round trip: < 1e-6 px)
            assert cut.x_pix == pytest.approx(row["MOCK_X_PIX"], abs=1e-6) and cut.y_pix == pytest.approx(row["MOCK_Y_PIX"], abs=1e-6)
            assert abs(cut.offset_x_pix) <= 0.5 and abs(cut.offset_y_pix) <= 0.5
            cx, cy, ex, ey = windowed_centroid(cut.image.sum(axis=0), (1.0 / cut.invvar).sum(axis=0), c0, c0)
            # tolerance: 4 sigma of the pixel noise, plus 0.05 px for the mock's box-truncated
            # Sersic wings and the RICE quantisation; the noise-free offset is |dx|, |dy| <= 0.5
            assert abs(cx - (c0 + cut.offset_x_pix)) < 0.05 + 4 * ex, (name, row["OBJID"], cx, ex)
            assert abs(cy - (c0 + cut.offset_y_pix)) < 0.05 + 4 * ey, (name, row["OBJID"], cy, ey)
            assert max(ex, ey) < 0.1  # the check has teeth: a 1-px mis-centring would fail it
            n += 1
    assert n == len(lrgs) == 12


def test_axis_convention_west_is_plus_x(mock_survey, catalog):
    row = catalog[catalog["MOCK_ROLE"] == "lrg"].iloc[0]
    brick = CoaddBrick(mock_survey.root, row["BRICKNAME"])
    x0, y0 = brick.pixel_of(row["RA"], row["DEC"])
    x1, y1 = brick.pixel_of(row["RA"] - 10 * 0.262 / 3600 / np.cos(np.deg2rad(row["DEC"])), row["DEC"] + 5 * 0.262 / 3600)
    assert x1[0] - x0[0] == pytest.approx(10, abs=1e-3)  # west (RA decreasing) -> +x (numpy axis 1)
    assert y1[0] - y0[0] == pytest.approx(5, abs=1e-3)  # north -> +y (numpy axis 0)


def test_invvar_matches_pixel_noise(mock_survey, catalog):
    # away from every object the image scatter equals 1/sqrt(invvar): chi^2 per pixel ~ 1
    name = mock_survey.bricknames[0]
    brick = CoaddBrick(mock_survey.root, name)
    brick.load()
    objs = catalog[catalog["BRICKNAME"] == name]
    yy, xx = np.mgrid[: brick.shape[0], : brick.shape[1]]
    far = np.ones(brick.shape, bool)
    for x, y in zip(objs["MOCK_X_PIX"], objs["MOCK_Y_PIX"]):
        far &= (xx - x) ** 2 + (yy - y) ** 2 > 30**2
    for k, band in enumerate("grz"):
        good = far & (brick.invvar[k] > 0)
        chi2 = float((brick.image[k][good] ** 2 * brick.invvar[k][good]).mean())
        # > 10^4 pixels: sampling error ~0.015; RICE quantisation (q=16) adds ~0.3% variance
        assert good.sum() > 10_000 and chi2 == pytest.approx(1.0, abs=0.06), band


def test_edge_reject_and_bad_pixels(mock_survey):
    name = mock_survey.bricknames[0]
    brick = CoaddBrick(mock_survey.root, name)
    x, y = 30.0, 200.0
    brick.load()
    ra, dec = brick.wcs.all_pix2world([x], [y], 0)
    with pytest.raises(RejectError) as exc:
        brick.cutout(ra[0], dec[0], 101)
    assert exc.value.reason == "edge"
    assert brick.cutout(ra[0], dec[0], 41).image.shape == (3, 41, 41)  # a smaller stamp fits
    far_ra, far_dec = brick.wcs.all_pix2world([-500.0], [200.0], 0)
    with pytest.raises(RejectError) as exc:
        brick.cutout(far_ra[0], far_dec[0], 21)
    assert exc.value.reason == "off_brick"
    # the no-data rectangles: invvar 0 and ALLMASK bits, reported by bad_pixel_frac / maskbits_or
    iy, ix = np.argwhere(brick.invvar[0] == 0)[0]
    r2, d2 = brick.wcs.all_pix2world([float(ix)], [float(iy)], 0)
    try:
        cut = brick.cutout(r2[0], d2[0], 21)
    except RejectError as err:  # a hole right at the edge of the mock image
        assert err.reason == "edge"
    else:
        assert cut.bad_pixel_frac > 0 and cut.maskbits_or & (1 << MASKBITS["ALLMASK_G"])
        assert cut.maskbits_center == int(brick.maskbits[iy, ix])


def _copy_brick(mock_survey, tmp_path):
    name = mock_survey.bricknames[1]
    dst = tmp_path / name
    shutil.copytree(mock_survey.brick_dir(name), dst)
    return name, dst


def test_missing_band_and_corrupt_file_are_rejects(mock_survey, catalog, tmp_path):
    name, dst = _copy_brick(mock_survey, tmp_path)
    row = catalog[(catalog["BRICKNAME"] == name) & (catalog["MOCK_ROLE"] == "lrg")].iloc[0]
    (dst / coadd_file_name(name, "image", "z")).unlink()
    brick = CoaddBrick(dst, name)  # the brick directory itself is accepted too
    with pytest.raises(RejectError) as exc:
        brick.cutout(row["RA"], row["DEC"])
    assert exc.value.reason == "missing_band" and "z" in exc.value.detail
    assert CoaddBrick(dst, name, bands=("g", "r")).cutout(row["RA"], row["DEC"]).image.shape == (2, 101, 101)

    name2, dst2 = _copy_brick(mock_survey, tmp_path / "b")
    bad = dst2 / coadd_file_name(name2, "invvar", "r")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # truncated
    brick = CoaddBrick(dst2, name2)
    for _ in range(2):  # the failure is remembered: same reject, no re-read
        with pytest.raises(RejectError) as exc:
            brick.cutout(row["RA"], row["DEC"])
        assert exc.value.reason == "corrupt_brick" and "invvar" in exc.value.detail and str(bad) in exc.value.detail

    (dst2 / coadd_file_name(name2, "invvar", "r")).unlink()
    with pytest.raises(RejectError) as exc:
        CoaddBrick(dst2, name2).cutout(row["RA"], row["DEC"])
    assert exc.value.reason == "missing_invvar"


def test_reject_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(RejectError("edge", "detail")))
    assert (err.reason, err.detail) == ("edge", "detail")
