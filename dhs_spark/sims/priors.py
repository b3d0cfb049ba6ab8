"""Draw injected lens and source parameters from :class:`~dhs_spark.config.experiment.InjectionPriors`.

One 64-bit seed -> one parameter dict, deterministically (PCG64 via
:func:`dhs_spark.config.seeds.rng_from_seed`; the draws are made in a fixed order, so adding a
parameter at the end never changes the earlier ones). Keys match the manifest columns of
:mod:`dhs_spark.schema`.

Distributions (DESIGN.md §3): theta_E ~ U(theta_e_range); lens q ~ U(lens_q_range); lens and
source position angles ~ U(0, pi); shear components ~ N(0, shear_sigma); source offset
beta = theta_E sqrt(U(beta_frac_sq_range)) at a uniform polar angle; r_eff, Sersic n, source q,
r magnitude uniform in their ranges; observed colours g-r, r-z Gaussian.
"""

from __future__ import annotations

import math

from dhs_spark.config.seeds import rng_from_seed


def _uniform(rng, bounds, name: str) -> float:
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"prior range {name} must be finite with lo <= hi (got {bounds!r})")
    return float(rng.uniform(lo, hi))


def sample_injection(priors, theta_e_range, seed: int) -> dict:
    """Lens and source parameters for one injection (arcsec, radians, AB magnitudes).

    Args:
        priors: an ``InjectionPriors``.
        theta_e_range: (lo, hi) of the Einstein radius in arcsec (e.g. one grid cell's range).
        seed: the per-task 64-bit seed.

    Returns:
        dict with theta_e_arcsec, lens_q, lens_phi_rad, shear_gamma1, shear_gamma2,
        source_x_arcsec, source_y_arcsec, source_r_eff_arcsec, source_sersic_n, source_q,
        source_phi_rad, source_r_mag, source_color_g_r, source_color_r_z.
    """
    rng = rng_from_seed(seed)
    theta_e = _uniform(rng, theta_e_range, "theta_e_range")
    if theta_e <= 0:
        raise ValueError(f"theta_e_range must be > 0 arcsec (got {theta_e_range!r})")
    lens_q = _uniform(rng, priors.lens_q_range, "lens_q_range")
    lens_phi = float(rng.uniform(0.0, math.pi))
    gamma1, gamma2 = (float(g) for g in rng.normal(0.0, priors.shear_sigma, size=2))
    beta = theta_e * math.sqrt(_uniform(rng, priors.beta_frac_sq_range, "beta_frac_sq_range"))
    beta_angle = float(rng.uniform(0.0, 2.0 * math.pi))
    return {
        "theta_e_arcsec": theta_e,
        "lens_q": lens_q,
        "lens_phi_rad": lens_phi,
        "shear_gamma1": gamma1,
        "shear_gamma2": gamma2,
        "source_x_arcsec": beta * math.cos(beta_angle),
        "source_y_arcsec": beta * math.sin(beta_angle),
        "source_r_eff_arcsec": _uniform(rng, priors.source_r_eff_arcsec_range, "source_r_eff_arcsec_range"),
        "source_sersic_n": _uniform(rng, priors.source_sersic_n_range, "source_sersic_n_range"),
        "source_q": _uniform(rng, priors.source_q_range, "source_q_range"),
        "source_phi_rad": float(rng.uniform(0.0, math.pi)),
        "source_r_mag": _uniform(rng, priors.source_r_mag_range, "source_r_mag_range"),
        "source_color_g_r": float(rng.normal(priors.color_g_r_mean, priors.color_g_r_sigma)),
        "source_color_r_z": float(rng.normal(priors.color_r_z_mean, priors.color_r_z_sigma)),
    }


def lens_from_params(params: dict):
    """The :class:`~dhs_spark.sims.lensing.SIEShear` of a :func:`sample_injection` dict (lens at the stamp centre)."""
    from dhs_spark.sims.lensing import SIEShear

    return SIEShear(
        theta_e_arcsec=params["theta_e_arcsec"],
        q=params["lens_q"],
        phi_rad=params["lens_phi_rad"],
        gamma1=params["shear_gamma1"],
        gamma2=params["shear_gamma2"],
    )


def sersic_from_params(params: dict):
    """The :class:`~dhs_spark.sims.sersic.SersicSource` of a :func:`sample_injection` dict."""
    from dhs_spark.sims.sersic import SersicSource

    return SersicSource(
        x_arcsec=params["source_x_arcsec"],
        y_arcsec=params["source_y_arcsec"],
        r_eff_arcsec=params["source_r_eff_arcsec"],
        n=params["source_sersic_n"],
        q=params["source_q"],
        phi_rad=params["source_phi_rad"],
    )
