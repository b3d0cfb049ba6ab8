"""Source population: SED draws, catalogue photometry, moving galaxies in redshift, joint Sersic prior."""

import math
import os

import numpy as np
import pytest
from scipy.stats import norm

from dhs_spark.config.seeds import rng_from_seed
from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims import sed
from dhs_spark.sims import source_population as sp

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_CATALOG = os.path.join(REPO, "tests", "data", "cosmos", "galsim_example_catalog", "real_galaxy_catalog_23.5_example.fits")


def test_beta_draws_follow_the_published_distribution():
    # z = 1.5 is the Kurczynski et al. (2014) anchor: mean -1.382, sigma 0.43. The median is not
    # touched by the E >= 0 clip (it only moves the bluest ~3%); 4000 draws give the median to
    # +-0.03 (3 sigma = 3 * 1.25 * 0.43 / sqrt(4000)) and the clipped fraction to +-0.008 (3 sigma).
    n = 4000
    params = sp.draw_sed_params(rng_from_seed(11), np.full(n, 1.5))
    beta = params.beta_uv
    assert np.median(beta) == pytest.approx(-1.382, abs=0.03)
    clipped = np.mean(params.ebv_mag == 0.0)
    expected = norm.cdf((sed.intrinsic_beta_uv() + 1.382) / 0.43)
    assert clipped == pytest.approx(expected, abs=3 * math.sqrt(expected * (1 - expected) / n))
    mean, sigma = sp.beta_uv_distribution(np.array([0.1, 2.25, 5.0]))
    np.testing.assert_allclose(mean, [-1.33, (-1.382 - 1.70) / 2, -1.70], atol=1e-12, err_msg="linear between anchors, flat outside")
    np.testing.assert_allclose(sigma, [0.60, (0.43 + 0.33) / 2, 0.33], atol=1e-12)


def test_photometry_is_deterministic_per_seed():
    a = sp.cosmos_source_photometry(22.3, 0.7, rng_from_seed(5), z_target=2.1)
    b = sp.cosmos_source_photometry(22.3, 0.7, rng_from_seed(5), z_target=2.1)
    c = sp.cosmos_source_photometry(22.3, 0.7, rng_from_seed(6), z_target=2.1)
    assert a == b
    assert a["source_sed_ebv_mag"] != c["source_sed_ebv_mag"]
    d1 = sp.draw_parametric_source(rng_from_seed(9), z_target=1.8)
    d2 = sp.draw_parametric_source(rng_from_seed(9), z_target=1.8)
    assert d1 == d2


def test_galaxy_at_its_catalogue_redshift_keeps_its_magnitude_through_the_kcorrection():
    out = sp.cosmos_source_photometry(21.5, 0.8, rng_from_seed(3))
    params = sed.SEDParams(out["source_sed_ebv_mag"])
    assert out["source_z"] == out["source_z_catalog"] == 0.8
    assert out["source_size_scale"] == 1.0 and out["source_zphot_fallback"] is False
    assert out["source_r_mag"] == pytest.approx(21.5 + sed.kcorrect_f814w_to_r(0.8, params), abs=1e-12)
    assert (out["source_color_g_r"], out["source_color_r_z"]) == pytest.approx(sed.observed_colors(0.8, params), abs=1e-12)
    assert out["source_sed_beta_uv"] == pytest.approx(sed.uv_slope_beta(params), abs=1e-12)


@pytest.mark.parametrize("cosmology", ["Planck18", "WMAP9"])
def test_moved_galaxy_matches_physical_spectrum_through_speclite_and_astropy(cosmology):
    # Independent reference: put the same rest spectrum at z_c and z_t with astropy's luminosity
    # distances, f_lambda,obs = L_lambda(lam / (1 + z)) / (4 pi D_L^2 (1 + z)), normalise it to the
    # catalogue F814W at z_c and integrate r at z_t with speclite. No IGM enters F814W at z_c = 0.6
    # or r at z_t = 2.0. 3e-3 mag: the two integrations' grids.
    import astropy.units as u
    import speclite.filters
    from astropy.cosmology import realizations

    cosmo = getattr(realizations, cosmology)
    mag814, z_c, z_t = 22.0, 0.6, 2.0
    out = sp.cosmos_source_photometry(mag814, z_c, rng_from_seed(21), z_target=z_t, cosmology=cosmology)
    ebv = out["source_sed_ebv_mag"]
    wave, template = sed.load_template()
    lum = template * 10.0 ** (-0.4 * ebv * sed.calzetti00_k(wave))

    def observed(z):
        d_l = cosmo.luminosity_distance(z).to_value("cm")
        return wave * (1 + z) * u.AA, lum / (4 * math.pi * d_l**2 * (1 + z)) * u.erg / (u.s * u.cm**2 * u.AA)

    w814, r814 = sed.band_response("f814w")
    f814 = speclite.filters.FilterResponse(w814 * u.AA, r814, meta=dict(group_name="test", band_name="f814w"))
    r_filter = speclite.filters.load_filter("decam2014-r")
    w_c, f_c = observed(z_c)
    w_t, f_t = observed(z_t)
    offset = mag814 - float(f814.get_ab_magnitude(f_c, w_c))  # the luminosity that gives the catalogue F814W
    r_ref = float(r_filter.get_ab_magnitude(f_t, w_t)) + offset
    assert out["source_r_mag"] == pytest.approx(r_ref, abs=3e-3)
    d_a = cosmo.angular_diameter_distance([z_c, z_t]).to_value("Mpc")
    assert out["source_size_scale"] == pytest.approx(d_a[0] / d_a[1], rel=1e-9)
    # Tolman dimming: surface brightness (mag per unit area) changes by 10 log10((1+z_t)/(1+z_c))
    # plus the difference of the K-corrections of the flux-conserving spectra.
    params = sed.SEDParams(ebv)
    d_sb = (out["source_r_mag"] - (mag814 + out["source_kcorr_r_minus_f814w_mag"])) + 5 * math.log10(out["source_size_scale"])
    d_k = sed.mag_in_band("r", z_t, params) - sed.mag_in_band("r", z_c, params)
    assert d_sb - d_k == pytest.approx(10 * math.log10((1 + z_t) / (1 + z_c)), abs=1e-9)
    assert (out["source_color_g_r"], out["source_color_r_z"]) == pytest.approx(sed.observed_colors(z_t, params), abs=1e-12)


def test_invalid_zphot_follows_the_fallback_rule():
    catalog = sp.load_parametric_catalog()
    for bad in (float("nan"), 0.0, -1.0, None):
        with_target = sp.cosmos_source_photometry(22.0, bad, rng_from_seed(1), z_target=1.7)
        assert with_target["source_zphot_fallback"] is True and with_target["source_z"] == 1.7
        assert with_target["source_z_catalog"] in set(catalog.zphot.tolist()), "a catalogue zphot, then moved to the target like any galaxy"
        same = sp.cosmos_source_photometry(22.0, with_target["source_z_catalog"], rng_from_seed(1), z_target=1.7)
        assert with_target["source_size_scale"] == same["source_size_scale"] != 1.0
    drawn = {sp.cosmos_source_photometry(22.0, float("nan"), rng_from_seed(s))["source_z_catalog"] for s in range(20)}
    assert drawn <= set(catalog.zphot.tolist()), "without a target the redshift is a catalogue zphot"
    assert len(drawn) > 5
    ok = sp.cosmos_source_photometry(22.0, 1.2, rng_from_seed(1))
    assert ok["source_zphot_fallback"] is False and ok["source_zphot_catalog"] == 1.2


def test_bad_inputs_raise():
    with pytest.raises(InputDataError, match="mag_f814w"):
        sp.cosmos_source_photometry(float("nan"), 0.5, rng_from_seed(1))
    with pytest.raises(ValueError, match="z_target"):
        sp.cosmos_source_photometry(22.0, 0.5, rng_from_seed(1), z_target=-1.0)
    with pytest.raises(ConfigError, match="cosmology"):
        sp.cosmos_source_photometry(22.0, 0.5, rng_from_seed(1), z_target=2.0, cosmology="Planck99")
    with pytest.raises(InputDataError, match="not found"):
        sp.load_parametric_catalog("/nonexistent/real_galaxy_catalog.fits")


def test_parametric_catalog_is_galsims_selection_with_galsims_sizes():
    # The bundled copy equals the tests/data one read through GalSim's RealGalaxyCatalog name;
    # r_eff is the circularised radius (major-axis sersicfit[1] x 0.03"/pix x sqrt(q)).
    from astropy.io import fits

    bundled = sp.load_parametric_catalog()
    from_tests = sp.load_parametric_catalog(TEST_CATALOG)
    assert len(bundled) == 96, "GalSim's 'marginal' exclusion keeps 96 of 100"
    for name in ("ident", "mag_f814w", "r_eff_arcsec", "sersic_n", "q", "zphot"):
        np.testing.assert_array_equal(getattr(bundled, name), getattr(from_tests, name), err_msg=name)
    with fits.open(TEST_CATALOG.replace(".fits", "_fits.fits")) as hdul:
        raw = hdul[1].data
        by_ident = {str(i): k for k, i in enumerate(raw["IDENT"])}
        rows = np.array([by_ident[i] for i in bundled.ident])
        major = raw["sersicfit"][rows, 1] * 0.03
        np.testing.assert_allclose(bundled.r_eff_arcsec, major * np.sqrt(raw["sersicfit"][rows, 3]), rtol=1e-3)


def test_parametric_draw_takes_every_quantity_from_one_catalogue_row():
    from astropy.io import fits

    catalog = sp.load_parametric_catalog()
    with fits.open(TEST_CATALOG.replace(".fits", "_fits.fits")) as hdul:
        raw = {str(r["IDENT"]): r for r in hdul[1].data}
    rng = rng_from_seed(77)
    rows = set()
    for z_target in (None, 1.2, 2.5, None, 3.0, 1.0):
        out = sp.draw_parametric_source(rng, catalog, z_target=z_target)
        row = out["source_catalog_index"]
        rows.add(row)
        rec = raw[out["source_catalog_ident"]]
        assert out["source_mag_f814w_catalog"] == pytest.approx(float(rec["mag_auto"]), abs=1e-6)
        assert out["source_zphot_catalog"] == pytest.approx(float(rec["zphot"]), abs=1e-6)
        assert out["source_r_eff_arcsec"] / out["source_size_scale"] == pytest.approx(float(rec["hlr"][0]), rel=1e-6)
        assert out["source_sersic_n"] == pytest.approx(min(max(float(rec["sersicfit"][2]), 0.5), 6.0), abs=1e-6)
        assert out["source_q"] == pytest.approx(float(rec["sersicfit"][3]), abs=1e-6)
        assert out["source_z"] == (out["source_zphot_catalog"] if z_target is None else z_target)
        assert catalog.ident[row] == out["source_catalog_ident"]
    assert len(rows) > 3, "different rows for different draws"


def test_moving_a_parametric_source_farther_makes_it_smaller_and_fainter():
    # From z < 0.5 to z = 3 the angular-diameter distance grows (it peaks near z = 1.6), so the
    # source shrinks; it dims by more than a magnitude (distance modulus grows by > 5 mag).
    catalog = sp.load_parametric_catalog()
    seed = next(s for s in range(100) if catalog.zphot[int(rng_from_seed(s).integers(len(catalog)))] < 0.5)
    near = sp.draw_parametric_source(rng_from_seed(seed), catalog)
    far = sp.draw_parametric_source(rng_from_seed(seed), catalog, z_target=3.0)
    assert near["source_catalog_index"] == far["source_catalog_index"]
    assert far["source_r_eff_arcsec"] < near["source_r_eff_arcsec"]
    assert far["source_r_mag"] > near["source_r_mag"] + 1.0
