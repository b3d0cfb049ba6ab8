"""Correlated coadd noise: the estimator against fields of known correlation (white noise resampled
with Lanczos-3 kernels, as legacypipe makes a coadd), the synthesis against its target, the
arc noise of inject_arc against the cutout's sky correlation, and the estimator on real DR10 cutouts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import fft as sfft
from scipy import signal

from dhs_spark.sims.inject import inject_arc, poisson_gains
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.noise import NoiseCorrelation, correlated_noise, estimate_noise_correlation, filter_transfer, sky_mask
from dhs_spark.sims.sersic import SersicSource

PIX = 0.262
L = 3
CUTOUTS = sorted((Path(__file__).resolve().parents[1] / "data" / "cutouts_dr10").glob("*.npz"))
SIGMA_WHITE = np.array([0.004, 0.006, 0.015])  # per band, nmgy: before resampling (what invvar describes)


def _lanczos3(shift: float) -> np.ndarray:
    """The 6 Lanczos-3 interpolation weights for a sub-pixel shift (taps at -2..3 - shift), normalised to sum 1."""
    x = np.arange(-2, 4) - shift
    w = np.sinc(x) * np.sinc(x / 3.0)
    return w / w.sum()


# Two "exposures" resampled with different sub-pixel shifts, averaged: a non-separable correlation.
_KERNELS = [np.outer(_lanczos3(0.35), _lanczos3(0.2)), np.outer(_lanczos3(0.1), _lanczos3(0.45))]


def _true_correlation() -> tuple[np.ndarray, float]:
    """rho at lags -L..L of the two-exposure field, and its per-pixel variance / the white variance."""
    acf = sum(signal.correlate2d(k, k, mode="full") for k in _KERNELS) / len(_KERNELS)
    c = acf.shape[0] // 2
    window = acf[c - L : c + L + 1, c - L : c + L + 1]
    return window / acf[c, c], float(acf[c, c])


def _coadd_noise(rng, size: int) -> np.ndarray:
    """(3, size, size) coadd-like noise: each exposure's white noise (SIGMA_WHITE) resampled, then averaged
    with weight 1/2 each, times sqrt(2) so that each exposure's invvar x 2 / 2 = 1 / SIGMA_WHITE^2 stays the invvar."""
    out = np.zeros((3, size, size))
    for k in _KERNELS:
        white = rng.standard_normal((3, size + 12, size + 12)) * SIGMA_WHITE[:, None, None]
        out += np.stack([signal.convolve2d(w, k, mode="same") for w in white])[:, 6:-6, 6:-6]
    return out / math.sqrt(len(_KERNELS))


def _cutout(seed: int, size: int = 64):
    """A 64 x 64 g, r, z cutout: coadd noise + a bright central galaxy (de Vaucouleurs, r_e 1.5") +
    four stars (Gaussian, FWHM 1.2") away from the centre; invvar = 1 / SIGMA_WHITE^2."""
    rng = np.random.default_rng(seed)
    img = _coadd_noise(rng, size)
    yy, xx = (np.mgrid[:size, :size] - size // 2) * PIX
    r = np.hypot(xx, yy)
    galaxy = np.exp(-7.669 * ((r + 0.05) / 1.5) ** 0.25)
    sig = 1.2 / 2.3548
    stars = sum(
        np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sig**2)) for sx, sy in [(-6.0, 5.5), (5.0, -6.5), (6.5, 6.0), (-5.5, -7.0)]
    )
    for b, (g_amp, s_amp) in enumerate([(0.5, 0.2), (1.5, 0.4), (3.0, 1.0)]):
        img[b] += g_amp * galaxy / galaxy.max() + s_amp * stars
    invvar = np.broadcast_to(1.0 / SIGMA_WHITE[:, None, None] ** 2, img.shape).astype(np.float32)
    return img.astype(np.float32), invvar.copy()


def _plain_acf(field: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation at lags -L..L of (C, H, W) fields, every pixel, by direct sums."""
    z = field - field.mean(axis=(1, 2), keepdims=True)
    _, h, w = z.shape
    out = np.empty((z.shape[0], 2 * L + 1, 2 * L + 1))
    for dy in range(-L, L + 1):
        for dx in range(-L, L + 1):
            a = z[:, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
            b = z[:, max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)]
            out[:, dy + L, dx + L] = (a * b).mean(axis=(1, 2))
    return out / out[:, L : L + 1, L : L + 1]


def test_sky_mask_excludes_centre_sources_and_dead_pixels():
    img, invvar = _cutout(0)
    invvar[1, 10:14, 50:54] = 0.0
    sky = sky_mask(img, invvar)
    yy, xx = np.mgrid[:64, :64]
    assert not sky[np.hypot(yy - 32, xx - 32) < 16].any(), "the centre (host) is never sky"
    for sx, sy in [(-6.0, 5.5), (5.0, -6.5), (6.5, 6.0), (-5.5, -7.0)]:
        j, i = 32 + round(sx / PIX), 32 + round(sy / PIX)
        assert not sky[i - 2 : i + 3, j - 2 : j + 3].any(), f"star at ({i}, {j}) masked"
    assert not sky[8:16, 48:56].any(), "dead pixels (any band) and their surroundings masked"
    assert sky.sum() > 2000, "most of the outer sky survives (few noise peaks cross 4 sigma after 3x3 smoothing)"


def test_estimator_recovers_a_known_correlation_within_its_errors():
    """40 independent 64 x 64 cutouts (host + stars masked): the scatter of one estimate is Bartlett's
    sqrt(sum_l rho(l)^2 / N_sky) (all lags, ~0.02) within 35%; the mean estimate of every lag is within
    4 standard errors of the truth (the Lanczos kernels' autocorrelation) plus 0.005, a quarter of
    one estimate's error (the five-parameter background fit takes ~5 sum(rho) / N_sky ~ 0.002 off
    every lag; measured over 80 cutouts: -0.002 on average); and the measured variance over the
    white variance is the resampling's r within 2%."""
    truth, r_true = _true_correlation()
    est = [estimate_noise_correlation(*_cutout(seed)) for seed in range(40)]
    assert all(e.estimated and e.n_sky_pixels > 2000 for e in est)
    rho = np.stack([e.rho for e in est])  # (40, 3, 7, 7)
    scatter = rho.std(axis=0, ddof=1)
    predicted = math.sqrt((truth**2).sum() / np.mean([e.n_sky_pixels for e in est]))
    off = np.ones((2 * L + 1, 2 * L + 1), bool)
    off[L, L] = False
    assert abs(scatter[:, off].mean() / predicted - 1) < 0.35, (scatter[:, off].mean(), predicted)
    bias = np.abs(rho.mean(axis=0) - truth[None])[:, off]
    allowed = 4 * scatter[:, off] / math.sqrt(len(est)) + 0.005
    assert np.all(bias < allowed), f"worst lag: bias {bias.flat[(bias / allowed).argmax()]:.4f}"
    ratio = np.stack([e.variance_nmgy2 for e in est]) / SIGMA_WHITE**2
    assert np.all(np.abs(ratio.mean(axis=0) / r_true - 1) < 0.02), (ratio.mean(axis=0), r_true)
    assert r_true < 0.9, "resampling lowers the per-pixel variance below 1/invvar"


def test_filter_transfer_reproduces_a_valid_correlation_exactly():
    """rho = the autocorrelation of a 4 x 4 kernel (support within +-3 lags, so its spectrum is >= 0):
    the filter's |H|^2 transforms back to rho at every lag <= 3, 0 beyond, and sum h^2 = 1."""
    rng = np.random.default_rng(1)
    k = rng.uniform(0.1, 1.0, (3, 4, 4))
    rho = np.stack([signal.correlate2d(b, b, mode="full") for b in k])
    rho /= rho[:, L : L + 1, L : L + 1]
    shape = (72, 80)
    acf = sfft.irfft2(filter_transfer(rho, shape) ** 2, shape)
    idx_y, idx_x = np.arange(-L, L + 1) % shape[0], np.arange(-L, L + 1) % shape[1]
    np.testing.assert_allclose(acf[:, idx_y][:, :, idx_x], rho, atol=1e-12)
    acf[:, idx_y[:, None], idx_x[None, :]] = 0.0
    assert np.abs(acf).max() < 1e-12


def test_synthesised_noise_has_the_target_correlation_and_variance():
    """Constant standard deviation over 256 x 256: the output's autocorrelation matches the true rho
    within 4 standard errors (sqrt(sum rho^2 / N) ~ 0.005) and its variance is std^2 within 3%."""
    truth, _ = _true_correlation()
    corr = NoiseCorrelation(np.repeat(truth[None], 3, axis=0), np.ones(3), 10_000, True)
    std = np.broadcast_to(np.array([0.5, 1.0, 2.0])[:, None, None], (3, 256, 256))
    noise = correlated_noise(std, corr, np.random.default_rng(7))
    assert noise.dtype == np.float32 and noise.shape == (3, 256, 256)
    inner = noise[:, 8:-8, 8:-8].astype(np.float64)
    err = math.sqrt((truth**2).sum() / inner[0].size)
    np.testing.assert_allclose(_plain_acf(inner), np.repeat(truth[None], 3, axis=0), atol=4 * err)
    np.testing.assert_allclose(inner.var(axis=(1, 2)) / np.array([0.25, 1.0, 4.0]), 1.0, atol=0.03)
    again = correlated_noise(std, corr, np.random.default_rng(7))
    assert again.tobytes() == correlated_noise(std, corr, np.random.default_rng(7)).tobytes()


def test_too_few_sky_pixels_gives_the_flagged_white_correlation():
    img, invvar = _cutout(3)
    invvar[:, :, 8:] = 0.0  # only a strip of 8 columns has data
    corr = estimate_noise_correlation(img, invvar)
    assert not corr.estimated and corr.n_sky_pixels < 400
    expected = np.zeros((3, 2 * L + 1, 2 * L + 1))
    expected[:, L, L] = 1.0
    np.testing.assert_array_equal(corr.rho, expected)
    noise = correlated_noise(np.ones((3, 64, 64)), corr, np.random.default_rng(0))
    assert abs(_plain_acf(noise)[:, L, L + 1]).max() < 0.05, "white when not estimated"


def _bright_smooth_arc(cutout, invvar, seed, **kwargs):
    """A large, bright, smooth lensed source (theta_E 0.3", r_eff 2.5", r = 15): its shot noise
    covers the stamp with a slowly varying standard deviation, well above the sky's."""
    args = (cutout, invvar, SIEShear(0.3), SersicSource(0.0, 0.0, 2.5, 1.0), 15.0, 0.5, 0.3, [1.3, 1.2, 1.1])
    return inject_arc(*args, add_poisson=True, rng=np.random.default_rng(seed), noise_model="correlated", **kwargs)


def test_arc_noise_has_the_cutouts_sky_correlation_and_the_resampled_variance():
    """Acceptance: the noise inject_arc adds to an arc (noise_model='correlated') has the autocorrelation
    that the estimator measures on the cutout's sky, within the statistical error of 12 realisations
    over the central 40 x 40 pixels (~0.008 per lag), and the per-pixel variance r arc / gain, with r
    the cutout's measured sky variance x invvar (the resampling's variance ratio)."""
    cutout, invvar = _cutout(11)
    sky_corr = estimate_noise_correlation(cutout, invvar)
    clean = inject_arc(cutout, invvar, SIEShear(0.3), SersicSource(0.0, 0.0, 2.5, 1.0), 15.0, 0.5, 0.3, [1.3, 1.2, 1.1])
    gains = poisson_gains(invvar, PIX)
    ratio = sky_corr.variance_nmgy2 * (1.0 / SIGMA_WHITE**2)
    std = np.sqrt(clean.arc.astype(np.float64) * ratio[:, None, None] / gains[:, None, None])
    z = []
    for seed in range(12):
        res = _bright_smooth_arc(cutout, invvar, seed)
        assert res.truth["noise_model"] == "correlated"
        z.append(((res.arc - clean.arc) / std)[:, 12:-12, 12:-12])
    z = np.concatenate(z, axis=2)  # 12 independent 40 x 40 patches side by side per band
    acf = np.mean([_plain_acf(z[:, :, 40 * i : 40 * (i + 1)]) for i in range(12)], axis=0)
    err = math.sqrt((sky_corr.rho**2).sum(axis=(1, 2)).max() / (40 * 40 * 12))
    np.testing.assert_allclose(acf, sky_corr.rho, atol=4 * err + 0.004)  # + the std map's slow variation over 3 px
    np.testing.assert_allclose(z.var(axis=(1, 2)), 1.0, atol=0.03)
    t = res.truth
    for b, band in enumerate("grz"):
        assert t[f"noise_corr_lag1_x_{band}"] == pytest.approx(sky_corr.lag1_x[b])
        assert t[f"noise_corr_lag1_y_{band}"] == pytest.approx(sky_corr.lag1_y[b])
        assert t[f"noise_var_ratio_{band}"] == pytest.approx(ratio[b], rel=1e-5)
    assert t["noise_sky_pixels"] == sky_corr.n_sky_pixels


def test_correlated_arc_noise_is_deterministic_and_local():
    cutout, invvar = _cutout(4)
    args = (cutout, invvar, SIEShear(1.2, 0.8, 0.3), SersicSource(0.1, 0.0, 0.3), 19.0, 0.8, 0.5, [1.3, 1.2, 1.1])
    a = inject_arc(*args, add_poisson=True, rng=np.random.default_rng(5), noise_model="correlated")
    b = inject_arc(*args, add_poisson=True, rng=np.random.default_rng(5), noise_model="correlated")
    assert a.stamp.tobytes() == b.stamp.tobytes()
    clean = inject_arc(*args)
    diff = np.abs(a.arc - clean.arc)
    assert diff[:, 28:37, 36:45].max() > 0, "noise on the arc"
    far = np.ones((64, 64), bool)
    far[6:-6, 6:-6] = False
    assert diff[:, far].max() < 1e-3 * SIGMA_WHITE.min(), "no noise far from the arc, where its own is < 1e-3 of the sky's"


def test_precomputed_correlation_is_used_as_given():
    cutout, invvar = _cutout(6)
    corr = estimate_noise_correlation(*_cutout(7))
    a = _bright_smooth_arc(cutout, invvar, 1, noise_correlation=corr)
    assert a.truth["noise_corr_lag1_x_r"] == pytest.approx(corr.lag1_x[1])
    with pytest.raises(ValueError, match="bands"):
        _bright_smooth_arc(cutout, invvar, 1, noise_correlation=NoiseCorrelation.white(2))


@pytest.mark.parametrize("path", CUTOUTS, ids=[p.stem for p in CUTOUTS])
def test_estimator_runs_on_real_dr10_cutouts(path):
    """The six real DR10 cutouts (101 x 101, no invvar: every finite pixel counts): an estimate from
    > 5,000 sky pixels with lag-1 correlations in 0.08-0.35 along x and 0.14-0.35 along y
    (measured: x 0.10-0.28, y 0.17-0.31), the resampling's signature (white noise: 0 +- 0.015)."""
    cut = np.load(path)["cutout"].transpose(2, 0, 1)
    corr = estimate_noise_correlation(cut)
    assert corr.estimated and corr.n_sky_pixels > 5000
    assert np.all((corr.lag1_x > 0.08) & (corr.lag1_x < 0.35)), corr.lag1_x
    assert np.all((corr.lag1_y > 0.14) & (corr.lag1_y < 0.35)), corr.lag1_y


def test_real_cutouts_show_the_negative_lanczos_lobe():
    """Averaged over the six cutouts and three bands, the lag-2 correlation is negative (Lanczos-3's
    negative lobe; measured -0.10 along x, -0.14 along y), which a Gaussian smoothing would not give."""
    rho = np.stack([estimate_noise_correlation(np.load(p)["cutout"].transpose(2, 0, 1)).rho for p in CUTOUTS])
    assert rho[:, :, L, L + 2].mean() < -0.03 and rho[:, :, L + 2, L].mean() < -0.03, (
        rho[:, :, L, L + 2].mean(),
        rho[:, :, L + 2, L].mean(),
    )
