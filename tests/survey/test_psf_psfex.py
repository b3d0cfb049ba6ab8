"""PsfEx reader, resampling, sizes, wings and PsfSpec of dhs_spark.survey.psf, on the 8 real DECam
CCD models of brick 2447p120 (tests/data/decam_ccds, legacypipe test data, BSD)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from dhs_spark.config.experiment import ExperimentConfig, PsfWingsConfig, from_dict
from dhs_spark.errors import ConfigErrors, InputDataError
from dhs_spark.schema import STAMP_OUTPUT_COLUMNS
from dhs_spark.sims.psf import FWHM_PER_SIGMA, gaussian_kernel
from dhs_spark.survey import psf

DATA = Path(__file__).resolve().parents[1] / "data" / "decam_ccds"
MODEL_FILES = sorted(DATA.glob("calib/psfex-single/**/*-psfex.fits"))
PIX = psf.DR10_PIXSCALE_ARCSEC


def _ccd_rows():
    rows = fits.getdata(DATA / "survey-ccds-1.fits.gz", 1)
    return {int(r["expnum"]): r for r in rows}


CCDS = _ccd_rows()


def test_the_eight_real_models_are_there():
    assert len(MODEL_FILES) == 8
    assert sorted(CCDS[psf.load_psfex(str(f)).expnum]["filter"].strip() for f in MODEL_FILES) == list("gggrrzzz")


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name[:30])
def test_psfex_image_at_ccd_centre_matches_survey_ccds(path):
    """Acceptance: at the CCD centre the model's FWHM is within 10% of survey-ccds ``fwhm`` (pixels,
    a Gaussian-fit seeing, which is what gaussian_fwhm_arcsec measures), it sums to 1 and its flux
    centroid is within 0.05 px of the central pixel. Checked at the polynomial origin (the full
    CCD's centre) and at the centre of the cropped image survey-ccds describes (width x height)."""
    model = psf.load_psfex(str(path))
    row = CCDS[model.expnum]
    crop_centre = ((row["width"] - 1) / 2.0, (row["height"] - 1) / 2.0)
    for x, y in (model.centre_xy, crop_centre):
        img = psf.psfex_image(path, x, y)
        assert img.ndim == 2 and img.shape[0] == img.shape[1] and img.shape[0] % 2 == 1, img.shape
        assert abs(img.sum() - 1.0) < 1e-12, (path.name, img.sum())
        dx, dy = psf.centroid_offset(img)
        assert math.hypot(dx, dy) < 0.05, (path.name, dx, dy)
        fwhm_pix = psf.gaussian_fwhm_arcsec(img, 1.0)
        assert abs(fwhm_pix / row["fwhm"] - 1.0) < 0.10, (path.name, (x, y), fwhm_pix, row["fwhm"])
        # the peak is the central pixel: the image is on the CCD grid, not shifted by a pixel
        assert np.unravel_index(img.argmax(), img.shape) == (img.shape[0] // 2,) * 2


def _direct_polynomial(path, x, y):
    """Independent evaluation straight from the FITS row: PsfEx degree-2 terms
    1, dx, dx^2, dy, dx*dy, dy^2 with dx = (x + 1 - polzero1) / polscal1 (X_IMAGE is 1-based)."""
    row = fits.getdata(path, 1)[0]
    assert row["poldeg1"] == 2 and row["psf_mask"].shape[0] == 6
    dx = (x + 1 - row["polzero1"]) / row["polscal1"]
    dy = (y + 1 - row["polzero2"]) / row["polscal2"]
    b = row["psf_mask"].astype(np.float64)
    return b[0] + b[1] * dx + b[2] * dx**2 + b[3] * dy + b[4] * dx * dy + b[5] * dy**2


def _second_moments(img, r_max_pix=8.0):
    """Second central moments (Ixx, Iyy, Ixy) inside r < 8 px (~2", 2-3 FWHM): the core, where
    the model is well measured; the full 63x63 moments are dominated by the noisy outer model,
    negative in places at the extrapolated corners."""
    n = img.shape[0]
    off = np.arange(n) - n // 2
    w = img * (psf.radius_grid_pix(n) < r_max_pix)
    w = w / w.sum()
    mx, my = (w.sum(axis=0) * off).sum(), (w.sum(axis=1) * off).sum()
    xx, yy = off[None, :] - mx, off[:, None] - my
    return np.array([(w * xx * xx).sum(), (w * yy * yy).sum(), (w * xx * yy).sum()])


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.name[:30])
def test_psf_varies_across_the_ccd_as_the_polynomial_says(path):
    """Two opposite corners of the fitted CCD area: the raw model equals the direct polynomial
    evaluation; the returned (normalised, re-centred) image keeps its shape (core second central
    moments within 0.5% of Ixx + Iyy; measured <= 0.2%), and at least one corner differs from the
    centre by more than that (measured 1.1-2.9%), so ignoring the polynomial would fail."""
    model = psf.load_psfex(str(path))
    cx, cy = model.centre_xy
    corners = [(cx - model.x_scale / 2, cy - model.y_scale / 2), (cx + model.x_scale / 2, cy + model.y_scale / 2)]
    centre_moments = _second_moments(psf.psfex_image(path, cx, cy))
    changed = False
    for x, y in corners:
        direct = _direct_polynomial(path, x, y)
        np.testing.assert_allclose(model.raw_image(x, y), direct, rtol=0, atol=1e-7 * np.abs(direct).max(), err_msg=f"{path.name} at {(x, y)}")
        img = psf.psfex_image(path, x, y)
        m_img, m_direct = _second_moments(img), _second_moments(direct)
        size = m_direct[0] + m_direct[1]
        np.testing.assert_allclose(m_img, m_direct, rtol=0, atol=0.005 * size, err_msg=f"{path.name} at {(x, y)}")
        changed |= bool(np.abs(m_img - centre_moments).max() > 0.005 * size)
    assert changed, f"{path.name}: corners indistinguishable from the centre; the polynomial was not applied"


def test_polynomial_terms_follow_psfex_order():
    model = psf.load_psfex(str(MODEL_FILES[0]))
    x = model.x_zero - 1 + 0.3 * model.x_scale  # dx = 0.3
    y = model.y_zero - 1 - 0.2 * model.y_scale  # dy = -0.2
    np.testing.assert_allclose(model.polynomial_terms(x, y), [1, 0.3, 0.09, -0.2, -0.06, 0.04], atol=1e-12)


def _plain_psfex_file(tmp_path, src, samp=1.0, mask=None):
    """A plain PsfEx file (keywords in the table header, upper-case PSF_MASK column) from a
    legacypipe one."""
    row = fits.getdata(src, 1)[0]
    mask = row["psf_mask"] if mask is None else mask
    col = fits.Column(name="PSF_MASK", format=f"{mask.size}E", dim=str(tuple(reversed(mask.shape))).replace(" ", ""), array=mask[None])
    hdu = fits.BinTableHDU.from_columns([col])
    for key in ("POLNAXIS", "POLNGRP", "POLGRP1", "POLGRP2", "POLNAME1", "POLNAME2", "POLZERO1", "POLZERO2", "POLSCAL1", "POLSCAL2", "POLDEG1"):
        hdu.header[key] = row[key.lower()]
    hdu.header["PSFNAXIS"] = 3
    for i, n in enumerate(reversed(mask.shape)):
        hdu.header[f"PSFAXIS{i + 1}"] = n
    hdu.header["PSF_SAMP"] = samp
    out = tmp_path / f"plain_{samp}.psf"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    return out


def test_plain_psfex_header_keywords_give_the_same_psf(tmp_path):
    src = MODEL_FILES[3]
    plain = _plain_psfex_file(tmp_path, src)
    m = psf.load_psfex(str(src))
    x, y = m.centre_xy[0] + 400.0, m.centre_xy[1] - 900.0
    np.testing.assert_allclose(psf.psfex_image(plain, x, y), psf.psfex_image(src, x, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", MODEL_FILES[::3], ids=lambda p: p.name[:30])
def test_raw_model_matches_galsim_des_psfex(tmp_path, path):
    """GalSim's independent PsfEx reader (galsim.des.DES_PSFEx, 1-based image positions) gives the
    same image as our raw model at the 0-based pixel one less, to 1e-6 of the peak (measured
    5e-8); evaluating GalSim at the 0-based position instead differs by ~2.5e-5, so the test
    pins the 1-based X_IMAGE convention."""
    import galsim
    import galsim.des

    model = psf.load_psfex(str(path))
    des = galsim.des.DES_PSFEx(str(_plain_psfex_file(tmp_path, path)))
    x, y = model.centre_xy[0] + 500.0, model.centre_xy[1] - 1200.0
    ours = model.raw_image(x, y)
    theirs = des.getPSF(galsim.PositionD(x + 1, y + 1)).drawImage(nx=ours.shape[1], ny=ours.shape[0], scale=1.0, method="no_pixel").array
    np.testing.assert_allclose(theirs / theirs.sum(), ours / ours.sum(), rtol=0, atol=1e-6 * (ours / ours.sum()).max())


def test_psf_samp_below_one_is_resampled_to_the_ccd_grid(tmp_path):
    """A model with PSF_SAMP = 0.5 (basis pixels half an image pixel) holding a Gaussian of
    sigma = 4 basis pixels is a Gaussian of sigma = 2 image pixels on the CCD grid."""
    n = 63
    off = np.arange(n) - n // 2
    g = np.exp(-(off[None, :] ** 2 + off[:, None] ** 2) / (2 * 4.0**2))
    mask = np.zeros((6, n, n), dtype=np.float32)
    mask[0] = g / g.sum()
    path = _plain_psfex_file(tmp_path, MODEL_FILES[0], samp=0.5, mask=mask)
    img = psf.psfex_image(path, 100.0, 200.0)
    assert img.shape == (31, 31)
    assert psf.gaussian_fwhm_arcsec(img, 1.0) == pytest.approx(2.0 * FWHM_PER_SIGMA, rel=1e-3)


def test_bad_psfex_files_name_the_file(tmp_path):
    notpsf = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((4, 4))), fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])]).writeto(notpsf)
    with pytest.raises(InputDataError, match="image.fits.*PSF_MASK"):
        psf.PsfExModel.from_fits(notpsf)
    garbage = tmp_path / "garbage-psfex.fits"
    garbage.write_bytes(b"not a fits file at all" * 100)
    with pytest.raises(InputDataError, match="garbage-psfex.fits"):
        psf.PsfExModel.from_fits(garbage)
    wrong_terms = _plain_psfex_file(tmp_path, MODEL_FILES[0], mask=np.ones((4, 9, 9), dtype=np.float32))
    with pytest.raises(InputDataError, match="4 basis images; degree 2 needs 6"):
        psf.PsfExModel.from_fits(wrong_terms)


def test_normalise_and_centre_moves_an_offset_gaussian_onto_the_centre():
    n = 41
    off = np.arange(n) - n // 2
    img = np.exp(-((off[None, :] - 0.3) ** 2 + (off[:, None] + 0.2) ** 2) / (2 * 2.5**2))
    out = psf.normalise_and_centre(3.0 * img)
    assert abs(out.sum() - 1) < 1e-12
    assert max(abs(v) for v in psf.centroid_offset(out)) < 1e-4
    centred = np.exp(-(off[None, :] ** 2 + off[:, None] ** 2) / (2 * 2.5**2))
    # cubic-spline sub-pixel shift: ~3e-4 of the peak for a 0.3 px shift of a sigma = 2.5 px Gaussian
    np.testing.assert_allclose(out, centred / centred.sum(), atol=5e-4 * out.max())
    even = psf.normalise_and_centre(centred[1:, 1:])  # 40 x 40: padded to 41 x 41, then centred
    assert even.shape == (41, 41) and max(abs(v) for v in psf.centroid_offset(even)) < 1e-4
    tall = psf.normalise_and_centre(centred[:, 5:-5])  # 41 x 31 -> 41 x 41, same centre pixel
    assert tall.shape == (41, 41) and tall.argmax() == np.ravel_multi_index((20, 20), (41, 41))
    with pytest.raises(ValueError, match="no positive flux"):
        psf.normalise_and_centre(np.zeros((5, 5)))


@pytest.mark.parametrize("factor, fwhm_arcsec, tol", [(0.7, 1.1, 1e-3), (1.5, 1.5, 3e-3)])
def test_resample_psf_matches_the_analytic_profile(factor, fwhm_arcsec, tol):
    """An effective Gaussian PSF sampled at 0.262 * factor "/px (finer: 0.7, coarser: 1.5; pixel
    centres not coinciding with the output's), resampled to 0.262"/px, equals the same Gaussian
    sampled at 0.262"/px to relative L1 ``tol`` (cubic-interpolation error, measured 1e-4 and
    1.5e-3; coarse input sampling limits it), and keeps its FWHM to 0.2%."""
    sigma = fwhm_arcsec / FWHM_PER_SIGMA

    def sampled(pix, n):
        off = (np.arange(n) - n // 2) * pix
        g = np.exp(-(off[None, :] ** 2 + off[:, None] ** 2) / (2 * sigma**2))
        return g / g.sum()

    src = sampled(PIX * factor, 2 * int(round(12 / factor)) + 1)
    out = psf.resample_psf(src, PIX * factor, PIX, size=25)
    ref = sampled(PIX, 25)
    assert np.abs(out - ref).sum() / ref.sum() < tol, np.abs(out - ref).sum()
    assert psf.gaussian_fwhm_arcsec(out, PIX) == pytest.approx(fwhm_arcsec, rel=2e-3)
    assert abs(out.sum() - 1) < 1e-12 and max(abs(v) for v in psf.centroid_offset(out)) < 1e-4


def test_gaussian_fwhm_and_moffat_fit_recover_known_profiles():
    """Gaussian-fit FWHM of a Gaussian image is its FWHM; the Moffat fit recovers (alpha, beta)
    of a Moffat sampled at pixel centres (the fit's own model, so to 1e-4)."""
    n = 65
    r = psf.radius_grid_pix(n) * PIX
    gauss = np.exp(-(r**2) / (2 * (1.3 / FWHM_PER_SIGMA) ** 2))
    assert psf.gaussian_fwhm_arcsec(gauss / gauss.sum(), PIX) == pytest.approx(1.3, rel=1e-6)
    mof = psf.moffat_sb(r, 0.9, 2.6) * PIX**2
    mof /= mof.sum()  # as a centred normalised image is
    fit = psf.fit_moffat(mof, PIX, 0.0, 5.0)
    assert fit.alpha_arcsec == pytest.approx(0.9, rel=2e-2) and fit.beta == pytest.approx(2.6, rel=2e-2)
    assert fit.fwhm_arcsec == pytest.approx(psf.moffat_fwhm(0.9, 2.6), rel=1e-2)
    # moffat_fwhm agrees with the half-maximum of the profile itself
    assert psf.moffat_sb(psf.moffat_fwhm(0.9, 2.6) / 2, 0.9, 2.6) == pytest.approx(psf.moffat_sb(0.0, 0.9, 2.6) / 2, rel=1e-12)


@pytest.mark.parametrize("band", ["g", "r", "z"])
def test_wings_follow_the_documented_outer_profile(band):
    """With wings, a real PsfEx core keeps its shape inside R1 and, beyond R4, follows the
    documented outer profile of a unit-flux star (A r^-2 in g/r, weight x Moffat in z) up to the
    single renormalisation factor; the kernel sums to 1 and stays centred."""
    path = next(f for f in MODEL_FILES if CCDS[psf.load_psfex(str(f)).expnum]["filter"].strip() == band)
    m = psf.load_psfex(str(path))
    core = psf.psfex_image(path, *m.centre_xy)
    wings = PsfWingsConfig()
    size = 101
    k = psf.extend_with_wings(core, band, PIX, size, wings)
    assert k.shape == (size, size) and abs(k.sum() - 1) < 1e-12
    assert max(abs(v) for v in psf.centroid_offset(k)) < 1e-3
    r = psf.radius_grid_pix(size) * PIX
    outer = psf.outer_wing_sb(r, band, wings) * PIX**2
    far = r > wings.blend_radii_arcsec[3]
    scale = k[far].sum() / outer[far].sum()
    assert 0.9 < scale < 1.1, scale  # the renormalisation is a small correction
    np.testing.assert_allclose(k[far], scale * outer[far], rtol=0.02)
    # inside R1 the core is kept; the final re-centring shifts it by ~0.02 px (the core's own
    # asymmetric 5-8" halo, which the symmetric model replaces, had pulled the centroid), i.e.
    # up to ~2% of the peak pixel
    inner = r < wings.blend_radii_arcsec[0] - 1.0
    core_big = psf.crop_or_pad(core, size)
    np.testing.assert_allclose(k[inner], core_big[inner] * (k[inner].sum() / core_big[inner].sum()), atol=0.025 * core.max())
    assert 0.97 < k[inner].sum() / core_big[inner].sum() < 1.03
    # documented amplitudes: at 10" a unit-flux star has 4.5e-6 (g), 3.3e-6 (r) per arcsec^2
    if band != "z":
        assert psf.outer_wing_sb(10.0, band, wings) == pytest.approx({"g": 4.5e-6, "r": 3.3e-6}[band], rel=1e-12)


def test_wings_config_validates_and_round_trips(tmp_path):
    cfg = ExperimentConfig(output_dir=str(tmp_path))
    cfg.to_yaml(tmp_path / "c.yaml")
    assert ExperimentConfig.from_yaml(tmp_path / "c.yaml").data.psf_wings == PsfWingsConfig()
    bad = cfg.to_dict()
    bad["data"]["psf_wings"]["blend_radii_arcsec"] = [5.0, 4.0, 7.0, 8.0]
    bad["data"]["psf_wings"]["z_moffat_beta"] = 0.9
    with pytest.raises(ConfigErrors) as err:
        from_dict(bad)
    text = str(err.value)
    assert "data.psf_wings.blend_radii_arcsec" in text and "data.psf_wings.z_moffat_beta" in text


def test_pixel_psf_spec_records_source_fwhm_and_pickles():
    """A Gaussian image given as a 'pixel' PSF records the Gaussian's FWHM (within 1%: the
    kernel is pixel-integrated, which the Gaussian fit sees as sqrt(F^2 + pixel term));
    its truth fields name the source; the spec and its errors survive pickling (Spark)."""
    fwhm = (1.5, 1.3, 1.2)
    images = {b: gaussian_kernel(f, PIX, 41) for b, f in zip("grz", fwhm)}
    spec = psf.pixel_psf_spec(images, "psfex:test", "grz", PIX, PIX, kernel_size=41)
    for f_meas, f in zip(spec.fwhm_arcsec, fwhm):
        assert f_meas == pytest.approx(math.sqrt(f**2 + FWHM_PER_SIGMA**2 * PIX**2 / 12), rel=1e-2)
    truth = spec.truth_fields()
    assert truth["psf_model"] == "pixel" and truth["psf_source"] == "psfex:test" and truth["psf_fallback_analytic"] is False
    assert {c.name for c in STAMP_OUTPUT_COLUMNS} >= set(truth), set(truth) - {c.name for c in STAMP_OUTPUT_COLUMNS}
    kw = spec.inject_kwargs()
    assert kw["psf_model"] == "pixel" and len(kw["psf_kernels"]) == 3
    again = pickle.loads(pickle.dumps(spec))
    np.testing.assert_array_equal(again.kernels[1], spec.kernels[1])
    with pytest.raises(InputDataError, match="no PSF image for band z"):
        psf.pixel_psf_spec({"g": images["g"]}, "coadd-psf:x", "gz", PIX)
    with pytest.raises(ValueError, match="moffat_beta"):
        psf.PsfSpec("moffat", "analytic", ("r",), (1.2,))


def test_analytic_fallback_is_flagged_and_logged(caplog):
    with caplog.at_level("WARNING", logger="dhs_spark.survey.psf"):
        spec = psf.analytic_psf_spec("moffat", (1.4, 1.2, 1.1), "grz", "analytic:brick-psfsize", moffat_beta=3.5, fallback_bands=("r",), fallback_reason="band r missing")
    assert spec.truth_fields()["psf_fallback_analytic"] is True and spec.fallback_bands == ("r",)
    assert "band r missing" in caplog.text and "band r missing" in spec.truth_fields()["psf_fallback_reason"]
    assert spec.inject_kwargs() == {"psf_model": "moffat", "psf_fwhm_arcsec": [1.4, 1.2, 1.1], "moffat_beta": 3.5}


def test_psfex_psf_spec_names_each_ccd_and_position():
    ccds = {}
    for path in MODEL_FILES:
        m = psf.load_psfex(str(path))
        ccds.setdefault(CCDS[m.expnum]["filter"].strip(), (str(path), 20.0, 25.0))
    spec = psf.psfex_psf_spec(ccds, "grz", kernel_size=45)
    assert spec.model == "pixel" and all(k.shape == (45, 45) for k in spec.kernels)
    for b in "grz":
        assert f"{b}={Path(ccds[b][0]).name}@20,25" in spec.source
    g = psf.psfex_image(ccds["g"][0], 20.0, 25.0)
    assert spec.fwhm_arcsec[0] == pytest.approx(psf.gaussian_fwhm_arcsec(g, PIX), rel=1e-3)
    with pytest.raises(InputDataError, match="no PSF image for band z"):
        psf.psfex_psf_spec({"g": ccds["g"]}, "gz")
