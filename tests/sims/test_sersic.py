"""Sersic sources: exact b_n, unit total flux, half-light radius, and lenstronomy's profile shape."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from dhs_spark.sims.sersic import SersicSource, as_source, sersic_b_n


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0, 4.0, 6.0])
def test_b_n_is_exact_half_light_root(n):
    """P(2n, b_n) = 1/2 to 1e-12; and Ciotti & Bertin (1999)'s asymptotic series agrees to 1e-3."""
    b = sersic_b_n(n)
    assert abs(special.gammainc(2 * n, b) - 0.5) < 1e-12
    ciotti = 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n**2)
    assert abs(b - ciotti) < 1e-3, f"n={n}: {b} vs {ciotti}"


@pytest.mark.parametrize("n", [0.5, 1.0, 2.0, 4.0, 6.0])
def test_radial_integral_is_one_and_half_light_at_r_eff(n):
    """integral of I(R) 2 pi R dR (ellipses of radius R have area pi R^2) = 1, and 1/2 inside r_eff (quad, 1e-7)."""
    src = SersicSource(0.0, 0.0, 0.3, n=n, q=0.6, phi_rad=0.2)

    def ring(r):
        return (
            float(
                src.surface_brightness(np.array([r / math.sqrt(src.q) * math.cos(0.2)]), np.array([r / math.sqrt(src.q) * math.sin(0.2)]))[
                    0
                ]
            )
            * 2
            * math.pi
            * r
        )

    total = sum(integrate.quad(ring, a, b, limit=200)[0] for a, b in [(0, 0.3), (0.3, 3), (3, 300), (300, 3e5)])
    inside = integrate.quad(ring, 0, 0.3, limit=200)[0]
    assert abs(total - 1) < 1e-6, f"n={n}: total {total}"
    assert abs(inside - 0.5) < 1e-7, f"n={n}: inside r_eff {inside}"


@pytest.mark.parametrize("n,q", [(0.5, 0.4), (1.0, 0.6), (2.0, 1.0)])
def test_two_dimensional_sum_is_one(n, q):
    """Brute-force 2-D sum over a fine grid (0.005", +-12") of the rotated elliptical profile = 1 within 2e-3."""
    src = SersicSource(0.13, -0.07, 0.4, n=n, q=q, phi_rad=0.9)
    ax = np.arange(-12, 12, 0.005) + 0.0025
    total = 0.0
    for row in np.array_split(ax, 8):  # keep memory small
        x, y = np.meshgrid(ax, row)
        total += src.surface_brightness(x, y).sum() * 0.005**2
    assert abs(total - 1) < 2e-3, f"n={n} q={q}: {total}"


def test_shape_matches_lenstronomy_with_mapped_r_sersic():
    """lenstronomy SERSIC_ELLIPSE with R_sersic = r_eff (b_lens / b_exact)^n is our profile times a constant (rtol 1e-9)."""
    from lenstronomy.LightModel.light_model import LightModel

    rng = np.random.default_rng(3)
    model = LightModel(["SERSIC_ELLIPSE"])
    for n in (0.5, 1.0, 1.7, 4.0):
        src = SersicSource(0.2, -0.1, 0.35, n=n, q=0.55, phi_rad=1.1)
        b_lens = 1.9992 * n - 0.3271
        e = (1 - src.q) / (1 + src.q)
        kw = dict(amp=1.0, R_sersic=src.r_eff_arcsec * (b_lens / src.b_n) ** n, n_sersic=n,
                  e1=e * math.cos(2 * src.phi_rad), e2=e * math.sin(2 * src.phi_rad), center_x=0.2, center_y=-0.1)  # fmt: skip
        x, y = rng.uniform(-2, 2, (2, 500))
        ratio = model.surface_brightness(x, y, [kw]) / src.surface_brightness(x, y)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9, err_msg=f"n={n}")


def test_protocol_and_validation():
    src = as_source(dict(x=0.1, y=0.2, r_eff=0.3, n=1.5, q=0.7, phi=0.4))
    assert src == SersicSource(0.1, 0.2, 0.3, 1.5, 0.7, 0.4)
    assert src.kind == "parametric" and src.ident is None
    for bad in (dict(r_eff_arcsec=0.0), dict(n=0.3), dict(n=7.0), dict(q=0.0), dict(q=1.5)):
        with pytest.raises(ValueError):
            SersicSource(**{**dict(x_arcsec=0.0, y_arcsec=0.0, r_eff_arcsec=0.3), **bad})
    with pytest.raises(ValueError, match="unknown source keys"):
        as_source(dict(r_eff=0.3, R_sersic=0.2))
    with pytest.raises(TypeError):
        as_source(3.0)
