"""trainer.preprocess: normalisation, clipping, radial-profile subtraction, centre-preserving symmetries."""

import numpy as np
import pytest

from trainer.preprocess import PreprocessConfig, augment, dihedral, preprocess, radial_profile_image, radius_px


def noise_batch(n=4, c=3, s=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, c, s, s)).astype(np.float32)


def test_normalisation_uses_outer_annulus_median_and_mad():
    x = noise_batch()
    cfg = PreprocessConfig()
    # Known per-band offset and scale: the output must undo them (affine invariance),
    # up to float32 rounding.
    scale = np.array([0.01, 0.5, 7.0], np.float32)[None, :, None, None]
    offset = np.array([3.0, -1.0, 0.2], np.float32)[None, :, None, None]
    np.testing.assert_allclose(preprocess(x * scale + offset, cfg), preprocess(x, cfg), atol=2e-4, err_msg="affine per-band invariance")
    out = preprocess(x, cfg)
    r = radius_px(64, 64)
    ann = out[..., (r >= 0.65 * 32) & (r <= 32)]
    np.testing.assert_allclose(np.median(ann, axis=-1), 0, atol=1e-6, err_msg="annulus median -> 0")
    np.testing.assert_allclose(1.4826 * np.median(np.abs(ann), axis=-1), 1, rtol=1e-5, err_msg="annulus robust sigma -> 1")


def test_bright_core_does_not_set_the_scale():
    x = noise_batch(n=1)
    bright = x.copy()
    bright[..., 28:36, 28:36] += 1000.0  # a very bright host inside the annulus' inner radius
    out_plain, out_bright = preprocess(x), preprocess(bright, PreprocessConfig(clip_sigma=1e6))
    outer = radius_px(64, 64) > 8
    np.testing.assert_allclose(out_bright[..., outer], out_plain[..., outer], atol=1e-5)


def test_clip_level_keeps_bright_arcs_bright():
    x = noise_batch(n=1)
    x[0, :, 32, 40] = 50.0  # 50 sigma pixel
    out = preprocess(x, PreprocessConfig(clip_sigma=20.0))
    assert out.max() == pytest.approx(20.0)
    assert preprocess(x, PreprocessConfig(clip_sigma=100.0)).max() == pytest.approx(50.0, rel=0.05)


def test_radial_profile_subtraction_removes_round_host_keeps_arc():
    s = 64
    r = radius_px(s, s)
    host = 200.0 * np.exp(-0.5 * (r / 3.0) ** 2)
    y, x = np.indices((s, s)) - s // 2
    arc = 30.0 * np.exp(-0.5 * ((r - 8) / 1.0) ** 2) * (np.abs(np.arctan2(y, x)) < 0.5)
    img = noise_batch(n=1, s=s, seed=3) + (host + arc)[None, None]
    cfg = PreprocessConfig(clip_sigma=1e6, subtract_radial_profile=True)
    out = preprocess(img, cfg)
    core = r <= 4
    # Host: 200 sigma at the centre before; after subtraction the core is noise-level.
    assert np.abs(out[..., core]).max() < 6.0
    # Arc: covers ~1/6 of its ring, so the ring median is background and the arc survives.
    on_arc = arc > 15
    assert out[..., on_arc].mean() > 0.8 * 22.0


def test_radial_profile_of_a_constant_is_the_constant():
    x = np.full((2, 3, 33, 33), 4.0, np.float32)
    np.testing.assert_array_equal(radial_profile_image(x), x)


@pytest.mark.parametrize("size", [32, 33, 64])
def test_symmetries_keep_centre_pixel_and_are_permutations(size):
    x = np.random.default_rng(1).standard_normal((2, 3, size, size)).astype(np.float32)
    c = size // 2
    results = []
    for op in range(8):
        y = dihedral(x, op)
        np.testing.assert_array_equal(y[..., c, c], x[..., c, c], err_msg=f"centre pixel moved by op {op}")
        np.testing.assert_array_equal(np.sort(y.ravel()), np.sort(x.ravel()), err_msg=f"op {op} is not a permutation")
        results.append(y.tobytes())
    assert len(set(results)) == 8, "the 8 symmetries must be distinct"


def test_symmetry_of_a_centred_offset_point():
    x = np.zeros((1, 1, 64, 64), np.float32)
    x[0, 0, 32, 35] = 1.0  # 3 px right of the centre
    assert dihedral(x, 2)[0, 0, 32, 29] == 1.0  # x-flip about pixel 32 -> 3 px left
    assert dihedral(x, 4)[0, 0, 35, 32] == 1.0  # transpose -> 3 px up


def test_augment_is_seeded():
    x = noise_batch(n=16, s=32)
    a = augment(x, np.random.default_rng(5))
    b = augment(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(x, np.random.default_rng(6)))


def test_non_finite_input_is_an_error():
    x = noise_batch(n=3)
    x[1, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match=r"images \[1\]"):
        preprocess(x)
