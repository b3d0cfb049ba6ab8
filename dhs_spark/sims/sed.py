"""Observed AB magnitudes and colours of a star-forming galaxy at redshift z.

Bands: DECam g, r, z (the ``decam2014`` curves shipped by ``speclite``: W. Wester's 2014 total
throughput with an airmass-1.3 atmosphere) and HST ACS/WFC F814W (STScI's total throughput, shipped
in GalSim's ``share/bandpasses/ACS_wfc_F814W.dat``), the band of the COSMOS catalogue magnitudes.

Spectral model, rest frame, f_lambda (erg s^-1 cm^-2 A^-1, arbitrary normalisation)::

    f(lam) = T(lam) * 10^(-0.4 k(lam) E)

- ``T``: the young star-forming template of Blanton & Roweis (2007, AJ 133, 734; template 1 of
  kcorrect's ``kcorrect-default-v4``: Bruzual & Charlot 2003 populations all formed within the last
  300 Myr, with nebular emission lines), shipped as ``dhs_spark/data/sed/`` (README there). Its
  dust-free UV slope is beta_0 = -2.22, the intrinsic slope of Meurer, Heckman & Calzetti (1999,
  ApJ 521, 64: A_1600 = 4.43 + 1.99 beta, so A_1600 = 0 at beta = -2.23).
- ``k``: the Calzetti et al. (2000, ApJ 533, 682, eq. 4) starburst attenuation curve, R_V = 4.05,
  valid 1200 A - 2.2 um; below 1200 A it is extrapolated linearly in wavelength with its slope at
  1200 A (that range only reaches the g band at z >~ 2.3, where the IGM removes most of it).
- ``E``: the stellar colour excess E_s(B-V) in mag (:class:`SEDParams`). The population module draws
  the UV slope beta from published distributions and converts it with :func:`ebv_for_beta`.
  Emission lines are attenuated like the continuum (a simplification: Calzetti 2000 finds the gas
  about 2.3x more reddened).

Observed frame (flux-conserving redshift, no distance dimming; :func:`mag_in_band` adds none)::

    f_obs(lam_obs) = f(lam_obs / (1 + z)) * exp(-tau_IGM(lam_obs, z)) / (1 + z)

with the mean IGM transmission of Madau (1995, ApJ 441, 18; :func:`igm_transmission_madau95`).

AB magnitude for a photon-counting detector (Fukugita et al. 1996; speclite's convention)::

    m = -2.5 log10[ int f_obs R lam dlam / int f_AB R lam dlam ],   f_AB = 3631 Jy * c / lam^2.

The numerator is integrated on the template's own rest-frame grid (which resolves its emission
lines), with the response R interpolated at (1 + z) lam. Magnitudes of :func:`mag_in_band` carry the
template's arbitrary normalisation: only differences (colours, K-corrections, the same SED at two
redshifts) are physical. Milky Way extinction is not applied here.

Limitations: the template holds no star older than 300 Myr, so the 4000 A / Balmer break of an
older population is missing. That suits the young, UV-bright sources of lenses at z ~ 1-3 but
not galaxies dominated by old stars: for GalSim's CWW Sbc spectrum (Coleman, Wu & Weedman 1980)
r - z at z = 1.2 is 1.72 (this model: 0.11-0.46 for E_s(B-V) = 0.1-0.3) and r - F814W at z = 0.5
is 0.52 (this model: -0.10 to 0.09). The IGM is Madau's
mean; sightline scatter and Ly-alpha emission/absorption are not modelled.

Valid redshifts: 0 <= z <= :data:`Z_MAX` (the template starts at 600 A rest; Madau's Lyman-continuum
fit is valid down to about 650 A rest, which the g band's blue edge reaches at z ~ 5).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Union

import numpy as np

ArrayLike = Union[float, np.ndarray]

#: Band names accepted by :func:`mag_in_band`; DECam g, r, z and HST ACS/WFC F814W.
BANDS = ("g", "r", "z", "f814w")
_SPECLITE_NAMES = {"g": "decam2014-g", "r": "decam2014-r", "z": "decam2014-z"}
_F814W_FILE = "ACS_wfc_F814W.dat"

#: Highest redshift the model is valid at (see the module docstring).
Z_MAX = 5.0

#: Calzetti et al. (2000) total-to-selective attenuation R_V of the starburst curve.
CALZETTI_RV = 4.05

#: The ten rest-frame windows (A) of Calzetti, Kinney & Storchi-Bergmann (1994, ApJ 429, 582,
#: Table 2) in which the UV slope beta (f_lambda ~ lambda^beta) is fitted; they avoid stellar and
#: interstellar absorption features and the 2175 A bump.
CALZETTI94_BETA_WINDOWS_ANGSTROM = (
    (1268.0, 1284.0),
    (1309.0, 1316.0),
    (1342.0, 1371.0),
    (1407.0, 1515.0),
    (1562.0, 1583.0),
    (1677.0, 1740.0),
    (1760.0, 1833.0),
    (1866.0, 1890.0),
    (1930.0, 1950.0),
    (2400.0, 2580.0),
)

# Madau (1995) eqs. 12 and 15: effective optical depth of the Lyman series forest,
# tau_j = A_j (lam_obs / lam_j)^3.46 for lam_j < lam_obs < lam_j (1 + z).
_MADAU_LYMAN_ANGSTROM = (1215.67, 1025.72, 972.54, 949.74)
_MADAU_LYMAN_A = (3.6e-3, 1.7e-3, 1.2e-3, 9.3e-4)
_LYMAN_LIMIT_ANGSTROM = 912.0  # Madau (1995) x_c = lam_obs / 912 A

_C_ANGSTROM_PER_S = 2.99792458e18
_AB_FNU_CGS = 3631.0e-23  # erg s^-1 cm^-2 Hz^-1
_TEMPLATE_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "sed", "br07_young_starforming.ecsv")
_CHUNK = 256  # sources integrated at once: bounds the (chunk x wavelengths) work arrays to a few MB


class _Band(NamedTuple):
    wave_angstrom: np.ndarray
    response: np.ndarray
    ab_norm: float  # int f_AB R lam dlam, erg s^-1 cm^-2


def _check_band(band: str) -> str:
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS} (got {band!r})")
    return band


@lru_cache(maxsize=8)
def band_response(band: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength in A, photon-counting total throughput) of ``band``; read-only arrays."""
    _check_band(band)
    if band == "f814w":
        import galsim

        path = os.path.join(galsim.meta_data.share_dir, "bandpasses", _F814W_FILE)
        table = np.loadtxt(path)
        wave, resp = table[:, 0] * 10.0, table[:, 1]  # the file is in nm
    else:
        import speclite.filters

        filt = speclite.filters.load_filter(_SPECLITE_NAMES[band])
        wave, resp = np.asarray(filt.wavelength, dtype=np.float64), np.asarray(filt.response, dtype=np.float64)
    nonzero = np.flatnonzero(resp > 0)
    sl = slice(max(nonzero[0] - 1, 0), nonzero[-1] + 2)  # trim the zero tails, keep one zero each side
    wave, resp = np.array(wave[sl], dtype=np.float64), np.array(resp[sl], dtype=np.float64)
    wave.flags.writeable = False
    resp.flags.writeable = False
    return wave, resp


@lru_cache(maxsize=8)
def _band(band: str) -> _Band:
    wave, resp = band_response(band)
    from scipy.integrate import trapezoid

    ab_norm = _AB_FNU_CGS * _C_ANGSTROM_PER_S * float(trapezoid(resp / wave, wave))
    return _Band(wave, resp, ab_norm)


@lru_cache(maxsize=1)
def load_template() -> tuple[np.ndarray, np.ndarray]:
    """(rest wavelength in A, f_lambda with unit mean over 1450-1550 A) of the dust-free template."""
    from astropy.table import Table

    table = Table.read(_TEMPLATE_FILE, format="ascii.ecsv")
    wave = np.array(table["wavelength_angstrom"], dtype=np.float64)
    flux = np.array(table["flux_lambda"], dtype=np.float64)
    wave.flags.writeable = False
    flux.flags.writeable = False
    return wave, flux


def calzetti00_k(wave_rest_angstrom: ArrayLike) -> np.ndarray:
    """Calzetti et al. (2000) attenuation k(lam) = A(lam) / E_s(B-V) at rest wavelengths in A.

    Eq. 4 of the paper for 1200 A - 2.2 um (R_V = 4.05); linear in wavelength outside it, with the
    slope at the nearer end (used only where the IGM or the band edges make it matter little).
    """
    lam_um = np.asarray(wave_rest_angstrom, dtype=np.float64) / 1.0e4

    def blue(x):
        return 2.659 * (-2.156 + 1.509 / x - 0.198 / x**2 + 0.011 / x**3) + CALZETTI_RV

    def red(x):
        return 2.659 * (-1.857 + 1.040 / x) + CALZETTI_RV

    lo, hi = 0.12, 2.2
    slope_lo = 2.659 * (-1.509 / lo**2 + 2 * 0.198 / lo**3 - 3 * 0.011 / lo**4)
    slope_hi = 2.659 * (-1.040 / hi**2)
    x = np.clip(lam_um, lo, hi)
    k = np.where(x < 0.63, blue(x), red(x))
    k = np.where(lam_um < lo, blue(lo) + slope_lo * (lam_um - lo), k)
    return np.where(lam_um > hi, red(hi) + slope_hi * (lam_um - hi), k)


def igm_transmission_madau95(wave_obs_angstrom: ArrayLike, z: ArrayLike) -> np.ndarray:
    """Mean IGM transmission exp(-tau_eff) at observed wavelengths (A) for a source at redshift z.

    Madau (1995, ApJ 441, 18): Lyman alpha, beta, gamma, delta forest (eqs. 12, 15) and the
    photoelectric Lyman-continuum absorption by Lyman-limit systems (the fitting formula of his
    footnote 3, x_c = lam_obs / 912 A, x_em = 1 + z). Equal to 1 redward of Ly-alpha at the source.
    Arguments broadcast.
    """
    lam = np.asarray(wave_obs_angstrom, dtype=np.float64)
    xem = 1.0 + np.asarray(z, dtype=np.float64)
    lam, xem = np.broadcast_arrays(lam, xem)
    tau = np.zeros(lam.shape)
    absorbed = lam < _MADAU_LYMAN_ANGSTROM[0] * xem  # only here, so compute the powers only here
    lam_a, xem_a = lam[absorbed], xem[absorbed]
    ln_lam = np.log(lam_a)
    tau_a = np.zeros(lam_a.shape)
    for lam_j, a_j in zip(_MADAU_LYMAN_ANGSTROM, _MADAU_LYMAN_A):
        line = (lam_a > lam_j) & (lam_a < lam_j * xem_a)
        tau_a[line] += a_j * np.exp(3.46 * (ln_lam[line] - math.log(lam_j)))
    lyc = (lam_a > _LYMAN_LIMIT_ANGSTROM) & (lam_a < _LYMAN_LIMIT_ANGSTROM * xem_a)
    ln_xc = ln_lam[lyc] - math.log(_LYMAN_LIMIT_ANGSTROM)
    ln_xem = np.log(xem_a[lyc])
    xc3 = np.exp(3.0 * ln_xc)
    tau_a[lyc] += (
        0.25 * xc3 * (np.exp(0.46 * ln_xem) - np.exp(0.46 * ln_xc))
        + 9.4 * np.exp(1.5 * ln_xc) * (np.exp(0.18 * ln_xem) - np.exp(0.18 * ln_xc))
        - 0.7 * xc3 * (np.exp(-1.32 * ln_xc) - np.exp(-1.32 * ln_xem))
        - 0.023 * (np.exp(1.68 * ln_xem) - np.exp(1.68 * ln_xc))
    )
    tau[absorbed] = tau_a
    return np.exp(-tau)


@lru_cache(maxsize=1)
def _template_k() -> np.ndarray:
    """Calzetti k on the template's wavelength grid."""
    return calzetti00_k(load_template()[0])


@lru_cache(maxsize=1)
def _beta_linear_coefficients() -> tuple[float, float]:
    """(beta_0, dbeta/dE): beta of the template in the Calzetti (1994) windows is exactly linear in E.

    log10 f = log10 T - 0.4 k E, and a least-squares slope is linear in the data, so
    beta(E) = beta_0 - 0.4 E * (slope of k against log10 lam) over the same points.
    """
    wave, flux = load_template()
    in_window = np.zeros(wave.shape, dtype=bool)
    for lo, hi in CALZETTI94_BETA_WINDOWS_ANGSTROM:
        in_window |= (wave >= lo) & (wave <= hi)
    x = np.log10(wave[in_window])
    beta_0 = float(np.polyfit(x, np.log10(flux[in_window]), 1)[0])
    k_slope = float(np.polyfit(x, calzetti00_k(wave[in_window]), 1)[0])
    return beta_0, -0.4 * k_slope


def _check_ebv(ebv_mag) -> np.ndarray:
    ebv = np.asarray(ebv_mag, dtype=np.float64)
    if not np.all(np.isfinite(ebv)) or np.any(ebv < 0):
        raise ValueError(f"SEDParams.ebv_mag must be finite and >= 0 mag (got {ebv_mag!r})")
    return ebv


@dataclass(frozen=True)
class SEDParams:
    """Parameters of the star-forming spectrum (module docstring): the Calzetti (2000) stellar colour
    excess ``ebv_mag`` = E_s(B-V) in mag, >= 0. A float, or an array for vectorised calls (it then
    broadcasts against the redshift array)."""

    ebv_mag: ArrayLike = 0.0

    def __post_init__(self):
        _check_ebv(self.ebv_mag)

    @property
    def beta_uv(self) -> ArrayLike:
        """UV slope beta (f_lambda ~ lambda^beta) in the Calzetti (1994) windows, dimensionless."""
        return uv_slope_beta(self)


def uv_slope_beta(sed_params: SEDParams) -> ArrayLike:
    """UV slope beta of the attenuated template, fitted in :data:`CALZETTI94_BETA_WINDOWS_ANGSTROM`."""
    beta_0, dbeta_debv = _beta_linear_coefficients()
    beta = beta_0 + dbeta_debv * _check_ebv(sed_params.ebv_mag)
    return float(beta) if beta.ndim == 0 else beta


def intrinsic_beta_uv() -> float:
    """The dust-free template's UV slope beta_0 (the bluest slope this model reaches)."""
    return _beta_linear_coefficients()[0]


def ebv_for_beta(beta_uv: ArrayLike) -> ArrayLike:
    """E_s(B-V) in mag giving UV slope ``beta_uv``; 0 for slopes bluer than :func:`intrinsic_beta_uv`."""
    beta_0, dbeta_debv = _beta_linear_coefficients()
    beta = np.asarray(beta_uv, dtype=np.float64)
    if not np.all(np.isfinite(beta)):
        raise ValueError(f"beta_uv must be finite (got {beta_uv!r})")
    ebv = np.maximum((beta - beta_0) / dbeta_debv, 0.0)
    return float(ebv) if ebv.ndim == 0 else ebv


def _check_z(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if not np.all(np.isfinite(z)) or np.any(z < 0) or np.any(z > Z_MAX):
        raise ValueError(f"redshift z must be finite and in [0, {Z_MAX}] (got {z!r})")
    return z


def _band_maggies(band: str, zc: np.ndarray, lam_r: np.ndarray, flux: np.ndarray, igm: bool) -> np.ndarray:
    """Maggies (flux / AB zero point) in ``band`` of rest spectra ``flux`` (m, n) on ``lam_r`` (n,) at z = zc (m,)."""
    from scipy.integrate import trapezoid

    b = _band(band)
    # The rest wavelengths that any of these sources sees through the band (plus one point each side).
    lo = np.searchsorted(lam_r, b.wave_angstrom[0] / (1.0 + zc.max())) - 1
    hi = np.searchsorted(lam_r, b.wave_angstrom[-1] / (1.0 + zc.min())) + 1
    sel = slice(max(lo, 0), min(hi, lam_r.shape[0]))
    lam = lam_r[sel]
    lam_obs = (1.0 + zc)[:, None] * lam[None, :]
    weight = np.interp(lam_obs, b.wave_angstrom, b.response, left=0.0, right=0.0)
    if igm:
        # The IGM only absorbs blueward of Ly-alpha in the source's rest frame.
        n_abs = int(np.searchsorted(lam, _MADAU_LYMAN_ANGSTROM[0]))
        if n_abs:
            weight[:, :n_abs] *= igm_transmission_madau95(lam_obs[:, :n_abs], zc[:, None])
    return (1.0 + zc) * trapezoid(flux[:, sel] * weight * lam, lam, axis=-1) / b.ab_norm


def _mags(bands, z: np.ndarray, wave_rest: np.ndarray, flux_rest, igm: bool) -> dict:
    """{band: AB magnitudes (N,)} of rest spectra at redshifts z (N,). ``flux_rest(sel, rows)`` gives
    f_lambda on ``wave_rest[sel]`` for the sources ``rows``, shape (len(rows), n)."""
    out = {band: np.empty(z.shape[0]) for band in bands}
    blue = min(_band(band).wave_angstrom[0] for band in bands)
    red = max(_band(band).wave_angstrom[-1] for band in bands)
    order = np.argsort(z, kind="stable")  # chunks of similar z see narrow rest-wavelength ranges
    for start in range(0, z.shape[0], _CHUNK):
        rows = order[start : start + _CHUNK]
        zc = z[rows]
        lo = np.searchsorted(wave_rest, blue / (1.0 + zc.max())) - 1
        hi = np.searchsorted(wave_rest, red / (1.0 + zc.min())) + 1
        sel = slice(max(lo, 0), min(hi, wave_rest.shape[0]))
        flux = flux_rest(sel, rows)
        for band in bands:
            out[band][rows] = _band_maggies(band, zc, wave_rest[sel], flux, igm)
    with np.errstate(divide="ignore"):
        return {band: -2.5 * np.log10(maggies) for band, maggies in out.items()}


def _shaped(mag: np.ndarray, shape) -> ArrayLike:
    return float(mag[0]) if shape == () else mag.reshape(shape)


def ab_mag_of_rest_spectrum(band: str, z: ArrayLike, wave_rest_angstrom, flux_lambda_rest, igm: bool = True) -> ArrayLike:
    """AB magnitude in ``band`` of any rest-frame spectrum placed at redshift z.

    Args:
        band: one of :data:`BANDS`.
        z: redshift(s), scalar or (N,), in [0, Z_MAX].
        wave_rest_angstrom: increasing rest wavelengths in A, (n,); must cover the band at z.
        flux_lambda_rest: f_lambda in erg s^-1 cm^-2 A^-1 on that grid, (n,) or (N, n).
        igm: apply the Madau (1995) mean IGM transmission.

    Returns:
        m_AB of f_lambda(lam / (1 + z)) / (1 + z) (flux-conserving, no distance), float or (N,);
        +inf where no flux falls in the band.
    """
    _check_band(band)
    zarr = _check_z(z)
    wave = np.asarray(wave_rest_angstrom, dtype=np.float64)
    flux = np.asarray(flux_lambda_rest, dtype=np.float64)
    if wave.ndim != 1 or wave.shape[0] != flux.shape[-1] or np.any(np.diff(wave) <= 0):
        raise ValueError("wave_rest_angstrom must be increasing (n,) and flux_lambda_rest (n,) or (N, n)")
    shape = np.broadcast(zarr, flux[..., 0]).shape
    zflat = np.broadcast_to(zarr, shape).reshape(-1)
    b = _band(band)
    if wave[0] > b.wave_angstrom[0] / (1.0 + zflat.max()) or wave[-1] < b.wave_angstrom[-1] / (1.0 + zflat.min()):
        raise ValueError(f"the rest spectrum ({wave[0]:.0f}-{wave[-1]:.0f} A) does not cover band {band} at z = {z!r}")
    flux2d = np.broadcast_to(flux, shape + (wave.shape[0],)).reshape(-1, wave.shape[0])
    return _shaped(_mags((band,), zflat, wave, lambda sel, rows: flux2d[rows, sel], igm)[band], shape)


def mags_in_bands(bands, z: ArrayLike, sed_params: SEDParams, igm: bool = True) -> dict:
    """{band: AB magnitude} of the star-forming SED ``sed_params`` at redshift z, for several bands
    at once (the attenuated template is computed once). See :func:`mag_in_band`."""
    bands = tuple(_check_band(band) for band in bands)
    zarr = _check_z(z)
    ebv = _check_ebv(sed_params.ebv_mag)
    shape = np.broadcast(zarr, ebv).shape
    zflat = np.broadcast_to(zarr, shape).reshape(-1)
    ebv_flat = np.broadcast_to(ebv, shape).reshape(-1)
    wave, template = load_template()
    k = _template_k()

    def flux_rest(sel, rows):
        return template[sel][None, :] * np.exp(-0.4 * math.log(10.0) * ebv_flat[rows, None] * k[sel][None, :])

    return {band: _shaped(mag, shape) for band, mag in _mags(bands, zflat, wave, flux_rest, igm).items()}


def mag_in_band(band: str, z: ArrayLike, sed_params: SEDParams, igm: bool = True) -> ArrayLike:
    """AB magnitude in ``band`` of the star-forming SED ``sed_params`` at redshift z.

    Flux-conserving redshift with no distance dimming and the template's arbitrary normalisation
    (module docstring): only differences between bands or redshifts are physical. ``z`` and
    ``sed_params.ebv_mag`` broadcast (scalars or (N,) arrays).
    """
    return mags_in_bands((band,), z, sed_params, igm)[band]


def observed_colors(z: ArrayLike, sed_params: SEDParams) -> tuple[ArrayLike, ArrayLike]:
    """Observed AB colours (g - r, r - z) in DECam of the SED at redshift z (Madau IGM included)."""
    m = mags_in_bands(("g", "r", "z"), z, sed_params)
    return m["g"] - m["r"], m["r"] - m["z"]


def kcorrect_f814w_to_r(z: ArrayLike, sed_params: SEDParams) -> ArrayLike:
    """r_DECam - F814W (AB) of the same SED observed at redshift z: add it to an F814W magnitude."""
    m = mags_in_bands(("r", "f814w"), z, sed_params)
    return m["r"] - m["f814w"]
