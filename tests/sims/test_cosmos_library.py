"""COSMOS source library: builder (real + parametric, from the real files in tests/data/cosmos),
loader (per-process memory-mapped library and source cache, seed and ident selection, ident split,
metadata frame, cuts, pickling, Spark), image source (vs lenstronomy's INTERPOL light profile),
flux-conserving resampling, and bad input. The stamp cleaning itself: test_cosmos_clean.py.

Test data (tests/data/cosmos, see its README.md): 5 AEGIS F814W galaxies with PSFs (GalSim
tests, BSD), 10 COSMOS F814W galaxies without PSF file (paltas, MIT), GalSim's 100-galaxy
example catalogue (parametric fits only, 96 pass GalSim's default exclusion).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import shutil

import h5py
import numpy as np
import pytest
from astropy.io import fits

from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims.cosmos import (
    _LIBRARY_CACHE,
    LIBRARY_COLUMNS,
    COSMOSImageSource,
    COSMOSLoaderV2,
    resample_to_pixscale,
)
from dhs_spark.sims.cosmos_build import HST_F814W_PSF_FWHM_ARCSEC, LibraryCuts, build_library, draw_catalog
from dhs_spark.sims.lensing import SIEShear

AEGIS = ("aegis_hst_5", "AEGIS_F814w_catalog.fits")
COSMOS10 = ("cosmos_f814w_10", "real_galaxy_catalog_23.5.fits")
EXAMPLE = ("galsim_example_catalog", "real_galaxy_catalog_23.5_example.fits")
NO_CUTS = LibraryCuts(min_snr=0.0, hlr_range_arcsec=(0.0, 10.0), min_flux_fraction_in_stamp=0.0, max_edge_fraction=1.0)


@pytest.fixture(scope="module")
def libs(tmp_path_factory, test_data):
    """Libraries built once for this module, every galaxy kept: AEGIS real (deconvolved), COSMOS F814W real (as-is), 96 parametric."""
    out = tmp_path_factory.mktemp("cosmos_libs")
    paths = {}
    for name, (sub, cat), opts in (
        ("aegis", AEGIS, dict(gal_type="real")),
        ("cosmos10", COSMOS10, dict(gal_type="real")),
        ("parametric", EXAMPLE, dict(gal_type="parametric")),
    ):
        paths[name] = str(out / f"{name}.h5")
        build_library(paths[name], cat, galsim_dir=str(test_data / "cosmos" / sub), cuts=NO_CUTS, **opts)
    return paths


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------- builder


def test_real_libraries_hold_all_15_real_galaxies_cleaned_and_normalised(libs, test_data):
    for name, (sub, cat), n, treatment_fwhm in (("aegis", AEGIS, 5, 0.1), ("cosmos10", COSMOS10, 10, HST_F814W_PSF_FWHM_ARCSEC)):
        catalog = fits.getdata(test_data / "cosmos" / sub / cat)
        with h5py.File(libs[name], "r") as f:
            images = f["images"][()]
            assert images.shape == (n, 128, 128) and images.dtype == np.float32
            assert f["images"].chunks is None and f["images"].compression is None  # contiguous: memory-mapped by the loader
            assert f.attrs["pixel_scale_arcsec"] == 0.03 and f.attrs["stamp_size"] == 128 and f.attrs["seed"] == 42
            assert f.attrs["source_catalog"] == cat
            np.testing.assert_allclose(images.sum(axis=(1, 2), dtype=np.float64), 1.0, atol=1e-5, err_msg=name)
            idents = [v.decode() for v in f["ident"][()]]
            assert idents == [str(i) for i in catalog["IDENT"]], name
            np.testing.assert_allclose(f["mag"][()], catalog["MAG"], rtol=1e-6, err_msg=name)
            # the cleaned galaxy's flux: the HST postage stamp's sum (read here with astropy) less the pedestal sheet,
            # the neighbours and the sky noise outside the footprint (each checked in test_cosmos_clean.py)
            raw_sums = np.array([fits.getdata(test_data / "cosmos" / sub / fn, ext=int(hdu)).sum(dtype=np.float64) for fn, hdu in zip(catalog["GAL_FILENAME"], catalog["GAL_HDU"])])
            removed = f["pedestal_flux_fraction"][()] + f["masked_flux_fraction"][()]
            np.testing.assert_allclose(f["flux"][()], raw_sums * (1 - removed), rtol=0.15, err_msg=name)
            assert np.all(np.isfinite(f["pedestal_per_pixel"][()])) and np.all(f["pedestal_sigma_per_pixel"][()] > 0), name
            frac = f["flux_fraction_in_stamp"][()]
            assert np.all((frac > 0.8) & (frac < 1.0 + 1e-4)), (name, frac)
            np.testing.assert_allclose(f["psf_fwhm_arcsec"][()], treatment_fwhm, err_msg=name)
            hlr = f["half_light_radius_arcsec"][()]
            assert np.all((hlr > 0.05) & (hlr < 1.0)), (name, hlr)
            assert np.all(np.isfinite(f["clumpiness"][()])) and np.all(f["snr"][()] > 10), name
    with h5py.File(libs["cosmos10"], "r") as f:  # zphot from the *_fits.fits companion where it exists
        zfits = fits.getdata(test_data / "cosmos" / "cosmos_f814w_10" / "real_galaxy_catalog_23.5_fits.fits")
        np.testing.assert_allclose(f["zphot"][()], zfits["zphot"], rtol=1e-6)
    with h5py.File(libs["aegis"], "r") as f:
        assert np.all(np.isnan(f["zphot"][()]))


def test_hst_native_stamp_is_the_cleaned_raw_hst_image(libs, test_data):
    """As-is mode: a galaxy smaller than the stamp is its raw HST pixels less the pedestal inside its footprint and 0
    outside, whole-pixel centred, nothing resampled."""
    hdul = fits.open(test_data / "cosmos" / "cosmos_f814w_10" / "real_galaxy_images_23.5_n1.fits")
    raw = hdul[2].data.astype(np.float64)  # 50 x 49
    with h5py.File(libs["cosmos10"], "r") as f:
        stamp = f["images"][2].astype(np.float64) * f["flux"][2] * f["flux_fraction_in_stamp"][2]
        pedestal = f["pedestal_per_pixel"][2]
    r0, c0 = (128 - raw.shape[0]) // 2, (128 - raw.shape[1]) // 2
    inner = stamp[r0 : r0 + raw.shape[0], c0 : c0 + raw.shape[1]]
    kept = inner != 0
    np.testing.assert_allclose(inner[kept], (raw - pedestal)[kept], rtol=1e-5, atol=1e-8)
    assert np.count_nonzero(stamp) == kept.sum() and 0.5 * raw.size < kept.sum() <= raw.size


def test_parametric_library_96_galaxies(libs, test_data):
    with h5py.File(libs["parametric"], "r") as f:
        assert f["images"].shape == (96, 128, 128)
        assert len(set(f["ident"][()])) == 96
        np.testing.assert_allclose(f["images"][()].sum(axis=(1, 2), dtype=np.float64), 1.0, atol=1e-5)
        assert np.all(f["noise_sigma"][()] == 0) and np.all(np.isinf(f["snr"][()]))
        for name in ("pedestal_per_pixel", "pedestal_sigma_per_pixel", "pedestal_flux_fraction", "masked_flux_fraction"):
            assert np.all(f[name][()] == 0), name  # drawn on a zero sky with no neighbours
        assert np.all(np.isfinite(f["zphot"][()]))
        assert np.all(f["psf_fwhm_arcsec"][()] == 0.1)
        frac, hlr = f["flux_fraction_in_stamp"][()], f["half_light_radius_arcsec"][()]
        idents = [v.decode() for v in f["ident"][()]]
    # the default cuts drop the fits that spill out of the 3.84" stamp (Sersic wings) or are too small or large
    cut = draw_catalog(EXAMPLE[1], galsim_dir=str(test_data / "cosmos" / EXAMPLE[0]), gal_type="parametric", n_sources=16)
    drawn = [idents.index(r["ident"]) for r in json.loads(cut.attrs["rejected"])] + [idents.index(i) for i in cut.meta["ident"]]
    kept = (frac >= 0.97) & (hlr >= 0.05) & (hlr <= 1.0)
    assert cut.attrs["n_drawn"] == len(drawn) == 16 and 0 < len(cut.images) < 16
    assert sorted(idents.index(i) for i in cut.meta["ident"]) == sorted(r for r in drawn if kept[r])


def test_real_galaxies_are_clumpier_than_their_own_parametric_fits(test_data):
    """Same 10 COSMOS galaxies, real image vs GalSim's Sersic/bulge+disc fit: the point of real sources.

    Pixel noise biases the real clumpiness up a little (noise sigma ~1e-4 of the flux per pixel
    here, SNR > 70), far less than the factor asserted.
    """
    d = str(test_data / "cosmos" / "cosmos_f814w_10")
    real = draw_catalog(COSMOS10[1], galsim_dir=d, gal_type="real")
    para = draw_catalog(COSMOS10[1], galsim_dir=d, gal_type="parametric", exclusion_level="none")
    assert list(real.meta["ident"]) == list(para.meta["ident"])
    assert np.median(real.meta["clumpiness"]) > 1.5 * np.median(para.meta["clumpiness"]), (real.meta["clumpiness"], para.meta["clumpiness"])


def test_same_inputs_same_file_bytes_and_seeded_choice(tmp_path, test_data):
    d = str(test_data / "cosmos" / "galsim_example_catalog")
    opts = dict(gal_type="parametric", n_sources=4, stamp_size=48, cuts=NO_CUTS)
    a = build_library(str(tmp_path / "a.h5"), EXAMPLE[1], galsim_dir=d, seed=7, **opts)
    b = build_library(str(tmp_path / "b.h5"), EXAMPLE[1], galsim_dir=d, seed=7, **opts)
    c = build_library(str(tmp_path / "c.h5"), EXAMPLE[1], galsim_dir=d, seed=8, **opts)
    assert _sha256(tmp_path / "a.h5") == _sha256(tmp_path / "b.h5")
    assert list(a.meta["ident"]) == list(b.meta["ident"]) and list(a.meta["ident"]) != list(c.meta["ident"])


def test_builder_bad_input_names_the_file_or_ident(tmp_path, test_data):
    with pytest.raises(InputDataError, match="nope.fits"):
        draw_catalog("nope.fits", galsim_dir=str(tmp_path))
    # a catalogue whose image file is missing
    shutil.copy(test_data / "cosmos" / "aegis_hst_5" / AEGIS[1], tmp_path / AEGIS[1])
    with pytest.raises(InputDataError, match=r"23409.*AEGIS_F814w_images_01.fits"):
        draw_catalog(AEGIS[1], galsim_dir=str(tmp_path), n_sources=None)
    # deconvolution asked for a galaxy without its PSF file
    with pytest.raises(InputDataError, match=r"141190.*real_galaxy_PSF_images_23.5_n1.fits"):
        draw_catalog(COSMOS10[1], galsim_dir=str(test_data / "cosmos" / "cosmos_f814w_10"), psf_treatment="deconvolve")
    # NaN pixels in the HST image
    for name in os.listdir(test_data / "cosmos" / "cosmos_f814w_10"):
        shutil.copy(test_data / "cosmos" / "cosmos_f814w_10" / name, tmp_path / name)
    images = tmp_path / "real_galaxy_images_23.5_n1.fits"
    os.chmod(images, 0o644)
    with fits.open(images, mode="update") as hdul:
        hdul[1].data[10, 10] = np.nan
    with pytest.raises(InputDataError, match=r"143346.*non-finite"):
        draw_catalog(COSMOS10[1], galsim_dir=str(tmp_path))


# ---------------------------------------------------------------------------- loader


def test_loader_pickles_opens_once_per_process_and_selects_by_seed(libs):
    loader = COSMOSLoaderV2(libs["cosmos10"])
    first = loader.get_source(12345)
    clone = pickle.loads(pickle.dumps(loader))
    assert clone._selected is None and len(pickle.dumps(loader)) < 2000  # settings only, no arrays
    again = clone.get_source(12345)
    assert again.ident == first.ident and np.array_equal(again.image, first.image)
    keys = [k for k in _LIBRARY_CACHE if k[1] == os.path.abspath(libs["cosmos10"])]
    assert len(keys) == 1 and keys[0][-1] == os.getpid()
    assert clone.library() is loader.library()  # one open file shared by all loaders of this process
    picked = {loader.get_source(seed).ident for seed in range(2**40, 2**40 + 200)}
    assert len(picked) == 10  # 200 seeds reach every galaxy
    src = loader.get_source(99, x_arcsec=0.2, y_arcsec=-0.1)
    assert (src.x_arcsec, src.y_arcsec, src.kind) == (0.2, -0.1, "cosmos")
    assert pickle.loads(pickle.dumps(src)).ident == src.ident


def test_loader_memory_maps_the_library_and_builds_each_source_once(libs):
    """One memory map per worker (no HDF5 read per stamp), each galaxy built once (LRU cache within its byte budget)."""
    loader = COSMOSLoaderV2(libs["cosmos10"])
    lib = loader.library()
    assert isinstance(lib.images, np.memmap) and lib.images.shape == (10, 128, 128) and lib.images.dtype == np.float32
    with h5py.File(libs["cosmos10"], "r") as f:
        assert np.array_equal(lib.images[4], f["images"][4])
    first = loader.source_by_index(4)
    assert loader.source_by_index(4) is first
    placed = loader.get_source(123, 0.1, 0.2)
    assert placed.image is loader.source_by_ident(placed.ident).image  # placing copies no pixels
    assert not first.image.flags.writeable  # shared by every user of the cached source
    with pytest.raises(ValueError):
        first.image[0, 0] = 1.0
    assert loader.source_by_ident(first.ident) is first
    def size(src):
        return src.image.nbytes + src._sb_padded.nbytes + src._quad_f32.nbytes

    budget, lib.source_cache_bytes = lib.source_cache_bytes, size(first) + size(lib._build(5)) - 1  # room for one of the two
    try:
        lib._sources.clear()
        lib._cached_bytes = 0
        a = loader.source_by_index(4)
        loader.source_by_index(5)  # evicts row 4
        assert 4 not in lib._sources and 5 in lib._sources and lib._cached_bytes <= lib.source_cache_bytes
        assert loader.source_by_index(4) is not a and np.array_equal(loader.source_by_index(4).image, a.image)
    finally:
        lib.source_cache_bytes = budget


def test_cropped_source_lenses_exactly_like_the_full_stamp(libs):
    """The loader drops all-zero margins symmetrically (cleaned stamps are 0 outside the footprint): same stamp
    origin, same surface brightness, so the lensed image is the same to float32 rounding (fast path: 1e-5)."""
    loader = COSMOSLoaderV2(libs["cosmos10"])
    lens = SIEShear(1.3, 0.75, 0.5, 0.03, -0.02)
    n_cropped = 0
    for row in range(10):
        cropped = loader.source_by_index(row)
        stored = loader.library().image(row)
        full = COSMOSImageSource(stored / stored.sum(), 0.03, cropped.ident)
        n_cropped += cropped.image.shape != full.image.shape
        a = cropped.at(0.11, -0.07, 0.9)
        b = full.at(0.11, -0.07, 0.9)
        pts = np.random.default_rng(row).uniform(-2.0, 2.0, (2, 2000))
        np.testing.assert_allclose(a.surface_brightness(*pts), b.surface_brightness(*pts), rtol=1e-9, atol=1e-9 * b.surface_brightness(*pts).max())
        fa = a.unit_lensed_image_fast(48, 0.262, 8, lens)
        fb = b.unit_lensed_image_fast(48, 0.262, 8, lens)
        assert np.abs(fa - fb).sum() / fb.sum() < 1e-5, cropped.ident
    assert n_cropped >= 8  # as-is stamps: most are far smaller than 128 x 128 once cleaned


def test_source_by_ident_and_metadata_frame(libs):
    """4a picks galaxies from ``metadata_frame`` (split by the loader's ident hash), 4c fetches them by ident."""
    loader = COSMOSLoaderV2(libs["parametric"])
    frame = loader.metadata_frame()
    assert len(frame) == 96 and list(frame["library_row"]) == list(range(96)) and "images" not in frame
    for column in LIBRARY_COLUMNS:
        assert column in frame, column
    assert set(frame["split"]) == {"train", "test"} and frame["passes_cuts"].all()
    for split in ("train", "test"):
        side = COSMOSLoaderV2(libs["parametric"], split=split)
        assert sorted(frame.loc[frame["split"] == split, "ident"]) == sorted(side.idents())
        assert all(side.in_split(i) == (s == split) for i, s in zip(frame["ident"], frame["split"]))
    wider = loader.metadata_frame(test_fraction=0.5)
    assert (wider["split"] == "test").sum() > (frame["split"] == "test").sum()
    assert set(frame.loc[frame["split"] == "test", "ident"]) <= set(wider.loc[wider["split"] == "test", "ident"])  # monotone in the fraction
    cut = COSMOSLoaderV2(libs["parametric"], hlr_range_arcsec=(0.2, 0.4)).metadata_frame()
    hlr = cut["half_light_radius_arcsec"]
    assert list(cut["passes_cuts"]) == list((hlr >= 0.2) & (hlr <= 0.4))
    for ident in frame["ident"][:10]:
        src = loader.source_by_ident(ident)
        assert src.ident == ident and (src.x_arcsec, src.y_arcsec, src.phi_rad) == (0.0, 0.0, 0.0)
    with pytest.raises(InputDataError, match=r"parametric.h5: no galaxy with ident 'nope'"):
        loader.source_by_ident("nope")
    test_only = COSMOSLoaderV2(libs["parametric"], split="test")
    a_train_ident = frame.loc[frame["split"] == "train", "ident"].iloc[0]
    with pytest.raises(InputDataError, match=rf"galaxy {a_train_ident} \(row \d+\) is outside this loader's selection \(split='test'"):
        test_only.source_by_ident(a_train_ident)
    with pytest.raises(ConfigError, match="test_fraction"):
        loader.metadata_frame(test_fraction=1.5)


def test_loader_split_is_disjoint_by_ident_and_cuts_apply(libs):
    loaders = {s: COSMOSLoaderV2(libs["parametric"], split=s, test_fraction=0.3) for s in ("train", "test")}
    train, test = set(loaders["train"].idents()), set(loaders["test"].idents())
    assert not train & test and len(train | test) == 96
    assert 10 < len(test) < 50  # ~30% of 96
    assert {loaders["test"].get_source(s).ident for s in range(300)} <= test
    cut = COSMOSLoaderV2(libs["parametric"], hlr_range_arcsec=(0.2, 0.4))
    hlr = cut.library().meta["half_light_radius_arcsec"]
    assert len(cut) == int(np.sum((hlr >= 0.2) & (hlr <= 0.4))) > 0
    assert all(0.2 <= cut.get_source(s).half_light_radius_arcsec <= 0.4 for s in range(50))
    snr_cut = COSMOSLoaderV2(libs["aegis"], min_snr=50)
    assert 0 < len(snr_cut) < 5
    with pytest.raises(InputDataError, match=r"aegis.h5: no galaxy left after cuts"):
        len(COSMOSLoaderV2(libs["aegis"], hlr_range_arcsec=(5.0, 6.0)))


def test_loader_bad_library_files(libs, tmp_path):
    with pytest.raises(InputDataError, match="missing.h5"):
        COSMOSLoaderV2(str(tmp_path / "missing.h5")).get_source(1)
    wrong = tmp_path / "wrong_pixscale.h5"
    shutil.copy(libs["aegis"], wrong)
    with h5py.File(wrong, "r+") as f:
        f.attrs["pixel_scale_arcsec"] = 0.05
    with pytest.raises(InputDataError, match=r"wrong_pixscale.h5: pixel_scale_arcsec attribute is 0.05, expected 0.03"):
        COSMOSLoaderV2(str(wrong)).get_source(1)
    nan = tmp_path / "nan.h5"
    shutil.copy(libs["aegis"], nan)
    with h5py.File(nan, "r+") as f:
        f["images"][3, 64, 64] = np.nan
    loader = COSMOSLoaderV2(str(nan))
    loader.source_by_index(2)  # other galaxies still load
    with pytest.raises(InputDataError, match=r"nan.h5: galaxy 17038 \(row 3\): .*1 non-finite"):
        loader.source_by_index(3)


def test_galsim_mode_matches_the_hdf5_library(libs, test_data):
    opts = dict(galsim_dir=str(test_data / "cosmos" / "cosmos_f814w_10"), gal_type="real", cuts=NO_CUTS)
    live = COSMOSLoaderV2(str(test_data / "cosmos" / "cosmos_f814w_10" / COSMOS10[1]), mode="galsim", galsim_options=opts)
    stored = COSMOSLoaderV2(libs["cosmos10"])
    for seed in (1, 2, 3):
        a, b = live.get_source(seed), stored.get_source(seed)
        assert a.ident == b.ident
        np.testing.assert_allclose(a.image, b.image, rtol=1e-6, atol=1e-10)


def test_synthetic_mode_is_explicit_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="dhs_spark.sims.cosmos"):
        loader = COSMOSLoaderV2(mode="synthetic", n_synthetic=8, synthetic_stamp_size=64)
    assert "synthetic" in caplog.text
    src = loader.get_source(5)
    assert src.ident.startswith("synthetic-") and abs(src.image.sum() - 1) < 1e-9 and src.clumpiness > 0.05
    with pytest.raises(Exception, match="cosmos_library_path"):
        COSMOSLoaderV2(mode="hdf5")  # no silent fallback to synthetic when the path is missing


def test_loader_from_many_spark_tasks_in_one_worker(spark, libs):
    """Spark ships the pickled loader; each Python worker opens the file once and picks the same galaxies."""
    loader = COSMOSLoaderV2(libs["aegis"])
    expected = [loader.get_source(s).ident for s in range(40)]

    def pick(seeds):
        from dhs_spark.sims import cosmos

        for s in seeds:
            src = loader.get_source(s)
            n_open = sum(1 for k in cosmos._LIBRARY_CACHE if k[0] == "hdf5" and k[-1] == os.getpid())
            yield s, src.ident, os.getpid(), n_open, float(src.image.sum())

    rows = spark.sparkContext.parallelize(range(40), 8).mapPartitions(pick).collect()
    assert [r[1] for r in sorted(rows)] == expected
    assert all(r[3] == 1 for r in rows)  # one open library per worker process, whatever the task count
    assert all(abs(r[4] - 1.0) < 1e-9 for r in rows)
    assert len({r[2] for r in rows}) < 8  # workers were reused across tasks


# ---------------------------------------------------------------------------- image source + resampling


def test_surface_brightness_matches_lenstronomy_interpol(libs):
    """Bilinear SB with one zero-padding ring and the true-centre origin: identical to lenstronomy's INTERPOL."""
    from lenstronomy.LightModel.Profiles.interpolation import Interpol

    src = COSMOSLoaderV2(libs["cosmos10"]).source_by_index(0).at(0.12, -0.07, 0.6)
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-2.2, 2.2, (2, 5000))
    ours = src.surface_brightness(x, y)
    ref = Interpol().function(x, y, image=src.image / 0.03**2, amp=1, center_x=0.12, center_y=-0.07, phi_G=0.6, scale=0.03)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-9 * ref.max())
    assert np.count_nonzero(ours == 0) > 100  # points outside the stamp are exactly zero


def test_surface_brightness_integrates_to_one_and_validates():
    img = np.random.default_rng(0).random((21, 20))
    src = COSMOSImageSource(img / img.sum(), 0.03, "t")
    g = (np.arange(-400, 400) + 0.5) * 0.001  # 1 mas grid over +-0.4", well past the stamp
    xx, yy = np.meshgrid(g, g)
    assert abs(src.surface_brightness(xx, yy).sum() * 1e-6 - 1.0) < 1e-4
    assert src.surface_brightness(xx.astype(np.float32), yy.astype(np.float32)).dtype == np.float32
    with pytest.raises(InputDataError, match="bad-one.*non-finite"):
        COSMOSImageSource(np.where(img > 0.5, np.nan, img), 0.03, "bad-one")
    with pytest.raises(InputDataError, match="unit total flux"):
        COSMOSImageSource(img, 0.03, "t")


def test_resample_to_pixscale_conserves_flux_and_block_sums():
    img = np.random.default_rng(1).random((129, 129))
    coarse = resample_to_pixscale(img, 0.03, 0.09)  # integer ratio: exact 3 x 3 block sums
    assert coarse.shape == (43, 43)
    np.testing.assert_allclose(coarse, img.reshape(43, 3, 43, 3).sum(axis=(1, 3)), rtol=1e-12)
    odd = resample_to_pixscale(img, 0.03, 0.262)
    assert odd.shape == (15, 15) and math.isclose(odd.sum(), img.sum(), rel_tol=1e-12)
    fine = resample_to_pixscale(img[:8, :8], 0.03, 0.01)
    assert math.isclose(fine.sum(), img[:8, :8].sum(), rel_tol=1e-12)


def test_cli_build_and_bad_catalogue_exit_code(tmp_path, test_data, capsys):
    from dhs_spark.cli import main

    d = str(test_data / "cosmos" / "galsim_example_catalog")
    out = tmp_path / "cli.h5"
    args = ["cosmos", "build", "--galsim-path", d, "--catalog", EXAMPLE[1], "--output", str(out), "--n-sources", "3", "--stamp-size", "32", "--gal-type", "parametric",
            "--min-flux-fraction-in-stamp", "0"]  # fmt: skip
    assert main(args) == 0
    with h5py.File(out, "r") as f:
        assert f["images"].shape == (3, 32, 32) and f.attrs["gal_type"] == "parametric"
    assert main(["cosmos", "build", "--catalog", str(tmp_path / "absent.fits"), "--output", str(tmp_path / "x.h5")]) == 2
    assert "absent.fits" in capsys.readouterr().err
