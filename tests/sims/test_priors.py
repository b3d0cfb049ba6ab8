"""Injection priors: determinism from one seed, ranges and distribution moments (DESIGN.md §3)."""

from __future__ import annotations

import numpy as np
import pytest

from dhs_spark.config.experiment import InjectionPriors
from dhs_spark.schema import MANIFEST_COLUMNS
from dhs_spark.sims.priors import lens_from_params, sample_injection, sersic_from_params


def test_same_seed_same_values_and_keys_are_manifest_columns():
    a = sample_injection(InjectionPriors(), (0.5, 3.0), 2**63 - 25)
    b = sample_injection(InjectionPriors(), (0.5, 3.0), 2**63 - 25)
    c = sample_injection(InjectionPriors(), (0.5, 3.0), 2**63 - 24)
    assert a == b and a != c
    names = {col.name for col in MANIFEST_COLUMNS}
    assert set(a) <= names, set(a) - names
    assert lens_from_params(a).theta_e_arcsec == a["theta_e_arcsec"]
    assert sersic_from_params(a).r_eff_arcsec == a["source_r_eff_arcsec"]


def test_ranges_and_moments_over_many_draws():
    """4000 draws: every uniform inside its range, beta/theta_E in [0.1, 0.4], Gaussian means within 4 sigma/sqrt(N)."""
    pri = InjectionPriors()
    draws = [sample_injection(pri, (0.8, 2.0), s) for s in range(4000)]
    col = {k: np.array([d[k] for d in draws]) for k in draws[0]}
    assert col["theta_e_arcsec"].min() >= 0.8 and col["theta_e_arcsec"].max() <= 2.0
    for key, rng in [("lens_q", pri.lens_q_range), ("source_r_eff_arcsec", pri.source_r_eff_arcsec_range),
                     ("source_sersic_n", pri.source_sersic_n_range), ("source_q", pri.source_q_range), ("source_r_mag", pri.source_r_mag_range)]:  # fmt: skip
        assert col[key].min() >= rng[0] and col[key].max() <= rng[1], key
        assert col[key].max() - col[key].min() > 0.9 * (rng[1] - rng[0]), f"{key} does not fill its range"
    frac = np.hypot(col["source_x_arcsec"], col["source_y_arcsec"]) / col["theta_e_arcsec"]
    assert frac.min() >= 0.1 - 1e-12 and frac.max() <= 0.4 + 1e-12
    # beta/theta_E = sqrt(U(0.01, 0.16)): its square is uniform, mean 0.085
    assert abs((frac**2).mean() - 0.085) < 4 * 0.0433 / np.sqrt(4000)
    n = len(draws)
    for key, mean, sigma in [
        ("source_color_g_r", 1.15, 0.30),
        ("source_color_r_z", 0.85, 0.20),
        ("shear_gamma1", 0.0, 0.05),
        ("shear_gamma2", 0.0, 0.05),
    ]:
        assert abs(col[key].mean() - mean) < 4 * sigma / np.sqrt(n), key
        assert abs(col[key].std() / sigma - 1) < 0.06, key
    for key in ("lens_phi_rad", "source_phi_rad"):
        assert col[key].min() >= 0 and col[key].max() < np.pi


def test_bad_range_raises():
    with pytest.raises(ValueError, match="theta_e_range"):
        sample_injection(InjectionPriors(), (2.0, 1.0), 1)
    with pytest.raises(ValueError, match="theta_e_range"):
        sample_injection(InjectionPriors(), (0.0, 0.0), 1)
