"""Lens look-alikes (dhs_spark.survey.lookalikes) and their opt-in planting in the mock survey."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from survey_test_helpers import LOOKALIKE_CATALOGUE_OBJECTS, write_lookalike_catalogue_bricks

from dhs_spark.catalogs.common import parse_jname
from dhs_spark.errors import ConfigError
from dhs_spark.survey import lookalikes as lk
from dhs_spark.survey import mock as mock_module
from dhs_spark.survey.bricks import PIXSCALE_ARCSEC, brickname_for, load_bricks_table
from dhs_spark.survey.coadds import coadd_file_name
from dhs_spark.survey.mock import build_mock_survey

FWHM = (1.45, 1.3, 1.2)  # g, r, z arcsec: DR10-typical (median psfsize of the bundled brick excerpts ~1.5, 1.38, 1.31)
SUPPLIED = "tests/data/catalogs/supplied"  # Darg et al. 2010 parts (supplied, not bundled)


def _host():
    return lk.Host(r_e_arcsec=0.9, q=0.8, phi_rad=0.3, flux_grz_nmgy=(1.0, 3.5, 8.0), objid=4)


# ---------------------------------------------------------------------------------------------
# models


@pytest.mark.parametrize("typ", lk.LOOKALIKE_TYPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flux_per_band_equals_requested(typ, seed):
    la = lk.draw_lookalike(typ, seed)
    stamp, _x0, _y0 = lk.render_lookalike(la, 40.3, 39.8, FWHM)
    # the sum of the component fluxes, each from its own r magnitude and colours
    want = np.sum([c.flux_grz_nmgy for c in la.components], axis=0)
    # rtol 1e-9: each component is normalised on the sub-pixel grid and the FFT convolution is
    # circular, so flux is conserved up to float64 rounding
    np.testing.assert_allclose(stamp.sum(axis=(1, 2)), want, rtol=1e-9, err_msg=f"{typ} seed {seed}")
    np.testing.assert_allclose(la.flux_nmgy, want, rtol=0)
    # and the box is big enough: < 1e-3 of the light in the outermost 2-px frame (else the
    # circular convolution would have wrapped light around and the sum would hide it)
    inner = stamp[:, 2:-2, 2:-2].sum(axis=(1, 2))
    assert np.all(1.0 - inner / stamp.sum(axis=(1, 2)) < 1e-3), (typ, seed, 1.0 - inner / stamp.sum(axis=(1, 2)))
    assert np.all(stamp > -1e-9 * stamp.max()), f"{typ}: negative pixels beyond FFT rounding"


def _elliptical_profile(img, x_c, y_c, q, phi, bin_arcsec=0.1, r_max_arcsec=9.0):
    """Mean of ``img`` in elliptical annuli (semi-major radius, arcsec) about pixel (x_c, y_c)."""
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    dx, dy = (xx - x_c) * PIXSCALE_ARCSEC, (yy - y_c) * PIXSCALE_ARCSEC
    c, s = math.cos(phi), math.sin(phi)
    rho = np.hypot(c * dx + s * dy, (-s * dx + c * dy) / q)
    edges = np.arange(0.0, r_max_arcsec, bin_arcsec)
    idx = np.digitize(rho.ravel(), edges)
    sums = np.bincount(idx, img.ravel(), minlength=len(edges) + 1)[1 : len(edges)]
    cnt = np.bincount(idx, minlength=len(edges) + 1)[1 : len(edges)]
    return edges[:-1] + bin_arcsec / 2, sums / np.maximum(cnt, 1)


@pytest.mark.parametrize("typ", ["ring_collisional", "ring_resonance"])
@pytest.mark.parametrize("radius", [1.5, 3.0, 5.0])
def test_ring_light_peaks_at_requested_radius(typ, radius):
    la = lk.draw_lookalike(typ, 11, overrides={"radius_arcsec": radius, "q": 1.0})
    ring = next(c for c in la.components if c.role == "ring")
    assert ring.shape.radius_arcsec == radius
    # the ring's own light (ring + its knots), PSF-convolved: its elliptical radial profile peaks at R
    ring_only = dataclasses.replace(la, components=tuple(c for c in la.components if c.role in ("ring", "knot")))
    stamp, x0, y0 = lk.render_lookalike(ring_only, 50.0, 50.0, FWHM, half_pix=45)
    r, prof = _elliptical_profile(stamp[1], 50.0 - x0, 50.0 - y0, ring.shape.q, ring.shape.phi_rad)
    peak = r[np.argmax(prof)]
    # 0.2": two profile bins; a Gaussian PSF pulls a ring's peak inwards by < sigma^2/R (< 0.2" here)
    assert abs(peak - radius) <= 0.2, (typ, radius, peak)
    # and the ring stands out of the whole model: at R the full image is brighter than midway to the centre
    full, fx0, fy0 = lk.render_lookalike(la, 50.0, 50.0, FWHM, half_pix=45)
    r, prof_full = _elliptical_profile(full[1], 50.0 - fx0, 50.0 - fy0, ring.shape.q, ring.shape.phi_rad)
    if typ == "ring_collisional":  # no bulge at the ring centre (the nucleus is displaced)
        assert prof_full[np.argmin(abs(r - radius))] > prof_full[np.argmin(abs(r - 0.5 * radius))] * 0.9, (typ, radius)


def test_colours_are_as_stated():
    # blue components: uniform in the DESI ELG box with 0.2 <= g-r <= 0.5
    rng = np.random.default_rng(0)
    blue = np.array([lk.draw_blue_colour(rng) for _ in range(2000)])
    assert all(lk.in_blue_box(gr, rz) for gr, rz in blue)
    assert blue[:, 0].min() < 0.23 and blue[:, 0].max() > 0.47, "the whole g-r range 0.2-0.5 is used"
    # red components without a pool: the DR10 LRG excerpt's mean colours (clipping moves the mean < 0.03)
    red = np.array([lk.draw_red_colour(rng) for _ in range(4000)])
    np.testing.assert_allclose(red.mean(axis=0), lk.RED_COLOUR_MEAN, atol=0.03)
    # a pool is used as given
    pool = np.array([[1.7, 1.1]])
    la = lk.draw_lookalike("merger_tidal", 5, red_colours=pool)
    for c in la.components:
        if c.role == "nucleus":
            np.testing.assert_allclose(lk.colours_of(c.flux_grz_nmgy), (1.7, 1.1), atol=1e-9)
    # measured on the image: an attached blue companion (the host is not drawn) has its stated colours
    la = lk.draw_lookalike("blue_companion", 3, host=_host())
    prm = la.params_dict()
    stamp, *_ = lk.render_lookalike(la, 30.0, 30.0, FWHM)
    gr, rz = lk.colours_of(stamp.sum(axis=(1, 2)))
    assert abs(gr - prm["companion_g_minus_r"]) < 1e-6 and abs(rz - prm["companion_r_minus_z"]) < 1e-6
    assert 0.2 <= gr <= 0.5 and lk.in_blue_box(gr, rz)
    # spiral arms: the arms are blue, the bulge red, the disc in between (half and half in r)
    la = lk.draw_lookalike("spiral_arms", 8)
    arm_gr = lk.colours_of(la.component_flux("arm"))[0]
    bulge_gr = lk.colours_of(la.component_flux("bulge"))[0]
    disc_gr = lk.colours_of(la.component_flux("disc"))[0]
    assert 0.2 <= arm_gr <= 0.5 and bulge_gr > 0.75 and arm_gr < disc_gr < bulge_gr, (arm_gr, disc_gr, bulge_gr)
    # and on the image: the arm annulus (r_in..r_out, beyond the bulge) is bluer in g-r than the centre
    stamp, x0, y0 = lk.render_lookalike(la, 50.0, 50.0, FWHM, half_pix=45)
    yy, xx = np.mgrid[0 : stamp.shape[1], 0 : stamp.shape[2]]
    rr = np.hypot(xx - (50 - x0), yy - (50 - y0)) * PIXSCALE_ARCSEC
    centre = lk.colours_of(stamp[:, rr < 0.5].sum(axis=1))[0]
    annulus = lk.colours_of(stamp[:, (rr > prm_get(la, "r_in_arcsec") + 1.0) & (rr < prm_get(la, "r_out_arcsec"))].sum(axis=1))[0]
    assert annulus < centre - 0.3, (annulus, centre)


def prm_get(la, name):
    return la.params_dict()[name]


@pytest.mark.parametrize("seed", range(6))
def test_merger_has_two_nuclei(seed):
    from scipy.ndimage import maximum_filter

    la = lk.draw_lookalike("merger_tidal", seed)
    prm = la.params_dict()
    assert sum(c.role == "nucleus" for c in la.components) == 2
    stamp, x0, y0 = lk.render_lookalike(la, 60.0, 60.0, FWHM)
    img = stamp[2]  # z band, where the red nuclei are brightest relative to the bluer debris
    peaks = np.argwhere((img == maximum_filter(img, size=5)) & (img > 0.05 * img.max()))
    assert len(peaks) >= 2, (seed, prm)
    order = np.argsort(img[tuple(peaks.T)])[::-1]
    (ya, xa), (yb, xb) = peaks[order[0]], peaks[order[1]]
    sep = math.hypot(xa - xb, ya - yb) * PIXSCALE_ARCSEC
    # the two brightest maxima are the nuclei: their distance is the drawn separation (0.4": PSF
    # blending pulls two blended peaks together, and peaks sit on whole pixels)
    assert abs(sep - prm["separation_arcsec"]) < 0.4, (seed, sep, prm["separation_arcsec"])
    # light beyond the nuclei: tails or shells carry >= 10% of the r-band flux
    debris = la.component_flux("tail") if prm["shells"] == 0 else la.component_flux("shell")
    assert debris[1] / la.flux_nmgy[1] > 0.1, (seed, debris[1] / la.flux_nmgy[1])


def test_same_seed_same_bytes_and_overrides():
    for typ in lk.LOOKALIKE_TYPES:
        a, b = lk.draw_lookalike(typ, 77), lk.draw_lookalike(typ, 77)
        assert a == b, typ
        sa, *_ = lk.render_lookalike(a, 20.2, 20.7, FWHM)
        sb, *_ = lk.render_lookalike(b, 20.2, 20.7, FWHM)
        assert hashlib.sha256(sa.tobytes()).digest() == hashlib.sha256(sb.tobytes()).digest(), typ
        assert lk.draw_lookalike(typ, 78).params != a.params, typ
    # an override changes only that parameter: the random stream is drawn in full either way
    a = lk.draw_lookalike("ring_collisional", 5)
    b = lk.draw_lookalike("ring_collisional", 5, overrides={"q": 1.0})
    diff = {k for (k, va), (_, vb) in zip(a.params, b.params) if va != vb}
    assert diff == {"q"}, diff
    with pytest.raises(ConfigError, match="radius_arcsecc"):
        lk.draw_lookalike("ring_collisional", 5, overrides={"radius_arcsecc": 2.0})
    with pytest.raises(ConfigError, match="lookalike_type"):
        lk.draw_lookalike("ring", 5)


def test_heldout_fraction_and_stability():
    ids = [lk.lookalike_id(lk.LOOKALIKE_TYPES[i % 5], "2356p000", 235.6 + i * 1e-4, 0.01 * (i % 97)) for i in range(20000)]
    flags = np.array([lk.is_heldout(i) for i in ids])
    # binomial sd at n = 20000: 0.0032; 0.012 is ~4 sd
    assert abs(flags.mean() - 0.3) < 0.012, flags.mean()
    assert (flags == np.array([lk.is_heldout(i) for i in ids])).all()
    other_salt = np.array([lk.is_heldout(i, salt="another-salt") for i in ids])
    assert 0.3 < (flags != other_salt).mean() < 0.5  # independent draws disagree 2 p (1 - p) = 42% of the time
    assert not any(lk.is_heldout(i, fraction=0.0) for i in ids[:100]) and all(lk.is_heldout(i, fraction=1.0) for i in ids[:100])


def test_options_are_validated():
    with pytest.raises(ConfigError, match="heldout_fraction"):
        lk.LookalikeOptions(heldout_fraction=1.5)
    with pytest.raises(ConfigError, match="types"):
        lk.LookalikeOptions(types=("ring",))
    with pytest.raises(ConfigError, match="catalogs"):
        lk.LookalikeOptions(catalogs=("slacs",))


# ---------------------------------------------------------------------------------------------
# the mock survey

SMALL = dict(n_bricks=1, brick_size_pix=300, seed=5, n_lrg_per_brick=3, n_neighbours_per_brick=10, n_stars_per_brick=3)
PLANT = lk.LookalikeOptions(n_free_per_brick=4, n_lrg_hosts_per_brick=2, catalogs=())

# decoded pixels and sweep values of build_mock_survey(**SMALL-like arguments below) made by the
# code before look-alikes existed (commit ced7434), with this file's _array_digest
PRE_LOOKALIKE_DIGEST = "4d26526ca977cbe1740dfb0f14f447cd3d465ab85cb9d06a0789e036f2a47a3c"


def _array_digest(ms):
    h = hashlib.sha256()
    for p in sorted(ms.root.rglob("*.fits.fz")):
        h.update(p.name.encode())
        d = fits.getdata(p, 1)
        h.update(np.ascontiguousarray(d.astype(d.dtype.newbyteorder("<"))).tobytes())
    cat = pd.read_parquet(ms.catalog_parquet)
    h.update(pd.util.hash_pandas_object(cat, index=False).to_numpy().tobytes())
    return h.hexdigest()


def _file_bytes(ms):
    return {str(p.relative_to(ms.root)): p.read_bytes() for p in sorted((ms.root / "coadd").rglob("*.fits.fz"))}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The same small survey without look-alikes, with them, and with them in the catalogue only."""
    t = tmp_path_factory.mktemp("lookalike_mock")
    off = build_mock_survey(t / "off", **SMALL)
    on = build_mock_survey(t / "on", **SMALL, lookalikes=PLANT)
    null = build_mock_survey(t / "null", **SMALL, lookalikes=dataclasses.replace(PLANT, plant_pixels=False))
    return off, on, null


def test_off_keeps_existing_bytes(tmp_path, builds):
    off, on, null = builds
    assert off.lookalike_catalog_path is None and not (off.root / "lookalikes-mock.parquet").exists()
    small = build_mock_survey(tmp_path, n_bricks=1, brick_size_pix=200, seed=3, n_lrg_per_brick=2, n_neighbours_per_brick=5, n_stars_per_brick=2)
    assert _array_digest(small) == PRE_LOOKALIKE_DIGEST
    # with look-alikes on but kept out of the pixels, every brick file is byte-identical to the
    # survey without them: the look-alikes draw from their own random stream
    assert _file_bytes(null) == _file_bytes(off)
    assert pd.read_parquet(on.catalog_parquet).equals(pd.read_parquet(off.catalog_parquet))
    assert _file_bytes(on) != _file_bytes(off)


def _bands(ms, name, kind):
    return np.stack([fits.getdata(ms.brick_dir(name) / coadd_file_name(name, kind, b), 1).astype(np.float64) for b in "grz"])


def _check_planted_flux(on, null, cat):
    """Rows inside their bricks; the on - null pixels are the look-alikes re-rendered from their
    catalogue rows (``model_json``), to the RICE quantisation of the two images."""
    bricks = load_bricks_table(on.bricks_table).set_index("brickname")
    size = on.brick_size_pix
    for name, rows in cat.groupby("brickname"):
        assert ((rows["x_pix"] >= 0) & (rows["x_pix"] <= size - 1) & (rows["y_pix"] >= 0) & (rows["y_pix"] <= size - 1)).all(), name
        diff = _bands(on, name, "image") - _bands(null, name, "image")
        invvar = _bands(on, name, "invvar")
        assert (invvar == _bands(null, name, "invvar")).all()
        fwhm = [bricks.loc[name, f"psf_fwhm_{b}_arcsec"] for b in "grz"]
        model = np.zeros_like(diff)
        for _, row in rows.iterrows():
            la = lk.lookalike_from_json(row["model_json"])
            np.testing.assert_allclose(la.flux_nmgy, row[["flux_g_nmgy", "flux_r_nmgy", "flux_z_nmgy"]].to_numpy(float), rtol=1e-12)
            stamp, x0, y0 = lk.render_lookalike(la, row["x_pix"], row["y_pix"], fwhm)
            for k in range(3):
                mock_module._add(model[k], stamp[k], x0, y0)
        good = invvar > 0
        assert (diff[~good] == 0).all(), "no-data pixels stay 0"
        sigma = 1.0 / np.sqrt(np.where(good, invvar, np.inf))
        # RICE (quantize_level 16) rounds each image to ~sigma/16 per pixel (dithered, uniform
        # error); the difference of two is off by at most ~2 steps: allow 4 (sigma/4) per pixel
        resid = np.abs(diff - model)[good] / sigma[good]
        assert resid.max() < 0.25, (name, resid.max())
        # and the look-alikes are really there: their light is many quantisation steps deep
        for k in range(3):
            assert model[k][good[k]].sum() > 0.5 * rows[f"flux_{'grz'[k]}_nmgy"].sum(), (name, k)
            lit = model[k] > sigma[k]
            assert lit.sum() > 30 * len(rows), (name, k, lit.sum())
            np.testing.assert_allclose(diff[k][lit & good[k]].sum(), model[k][lit & good[k]].sum(), rtol=0.01)


def test_planted_lookalikes_in_catalogue_and_pixels(builds):
    off, on, null = builds
    cat = pd.read_parquet(on.lookalike_catalog_path)
    assert list(cat.columns) == list(lk.CATALOG_COLUMNS)
    assert len(cat) == PLANT.n_free_per_brick + PLANT.n_lrg_hosts_per_brick
    assert set(cat["lookalike_type"]) <= set(lk.LOOKALIKE_TYPES) and (cat["source"] == "mock").all()
    assert (brickname_for(cat["ra"].to_numpy(), cat["dec"].to_numpy()) == cat["brickname"]).all()
    assert pd.read_parquet(null.lookalike_catalog_path).equals(cat)
    # the held-out flag is the salted hash of the id
    assert (cat["heldout"] == [lk.is_heldout(i) for i in cat["lookalike_id"]]).all()
    # LRG-attached rows carry their LRG's OBJID and position; the others keep clear of every LRG
    sweep = pd.read_parquet(on.catalog_parquet)
    lrg = sweep[sweep["MOCK_ROLE"] == "lrg"].set_index("OBJID")
    attached = cat[cat["host_objid"] >= 0]
    assert len(attached) == PLANT.n_lrg_hosts_per_brick and set(attached["lookalike_type"]) <= set(lk.LRG_ATTACHED_TYPES)
    np.testing.assert_allclose(attached["ra"], lrg.loc[attached["host_objid"], "RA"], atol=1e-9)
    np.testing.assert_allclose(attached["dec"], lrg.loc[attached["host_objid"], "DEC"], atol=1e-9)
    free = cat[cat["host_objid"] < 0]
    assert (free["nearest_lrg_arcsec"] >= PLANT.min_lrg_distance_pix * PIXSCALE_ARCSEC - 1e-9).all()
    _check_planted_flux(on, null, cat)


def test_catalogue_lookalikes_at_their_real_positions(tmp_path):
    bricks_csv = write_lookalike_catalogue_bricks(tmp_path / "bricks.csv")
    kw = dict(n_bricks=2, brick_size_pix=320, seed=9, n_lrg_per_brick=2, n_neighbours_per_brick=6, n_stars_per_brick=2, bricks_paths=(bricks_csv,))
    opts = lk.LookalikeOptions(n_free_per_brick=1, n_lrg_hosts_per_brick=1, catalog_dir=SUPPLIED)
    on = build_mock_survey(tmp_path / "on", **kw, lookalikes=opts)
    null = build_mock_survey(tmp_path / "null", **kw, lookalikes=dataclasses.replace(opts, plant_pixels=False))
    cat = pd.read_parquet(on.lookalike_catalog_path)
    from_cat = cat[cat["source"].str.startswith("catalog:")].set_index("catalog_name")
    assert len(from_cat) == len(LOOKALIKE_CATALOGUE_OBJECTS)
    for catalogue, name in LOOKALIKE_CATALOGUE_OBJECTS:
        row = from_cat.loc[name]
        assert row["source"] == f"catalog:{catalogue}"
        np.testing.assert_allclose((row["ra"], row["dec"]), parse_jname(name), atol=1e-9)  # the catalogue's own position
        assert row["lookalike_type"] == ("merger_tidal" if catalogue == "darg2010_mergers" else lk.catalogue_ring_type(name))
        assert row["lookalike_type"] != "merger_tidal" or catalogue == "darg2010_mergers"
        assert row["nearest_lrg_arcsec"] >= opts.min_lrg_distance_pix * PIXSCALE_ARCSEC - 1e-9
    assert (brickname_for(cat["ra"].to_numpy(), cat["dec"].to_numpy()) == cat["brickname"]).all()
    _check_planted_flux(on, null, cat)


def test_catalogue_ring_types_follow_the_hash():
    names = [f"J{i:06d}.00+000000.0" for i in range(5000)]
    share = np.mean([lk.catalogue_ring_type(n) == "ring_collisional" for n in names])
    assert abs(share - lk.COLLISIONAL_RING_SHARE) < 0.025, share  # binomial sd 0.0057


def test_gallery_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = lk.render_gallery_png(tmp_path / "g.png", n_per_type=1)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
