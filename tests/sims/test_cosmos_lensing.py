"""Lensing real HST galaxies at native 0.03" resolution through the physics core's generic renderer.

Checks: flux with no lens (every real galaxy, 1%), magnification vs lenstronomy's INTERPOL light
model on the same image (2%), the fast path vs the exact path, resampling-before-lensing vs
native lensing on the clumpiest real galaxy, the as-is (HST PSF left in) vs deconvolved bound,
and injection through ``inject_arc`` (truth names the COSMOS ident; same seed -> same bytes).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dhs_spark.sims.cosmos import COSMOS_OVERSAMPLE, COSMOSImageSource, COSMOSLoaderV2, resample_to_pixscale
from dhs_spark.sims.cosmos_build import LibraryCuts, build_library
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.psf import convolve_separable_same, gaussian_kernel_1d
from dhs_spark.sims.render import render_lensed_source, unit_lensed_image_exact

PIX = 0.262
SIZE = 48
NO_CUTS = LibraryCuts(min_snr=0.0, hlr_range_arcsec=(0.0, 10.0), min_flux_fraction_in_stamp=0.0, max_edge_fraction=1.0)


@pytest.fixture(scope="module")
def real_sources(tmp_path_factory, test_data):
    """The 15 real galaxies: 5 AEGIS (deconvolved to a 0.1" Gaussian) and 10 COSMOS F814W (as-is)."""
    out = tmp_path_factory.mktemp("cosmos_lensing")
    sources = {}
    for sub, cat, opts in (
        ("aegis_hst_5", "AEGIS_F814w_catalog.fits", {}),
        ("aegis_hst_5", "AEGIS_F814w_catalog.fits", {"psf_treatment": "hst_native"}),
        ("cosmos_f814w_10", "real_galaxy_catalog_23.5.fits", {}),
    ):
        key = f"{sub}-{opts.get('psf_treatment', 'auto')}"
        path = str(out / f"{key}.h5")
        build_library(path, cat, galsim_dir=str(test_data / "cosmos" / sub), cuts=NO_CUTS, **opts)
        loader = COSMOSLoaderV2(path)
        sources[key] = [loader.source_by_index(i) for i in range(len(loader))]
    return sources


def _all_real(real_sources):
    return real_sources["aegis_hst_5-auto"] + real_sources["cosmos_f814w_10-auto"]


def _l1(a, b):
    return float(np.abs(a - b).sum() / np.abs(b).sum())


def test_no_lens_flux_equals_requested_flux_for_every_real_galaxy(real_sources):
    """theta_E = 0: rendered flux = requested flux within 1% (exact path and fast path, oversample 8)."""
    flux = np.array([1.3, 2.0, 3.1])
    galaxies = _all_real(real_sources)
    assert len(galaxies) == 15
    no_lens = SIEShear(0.0)
    for g in galaxies:
        src = g.at(0.07, -0.11, 0.4)
        img = render_lensed_source(SIZE, PIX, COSMOS_OVERSAMPLE, no_lens, src, flux)
        np.testing.assert_allclose(img.sum(axis=(1, 2), dtype=np.float64), flux, rtol=0.01, err_msg=f"exact path, galaxy {g.ident}")
        fast = src.unit_lensed_image_fast(SIZE, PIX, COSMOS_OVERSAMPLE, no_lens)
        assert abs(fast.sum() - 1.0) < 0.01, (g.ident, fast.sum())


def _lenstronomy_interpol_image(lens, src, oversample):
    """lenstronomy 1.14: SIE + SHEAR lensing an INTERPOL light profile of the same image (SB = pixel / 0.03^2)."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    c = SIZE // 2
    data = ImageData(image_data=np.zeros((SIZE, SIZE)), ra_at_xy_0=-c * PIX, dec_at_xy_0=-c * PIX, transform_pix2angle=np.diag([PIX, PIX]))
    model = ImageModel(data, PSF(psf_type="NONE"), LensModel(["SIE", "SHEAR"]), LightModel(["INTERPOL"]), kwargs_numerics=dict(supersampling_factor=oversample))
    e = (1 - lens.q) / (1 + lens.q)
    kw_lens = [
        dict(theta_E=lens.theta_e_arcsec, e1=e * math.cos(2 * lens.phi_rad), e2=e * math.sin(2 * lens.phi_rad), center_x=0.0, center_y=0.0),
        dict(gamma1=lens.gamma1, gamma2=lens.gamma2, ra_0=0.0, dec_0=0.0),
    ]
    kw_src = [dict(image=src.image / src.pixscale_arcsec**2, amp=1.0, center_x=src.x_arcsec, center_y=src.y_arcsec, phi_G=src.phi_rad, scale=src.pixscale_arcsec)]
    return model.image(kw_lens, kw_src)  # flux per pixel (SB integrated over the pixel)


@pytest.mark.parametrize("which", [0, 6, 12])
def test_magnification_matches_lenstronomy_interpol(real_sources, which):
    """Magnification (lensed / unlensed flux, no PSF) of a real galaxy within 2% of lenstronomy's INTERPOL model.

    lenstronomy runs at supersampling 16 (its own converged answer); we run our default
    COSMOS_OVERSAMPLE (8), exact and fast paths.
    """
    g = _all_real(real_sources)[which]
    lens = SIEShear(1.3, 0.75, 0.5, 0.03, -0.02)
    src = g.at(0.12, 0.08, 1.1)
    ref = _lenstronomy_interpol_image(lens, src, 16)
    mu_ref = ref.sum()  # unlensed flux is 1 (checked by the no-lens test)
    ours = unit_lensed_image_exact(SIZE, PIX, COSMOS_OVERSAMPLE, lens, src)
    fast = src.unit_lensed_image_fast(SIZE, PIX, COSMOS_OVERSAMPLE, lens)
    assert mu_ref > 3, mu_ref
    assert abs(ours.sum() / mu_ref - 1) < 0.02, (g.ident, ours.sum(), mu_ref)
    assert abs(fast.sum() / mu_ref - 1) < 0.02, (g.ident, fast.sum(), mu_ref)
    assert _l1(ours, ref) < 0.03, (g.ident, _l1(ours, ref))  # the images agree too, not just their sums


def test_fast_path_matches_exact_path(real_sources):
    """Fast path within relative L1 1e-2 (before the PSF) and flux 2e-3 of the exact path, random lenses."""
    rng = np.random.default_rng(11)
    for g in _all_real(real_sources):
        lens = SIEShear(rng.uniform(0.5, 3.0), rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), *rng.normal(0, 0.05, 2))
        src = g.at(*rng.uniform(-0.3, 0.3, 2), rng.uniform(0, 2 * math.pi))
        exact = unit_lensed_image_exact(64, PIX, COSMOS_OVERSAMPLE, lens, src)
        fast = src.unit_lensed_image_fast(64, PIX, COSMOS_OVERSAMPLE, lens)
        assert _l1(fast, exact) < 1e-2, (g.ident, _l1(fast, exact))
        assert abs(fast.sum() / exact.sum() - 1) < 2e-3, (g.ident, fast.sum(), exact.sum())


def test_resampling_before_lensing_differs_from_native_lensing(real_sources):
    """The clumpiest real galaxy, lensed at native 0.03" vs after resampling it to 0.262" first.

    Reference: native lensing at oversample 16. Measured here: native (oversample 8) is within
    L1 0.5% before the PSF and 0.1% after a 1.2" PSF; resampled-first loses ~6% of the
    magnification, ~30% of the peak surface brightness, and is off by L1 ~20% before and ~7%
    after the PSF. Asserted with margins.
    """
    cosmos10 = real_sources["cosmos_f814w_10-auto"]
    g = max(cosmos10, key=lambda s: s.clumpiness)
    assert g.clumpiness > 0.3, g.clumpiness
    lens = SIEShear(1.2, 0.8, 0.4, 0.02, -0.01)
    native = g.at(0.1, 0.05)
    coarse = resample_to_pixscale(g.image, g.pixscale_arcsec, PIX)
    resampled = COSMOSImageSource(coarse / coarse.sum(), PIX, g.ident).at(0.1, 0.05)
    kernel = gaussian_kernel_1d(1.2, PIX)

    ref = unit_lensed_image_exact(64, PIX, 16, lens, native)
    nat = unit_lensed_image_exact(64, PIX, COSMOS_OVERSAMPLE, lens, native)
    res = unit_lensed_image_exact(64, PIX, COSMOS_OVERSAMPLE, lens, resampled)
    ref_psf, nat_psf, res_psf = (convolve_separable_same(a, kernel) for a in (ref, nat, res))
    assert _l1(nat, ref) < 0.01 and _l1(nat_psf, ref_psf) < 0.003
    assert _l1(res, ref) > 0.1 and _l1(res_psf, ref_psf) > 0.03
    assert res.sum() / ref.sum() < 0.97  # magnification underestimated
    assert res.max() / ref.max() < 0.85  # small bright knots smeared out


def test_hst_psf_left_in_vs_deconvolved_bound(real_sources):
    """As-is (HST PSF ~0.11" left in) vs deconvolved to a 0.1" Gaussian, lensed then seen with a 1.2" PSF.

    Bounds the error of the as-is treatment used for COSMOS files without PSF. Measured on the 5
    cleaned AEGIS galaxies: relative L1 3.4% for the brightest (14886, mag 22.0, SNR 122), 6.9%
    for 24216 (mag 22.8) and 9.5-12% for the three mag 24.7 ones: their pixel noise, which the
    deconvolution to a Gaussian narrower than the ACS PSF roughly doubles, is tens of per cent of
    their flux (the sky pedestal, the other term before cleaning, is now removed from both).
    """
    kernel = gaussian_kernel_1d(1.2, PIX)
    lens = SIEShear(1.2, 0.8, 0.4, 0.02, -0.01)
    for deconv, native in zip(real_sources["aegis_hst_5-auto"], real_sources["aegis_hst_5-hst_native"]):
        assert deconv.ident == native.ident
        a = convolve_separable_same(unit_lensed_image_exact(64, PIX, COSMOS_OVERSAMPLE, lens, deconv.at(0.1, 0.05)), kernel)
        b = convolve_separable_same(unit_lensed_image_exact(64, PIX, COSMOS_OVERSAMPLE, lens, native.at(0.1, 0.05)), kernel)
        bound = 0.05 if deconv.ident == "14886" else 0.14
        assert _l1(b, a) < bound, (deconv.ident, _l1(b, a))


def _galsim_source(gal, psf_fwhm_arcsec):
    import galsim

    drawn = galsim.Convolve(gal, galsim.Gaussian(fwhm=psf_fwhm_arcsec)).drawImage(nx=128, ny=128, scale=0.03).array.astype(np.float64)
    return COSMOSImageSource(drawn / drawn.sum(), 0.03, "galsim")


def test_hst_psf_broadening_estimate_matches_a_psf_free_source():
    """The second-moment estimate (one more blur) against the direct answer: noise-free GalSim discs with knots drawn
    with the 0.1" PSF and with a 0.02" one (no PSF to speak of), lensed (theta_E 1.2-1.5") and seen with a 1.2" PSF.

    Measured: direct radial broadening -0.3 to +0.4%, tangential -1.6 to +2.1%; the estimate
    within 0.4% (radial) and 1.5% (tangential) of it. Signed: a blur moves flux between the images
    of a multiple-image system, so the whole configuration's widths can also shrink a little.
    """
    import galsim

    from dhs_spark.sims.cosmos_build import arc_widths_arcsec, hst_psf_arc_broadening

    kernel = gaussian_kernel_1d(1.2, PIX, integrate_pixel=False)
    rng = np.random.default_rng(1)
    for case in range(6):
        hlr = rng.uniform(0.08, 0.3)
        gal = galsim.Exponential(half_light_radius=hlr, flux=1.0).shear(q=rng.uniform(0.4, 1.0), beta=rng.uniform(0, math.pi) * galsim.radians)
        for _ in range(2):
            gal = gal + galsim.Gaussian(sigma=0.02, flux=0.1).shift(*rng.normal(0.0, hlr, 2))
        lens = SIEShear(rng.uniform(1.2, 1.5), 0.8, 0.4, 0.02, -0.01)
        x, y = rng.uniform(-0.25, 0.25, 2)
        with_psf, without = _galsim_source(gal, 0.1).at(x, y), _galsim_source(gal, 0.02).at(x, y)
        w_with, w_without = (arc_widths_arcsec(convolve_separable_same(s.unit_lensed_image_fast(64, PIX, 8, lens), kernel), PIX) for s in (with_psf, without))
        direct = (w_with[0] / w_without[0] - 1, w_with[1] / w_without[1] - 1)
        est = hst_psf_arc_broadening(with_psf, lens, 0.1)
        assert abs(direct[0]) < 0.01 and abs(direct[1]) < 0.03, (case, direct)
        assert abs(est["radial_broadening"] - direct[0]) < 0.006, (case, est, direct)
        assert abs(est["tangential_broadening"] - direct[1]) < 0.02, (case, est, direct)


def test_hst_psf_broadening_of_real_arcs_is_small(real_sources):
    """The 15 real galaxies as the library stores them (AEGIS: 0.1" Gaussian after deconvolution; COSMOS F814W: the ACS
    PSF, 0.113"), lensed at theta_E 1.2, 1.35, 1.5" and seen with a 1.2" DR10 PSF: the median broadening of the
    arc by the PSF left in the source, over all 45 galaxy x theta_E cases:
    0.24% across the arc (max 0.70%) and 0.18% along it (-8.9% to +3.5%: the along-arc moment of the faint,
    noise-dominated AEGIS galaxies is itself noisy); on the 15 cases run here 0.22% and 0.31%. "Small" here:
    under 1% across and 2% along in the median, well under the spread of DR10's own PSF FWHM between bricks
    (tens of per cent), which the injections already sample.
    """
    from dhs_spark.sims.cosmos_build import HST_F814W_PSF_FWHM_ARCSEC, hst_psf_arc_broadening

    radial, tangential = [], []
    configs = ((1.2, (0.1, 0.05)), (1.35, (0.2, -0.1)), (1.5, (-0.05, 0.25)))
    sources = [(g, 0.1) for g in real_sources["aegis_hst_5-auto"]] + [(g, HST_F814W_PSF_FWHM_ARCSEC) for g in real_sources["cosmos_f814w_10-auto"]]
    for k, (galaxy, psf_fwhm) in enumerate(sources):
        theta_e, (x, y) = configs[k % 3]
        b = hst_psf_arc_broadening(galaxy.at(x, y, 0.7), SIEShear(theta_e, 0.8, 0.4, 0.02, -0.01), psf_fwhm)
        assert 0.4 < b["radial_width_arcsec"] < 1.0, (galaxy.ident, b)  # the 1.2" PSF's own sigma is 0.51"
        radial.append(b["radial_broadening"])
        tangential.append(b["tangential_broadening"])
    assert abs(np.median(radial)) < 0.01 and abs(np.median(tangential)) < 0.02, (radial, tangential)
    assert max(radial) < 0.02, radial


def test_inject_cosmos_source_truth_and_determinism(real_sources, tmp_path, test_data):
    """inject_arc takes the COSMOS source unchanged; truth names it; same seed -> same galaxy and same stamp bytes."""
    from dhs_spark.sims.inject import inject_arc

    path = str(tmp_path / "lib.h5")
    build_library(path, "real_galaxy_catalog_23.5.fits", galsim_dir=str(test_data / "cosmos" / "cosmos_f814w_10"))
    loader = COSMOSLoaderV2(path, random_rotation=True)
    cutout = np.zeros((3, 48, 48), dtype=np.float32)
    invvar = np.full((3, 48, 48), 400.0, dtype=np.float32)
    lens = SIEShear(1.4, 0.7, 0.3, 0.01, 0.02)

    def make(seed):
        src = loader.get_source(seed, x_arcsec=0.15, y_arcsec=-0.05)
        return inject_arc(cutout, invvar, lens, src, 22.0, 1.0, 0.8, psf_fwhm_arcsec=(1.4, 1.2, 1.1), oversample=COSMOS_OVERSAMPLE)

    a, b = make(2024), make(2024)
    assert a.stamp.tobytes() == b.stamp.tobytes()
    t = a.truth
    assert t["source_mode"] == "cosmos" and t["cosmos_ident"] == loader.get_source(2024).ident
    assert t["source_x_arcsec"] == 0.15 and t["oversample"] == COSMOS_OVERSAMPLE
    flux_r = 10 ** ((22.5 - 22.0) / 2.5)
    assert t["magnification"] > 2
    # total arc flux in the stamp = magnification x unlensed flux (PSF inside the 12.6" stamp), 1%
    assert abs(t["arc_flux_in_stamp_r_nmgy"] / (t["magnification"] * flux_r) - 1) < 0.01
    other = [make(s).truth["cosmos_ident"] for s in range(20)]
    assert len(set(other)) > 3
