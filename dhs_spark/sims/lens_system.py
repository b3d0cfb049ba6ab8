"""One lens system per manifest row: a host-conditioned lens, a physically consistent source, and
the detectability selection that turns "every lens" into "the lenses a DR10 search can find".

Chain (phase 4a calls :func:`draw_system` once per injection row):

1. The lens of the host: :func:`dhs_spark.sims.population.draw_lenses`, drawn once per *host*
   (a galaxy has one velocity dispersion and one redshift), with the host's seed.
2. The source, per row: a real galaxy from the row's own split (:class:`SourcePool`): a COSMOS
   stamp (its catalogue F814W magnitude, half-light radius and zphot) or one row of the COSMOS
   parametric-fit catalogue for Sersic sources, moved to the lens population's source redshift
   with consistent size, distance and K-correction, and coloured by the star-forming spectrum of
   :mod:`dhs_spark.sims.source_population` / :mod:`dhs_spark.sims.sed`. Unlensed source-plane
   position beta = theta_E sqrt(U(``priors.beta_frac_sq_range``)) at a uniform angle, and a
   uniform orientation.
3. Detectability (``population.selection = 'detectable'``): the expected arc SNR
   (:func:`dhs_spark.sims.detectability.expected_arc_snr`, the brick's PSF and depth, the
   brick's E(B-V) applied) must reach ``detectable_min_arc_snr`` and the total magnification
   ``detectable_min_magnification`` (Collett 2015, ApJ 811, 20, §2.4: SNR >= 20 and mu >= 3).
   A row whose draw fails redraws its source (a new galaxy, source redshift, position and
   orientation; theta_E follows z_s from the host's sigma_v and z_l and stays in
   ``population.theta_e_range_arcsec``) up to ``detectable_tries`` times; if none passes, the draw with the highest expected SNR is kept
   and flagged ``detectable = False`` (never dropped, so host selection stays symmetric between
   injections and controls). ``selection = 'none'`` keeps the first draw: the full faint range,
   for completeness studies.

Every random number comes from ``stable_hash64`` of the row's task seed and the attempt number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import InputDataError
from dhs_spark.sims.detectability import expected_arc_snr
from dhs_spark.sims.inject import BANDS, band_fluxes_nmgy, extinction_mag
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.population import draw_source_redshift, einstein_radius_arcsec
from dhs_spark.sims.sersic import SersicSource
from dhs_spark.sims.source_population import ParametricCatalog, cosmos_source_photometry, draw_parametric_source

#: Sersic index of the stand-in profile used for a COSMOS galaxy's detectability estimate (its
#: stamp is not read in 4a): an exponential disc, the typical profile of star-forming sources.
COSMOS_PROXY_SERSIC_N = 1.0


@dataclass(frozen=True)
class SourcePool:
    """The galaxies each split may draw from (picklable; shipped to 4a's executors).

    ``kind`` 'cosmos': ``cosmos`` maps split -> dict of arrays ``ident``, ``mag``, ``zphot``,
    ``half_light_radius_arcsec`` (the library metadata of that split's galaxies, :func:`galaxy_splits`).
    ``kind`` 'parametric': ``parametric`` maps split -> the parametric catalogue restricted to
    that split's rows.
    """

    kind: str
    cosmos: Optional[dict] = None
    parametric: Optional[dict] = None

    def check(self, splits) -> None:
        pools = self.cosmos if self.kind == "cosmos" else self.parametric
        empty = [s for s in splits if s not in pools or len(pools[s]["ident"] if self.kind == "cosmos" else pools[s]) == 0]
        if empty:
            raise InputDataError(f"source pool ({self.kind}): no galaxy assigned to split(s) {empty}; use a larger source library")


def galaxy_splits(idents, mags, split_fractions, salt: str = "source-split-v2") -> np.ndarray:
    """The stamp split of each source galaxy of a library (an array of split names, in the order
    of ``idents``), so each galaxy feeds exactly one split and every split's galaxies span the
    library's magnitude range in proportion.

    Galaxies are taken brightest first (``mags``, AB: the pools pass each galaxy's magnitude at
    the population's median source redshift, :func:`mags_at_redshift`; NaN last; ties by hash)
    and each goes to the split furthest below its share ``split_fractions`` ((name, fraction) pairs) of the galaxies so
    far (ties broken by hash(salt, ident, split)): a stratified split. A plain hash of the ident
    is representative only for large libraries; on the demo's 10-galaxy library it gave val one
    galaxy and test two of the three faintest, whose arcs were mostly invisible (issue 14). The
    price: a galaxy's split depends on the library it is in, so it is a property of the run
    (recorded in each manifest row's ``split``), not of the galaxy alone.
    """
    names = [str(n) for n, _ in split_fractions]
    share = np.array([float(f) for _, f in split_fractions])
    if not (len(names) and np.all(share >= 0) and share.sum() > 0):
        raise ValueError(f"split_fractions must be (name, fraction >= 0) pairs with a positive sum (got {split_fractions!r})")
    share = share / share.sum()
    idents = [str(i) for i in idents]
    m = np.asarray(mags, dtype=np.float64)
    if m.shape != (len(idents),):
        raise ValueError(f"mags must have one value per galaxy ({len(idents)}), got shape {m.shape}")
    tie = np.array([stable_hash64(salt, i) for i in idents], dtype=np.uint64)
    order = np.lexsort((tie, np.where(np.isfinite(m), m, np.inf)))
    counts = np.zeros(len(names))
    out = np.empty(len(idents), dtype=object)
    for n, g in enumerate(order, start=1):
        deficit = np.round(share * n - counts, 9)  # rounded: equal shares tie exactly
        best = max((s for s in range(len(names)) if deficit[s] == deficit.max()), key=lambda s: stable_hash64(salt, idents[g], names[s]))
        out[g] = names[best]
        counts[best] += 1
    return out


def mags_at_redshift(idents, mag_f814w, zphot, z_reference: float, cosmology) -> np.ndarray:
    """Each galaxy's r magnitude (AB) moved to ``z_reference`` by
    :func:`~dhs_spark.sims.source_population.cosmos_source_photometry` (a fixed spectrum draw per
    galaxy, seeded by its ident): how bright it would be as a source at that redshift, the order
    :func:`galaxy_splits` stratifies by. A low-redshift galaxy of bright catalogue magnitude is
    faint there (the demo's z = 0.44 galaxy of F814W 22.1 reads r ~ 26 at z = 1.8)."""
    return np.array([cosmos_source_photometry(float(m), float(z), rng_from_seed(stable_hash64("split-reference", str(i))), z_target=float(z_reference),
                                              cosmology=cosmology)["source_r_mag"] for i, m, z in zip(idents, mag_f814w, zphot)])  # fmt: skip


def cosmos_pool(meta: dict, split_fractions, z_reference: float, cosmology) -> SourcePool:
    """A :class:`SourcePool` from COSMOS library metadata (arrays ident, mag, zphot,
    half_light_radius_arcsec), each galaxy in the split of :func:`galaxy_splits`, stratified by
    its magnitude at ``z_reference`` (:func:`mags_at_redshift`)."""
    splits = galaxy_splits(meta["ident"], mags_at_redshift(meta["ident"], meta["mag"], meta["zphot"], z_reference, cosmology), split_fractions)
    pools = {}
    for name, _ in split_fractions:
        sel = splits == name
        pools[name] = {k: np.asarray(meta[k])[sel] for k in ("ident", "mag", "zphot", "half_light_radius_arcsec")}
    return SourcePool("cosmos", cosmos=pools)


def parametric_pool(catalog: ParametricCatalog, split_fractions, z_reference: float, cosmology) -> SourcePool:
    """A :class:`SourcePool` of the parametric catalogue's rows, split by :func:`galaxy_splits`
    (stratified as in :func:`cosmos_pool`)."""
    mags = mags_at_redshift(catalog.ident, catalog.mag_f814w, catalog.zphot, z_reference, cosmology)
    splits = galaxy_splits(catalog.ident, mags, split_fractions)
    pools = {}
    for name, _ in split_fractions:
        sel = splits == name
        pools[name] = ParametricCatalog(ident=catalog.ident[sel], mag_f814w=catalog.mag_f814w[sel], r_eff_arcsec=catalog.r_eff_arcsec[sel],
                                        sersic_n=catalog.sersic_n[sel], q=catalog.q[sel], zphot=catalog.zphot[sel], path=catalog.path)  # fmt: skip
    return SourcePool("parametric", parametric=pools)


def split_galaxy_ident(pool: SourcePool, split: str, task_seed: int) -> str:
    """The COSMOS galaxy of a uniform-prior injection row: one of ``split``'s galaxies, chosen
    by a hash of the task seed (its magnitude and colours come from the uniform priors)."""
    idents = pool.cosmos[split]["ident"]
    return str(idents[stable_hash64("uniform-source", int(task_seed)) % len(idents)])


def _draw_source(pool: SourcePool, split: str, rng, z_source: float, cosmology: str) -> dict:
    if pool.kind == "cosmos":
        p = pool.cosmos[split]
        i = int(rng.integers(len(p["ident"])))
        out = cosmos_source_photometry(float(p["mag"][i]), float(p["zphot"][i]), rng, z_target=z_source, cosmology=cosmology)
        out["cosmos_ident"] = str(p["ident"][i])
        out["source_r_eff_arcsec"] = float(p["half_light_radius_arcsec"][i]) * out["source_size_scale"]
        return out
    return draw_parametric_source(rng, pool.parametric[split], z_target=z_source, cosmology=cosmology)


def draw_system(lens: dict, host: dict, split: str, task_seed: int, pool: SourcePool, population, priors, stamp_size: int,
                pixscale_arcsec: float) -> dict:
    """Source, position and detectability of one injection row behind ``lens`` (a row of
    :func:`~dhs_spark.sims.population.draw_lenses`). ``host`` has ``ebv`` (mag),
    ``psf_fwhm_<b>_arcsec`` and ``psfdepth_<b>_invvar_nmgy2``; a missing depth makes the
    expected SNR incomputable and the row is kept with ``arc_snr_expected`` NaN and
    ``detectable`` None. Returns the manifest fields of the source and the selection."""
    z_lens, sigma_kms = float(lens["z_lens"]), float(lens["sigma_v_kms"])
    t_lo, t_hi = (float(v) for v in population.theta_e_range_arcsec)
    fwhm = [float(host[f"psf_fwhm_{b}_arcsec"]) for b in BANDS]
    depth = [host.get(f"psfdepth_{b}_invvar_nmgy2") for b in BANDS]
    have_depth = all(d is not None and math.isfinite(float(d)) and float(d) > 0 for d in depth)
    ebv = float(host.get("ebv") or 0.0)
    lo, hi = (float(v) for v in priors.beta_frac_sq_range)
    select = population.selection == "detectable"
    tries = int(population.detectable_tries) if select and have_depth else 1
    best = None
    for attempt in range(tries):
        rng = rng_from_seed(stable_hash64("lens-system", int(task_seed), attempt))
        # The first draw puts the source at the host's z_s; a redraw also redraws z_s (a lens
        # galaxy lenses sources at every redshift; theta_E follows, kept in the population's range).
        z_source, theta_e = float(lens["z_source"]), float(lens["theta_e_arcsec"])
        if attempt > 0:
            z_try = float(draw_source_redshift(rng, 1, z_lens, population)[0])
            theta_try = float(einstein_radius_arcsec(sigma_kms, z_lens, z_try, population.cosmology))
            if t_lo <= theta_try <= t_hi:
                z_source, theta_e = z_try, theta_try
        sie = SIEShear(theta_e, float(lens["lens_q"]), float(lens["lens_phi_rad"]), float(lens["shear_gamma1"]), float(lens["shear_gamma2"]))
        src = _draw_source(pool, split, rng, z_source, population.cosmology)
        src.update(z_source=z_source, theta_e_arcsec=theta_e)
        beta = theta_e * math.sqrt(float(rng.uniform(lo, hi)))
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        src.update(source_x_arcsec=beta * math.cos(angle), source_y_arcsec=beta * math.sin(angle), source_phi_rad=float(rng.uniform(0.0, math.pi)))
        if pool.kind == "cosmos":
            src.update(source_sersic_n=COSMOS_PROXY_SERSIC_N, source_q=1.0)
        snr = mu = math.nan
        if have_depth:
            flux = band_fluxes_nmgy(src["source_r_mag"], src["source_color_g_r"], src["source_color_r_z"]) * 10.0 ** (-0.4 * extinction_mag(ebv))
            proxy = SersicSource(src["source_x_arcsec"], src["source_y_arcsec"], max(src["source_r_eff_arcsec"], 0.01), src["source_sersic_n"],
                                 src["source_q"], src["source_phi_rad"])  # fmt: skip
            snr, mu = expected_arc_snr(sie, proxy, flux, fwhm, [float(d) for d in depth], stamp_size, pixscale_arcsec)
        passed = snr >= population.detectable_min_arc_snr and mu >= population.detectable_min_magnification
        src.update(arc_snr_expected=snr, magnification_expected=mu, selection_draws=attempt + 1)
        if best is None or (math.isfinite(snr) and snr > best["arc_snr_expected"]):
            best = src
        if passed or not select:
            best = src
            break
    best["detectable"] = bool(best["arc_snr_expected"] >= population.detectable_min_arc_snr
                              and best["magnification_expected"] >= population.detectable_min_magnification) if have_depth else None  # fmt: skip
    if pool.kind == "cosmos":  # the proxy's profile is not the COSMOS galaxy's: not recorded as truth
        best["source_sersic_n"] = None
        best["source_q"] = None
    return best
