"""PSF kernels: effective (pixel-integrated) and optical (sampled) kernels against GalSim's drawings,
removing the pixel response from an effective PSF image, centring, sum, FWHM, capping, convolution paths."""

from __future__ import annotations

import numpy as np
import pytest

from dhs_spark.sims.psf import (
    cap_kernel,
    convolve_same,
    convolve_same_many,
    convolve_separable_same,
    gaussian_kernel,
    gaussian_kernel_1d,
    measure_fwhm,
    moffat_kernel,
    psf_kernel,
    remove_pixel_response,
)

PIX = 0.262


@pytest.mark.parametrize("fwhm", [0.9, 1.3, 2.2])
def test_gaussian_kernel_matches_galsim_pixel_integrated(fwhm):
    """GalSim draws with method 'auto' = convolved with the pixel box: the same pixel integral; atol 1e-6
    of a sum-1 kernel (peak ~0.1) is the size of GalSim's own FFT-drawing noise (~3e-7 seen)."""
    import galsim

    ours = gaussian_kernel(fwhm, PIX)
    n = ours.shape[0]
    ref = galsim.Gaussian(fwhm=fwhm).drawImage(nx=n, ny=n, scale=PIX).array
    np.testing.assert_allclose(ours, ref / ref.sum(), atol=1e-6)


@pytest.mark.parametrize("beta", [2.5, 3.5, 4.765])
def test_moffat_kernel_matches_galsim_pixel_integrated(beta):
    """Moffat (untruncated) integrated by 9x9 sub-samples vs GalSim's exact pixel convolution: atol 2e-5 (peak ~0.05)."""
    import galsim

    ours = moffat_kernel(1.3, beta, PIX, size=41)
    ref = galsim.Moffat(beta=beta, fwhm=1.3).drawImage(nx=41, ny=41, scale=PIX).array
    np.testing.assert_allclose(ours, ref / ref.sum(), atol=2e-5)


@pytest.mark.parametrize("fwhm", [0.9, 1.3, 2.2])
@pytest.mark.parametrize("model,beta", [("gaussian", None), ("moffat", 2.5), ("moffat", 3.5)])
def test_optical_kernel_matches_galsim_drawn_without_pixel(fwhm, model, beta):
    """integrate_pixel=False samples the PSF at pixel centres: GalSim's method='no_pixel' drawing
    of the same profile (normalised over the same grid); atol 1e-7 of a sum-1 kernel (peak ~0.1)."""
    import galsim

    ours = psf_kernel(model, fwhm, PIX, beta=beta, size=41, integrate_pixel=False)
    prof = galsim.Gaussian(fwhm=fwhm) if model == "gaussian" else galsim.Moffat(beta=beta, fwhm=fwhm)
    ref = prof.drawImage(nx=41, ny=41, scale=PIX, method="no_pixel").array.astype(np.float64)
    np.testing.assert_allclose(ours, ref / ref.sum(), atol=1e-7, err_msg=f"{model} beta={beta} fwhm={fwhm}")


@pytest.mark.parametrize("fwhm,atol", [(1.0, 6e-4), (1.3, 4e-5), (1.6, 2e-5)])
@pytest.mark.parametrize("model,beta", [("gaussian", None), ("moffat", 2.5), ("moffat", 3.5), ("moffat", 4.765)])
def test_remove_pixel_response_recovers_the_optical_psf(fwhm, atol, model, beta):
    """A GalSim drawing with its pixel (an effective PSF image, like PsfEx's) with the pixel response
    removed is GalSim's no-pixel drawing: max difference <= atol x the peak. The residual is the
    aliasing of the effective PSF beyond 0.5 cycles/pixel, largest for the sharpest (1.0") Moffat."""
    import galsim

    prof = galsim.Gaussian(fwhm=fwhm) if model == "gaussian" else galsim.Moffat(beta=beta, fwhm=fwhm)
    eff = prof.drawImage(nx=41, ny=41, scale=PIX).array.astype(np.float64)
    opt = prof.drawImage(nx=41, ny=41, scale=PIX, method="no_pixel").array.astype(np.float64)
    opt /= opt.sum()
    got = remove_pixel_response(eff)
    assert abs(got.sum() - 1) < 1e-12
    assert np.abs(got - opt).max() <= atol * opt.max(), f"{model} beta={beta} fwhm={fwhm}: {np.abs(got - opt).max() / opt.max():.2e}"
    # the effective image itself differs from the optical PSF by the pixel box: percent level at the peak
    assert eff.max() / eff.sum() < 0.99 * opt.max()


def test_remove_pixel_response_leaves_undersampled_kernels_alone():
    """An impulse or a 1.5-pixel FWHM Gaussian has too much power at 0.5 cycles/pixel to hold a
    band-limited optical PSF: returned unchanged (renormalised). A 2.5-pixel one is changed."""
    delta = np.zeros((5, 5))
    delta[2, 2] = 3.0
    np.testing.assert_array_equal(remove_pixel_response(delta), delta / 3.0)
    sharp = gaussian_kernel(1.5 * PIX, PIX, size=11)
    np.testing.assert_allclose(remove_pixel_response(sharp), sharp, atol=1e-15)
    ok = gaussian_kernel(2.5 * PIX, PIX, size=15)
    assert remove_pixel_response(ok)[7, 7] > 1.02 * ok[7, 7]


def test_convolve_same_many_equals_convolve_same():
    """One FFT for several kernels (sizes 1, 7, 59 and one wider than the image, capped) = convolve_same each."""
    rng = np.random.default_rng(2)
    img = rng.normal(size=(64, 64))
    kernels = [np.ones((1, 1)), gaussian_kernel(1.0, PIX, 7), moffat_kernel(1.4, 3.5, PIX), gaussian_kernel(2.0, PIX, 101)]
    many = convolve_same_many(img, kernels)
    assert many.shape == (4, 64, 64)
    for k, got in zip(kernels, many):
        np.testing.assert_allclose(got, convolve_same(img, k), atol=1e-13, err_msg=f"kernel {k.shape}")


@pytest.mark.parametrize(
    "kernel",
    [gaussian_kernel(1.1, PIX), moffat_kernel(1.4, 3.0, PIX), gaussian_kernel(0.8, PIX, size=7),
     gaussian_kernel(1.1, PIX, integrate_pixel=False), moffat_kernel(1.4, 3.0, PIX, integrate_pixel=False),
     remove_pixel_response(gaussian_kernel(1.2, PIX, 31))],
)  # fmt: skip
def test_kernels_are_odd_centred_and_sum_to_one(kernel):
    n = kernel.shape[0]
    assert n % 2 == 1 and kernel.shape == (n, n)
    assert abs(kernel.sum() - 1) < 1e-12
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (n // 2, n // 2)
    idx = np.arange(n) - n // 2
    assert abs((kernel.sum(axis=0) * idx).sum()) < 1e-12 and abs((kernel.sum(axis=1) * idx).sum()) < 1e-12
    np.testing.assert_allclose(kernel, kernel[::-1, ::-1], atol=1e-15)


@pytest.mark.parametrize("fwhm", [1.0, 1.3, 1.8])
@pytest.mark.parametrize("model,beta", [("gaussian", None), ("moffat", 2.5), ("moffat", 3.5), ("moffat", 4.765)])
def test_measured_fwhm_within_two_percent(fwhm, model, beta):
    k = psf_kernel(model, fwhm, PIX, beta=beta)
    measured = measure_fwhm(k, PIX)
    assert abs(measured / fwhm - 1) < 0.02, f"{model} beta={beta} fwhm={fwhm}: measured {measured}"


@pytest.mark.parametrize("kernel_size", [5, 21, 63, 101])
def test_impulse_at_centre_stays_at_centre(kernel_size):
    """A delta at (32, 32) of a 64x64 stamp becomes the (capped) kernel centred on (32, 32): direct and FFT paths."""
    img = np.zeros((64, 64))
    img[32, 32] = 1.0
    k = gaussian_kernel(2.5, PIX, size=kernel_size)
    out = convolve_same(img, k)
    kc = cap_kernel(k, 64)
    h = kc.shape[0] // 2
    assert np.unravel_index(np.argmax(out), out.shape) == (32, 32)
    lo, hi = max(32 - h, 0), min(32 + h + 1, 64)
    np.testing.assert_allclose(out[lo:hi, lo:hi], kc[h - (32 - lo) : h + (hi - 32), h - (32 - lo) : h + (hi - 32)], atol=1e-14)
    yy, xx = np.mgrid[:64, :64]
    assert abs((out * xx).sum() / out.sum() - 32) < 1e-9 and abs((out * yy).sum() / out.sum() - 32) < 1e-9


def test_separable_equals_two_dimensional_and_conserves_flux():
    rng = np.random.default_rng(0)
    img = np.zeros((64, 64))
    img[20:44, 20:44] = rng.uniform(0, 1, (24, 24))
    k1 = gaussian_kernel_1d(1.2, PIX)
    a = convolve_separable_same(img, k1)
    b = convolve_same(img, np.outer(k1, k1))
    np.testing.assert_allclose(a, b, atol=1e-13)
    assert abs(a.sum() / img.sum() - 1) < 1e-9  # kernel fits inside the stamp around the light


def test_asymmetric_kernel_is_convolved_not_correlated():
    """An off-centre kernel pixel moves a delta the same way in direct and FFT paths (true convolution)."""
    img = np.zeros((32, 32))
    img[16, 16] = 1.0
    for size in (5, 25):
        k = np.zeros((size, size))
        k[size // 2, size // 2 + 1] = 1.0  # shift right by one pixel
        out = convolve_same(img, k)
        assert np.unravel_index(np.argmax(out), out.shape) == (16, 17)


def test_cap_kernel_crops_and_renormalises():
    k = moffat_kernel(2.0, 2.5, PIX, size=101)
    capped = cap_kernel(k, 64)
    assert capped.shape == (63, 63)
    assert abs(capped.sum() - 1) < 1e-12
    np.testing.assert_allclose(capped, k[19:82, 19:82] / k[19:82, 19:82].sum())


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        gaussian_kernel(0.0, PIX)
    with pytest.raises(ValueError):
        gaussian_kernel(1.0, PIX, size=10)
    with pytest.raises(ValueError):
        moffat_kernel(1.0, 1.0, PIX)
    with pytest.raises(ValueError):
        psf_kernel("airy", 1.0, PIX)
    with pytest.raises(ValueError):
        convolve_same(np.zeros((8, 8)), np.ones((4, 4)))
