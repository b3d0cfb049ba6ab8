"""Injection: flux and magnification, arc SNR by hand, Poisson noise, PSF paths, reject reasons and
their footprint rule, NULL injections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate

from dhs_spark.errors import RejectError
from dhs_spark.sims.inject import (
    ARC_FOOTPRINT_FRACTION,
    BANDS,
    arc_footprint_mask,
    band_fluxes_nmgy,
    check_invvar_under_arc,
    inject_arc,
    poisson_gains,
)
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.psf import gaussian_kernel
from dhs_spark.sims.sersic import SersicSource

PIX = 0.262


def _cutout(size=64, seed=0, ivar=400.0):
    rng = np.random.default_rng(seed)
    cut = rng.normal(0, 1 / math.sqrt(ivar), (3, size, size)).astype(np.float32)
    return cut, np.full((3, size, size), ivar, dtype=np.float32)


def test_band_fluxes_from_r_mag_and_colours():
    g, r, z = band_fluxes_nmgy(22.5, 1.0, 0.5)
    assert r == pytest.approx(1.0, rel=1e-15)
    assert g == pytest.approx(10 ** (-0.4 * 1.0), rel=1e-12)  # g = r + (g - r) is fainter
    assert z == pytest.approx(10 ** (0.4 * 0.5), rel=1e-12)  # z = r - (r - z) is brighter


def test_arc_flux_equals_magnification_times_unlensed_and_matches_analytic_sis():
    """PSF-convolved arc flux in a 96-pixel stamp = magnification x unlensed flux within 1% per band; and the
    magnification equals the SIS extended-source value, integral of S(beta) mu(beta) over the source plane
    (mu = 2 theta_E / beta inside theta_E, 1 + theta_E / beta outside), computed by quadrature, within 1%."""
    theta_e, r_eff = 1.4, 0.25
    src = SersicSource(0.45, 0.0, r_eff, n=1.0)
    cut, ivar = _cutout(96)
    res = inject_arc(cut, ivar, SIEShear(theta_e), src, 23.0, 1.2, 0.8, [1.5, 1.3, 1.2], "gaussian", oversample=8, method="exact")
    mu = res.truth["magnification"]
    for b, band in enumerate(BANDS):
        unl = res.truth[f"unlensed_flux_{band}_nmgy"]
        arc_sum = float(res.arc[b].sum(dtype=np.float64))
        assert abs(arc_sum / (mu * unl) - 1) < 0.01, f"band {band}: {arc_sum} vs {mu * unl}"
        assert res.truth[f"lensed_flux_{band}_nmgy"] == pytest.approx(mu * unl, rel=1e-12)

    def integrand(beta, t):  # polar source plane about the lens: d^2 beta = beta dbeta dt
        sb = float(src.surface_brightness(np.array([beta * math.cos(t)]), np.array([beta * math.sin(t)]))[0])
        mu_p = 2 * theta_e / beta if beta < theta_e else 1 + theta_e / beta
        return sb * mu_p * beta

    expected = 0.0
    for lo, hi in [(0, theta_e), (theta_e, 12.0)]:
        expected += integrate.dblquad(integrand, 0, 2 * math.pi, lo, hi, epsabs=1e-7, epsrel=1e-7)[0]
    assert abs(mu / expected - 1) < 0.01, f"rendered {mu} vs analytic {expected}"


def test_arc_snr_matches_hand_computation():
    cut, ivar = _cutout()
    rng = np.random.default_rng(5)
    ivar = rng.uniform(100, 900, ivar.shape).astype(np.float32)
    ivar[:, :3, :3] = 0.0  # a dead corner, far from the arc: allowed, contributes nothing
    res = inject_arc(cut, ivar, SIEShear(1.2, 0.8, 0.3), SersicSource(0.2, 0.1, 0.3), 22.0, 1.0, 0.8, [1.4, 1.2, 1.1], "gaussian")
    arc = res.arc.astype(np.float64)
    iv = ivar.astype(np.float64)
    snr_sum = math.sqrt(sum(float((arc[b] ** 2 * iv[b]).sum()) for b in range(3)))
    snr_peak = max(float((arc[b] * np.sqrt(iv[b])).max()) for b in range(3))
    assert res.truth["arc_snr_sum"] == pytest.approx(snr_sum, rel=1e-9)
    assert res.truth["arc_snr_peak"] == pytest.approx(snr_peak, rel=1e-9)
    assert res.truth["arc_snr_sum_r"] == pytest.approx(math.sqrt(float((arc[1] ** 2 * iv[1]).sum())), rel=1e-9)
    np.testing.assert_array_equal(res.stamp, (cut.astype(np.float64) + res.arc).astype(np.float32))
    assert res.stamp.dtype == np.float32 and np.all(np.isfinite(res.stamp))


def test_truth_records_inputs_and_psf():
    res = inject_arc(*_cutout(), dict(theta_e=1.0, q=0.7, phi=0.2, gamma1=0.01), dict(x=0.1, y=0.0, r_eff=0.2, n=1.5, q=0.6, phi=1.0),
                     24.0, 1.1, 0.9, [1.5, 1.3, 1.2], "moffat", moffat_beta=3.0)  # fmt: skip
    t = res.truth
    assert (t["theta_e_arcsec"], t["lens_q"], t["lens_phi_rad"], t["shear_gamma1"]) == (1.0, 0.7, 0.2, 0.01)
    assert (t["source_x_arcsec"], t["source_r_eff_arcsec"], t["source_sersic_n"], t["source_q"]) == (0.1, 0.2, 1.5, 0.6)
    assert (t["source_r_mag"], t["source_color_g_r"], t["source_color_r_z"]) == (24.0, 1.1, 0.9)
    assert [t[f"psf_fwhm_used_{b}_arcsec"] for b in BANDS] == [1.5, 1.3, 1.2]
    assert t["psf_model"] == "moffat" and t["moffat_beta"] == 3.0 and t["source_mode"] == "parametric" and t["cosmos_ident"] is None
    # defaults: no extinction, no noise, the full source flux
    assert (t["ebv"], t["noise_model"], t["source_flux_scale"], t["extinction_transmission_g"]) == (0.0, "none", 1.0, 1.0)


def test_pixel_psf_path_equals_gaussian_model():
    """psf_model='pixel' with Gaussian kernel images reproduces psf_model='gaussian' (separable vs 2-D path).

    The images are effective PSFs (pixel-integrated, as PsfEx's are) and the pixel response is
    taken out of them, while the 'gaussian' model applies the optical PSF sampled at pixel centres:
    both apply the pixel box once (before, both used pixel-integrated kernels, on top of the
    render's pixel average). The FWHM recorded for 'pixel' is measured on the optical kernel."""
    args = (*_cutout(), SIEShear(1.3, 0.8, 0.5), SersicSource(0.3, -0.1, 0.25), 22.5, 1.0, 0.8)
    a = inject_arc(*args, [1.5, 1.3, 1.2], "gaussian")
    b = inject_arc(*args, None, "pixel", psf_kernels=[gaussian_kernel(f, PIX) for f in (1.5, 1.3, 1.2)])
    np.testing.assert_allclose(a.arc, b.arc, rtol=0, atol=1e-6 * float(a.arc.max()))
    assert b.truth["psf_fwhm_used_r_arcsec"] == pytest.approx(1.3, rel=0.01)  # measured from the kernel


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_cutout_is_rejected(bad):
    cut, ivar = _cutout()
    cut[1, 5, 7] = bad
    with pytest.raises(RejectError) as info:
        inject_arc(cut, ivar, SIEShear(1.0), SersicSource(0.2, 0.0, 0.2), 23.0, 1.0, 0.8, [1.3, 1.2, 1.1])
    assert info.value.reason == "nan_in_cutout" and "r" in info.value.detail


def test_non_finite_invvar_is_rejected():
    cut, ivar = _cutout()
    ivar[0, 0, 0] = np.nan
    with pytest.raises(RejectError) as info:
        inject_arc(cut, ivar, SIEShear(1.0), SersicSource(0.2, 0.0, 0.2), 23.0, 1.0, 0.8, [1.3, 1.2, 1.1])
    assert info.value.reason == "nan_in_invvar"


def test_nonpositive_invvar_under_arc_is_rejected_but_not_elsewhere():
    lens, src = SIEShear(1.5), SersicSource(0.3, 0.0, 0.2)
    cut, ivar = _cutout()
    ring_pixel = (32, 32 + round((1.5 + 0.3) / PIX))  # the main image, on the +x side
    ivar[2, ring_pixel[0], ring_pixel[1]] = 0.0
    with pytest.raises(RejectError) as info:
        inject_arc(cut, ivar, lens, src, 23.0, 1.0, 0.8, [1.3, 1.2, 1.1])
    assert info.value.reason == "invvar_nonpositive_under_arc" and "z" in info.value.detail
    cut, ivar = _cutout()
    ivar[:, 0, 0] = -1.0  # a corner far from the arc
    res = inject_arc(cut, ivar, lens, src, 23.0, 1.0, 0.8, [1.3, 1.2, 1.1])
    assert np.all(np.isfinite(res.stamp))


def test_poisson_noise_has_the_gain_variance_only_where_the_arc_is():
    """Residual (noisy - noiseless arc) / sqrt(arc / gain) is ~N(0, 1) on bright arc pixels; zero where no arc flux."""
    cut, ivar = _cutout()
    args = (cut, ivar, SIEShear(1.5), SersicSource(0.2, 0.1, 0.3), 16.0, 1.0, 0.8, [1.4, 1.2, 1.1])
    clean = inject_arc(*args)
    noisy = inject_arc(*args, add_poisson=True, rng=np.random.default_rng(42))
    again = inject_arc(*args, add_poisson=True, rng=np.random.default_rng(42))
    assert noisy.stamp.tobytes() == again.stamp.tobytes()
    gains = poisson_gains(ivar, PIX)
    for b, band in enumerate(BANDS):
        assert noisy.truth[f"poisson_gain_{band}"] == pytest.approx(gains[b])
        lam = clean.arc[b].astype(np.float64) * gains[b]
        bright = lam > 20
        assert bright.sum() > 30
        z = (noisy.arc[b][bright] - clean.arc[b][bright]) * gains[b] / np.sqrt(lam[bright])
        assert abs(z.std() - 1) < 0.25 and abs(z.mean()) < 0.3, band
        assert np.all(noisy.arc[b][lam < 1e-12] == 0.0)  # no noise without arc flux (no clamp)
    with pytest.raises(ValueError, match="rng"):
        inject_arc(*args, add_poisson=True)


def test_shape_errors_name_the_problem():
    cut, ivar = _cutout()
    with pytest.raises(ValueError, match="cutout"):
        inject_arc(cut[:2], ivar[:2], SIEShear(1.0), SersicSource(0.2, 0.0, 0.2), 23.0, 1.0, 0.8, [1.3, 1.2])
    with pytest.raises(ValueError, match="invvar"):
        inject_arc(cut, ivar[:, :10], SIEShear(1.0), SersicSource(0.2, 0.0, 0.2), 23.0, 1.0, 0.8, [1.3, 1.2, 1.1])


def test_arc_footprint_mask_is_a_fraction_of_each_bands_peak():
    arc = np.zeros((3, 8, 8), dtype=np.float32)
    arc[0, 2, 2], arc[0, 3, 3], arc[0, 4, 4] = 1.0, ARC_FOOTPRINT_FRACTION, 0.5 * ARC_FOOTPRINT_FRACTION
    arc[1, 5, 5] = 1e-9  # a faint band: the rule is relative to its own peak
    mask = arc_footprint_mask(arc)
    assert mask[0].sum() == 2 and mask[0, 2, 2] and mask[0, 3, 3] and not mask[0, 4, 4]
    assert mask[1].sum() == 1 and mask[1, 5, 5]
    assert not mask[2].any(), "an empty band has no footprint"
    invvar = np.ones((3, 8, 8))
    invvar[0, 4, 4] = 0.0  # below the footprint: allowed
    check_invvar_under_arc(arc, invvar)
    invvar[1, 5, 5] = -1.0
    with pytest.raises(RejectError) as info:
        check_invvar_under_arc(arc, invvar)
    assert info.value.reason == "invvar_nonpositive_under_arc" and "r" in info.value.detail


@pytest.mark.parametrize("noise", [None, "white", "correlated"])
def test_null_injection_returns_the_cutout_unchanged_with_finite_truth(noise):
    """source_flux_scale=0: the stamp is the cutout bit for bit, the arc is 0, every numeric truth
    value is finite, fluxes and SNRs are 0, and the magnification is the would-be arc's."""
    cut, ivar = _cutout()
    args = (cut, ivar, SIEShear(1.3, 0.8, 0.5), SersicSource(0.3, -0.1, 0.25), 22.5, 1.0, 0.8, [1.5, 1.3, 1.2])
    kw = {} if noise is None else dict(add_poisson=True, rng=np.random.default_rng(1), noise_model=noise)
    real = inject_arc(*args, ebv=0.05, **kw)
    null = inject_arc(*args, ebv=0.05, source_flux_scale=0.0, **kw)
    assert null.stamp.dtype == np.float32 and null.stamp.tobytes() == cut.tobytes()
    assert not null.arc.any()
    t = null.truth
    assert t["source_flux_scale"] == 0.0 and t["magnification"] == real.truth["magnification"] > 1
    for key, value in t.items():
        if isinstance(value, float):
            assert math.isfinite(value), key
    for band in BANDS:
        assert t[f"unlensed_flux_{band}_nmgy"] == t[f"lensed_flux_{band}_nmgy"] == t[f"arc_flux_in_stamp_{band}_nmgy"] == 0.0
    assert t["arc_snr_sum"] == t["arc_snr_peak"] == 0.0
    assert t["noise_model"] == ("none" if noise is None else noise)


def test_null_injection_is_rejected_exactly_when_its_real_injection_is():
    """The footprint rule runs on the would-be arc: an invvar hole under the arc rejects both."""
    lens, src = SIEShear(1.5), SersicSource(0.3, 0.0, 0.2)
    cut, ivar = _cutout()
    ivar[1, 32, 32 + round((1.5 + 0.3) / PIX)] = 0.0
    for scale in (1.0, 0.0):
        with pytest.raises(RejectError) as info:
            inject_arc(cut, ivar, lens, src, 23.0, 1.0, 0.8, [1.3, 1.2, 1.1], source_flux_scale=scale)
        assert info.value.reason == "invvar_nonpositive_under_arc"


def test_source_flux_scale_scales_the_arc_linearly():
    args = (*_cutout(), SIEShear(1.2), SersicSource(0.2, 0.1, 0.3), 22.0, 1.0, 0.8, [1.4, 1.2, 1.1])
    full, half = inject_arc(*args), inject_arc(*args, source_flux_scale=0.5)
    np.testing.assert_allclose(half.arc, 0.5 * full.arc, rtol=1e-6)
    assert half.truth["unlensed_flux_r_nmgy"] == pytest.approx(0.5 * full.truth["unlensed_flux_r_nmgy"], rel=1e-12)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="source_flux_scale"):
            inject_arc(*args, source_flux_scale=bad)
    with pytest.raises(ValueError, match="noise_model"):
        inject_arc(*args, add_poisson=True, rng=np.random.default_rng(0), noise_model="pink")
