"""Sources whose magnitude, size, redshift and colour belong together.

Each source is a real galaxy: a COSMOS stamp with its own catalogue F814W magnitude and photometric
redshift (:func:`cosmos_source_photometry`), or a Sersic profile taken from one row of a real
catalogue of COSMOS parametric fits, so that magnitude, half-light radius, Sersic n, axis ratio
and redshift are drawn jointly (:func:`draw_parametric_source`). Its spectrum is the star-forming
model of :mod:`dhs_spark.sims.sed`, whose UV slope beta is drawn for the source's redshift
(:func:`draw_sed_params`); the DECam r magnitude comes from the catalogue F814W magnitude through
that spectrum, and the g - r, r - z colours from the same spectrum.

Moving a galaxy from its catalogue redshift z_c to a target redshift z_t (the lens population's
source redshift), same luminosity and spectrum:

- angular size x D_A(z_c) / D_A(z_t);
- band magnitude m_X(z_t) = m_X(z_c) + 5 log10(D_L(z_t) / D_L(z_c)) + [M_X(z_t) - M_X(z_c)], with
  M_X(z) = :func:`~dhs_spark.sims.sed.mag_in_band` (flux-conserving redshift, IGM), i.e. the
  distance modulus and the K-correction difference. Surface brightness then dims as
  (1 + z)^-4 bolometrically (D_L = (1 + z)^2 D_A), with the band's K-correction on top.

Distances come from ``astropy.cosmology`` (a realisation named in the config, default
:data:`DEFAULT_COSMOLOGY`). Randomness comes only from the ``rng`` passed in (a generator from
:func:`dhs_spark.config.seeds.rng_from_seed`); draws are made in a fixed order.

Invalid catalogue redshifts (NaN, <= 0, or above :data:`~dhs_spark.sims.sed.Z_MAX`; the AEGIS
library has none) follow one rule, flagged by ``source_zphot_fallback``: the galaxy's redshift
is drawn from the photometric redshifts of the parametric catalogue (by default GalSim's
F814W < 23.5 COSMOS sample, the magnitude-limited parent population of the source library),
then, with a target redshift, it is moved to z_t like any other galaxy. (Taking it to be at z_t
already, the earlier rule, kept such a galaxy at its catalogue brightness while every other was
dimmed to z_t: on the demo's library one redshift-less AEGIS galaxy then passed the
detectability selection for 709 of 789 training injections.)

Output keys (manifest columns; units in the names or here):

- ``source_r_mag``: unlensed DECam r, AB mag, at ``source_z``;
- ``source_color_g_r``, ``source_color_r_z``: observed DECam colours, AB mag;
- ``source_size_scale``: D_A(z_c) / D_A(source_z), dimensionless: multiply the catalogue's angular
  sizes (or the COSMOS stamp's pixel scale) by it;
- ``source_z``: the source's redshift as injected;
- ``source_mag_f814w_catalog``: the catalogue F814W AB magnitude;
- ``source_zphot_catalog``: the catalogue photometric redshift as given (NaN when missing);
- ``source_z_catalog``: the redshift the catalogue magnitude was interpreted at;
- ``source_zphot_fallback``: True when the catalogue redshift was invalid (rule above);
- ``source_sed_ebv_mag``: Calzetti E_s(B-V) of the spectrum, mag; ``source_sed_beta_uv``: its UV
  slope;
- ``source_kcorr_r_minus_f814w_mag``: r - F814W of the spectrum at ``source_z_catalog``, mag.

:func:`draw_parametric_source` adds ``source_r_eff_arcsec``, ``source_sersic_n``, ``source_q`` and
``source_catalog_index`` (the row of the catalogue), ``source_catalog_ident``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from dhs_spark.errors import ConfigError, InputDataError
from dhs_spark.sims import sed
from dhs_spark.sims.sersic import SERSIC_N_RANGE

#: astropy.cosmology realisation used when none is named (Planck Collaboration 2020, A&A 641, A6).
DEFAULT_COSMOLOGY = "Planck18"

#: (redshift, mean, standard deviation) of the observed UV slope beta of star-forming galaxies:
#:
#: - z = 0.575: GOODS-N galaxies at 0.40 < z < 0.75, mean -1.33, 1-sigma scatter 0.60
#:   (Mondal, Saha, Windhorst & Jansen 2023, ApJ, doi:10.3847/1538-4357/acc110);
#: - z = 1.5: HUDF galaxies at 1 < z < 2, mean -1.382, standard deviation 0.43
#:   (Kurczynski et al. 2014, ApJL 793, L5);
#: - z = 3.0: bright (L > L*) Lyman-break galaxies in COSMOS, mean -1.70 (Pilo et al. 2019, A&A 626,
#:   doi:10.1051/0004-6361/201834442); scatter 0.43 / 1.3 = 0.33, Kurczynski et al.'s finding that
#:   1 < z < 2 galaxies scatter 30% more than z > 2 ones.
#:
#: Interpolated linearly in z and held constant outside 0.575-3 (at z ~ 4 Bouwens et al. 2014,
#: ApJ 793, 115 find beta about 0.15 bluer; not modelled).
BETA_UV_ANCHORS = ((0.575, -1.33, 0.60), (1.5, -1.382, 0.43), (3.0, -1.70, 0.33))

_PARAMETRIC_CATALOG = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "data", "cosmos_parametric", "real_galaxy_catalog_23.5_example_fits.fits"
)


def beta_uv_distribution(z) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) of the UV slope beta at redshift(s) z (:data:`BETA_UV_ANCHORS`)."""
    zs, means, sigmas = (np.array(col, dtype=np.float64) for col in zip(*BETA_UV_ANCHORS))
    z = np.asarray(z, dtype=np.float64)
    return np.interp(z, zs, means), np.interp(z, zs, sigmas)


def draw_sed_params(rng: np.random.Generator, z) -> sed.SEDParams:
    """Spectrum of a star-forming galaxy at redshift(s) z: beta ~ N(mean(z), sigma(z)) of
    :func:`beta_uv_distribution`, converted to E_s(B-V) by :func:`dhs_spark.sims.sed.ebv_for_beta`
    (slopes bluer than the dust-free template's, about 6% of draws at z = 3, get E = 0).

    ``z`` scalar gives a float ``ebv_mag``, an array gives an array (one normal draw per element).
    """
    z = np.asarray(z, dtype=np.float64)
    if not np.all(np.isfinite(z)) or np.any(z < 0):
        raise ValueError(f"redshift z must be finite and >= 0 (got {z!r})")
    mean, sigma = beta_uv_distribution(z)
    beta = rng.normal(mean, sigma)
    return sed.SEDParams(ebv_mag=sed.ebv_for_beta(beta))


@lru_cache(maxsize=16)
def _named_cosmology(name: str):
    from astropy.cosmology import realizations

    if name not in realizations.available:
        raise ConfigError("cosmology", f"must be one of astropy's realisations {realizations.available}", name)
    return getattr(realizations, name)


def get_cosmology(cosmology=None):
    """An astropy ``Cosmology``: the instance given, the realisation named (e.g. 'Planck18'), or the default."""
    if cosmology is None:
        return _named_cosmology(DEFAULT_COSMOLOGY)
    if isinstance(cosmology, str):
        return _named_cosmology(cosmology)
    if not hasattr(cosmology, "angular_diameter_distance"):
        raise ConfigError("cosmology", "must be an astropy Cosmology or the name of a realisation", cosmology)
    return cosmology


def _valid_z(z) -> bool:
    return z is not None and math.isfinite(z) and 0.0 < z <= sed.Z_MAX


def cosmos_source_photometry(
    mag_f814w: float,
    zphot: float,
    rng: np.random.Generator,
    z_target: Optional[float] = None,
    cosmology=None,
    fallback_catalog: Optional[ParametricCatalog] = None,
) -> dict:
    """Photometry of one catalogue galaxy, optionally moved to ``z_target`` (module docstring).

    Args:
        mag_f814w: the galaxy's catalogue HST ACS F814W AB magnitude (finite).
        zphot: its catalogue photometric redshift (NaN or <= 0 when missing: the fallback rule).
        rng: numpy Generator; draws, in order: the fallback redshift (only when needed), then beta.
        z_target: the redshift to move the galaxy to, in (0, Z_MAX]; None keeps it where it is.
        cosmology: astropy Cosmology or realisation name (default :data:`DEFAULT_COSMOLOGY`).
        fallback_catalog: the catalogue whose zphot column the fallback draws from (default: the
            bundled GalSim COSMOS parametric catalogue).

    Returns:
        dict with the keys listed in the module docstring.
    """
    mag = float(mag_f814w)
    if not math.isfinite(mag):
        raise InputDataError(f"source catalogue magnitude mag_f814w must be finite (got {mag_f814w!r})")
    if z_target is not None and not _valid_z(float(z_target)):
        raise ValueError(f"z_target must be in (0, {sed.Z_MAX}] (got {z_target!r})")
    zphot_given = math.nan if zphot is None else float(zphot)
    fallback = not _valid_z(zphot_given)
    if not fallback:
        z_cat = zphot_given
    else:
        pool = (load_parametric_catalog() if fallback_catalog is None else fallback_catalog).zphot
        pool = pool[(pool > 0) & (pool <= sed.Z_MAX)]
        z_cat = float(pool[rng.integers(pool.shape[0])])
    z_src = z_cat if z_target is None else float(z_target)
    params = draw_sed_params(rng, z_src)

    at_cat = sed.mags_in_bands(("r", "f814w"), z_cat, params)
    kcorr = at_cat["r"] - at_cat["f814w"]
    if z_src == z_cat:
        size_scale = 1.0
        at_src = sed.mags_in_bands(("g", "r", "z"), z_src, params)
        r_mag = mag + kcorr
    else:
        cosmo = get_cosmology(cosmology)
        d_a = cosmo.angular_diameter_distance([z_cat, z_src]).to_value("Mpc")
        size_scale = float(d_a[0] / d_a[1])
        # D_L = (1 + z)^2 D_A (Etherington), so one distance call serves both.
        dist_mod = 5.0 * math.log10((1.0 + z_src) ** 2 * d_a[1] / ((1.0 + z_cat) ** 2 * d_a[0]))
        at_src = sed.mags_in_bands(("g", "r", "z"), z_src, params)
        r_mag = mag + kcorr + dist_mod + (at_src["r"] - at_cat["r"])
    return {
        "source_r_mag": float(r_mag),
        "source_color_g_r": float(at_src["g"] - at_src["r"]),
        "source_color_r_z": float(at_src["r"] - at_src["z"]),
        "source_size_scale": size_scale,
        "source_z": z_src,
        "source_mag_f814w_catalog": mag,
        "source_zphot_catalog": zphot_given,
        "source_z_catalog": z_cat,
        "source_zphot_fallback": fallback,
        "source_sed_ebv_mag": float(params.ebv_mag),
        "source_sed_beta_uv": float(params.beta_uv),
        "source_kcorr_r_minus_f814w_mag": float(kcorr),
    }


@dataclass(frozen=True)
class ParametricCatalog:
    """Single-Sersic fits of real COSMOS galaxies, one row per galaxy (GalSim's parametric catalogue).

    Attributes (arrays of equal length):
        ident: COSMOS identifiers (str).
        mag_f814w: HST ACS F814W AB magnitude (``mag_auto``).
        r_eff_arcsec: Sersic half-light radius, arcsec, circularised (GalSim's ``hlr[:, 0]`` =
            major-axis radius x sqrt(q)): the ``r_eff`` of :class:`~dhs_spark.sims.sersic.SersicSource`.
        sersic_n: Sersic index of the fit (``sersicfit[:, 2]``).
        q: minor/major axis ratio (``sersicfit[:, 3]``).
        zphot: photometric redshift (``zphot``).
        path: the file read.
    """

    ident: np.ndarray
    mag_f814w: np.ndarray
    r_eff_arcsec: np.ndarray
    sersic_n: np.ndarray
    q: np.ndarray
    zphot: np.ndarray
    path: str

    def __len__(self) -> int:
        return int(self.mag_f814w.shape[0])


@lru_cache(maxsize=4)
def load_parametric_catalog(path: Optional[str] = None, exclusion_level: str = "marginal") -> ParametricCatalog:
    """Read a GalSim COSMOS parametric-fit catalogue through ``galsim.COSMOSCatalog``.

    Args:
        path: the ``*_fits.fits`` parametric catalogue, or the RealGalaxyCatalog file beside it
            (e.g. GalSim's full ``real_galaxy_catalog_25.2.fits`` on EMR); its ``*_selection.fits``
            must sit beside it for ``exclusion_level`` 'marginal' or 'bad_stamp'. None: the bundled
            100-galaxy F814W < 23.5 example (``dhs_spark/data/cosmos_parametric``, GalSim, BSD).
        exclusion_level: GalSim's cut on suspect stamps and fits ('none', 'bad_stamp', 'bad_fits',
            'marginal'); 'marginal' keeps 96 of the example's 100.

    Rows whose single-Sersic fit has a non-finite or non-positive magnitude, radius, n or q are
    dropped (none in GalSim's catalogues after its exclusion).
    """
    import galsim

    path = _PARAMETRIC_CATALOG if path is None else path
    if not os.path.isfile(path):
        raise InputDataError(f"COSMOS parametric catalogue not found: {path}")
    try:
        cat = galsim.COSMOSCatalog(file_name=path, use_real=False, exclusion_level=exclusion_level)
    except (OSError, KeyError) as exc:
        raise InputDataError(f"COSMOS parametric catalogue {path}: cannot read it with galsim.COSMOSCatalog ({exc})") from exc
    except galsim.GalSimValueError as exc:
        raise ConfigError("exclusion_level", str(exc), exclusion_level) from exc
    rows = cat.param_cat[cat.orig_index]
    columns = {
        "mag_f814w": np.asarray(rows["mag_auto"], dtype=np.float64),
        "r_eff_arcsec": np.asarray(rows["hlr"][:, 0], dtype=np.float64),
        "sersic_n": np.asarray(rows["sersicfit"][:, 2], dtype=np.float64),
        "q": np.asarray(rows["sersicfit"][:, 3], dtype=np.float64),
    }
    ok = np.ones(len(rows), dtype=bool)
    for values in columns.values():
        ok &= np.isfinite(values)
    ok &= (columns["r_eff_arcsec"] > 0) & (columns["sersic_n"] > 0) & (columns["q"] > 0) & (columns["q"] <= 1)
    if not ok.any():
        raise InputDataError(f"COSMOS parametric catalogue {path}: no row with a usable single-Sersic fit")
    arrays = {name: values[ok] for name, values in columns.items()}
    arrays["zphot"] = np.asarray(rows["zphot"], dtype=np.float64)[ok]
    arrays["ident"] = np.array([str(v) for v in rows["IDENT"][ok]])
    for values in arrays.values():
        values.flags.writeable = False
    return ParametricCatalog(path=path, **arrays)


def draw_parametric_source(
    rng: np.random.Generator,
    catalog: Optional[ParametricCatalog] = None,
    z_target: Optional[float] = None,
    cosmology=None,
) -> dict:
    """A Sersic source drawn jointly from one catalogue row, with its photometry.

    One row is drawn uniformly (the catalogue's own magnitude-size-shape-redshift distribution);
    its F814W magnitude and zphot go through :func:`cosmos_source_photometry` (moved to ``z_target``
    when given) and its half-light radius is scaled by the same ``source_size_scale``. Sersic n is
    clipped to :data:`~dhs_spark.sims.sersic.SERSIC_N_RANGE` (GalSim clips its fits to 0.3-6).

    Returns:
        :func:`cosmos_source_photometry`'s dict plus ``source_r_eff_arcsec``, ``source_sersic_n``,
        ``source_q``, ``source_catalog_index`` (row of ``catalog``) and ``source_catalog_ident``.
    """
    catalog = load_parametric_catalog() if catalog is None else catalog
    row = int(rng.integers(len(catalog)))
    out = cosmos_source_photometry(catalog.mag_f814w[row], catalog.zphot[row], rng, z_target, cosmology, fallback_catalog=catalog)
    n_lo, n_hi = SERSIC_N_RANGE
    out.update(
        source_r_eff_arcsec=float(catalog.r_eff_arcsec[row] * out["source_size_scale"]),
        source_sersic_n=float(min(max(catalog.sersic_n[row], n_lo), n_hi)),
        source_q=float(catalog.q[row]),
        source_catalog_index=row,
        source_catalog_ident=str(catalog.ident[row]),
    )
    return out
