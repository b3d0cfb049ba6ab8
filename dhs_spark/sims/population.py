"""Host-conditioned lens population: a lens drawn for one real LRG host from its photometry.

For each host (a parent-sample row: g, r, z, W1 fluxes in nanomaggies, optionally a redshift
column and the Tractor shape) the chain is

1. lens redshift z_l: the supplied column, else :func:`lrg_photo_z` from the colours, else a
   draw from ``z_lens_fallback_range``;
2. rest-frame absolute magnitude :func:`abs_mag_r` (SDSS r, AB) from the observed fluxes at the
   band that sees rest-frame r, with the cosmology named in the config;
3. velocity dispersion :func:`velocity_dispersion_kms` from the luminosity (Hyde & Bernardi
   2009 relation, passive-evolution corrected, lognormal scatter);
4. source redshift :func:`draw_source_redshift` (lognormal, z_s ~ 1-3 as for lenses found in
   imaging, truncated above z_l + margin);
5. Einstein radius :func:`einstein_radius_arcsec` of the SIS with that sigma (SIE theta_E in
   lenstronomy's convention, ``dhs_spark.sims.lensing``);
6. lens axis ratio and angle :func:`lens_shape_from_tractor` from the host light (SLACS
   mass-light relations), or drawn when the host has no shape;
7. external shear N(0, ``shear_sigma``) per component (the prior of ``InjectionPriors``).

:func:`draw_lenses` does this for arrays of hosts (4a's path, ~10 us per host); :func:`draw_lens`
is the one-host form and returns exactly what :func:`draw_lenses` returns for that row.
Randomness: one PCG64 stream per host from :func:`dhs_spark.config.seeds.rng_from_seed`, read in a
fixed layout, so a host's draw does not depend on the batch it is in.

Conventions (DESIGN.md §2): angles on the sky in arcsec, x = numpy axis 1 to the West, y = axis
0 to the North, position angles in radians counter-clockwise from +x; magnitudes AB; fluxes in
nanomaggies (m = 22.5 - 2.5 log10 f). Pure numpy + astropy (no Spark).
"""

from __future__ import annotations

import functools
import math
from typing import Mapping

import numpy as np

from dhs_spark.config.seeds import rng_from_seed
from dhs_spark.errors import ConfigError, RejectError

C_KMS = 299792.458  # speed of light, km/s (exact, SI definition)
ARCSEC_PER_RAD = 180.0 * 3600.0 / math.pi

# --- photometric redshift -------------------------------------------------------------------
# z = c0 + c1 (r-z) + c2 (r-z)^2 + c3 (g-r) + c4 (z_mag - 19), least squares against the
# Zhou et al. (2021, MNRAS 501, 3309) DR9 random-forest photo-z (z_phot_mean) of the 1,192 DR9
# lens candidates of Stein et al. (2021, ApJ 932, 107; MIT licence; ../shared/data/lenses/
# stein2021_new_candidates.tsv, mag_g/r/z as given there). tests/sims/test_population.py refits
# it from that file. Accuracy (5-fold cross-validated): sigma_NMAD of dz/(1+z) = 0.034 against
# Zhou's photo-z (2.8% with |dz|/(1+z) > 0.15) and 0.031 against the 196 spectroscopic redshifts
# of the file (none above 0.15), where Zhou's own photo-z (which also uses W1, W2) reach 0.011.
PHOTO_Z_COEFFS = (0.03585067, 0.86138913, -0.17315747, -0.13767231, 0.0615789)
# Calibration range of z_phot_mean in that file (0.056-1.12); outside it the relation is an
# extrapolation and the photo-z is reported as unusable (nan).
PHOTO_Z_RANGE = (0.05, 1.2)

# --- rest-frame magnitude -------------------------------------------------------------------
# Effective wavelengths (nm) of DECam g, r, z and WISE W1, and of SDSS r (the band of the
# Hyde & Bernardi 2009 magnitudes): sedpy's filter table (bd-j/sedpy, data/filters/README.md).
BAND_LAMBDA_NM = np.array([477.1, 639.2, 914.9, 3346.0])
SDSS_R_LAMBDA_NM = 615.6

# --- source redshift ------------------------------------------------------------------------
#: (median, sigma of ln z) of the maximum-likelihood lognormal of the 125 spectroscopic source
#: redshifts of SLACS, S4TM and BELLS (tests/sims/test_population.py refits it). Not the default:
#: spectroscopic selection favours z_s < 1.5, while lenses found in imaging have z_s ~ 1-3
#: (Sonnenfeld et al. 2013); the default (PopulationConfig) is median 1.8, width 0.3.
SPECTROSCOPIC_Z_SOURCE = (0.670, 0.421)

# --- velocity dispersion --------------------------------------------------------------------
# SIS velocity dispersion = stellar sigma: SLACS lenses have <sigma_SIE / sigma_*> = 1.01 +- 0.02
# (rms 0.065) (Treu et al. 2006, ApJ 640, 662), so no conversion factor is applied.


def cosmology_from_name(name: str):
    """The astropy cosmology ``name`` from ``astropy.cosmology.realizations`` (e.g. 'Planck18')."""
    from astropy.cosmology import realizations

    if name not in realizations.available:
        raise ConfigError("population.cosmology", f"unknown cosmology; one of {', '.join(realizations.available)}", name)
    return getattr(realizations, name)


def _mag(flux_nmgy):
    flux = np.asarray(flux_nmgy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, 22.5 - 2.5 * np.log10(np.where(flux > 0, flux, 1.0)), np.nan)


def lrg_photo_z(flux_g_nmgy, flux_r_nmgy, flux_z_nmgy):
    """Photometric redshift of a DESI-like LRG from its observed g, r, z fluxes (nanomaggies).

    z = c0 + c1 (r-z) + c2 (r-z)^2 + c3 (g-r) + c4 (z - 19) with :data:`PHOTO_Z_COEFFS`, a fit to
    the Zhou et al. (2021) DR9 photo-z of the Stein et al. (2021) DR9 sample (colours as given
    there, not dereddened: E(B-V) ~ 0.03 moves r-z by ~0.03 mag, z by ~0.01). Accuracy:
    sigma_NMAD[dz/(1+z)] = 0.031 against 196 spectroscopic redshifts, 0.034 against Zhou's photo-z.
    r - z carries most of it (the 4000 A break moves from r into z between z ~ 0.4 and 1.1); the
    z-band magnitude adds distance at fixed colour. W1 is not used: the calibration sample has none.

    Returns an array (a float for scalar input); nan where a flux is <= 0 or not finite, or where
    the relation leaves its calibration range :data:`PHOTO_Z_RANGE`.
    """
    g, r, z = _mag(flux_g_nmgy), _mag(flux_r_nmgy), _mag(flux_z_nmgy)
    c0, c1, c2, c3, c4 = PHOTO_Z_COEFFS
    rz = r - z
    zp = c0 + c1 * rz + c2 * rz * rz + c3 * (g - r) + c4 * (z - 19.0)
    zp = np.where((zp >= PHOTO_Z_RANGE[0]) & (zp <= PHOTO_Z_RANGE[1]), zp, np.nan)
    return zp if zp.ndim else float(zp)


@functools.lru_cache(maxsize=8)
def _distance_table(name: str, z_max: float = 8.0, dz: float = 5e-4):
    """(z grid, D_M(z) / D_H, Omega_k) for cosmology ``name``, cached per process.

    D_C / D_H = integral of 1/E(z) by the trapezoid rule on a grid of step ``dz`` (astropy's
    ``inv_efunc``: radiation and massive neutrinos included; error ~ dz^2 / 12 |(1/E)''| < 1e-7
    relative); D_M from D_C with the curvature term (Hogg 1999, eqs. 15-16).
    """
    cosmo = cosmology_from_name(name)
    z = np.arange(0.0, z_max + dz / 2, dz)
    f = np.asarray(cosmo.inv_efunc(z), dtype=float)
    dc = np.concatenate([[0.0], np.cumsum(0.5 * dz * (f[1:] + f[:-1]))])
    ok = float(cosmo.Ok0)
    if ok > 0:
        dm = np.sinh(math.sqrt(ok) * dc) / math.sqrt(ok)
    elif ok < 0:
        dm = np.sin(math.sqrt(-ok) * dc) / math.sqrt(-ok)
    else:
        dm = dc
    return z, dm, ok


def _dm_over_dh(name: str, z):
    grid, dm, _ = _distance_table(name)
    z = np.asarray(z, dtype=float)
    if np.any(z > grid[-1]):
        raise ValueError(f"redshift above the distance table's {grid[-1]} (got {np.nanmax(z)})")
    return np.interp(z, grid, dm)


def dls_over_ds(z_lens, z_source, cosmology: str = "Planck18"):
    """D_ls / D_s (angular-diameter distances) for lens and source redshifts, vectorised.

    D_ls / D_s = [D_M(s) sqrt(1 + Ok D_M(l)^2) - D_M(l) sqrt(1 + Ok D_M(s)^2)] / D_M(s) with D_M in
    units of D_H (Hogg 1999, eq. 19; valid for Omega_k >= 0, as in every astropy realisation).
    D_M comes from a cached table per cosmology (:func:`_distance_table`); the ratio agrees with
    astropy's ``angular_diameter_distance_z1z2 / angular_diameter_distance`` to < 1e-4 relative
    for z_s - z_l >= 0.05 (tested). 0 where z_source <= z_lens.
    """
    _, _, ok = _distance_table(cosmology)
    dl, ds = _dm_over_dh(cosmology, z_lens), _dm_over_dh(cosmology, z_source)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (ds * np.sqrt(1.0 + ok * dl * dl) - dl * np.sqrt(1.0 + ok * ds * ds)) / ds
    return np.where(np.asarray(z_source) > np.asarray(z_lens), ratio, 0.0)


def einstein_radius_arcsec(sigma_kms, z_lens, z_source, cosmology: str = "Planck18"):
    """SIS Einstein radius theta_E = 4 pi (sigma / c)^2 D_ls / D_s, in arcsec (vectorised).

    This is also the SIE theta_E of ``dhs_spark.sims.lensing`` (lenstronomy's circularised
    convention) for the same sigma. 0 where z_source <= z_lens.
    """
    s = np.asarray(sigma_kms, dtype=float) / C_KMS
    return 4.0 * math.pi * s * s * dls_over_ds(z_lens, z_source, cosmology) * ARCSEC_PER_RAD


def abs_mag_r(flux_g_nmgy, flux_r_nmgy, flux_z_nmgy, flux_w1_nmgy, z_lens, cosmology: str = "Planck18"):
    """Rest-frame SDSS r absolute magnitude (AB) of a galaxy at ``z_lens`` from g, r, z, W1 fluxes.

    Rest-frame r (615.6 nm) is observed at lambda = 615.6 (1 + z) nm. The observed AB magnitude
    there is interpolated linearly in log(lambda) between the two bands that bracket it
    (:data:`BAND_LAMBDA_NM`: the galaxy's own SED, no template; InterRest, Taylor et al. 2009,
    ApJS 183, 295, does the same with templates as a guide). For AB magnitudes at a fixed
    rest-frame wavelength the K-correction is then exactly -2.5 log10(1 + z) (bandpass stretch):

        M_r = m(615.6 (1 + z)) - DM(z) + 2.5 log10(1 + z),  DM from the named astropy cosmology.

    Between z ~ 0.49 and 1.1 the bracket is z-W1: rest 615.6 nm lies 3-18% of the way (in log
    lambda) from z to W1, so the z band dominates. nan where a needed flux is <= 0 or z is outside
    0 < z < 4.4 (the wavelength range of g to W1).
    """
    mags = np.stack(np.broadcast_arrays(_mag(flux_g_nmgy), _mag(flux_r_nmgy), _mag(flux_z_nmgy), _mag(flux_w1_nmgy)), axis=-1)
    z = np.broadcast_to(np.asarray(z_lens, dtype=float), mags.shape[:-1])
    loglam = np.log10(BAND_LAMBDA_NM)
    with np.errstate(invalid="ignore"):
        x = np.log10(SDSS_R_LAMBDA_NM * (1.0 + z))
        i = np.clip(np.searchsorted(loglam, x) - 1, 0, len(loglam) - 2)
        frac = (x - loglam[i]) / (loglam[i + 1] - loglam[i])
        m_lo = np.take_along_axis(mags, i[..., None], axis=-1)[..., 0]
        m_hi = np.take_along_axis(mags, (i + 1)[..., None], axis=-1)[..., 0]
        m = m_lo + frac * (m_hi - m_lo)
        inside = (x >= loglam[0]) & (x <= loglam[-1]) & (z > 0)
        zsafe = np.where(inside, z, 1.0)
        d_l_mpc = (1.0 + zsafe) * _dm_over_dh(cosmology, zsafe) * _hubble_distance_mpc(cosmology)
        dist_mod = 5.0 * np.log10(d_l_mpc) + 25.0
        out = np.where(inside, m - dist_mod + 2.5 * np.log10(1.0 + zsafe), np.nan)
    return out if out.ndim else float(out)


@functools.lru_cache(maxsize=8)
def _hubble_distance_mpc(name: str) -> float:
    return float(cosmology_from_name(name).hubble_distance.to_value("Mpc"))


def mean_log10_sigma(abs_mag_r_z, z_lens, cfg) -> np.ndarray:
    """<log10 sigma | M_r> in km/s: Hyde & Bernardi (2009, MNRAS 394, 1978) after passive evolution.

    HB09's quadratic fit for SDSS early types, V = log10 sigma = c0 + c1 M + c2 M^2 with
    (c0, c1, c2) = ``cfg.hb09_log_sigma_coeffs`` = (-2.97, -0.37, -0.006), M the r-band absolute
    magnitude: the coefficients as implemented in Collett (2015, ApJ 811, 20)'s LensPop
    (tcollett/LensPop, ``PopulationFunctions.EarlyTypeRelations``). M = -22 gives 184.5 km/s,
    M = -23 gives 232.3 km/s (sigma ~ L^0.26 there, the Faber-Jackson slope of Bernardi et al.
    2003, AJ 125, 1849: sigma ~ L^(0.25 +- 0.012)).

    The HB09 galaxies are at z ~ 0.1; a galaxy at z_l was brighter at the same sigma, so M is
    faded to z = 0 first: M_0 = M + ``cfg.luminosity_evolution_mag_per_z`` z_l, default 1.725 =
    2.5 x 0.69, the B-band evolution of SLACS lenses d log(M/L_B)/dz = -0.69 +- 0.08 (Treu et al.
    2006, ApJ 640, 662). An old population fades less in r than in B, so this slightly
    over-corrects (lowers sigma).
    """
    c0, c1, c2 = cfg.hb09_log_sigma_coeffs
    m0 = np.asarray(abs_mag_r_z, dtype=float) + cfg.luminosity_evolution_mag_per_z * np.asarray(z_lens, dtype=float)
    return c0 + c1 * m0 + c2 * m0 * m0


def mean_sigma_kms(abs_mag_r_z, z_lens, cfg) -> np.ndarray:
    """The no-scatter velocity dispersion 10^<log10 sigma | M_r> (km/s), used for host weighting."""
    return 10.0 ** mean_log10_sigma(abs_mag_r_z, z_lens, cfg)


def _log_sigma_shift_dex(cfg) -> float:
    """Mean shift of log10 sigma when each draw is weighted by its cross-section (~ sigma^4).

    For log10 sigma ~ N(mu, s), the density times sigma^4 = 10^(4 log10 sigma) is N(mu + 4 ln(10)
    s^2, s): exact for a lognormal. Applied only with ``host_weighting == 'cross_section'``.
    """
    s = cfg.sigma_scatter_dex
    return 4.0 * math.log(10.0) * s * s if cfg.host_weighting == "cross_section" else 0.0


def velocity_dispersion_kms(abs_mag_r_z, z_lens, rng, cfg):
    """Velocity dispersion (km/s) drawn from the HB09 relation with lognormal scatter.

    log10 sigma ~ N(:func:`mean_log10_sigma` + shift, ``cfg.sigma_scatter_dex``). The default
    scatter, 0.05 dex, is the intrinsic scatter of the 59 SLACS lenses of Auger et al. (2009, ApJ
    705, 1099; rest-frame M_V, M_B and sigma in ../shared/data/lenses/slacs_auger2009.cat) about
    the HB09 mean, measured here after removing their quoted sigma errors (0.048-0.051 dex for
    evolution rates 0-1.7 mag per unit z; tests/sims/test_population.py recomputes it). The shift
    is :func:`_log_sigma_shift_dex` (cross-section weighting within the host).
    """
    mu = mean_log10_sigma(abs_mag_r_z, z_lens, cfg) + _log_sigma_shift_dex(cfg)
    return 10.0 ** (mu + cfg.sigma_scatter_dex * rng.standard_normal(np.shape(mu)))


def _source_z_from_uniform(u, z_lens, cfg):
    """Inverse CDF of the truncated lognormal source-redshift distribution at uniform deviates ``u``."""
    from scipy.special import ndtr, ndtri

    mu, s = math.log(cfg.z_source_median), cfg.z_source_sigma_ln
    lo = ndtr((np.log(np.asarray(z_lens, dtype=float) + cfg.z_source_min_margin) - mu) / s)
    hi = ndtr((math.log(cfg.z_source_max) - mu) / s)
    return np.exp(mu + s * ndtri(lo + (hi - lo) * np.asarray(u, dtype=float)))


def draw_source_redshift(rng, size, z_lens, cfg):
    """Source redshifts: lognormal, truncated to z_lens + margin < z_s < ``cfg.z_source_max``.

    ln z_s ~ N(ln ``z_source_median``, ``z_source_sigma_ln``). Defaults (1.8, 0.3; 10-90%
    1.2-2.6): lenses found in imaging have sources at z_s ~ 1-3 (SL2S, Sonnenfeld et al. 2013,
    ApJ 777, 97). :data:`SPECTROSCOPIC_Z_SOURCE` (0.670, 0.421) is the maximum-likelihood
    lognormal of the 125 spectroscopic source redshifts of SLACS (Bolton et al. 2008; Auger et al.
    2009), S4TM (Shu et al. 2017) and BELLS (Brownstein et al. 2012), whose selection (an emission
    line in the SDSS/BOSS fibre) favours z_s < 1.5. Truncation is exact (by the inverse CDF, no
    redraw loop): z_s > z_l + ``z_source_min_margin`` so that D_ls is not vanishingly small.
    """
    return _source_z_from_uniform(rng.random(size), np.broadcast_to(np.asarray(z_lens, dtype=float), (size,)), cfg)


def _wrap_pi(phi):
    return np.mod(phi, math.pi)


def tractor_shape_to_q_phi(shape_e1, shape_e2):
    """(q, phi_rad) of the light from Tractor ``EllipseE`` components (vectorised).

    Tractor (dstndstn/tractor, ``tractor/ellipses.py``): |e| = hypot(e1, e2), axis ratio
    q = (1 - |e|) / (1 + |e|), e1 = |e| cos 2 theta, e2 = |e| sin 2 theta, and ``getRaDecBasis``
    puts the major axis along (dRA, dDec) = (sin theta, cos theta): theta is the position angle
    East of North. Here +y is North and +x West (East = -x), so the major axis points along
    (-sin theta, cos theta), i.e. phi = theta + pi/2 (counter-clockwise from +x), and
    phi = atan2(-e2, -e1) / 2 mod pi. Example: e1 > 0, e2 = 0 (major axis North-South) gives
    phi = pi/2. The inverse is ``dhs_spark.survey.mock.tractor_ellipticity``.
    """
    e1, e2 = np.asarray(shape_e1, dtype=float), np.asarray(shape_e2, dtype=float)
    e = np.hypot(e1, e2)
    return (1.0 - e) / (1.0 + e), _wrap_pi(0.5 * np.arctan2(-e2, -e1))


def _fold_axis_ratio(q, phi):
    """q > 1 is the same ellipse with the axes swapped: (1/q, phi + pi/2)."""
    swap = q > 1.0
    return np.where(swap, 1.0 / q, q), _wrap_pi(np.where(swap, phi + 0.5 * math.pi, phi))


def _lens_shape(has_shape, q_light, phi_light, g_q, g_pa, u_phi, cfg):
    """Mass (q, phi) from standard-normal deviates ``g_q``, ``g_pa`` and uniform ``u_phi``."""
    pa_scatter = math.radians(cfg.lens_pa_scatter_deg)
    q_from_light = q_light * (cfg.lens_q_mass_over_light_mean + cfg.lens_q_mass_over_light_sigma * g_q)
    phi_from_light = phi_light + pa_scatter * g_pa
    q_drawn = cfg.lens_q_mean + cfg.lens_q_sigma * g_q
    phi_drawn = math.pi * u_phi
    q = np.where(has_shape, q_from_light, q_drawn)
    phi = np.where(has_shape, phi_from_light, phi_drawn)
    q, phi = _fold_axis_ratio(q, phi)
    return np.clip(q, cfg.lens_q_min, 1.0), phi


def lens_shape_from_tractor(shape_e1, shape_e2, rng, cfg):
    """Mass axis ratio and major-axis angle (q, phi_rad) of the SIE from the host light's shape.

    With a shape (finite e1, e2): q_mass = q_light f, f ~ N(``lens_q_mass_over_light_mean``,
    ``lens_q_mass_over_light_sigma``) = N(0.99, 0.11), and phi_mass = phi_light + N(0,
    ``lens_pa_scatter_deg`` = 10 deg): SLACS, <q_SIE/q_*> = 0.99 +- 0.03 (rms 0.11) and mass-light
    position-angle difference 0 +- 3 deg (rms 10 deg) (Koopmans et al. 2006, ApJ 649, 599).
    Without (nan): q ~ N(``lens_q_mean``, ``lens_q_sigma``) = N(0.78, 0.12), the SLACS SIE axis
    ratios (ibid.), phi ~ U(0, pi). A draw q > 1 is the same ellipse with axes swapped (1/q,
    phi + pi/2); q is then floored at ``lens_q_min`` = 0.2 (LensPop's floor on lens flattening,
    Collett 2015). phi in [0, pi), counter-clockwise from +x (West), see :func:`tractor_shape_to_q_phi`.
    """
    e1, e2 = np.asarray(shape_e1, dtype=float), np.asarray(shape_e2, dtype=float)
    has_shape = np.isfinite(e1) & np.isfinite(e2)
    q_light, phi_light = tractor_shape_to_q_phi(np.where(has_shape, e1, 0.0), np.where(has_shape, e2, 0.0))
    shape = np.shape(has_shape)
    return _lens_shape(has_shape, q_light, phi_light, rng.standard_normal(shape), rng.standard_normal(shape), rng.random(shape), cfg)


def cross_section_weight(theta_e_arcsec):
    """Strong-lensing cross-section weight ~ theta_E^2 (the area inside the SIS critical curve)."""
    t = np.asarray(theta_e_arcsec, dtype=float)
    return t * t


def typical_source_redshift(z_lens, cfg):
    """Median of the truncated source-redshift distribution at ``z_lens`` (deterministic)."""
    return _source_z_from_uniform(0.5, z_lens, cfg)


def host_weight(abs_mag_r_z, z_lens, cfg):
    """Deterministic host weight for cross-section weighting: theta_E^2 of the mean sigma.

    theta_E from :func:`mean_sigma_kms` (no scatter) and :func:`typical_source_redshift`; 4a can
    sample or weight hosts in proportion to it so that the injected hosts look like lens hosts,
    not like the average LRG. nan where the magnitude or redshift is nan.
    """
    zl = np.asarray(z_lens, dtype=float)
    sig = mean_sigma_kms(abs_mag_r_z, zl, cfg)
    ok = np.isfinite(sig) & np.isfinite(zl)
    zl_safe = np.where(ok, zl, 0.5)
    theta = einstein_radius_arcsec(sig, zl_safe, typical_source_redshift(zl_safe, cfg), cfg.cosmology)
    return np.where(ok, cross_section_weight(theta), np.nan)


# Per-host random layout: one PCG64 stream per seed, 2K + 6 uniforms read in one call (the cost
# is the generator's construction). Normals come from uniforms by the inverse normal CDF:
# [0, K) sigma scatter, K q factor, K+1 PA scatter, K+2, K+3 shear; then uniforms [0, K) z_s,
# K fallback z_l, K+1 angle of a shapeless host. Fixed, so a host's draw never depends on its
# neighbours or on how many tries were needed.
def _host_deviates(seeds, k):
    from scipy.special import ndtri

    seeds = np.asarray(seeds).reshape(-1)
    deviates = np.empty((seeds.size, 2 * k + 6))
    for i, seed in enumerate(seeds.tolist()):
        deviates[i] = rng_from_seed(int(seed)).random(2 * k + 6)
    # random() lies in [0, 1): keep ndtri finite at 0
    normals = ndtri(np.maximum(deviates[:, : k + 4], np.finfo(float).tiny))
    return normals, deviates[:, k + 4 :]


def _column(hosts, name, n):
    value = hosts.get(name)
    if value is None:
        return np.full(n, np.nan)
    return np.asarray(value, dtype=float).reshape(-1)


def draw_lenses(hosts: Mapping[str, np.ndarray], seeds, cfg) -> dict:
    """Lens parameters for many hosts at once (vectorised; 4a's path).

    Args:
        hosts: columns ``flux_g``, ``flux_r``, ``flux_z``, ``flux_w1`` (nanomaggies), optionally
            ``z_lens`` (a supplied redshift, nan = missing), ``shape_e1``, ``shape_e2`` (Tractor,
            nan = missing). Other keys (brickname, ra, dec, shape_r_arcsec) are ignored.
        seeds: one 64-bit seed per host (``dhs_spark.config.seeds.task_seed``).
        cfg: a :class:`~dhs_spark.config.experiment.PopulationConfig` with mode 'host_conditioned'.

    Returns:
        dict of arrays: z_lens, z_lens_source ('column' | 'photo_z' | 'drawn'), host_abs_mag
        (rest-frame SDSS r, AB), sigma_v_kms, z_source, theta_e_arcsec, lens_q, lens_phi_rad,
        shear_gamma1, shear_gamma2, reject_reason ('' when the row is usable; else
        'host_photometry_unusable' or 'theta_e_out_of_range', with the numeric fields nan).

    theta_E must lie in ``cfg.theta_e_range_arcsec``: ``cfg.theta_e_tries`` (sigma scatter, z_s)
    pairs are drawn per host and the first inside the range is kept (a draw conditioned on the
    range, not clipped: sigma_v, z_s and theta_E stay consistent).
    """
    if cfg.mode != "host_conditioned":
        raise ConfigError("population.mode", "draw_lenses serves 'host_conditioned'; 'uniform' uses dhs_spark.sims.priors", cfg.mode)
    seeds = np.asarray(seeds).reshape(-1)
    n, k = seeds.size, cfg.theta_e_tries
    normals, uniforms = _host_deviates(seeds, k)

    fg, fr, fz, fw1 = (_column(hosts, name, n) for name in ("flux_g", "flux_r", "flux_z", "flux_w1"))
    z_col = _column(hosts, "z_lens", n)
    z_phot = np.asarray(lrg_photo_z(fg, fr, fz), dtype=float).reshape(-1)
    lo, hi = cfg.z_lens_fallback_range
    z_drawn = lo + (hi - lo) * uniforms[:, k]
    col_ok = np.isfinite(z_col) & (z_col > 0)
    z_lens = np.where(col_ok, z_col, np.where(np.isfinite(z_phot), z_phot, z_drawn))
    z_source_kind = np.where(col_ok, "column", np.where(np.isfinite(z_phot), "photo_z", "drawn")).astype(object)

    abs_mag = np.asarray(abs_mag_r(fg, fr, fz, fw1, z_lens, cfg.cosmology), dtype=float).reshape(-1)
    phot_ok = np.isfinite(abs_mag)
    mag_safe = np.where(phot_ok, abs_mag, -22.0)

    mu = mean_log10_sigma(mag_safe, z_lens, cfg)[:, None] + _log_sigma_shift_dex(cfg)
    sigma_try = 10.0 ** (mu + cfg.sigma_scatter_dex * normals[:, :k])
    zs_try = _source_z_from_uniform(uniforms[:, :k], z_lens[:, None], cfg)
    theta_try = einstein_radius_arcsec(sigma_try, np.broadcast_to(z_lens[:, None], zs_try.shape), zs_try, cfg.cosmology)
    t_lo, t_hi = cfg.theta_e_range_arcsec
    inside = (theta_try >= t_lo) & (theta_try <= t_hi)
    found = inside.any(axis=1)
    first = np.argmax(inside, axis=1)
    rows = np.arange(n)

    e1, e2 = _column(hosts, "shape_e1", n), _column(hosts, "shape_e2", n)
    has_shape = np.isfinite(e1) & np.isfinite(e2)
    q_light, phi_light = tractor_shape_to_q_phi(np.where(has_shape, e1, 0.0), np.where(has_shape, e2, 0.0))
    lens_q, lens_phi = _lens_shape(has_shape, q_light, phi_light, normals[:, k], normals[:, k + 1], uniforms[:, k + 1], cfg)

    ok = phot_ok & found
    reason = np.where(~phot_ok, "host_photometry_unusable", np.where(~found, "theta_e_out_of_range", "")).astype(object)

    def keep(values):
        return np.where(ok, values, np.nan)

    return {
        "z_lens": z_lens,
        "z_lens_source": z_source_kind,
        "host_abs_mag": abs_mag,
        "sigma_v_kms": keep(sigma_try[rows, first]),
        "z_source": keep(zs_try[rows, first]),
        "theta_e_arcsec": keep(theta_try[rows, first]),
        "lens_q": keep(lens_q),
        "lens_phi_rad": keep(lens_phi),
        "shear_gamma1": keep(cfg.shear_sigma * normals[:, k + 2]),
        "shear_gamma2": keep(cfg.shear_sigma * normals[:, k + 3]),
        "reject_reason": reason,
    }


def draw_lens(host: Mapping[str, float], seed: int, cfg) -> dict:
    """Lens parameters for one host (one manifest row): :func:`draw_lenses` on a batch of one.

    ``host`` has flux_g, flux_r, flux_z, flux_w1 (nanomaggies) and optionally z_lens, shape_e1,
    shape_e2 (nan = missing); brickname, ra, dec, shape_r_arcsec are accepted and unused. Returns
    the keys of :func:`draw_lenses` (without reject_reason) as Python scalars. Raises
    :class:`~dhs_spark.errors.RejectError` (reason 'host_photometry_unusable' or
    'theta_e_out_of_range', detail naming the brick and position) when no lens can be drawn.
    """
    columns = {
        name: np.array([host.get(name, np.nan)], dtype=float)
        for name in ("flux_g", "flux_r", "flux_z", "flux_w1", "z_lens", "shape_e1", "shape_e2")
    }
    out = draw_lenses(columns, np.array([int(seed)], dtype=np.uint64), cfg)
    reason = out.pop("reject_reason")[0]
    if reason:
        where = f"host {host.get('brickname', '?')} ra={host.get('ra', float('nan'))} dec={host.get('dec', float('nan'))}"
        raise RejectError(
            reason,
            f"{where}: fluxes g,r,z,W1 = {[host.get(b) for b in ('flux_g', 'flux_r', 'flux_z', 'flux_w1')]} nmgy, z_lens={out['z_lens'][0]:.3f}",
        )
    return {key: (str(value[0]) if key == "z_lens_source" else float(value[0])) for key, value in out.items()}
