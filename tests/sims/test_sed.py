"""Synthetic photometry of dhs_spark.sims.sed against analytic results, speclite and GalSim."""

import math

import numpy as np
import pytest

from dhs_spark.sims import sed

C_ANGSTROM_PER_S = 2.99792458e18
LOG10_E = math.log10(math.e)


def _ab_flat_flambda(wave_angstrom):
    """f_lambda of a flat f_nu = 3631 Jy spectrum (AB magnitude 0 in every band)."""
    return 3631.0e-23 * C_ANGSTROM_PER_S / wave_angstrom**2


def _ln_nu_mean(band):
    """Mean of ln(nu) over the photon-counting weight R / lambda of the band curve (ln nu_eff)."""
    wave, resp = sed.band_response(band)
    weight = resp / wave
    return np.trapezoid(np.log(C_ANGSTROM_PER_S / wave) * weight, wave) / np.trapezoid(weight, wave)


def _attenuated_template(ebv):
    wave, flux = sed.load_template()
    return wave, flux * 10.0 ** (-0.4 * ebv * sed.calzetti00_k(wave))


@pytest.mark.parametrize("band", sed.BANDS)
def test_flat_fnu_spectrum_has_ab_magnitude_zero(band):
    # AB is defined by f_nu = 3631 Jy: m = 0 exactly; 1e-4 mag allows the two integration grids.
    wave = np.geomspace(2000.0, 20000.0, 20000)
    mag = sed.ab_mag_of_rest_spectrum(band, 0.0, wave, _ab_flat_flambda(wave), igm=False)
    assert abs(mag) < 1e-4, f"{band}: {mag}"


@pytest.mark.parametrize("alpha", [-2.0, -1.0, 1.0, 2.0])
def test_power_law_colour_matches_effective_frequencies(alpha):
    # f_nu ~ nu^alpha: m1 - m2 = -2.5 log10(<nu^alpha>_1 / <nu^alpha>_2), <.> weighted by R / lambda.
    # Exact reference: that ratio integrated on the filter curves' own grids (not the code's
    # rest-frame grid), to 1e-4 mag. Effective-frequency approximation: to first order in alpha it
    # is -2.5 alpha log10(nu1_eff / nu2_eff), ln nu_eff = <ln nu>; the neglected terms (alpha^2 / 2
    # times the difference of the bands' ln-nu variances, and higher) reach 0.009 mag at |alpha| = 2,
    # so that check gets 0.01 mag.
    wave = np.geomspace(2000.0, 20000.0, 20000)
    flux = _ab_flat_flambda(wave) * (6000.0 / wave) ** alpha
    mags = {b: sed.ab_mag_of_rest_spectrum(b, 0.0, wave, flux, igm=False) for b in sed.BANDS}

    def exact_mag(band):
        w, r = sed.band_response(band)
        return -2.5 * math.log10(np.trapezoid((6000.0 / w) ** alpha * r / w, w) / np.trapezoid(r / w, w))

    for b1, b2 in [("g", "r"), ("r", "z"), ("r", "f814w")]:
        m1, m2 = _ln_nu_mean(b1), _ln_nu_mean(b2)
        colour = mags[b1] - mags[b2]
        assert colour == pytest.approx(exact_mag(b1) - exact_mag(b2), abs=1e-4), f"{b1}-{b2}, alpha={alpha}"
        assert colour == pytest.approx(-2.5 * LOG10_E * alpha * (m1 - m2), abs=0.01), f"{b1}-{b2}, alpha={alpha}"


def test_template_magnitudes_match_speclite_integration():
    # speclite's own AB integration of the same observed-frame spectrum (F814W given to it as a
    # FilterResponse from GalSim's curve): agreement to 2e-3 mag (different grids, no IGM at z = 0.8).
    import astropy.units as u
    import speclite.filters

    z, ebv = 0.8, 0.2
    wave, flux = _attenuated_template(ebv)
    obs_wave, obs_flux = wave * (1 + z), flux / (1 + z)
    w814, r814 = sed.band_response("f814w")
    f814 = speclite.filters.FilterResponse(w814 * u.AA, r814, meta=dict(group_name="test", band_name="f814w"))
    filters = {"g": "decam2014-g", "r": "decam2014-r", "z": "decam2014-z"}
    for band in sed.BANDS:
        filt = f814 if band == "f814w" else speclite.filters.load_filter(filters[band])
        ref = float(filt.get_ab_magnitude(obs_flux * u.erg / (u.cm**2 * u.s * u.AA), obs_wave * u.AA))
        got = sed.mag_in_band(band, z, sed.SEDParams(ebv), igm=False)
        assert got == pytest.approx(ref, abs=2e-3), band


@pytest.mark.parametrize("z", [0.3, 0.7, 1.5])
def test_kcorrection_matches_galsim_chromatic_photometry(z):
    # GalSim's SED/Bandpass machinery (AB zero points, its own redshifting and integration) as an
    # independent reference for r_DECam - F814W; 3e-3 mag for interpolation on different grids.
    import galsim

    ebv = 0.15
    wave, flux = _attenuated_template(ebv)
    spectrum = galsim.SED(galsim.LookupTable(wave, flux, interpolant="linear"), wave_type="Angstrom", flux_type="flambda")
    spectrum = spectrum.atRedshift(z)

    def bandpass(band):
        w, r = sed.band_response(band)
        return galsim.Bandpass(galsim.LookupTable(w, r, interpolant="linear"), wave_type="Angstrom").withZeropoint("AB")

    ref = spectrum.calculateMagnitude(bandpass("r")) - spectrum.calculateMagnitude(bandpass("f814w"))
    assert sed.kcorrect_f814w_to_r(z, sed.SEDParams(ebv)) == pytest.approx(ref, abs=3e-3)


def test_igm_dims_g_at_z3_but_not_at_z1():
    params = sed.SEDParams(0.1)
    dg = {z: sed.mag_in_band("g", z, params, igm=True) - sed.mag_in_band("g", z, params, igm=False) for z in (1.0, 3.0)}
    dr3 = sed.mag_in_band("r", 3.0, params, igm=True) - sed.mag_in_band("r", 3.0, params, igm=False)
    assert dg[1.0] == 0.0, "Ly-alpha of a z = 1 source is at 2432 A, blueward of g"
    assert dg[3.0] > 0.1, f"Ly-alpha forest at z = 3 covers g blueward of 4863 A: {dg[3.0]}"
    assert 0.0 <= dr3 < 1e-3, "Ly-alpha of a z = 3 source (4863 A) only reaches r's faint blue tail"


def test_madau_lyman_alpha_forest_matches_measured_effective_optical_depth():
    # At lam_obs = 1215.67 (1 + 3) A only Ly-alpha absorbers at z_abs = 3 contribute (for a source at
    # z = 3.5). Faucher-Giguere et al. (2008, ApJ 681, 831) measured tau_eff = 0.0018 (1 + z)^3.92
    # (0.41 at z = 3); Madau (1995) gives 0.436. Within 15%, the spread of the measurements.
    tau = -math.log(float(sed.igm_transmission_madau95(1215.67 * 4.0, 3.5)))
    assert tau == pytest.approx(0.0018 * 4.0**3.92, rel=0.15)
    assert float(sed.igm_transmission_madau95(1215.67 * 4.5 + 1.0, 3.5)) == 1.0


def test_calzetti_curve_identities():
    # k(V) = R_V and k(B) - k(V) = 1 define E(B-V) and R_V (B = 4400 A, V = 5500 A): to 0.02, the
    # fit's precision. The two branches of Calzetti et al. (2000) eq. 4 meet at 0.63 um to 0.03
    # (the published coefficients leave a 0.025 step there).
    k = sed.calzetti00_k(np.array([4400.0, 5500.0, 6299.999, 6300.001]))
    assert k[1] == pytest.approx(sed.CALZETTI_RV, abs=0.02)
    assert k[0] - k[1] == pytest.approx(1.0, abs=0.02)
    assert k[2] == pytest.approx(k[3], abs=0.03)
    for lo, hi in [(900.0, 6299.0), (6301.0, 12000.0)]:
        assert np.all(np.diff(sed.calzetti00_k(np.linspace(lo, hi, 300))) < 0), f"k falls with wavelength in {lo}-{hi} A"


def test_uv_slope_against_direct_fit_and_meurer():
    wave, _ = sed.load_template()
    in_window = np.zeros(wave.shape, dtype=bool)
    for lo, hi in sed.CALZETTI94_BETA_WINDOWS_ANGSTROM:
        in_window |= (wave >= lo) & (wave <= hi)
    for ebv in (0.0, 0.15, 0.4):
        w, f = _attenuated_template(ebv)
        direct = np.polyfit(np.log10(w[in_window]), np.log10(f[in_window]), 1)[0]
        assert sed.uv_slope_beta(sed.SEDParams(ebv)) == pytest.approx(direct, abs=1e-9), ebv
        assert sed.ebv_for_beta(direct) == pytest.approx(ebv, abs=1e-9), ebv
    # Meurer, Heckman & Calzetti (1999): A_1600 = 4.43 + 1.99 beta, intrinsic beta_0 = -2.23; the
    # template and Calzetti (2000) curve reproduce both to 0.05 in beta_0 and 10% in the slope.
    assert sed.intrinsic_beta_uv() == pytest.approx(-4.43 / 1.99, abs=0.05)
    d_beta = sed.uv_slope_beta(sed.SEDParams(0.2)) - sed.intrinsic_beta_uv()
    assert 0.2 * float(sed.calzetti00_k(1600.0)) / d_beta == pytest.approx(1.99, rel=0.10)
    assert sed.ebv_for_beta(-3.0) == 0.0, "slopes bluer than the template's get no dust"


def test_vectorised_calls_equal_scalar_calls():
    z = np.array([0.2, 1.0, 2.7, 1.4])
    ebv = np.array([0.0, 0.3, 0.1, 0.05])
    g_r, r_z = sed.observed_colors(z, sed.SEDParams(ebv))
    kc = sed.kcorrect_f814w_to_r(z, sed.SEDParams(ebv))
    for i in range(z.size):
        gi, ri = sed.observed_colors(float(z[i]), sed.SEDParams(float(ebv[i])))
        assert isinstance(gi, float)
        assert (g_r[i], r_z[i]) == pytest.approx((gi, ri), abs=1e-12)
        assert kc[i] == pytest.approx(sed.kcorrect_f814w_to_r(float(z[i]), sed.SEDParams(float(ebv[i]))), abs=1e-12)


def test_dust_reddens_and_redshift_moves_colours():
    # Monotonic in E at fixed z (attenuation falls with wavelength).
    g_r, r_z = sed.observed_colors(2.0, sed.SEDParams(np.array([0.0, 0.1, 0.2, 0.3])))
    assert np.all(np.diff(g_r) > 0) and np.all(np.diff(r_z) > 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sed.mag_in_band("i", 1.0, sed.SEDParams(0.1)),
        lambda: sed.mag_in_band("r", -0.1, sed.SEDParams(0.1)),
        lambda: sed.mag_in_band("r", sed.Z_MAX + 0.1, sed.SEDParams(0.1)),
        lambda: sed.mag_in_band("r", float("nan"), sed.SEDParams(0.1)),
        lambda: sed.SEDParams(-0.01),
        lambda: sed.ab_mag_of_rest_spectrum("g", 0.0, np.array([5000.0, 6000.0]), np.array([1.0, 1.0])),
    ],
)
def test_invalid_input_raises(call):
    with pytest.raises(ValueError):
        call()
