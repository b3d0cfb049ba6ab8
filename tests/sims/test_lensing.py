"""SIE + shear lensing: against lenstronomy (test-only reference) and analytic SIS/SIE identities."""

from __future__ import annotations

import numpy as np
import pytest

from dhs_spark.sims.lensing import SIEShear, convergence, deflection, hessian, magnification, ray_trace, sie_shear_deflection


def _random_lens(rng):
    q = rng.uniform(0.2, 0.999)
    return dict(
        theta_e=rng.uniform(0.3, 3.0),
        q=q,
        phi=rng.uniform(-np.pi, np.pi),
        gamma1=rng.normal(0, 0.05),
        gamma2=rng.normal(0, 0.05),
        center_x=rng.uniform(-0.5, 0.5),
        center_y=rng.uniform(-0.5, 0.5),
    )


def test_deflection_matches_lenstronomy_sie_shear():
    """Relative error <= 1e-6 of |alpha_ours - alpha_lenstronomy| / |alpha| over random lenses, q in [0.2, 0.999].

    Points near the centre start at r = 1e-3": lenstronomy's SIE is an NIE with a 1e-10" core,
    which alone makes a relative difference ~1e-10/r (1e-7 at 1e-3").
    """
    from lenstronomy.LensModel.lens_model import LensModel

    rng = np.random.default_rng(20240501)
    model = LensModel(["SIE", "SHEAR"])
    for case in range(40):
        p = _random_lens(rng)
        r_near = 10 ** rng.uniform(-3, -1, 200)
        t_near = rng.uniform(0, 2 * np.pi, 200)
        x = np.concatenate([rng.uniform(-9, 9, 800), p["center_x"] + r_near * np.cos(t_near)])
        y = np.concatenate([rng.uniform(-9, 9, 800), p["center_y"] + r_near * np.sin(t_near)])
        e = (1 - p["q"]) / (1 + p["q"])
        kwargs = [
            dict(
                theta_E=p["theta_e"],
                e1=e * np.cos(2 * p["phi"]),
                e2=e * np.sin(2 * p["phi"]),
                center_x=p["center_x"],
                center_y=p["center_y"],
            ),
            dict(gamma1=p["gamma1"], gamma2=p["gamma2"], ra_0=p["center_x"], dec_0=p["center_y"]),
        ]
        ref_x, ref_y = model.alpha(x, y, kwargs)
        ax, ay = sie_shear_deflection(x, y, **p)
        rel = np.hypot(ax - ref_x, ay - ref_y) / np.hypot(ref_x, ref_y)
        assert rel.max() <= 1e-6, f"case {case} {p}: max relative error {rel.max():.2e}"


def test_lens_dict_and_dataclass_agree_and_validate():
    lens = SIEShear(1.2, 0.6, 0.4, 0.03, -0.02, 0.1, -0.1)
    d = dict(theta_e=1.2, q=0.6, phi=0.4, gamma1=0.03, gamma2=-0.02, center_x=0.1, center_y=-0.1)
    x, y = np.meshgrid(np.linspace(-3, 3, 7), np.linspace(-3, 3, 7))
    np.testing.assert_array_equal(deflection(x, y, lens), deflection(x, y, d))
    bx, by = ray_trace(x, y, d)
    ax, ay = deflection(x, y, d)
    np.testing.assert_allclose(bx, x - ax, rtol=0, atol=1e-15)
    np.testing.assert_allclose(by, y - ay, rtol=0, atol=1e-15)
    for bad in (dict(q=0.0), dict(q=1.2), dict(theta_e_arcsec=np.nan)):
        with pytest.raises(ValueError):
            SIEShear(**{**dict(theta_e_arcsec=1.0), **bad})
    with pytest.raises(ValueError, match="unknown lens keys"):
        SIEShear.from_dict(dict(theta_e=1.0, theta_E=1.0))


@pytest.mark.parametrize("q", [1.0, 1 - 1e-9, 1 - 1e-5])
def test_sis_limit_deflection_magnitude_is_theta_e(q):
    """SIS (q -> 1, no shear): |alpha| = theta_E everywhere (analytic); an SIE departs by O(1 - q), hence rtol."""
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-5, 5, (2, 5000))
    ax, ay = sie_shear_deflection(x, y, 1.7, q, 0.3)
    np.testing.assert_allclose(np.hypot(ax, ay), 1.7, rtol=1e-12 + 2 * (1 - q))


def test_deflection_at_exact_centre_is_finite_zero():
    ax, ay = sie_shear_deflection(np.array([0.0]), np.array([0.0]), 1.0, 0.7, 0.2)
    assert ax[0] == 0.0 and ay[0] == 0.0


def test_hessian_matches_finite_differences_and_kappa_formula():
    """Analytic Hessian vs central differences of the deflection (step 1e-6", rtol 1e-6), kappa vs its formula."""
    rng = np.random.default_rng(7)
    h = 1e-6
    for _ in range(10):
        p = _random_lens(rng)
        lens = SIEShear.from_dict(p)
        x, y = rng.uniform(-4, 4, (2, 300))
        axp, ayp = deflection(x + h, y, lens)
        axm, aym = deflection(x - h, y, lens)
        bxp, byp = deflection(x, y + h, lens)
        bxm, bym = deflection(x, y - h, lens)
        f_xx, f_xy, f_yy = hessian(x, y, lens)
        scale = np.abs(f_xx) + np.abs(f_yy) + 1
        assert np.max(np.abs(f_xx - (axp - axm) / (2 * h)) / scale) < 1e-6
        assert np.max(np.abs(f_yy - (byp - bym) / (2 * h)) / scale) < 1e-6
        assert np.max(np.abs(f_xy - (ayp - aym) / (2 * h)) / scale) < 1e-6
        assert np.max(np.abs(f_xy - (bxp - bxm) / (2 * h)) / scale) < 1e-6
        dx, dy = x - p["center_x"], y - p["center_y"]
        xp = np.cos(p["phi"]) * dx + np.sin(p["phi"]) * dy
        yp = -np.sin(p["phi"]) * dx + np.cos(p["phi"]) * dy
        kappa = p["theta_e"] / (2 * np.sqrt(p["q"] * xp**2 + yp**2 / p["q"]))
        np.testing.assert_allclose(convergence(x, y, lens), kappa, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.2, 0.5, 1.1])
def test_sis_point_source_images_and_magnifications(beta):
    """SIS: images at beta + theta_E and beta - theta_E on the source's axis, magnifications 1 +- theta_E / beta."""
    theta_e = 1.3
    lens = SIEShear(theta_e)
    angle = 0.7
    ux, uy = np.cos(angle), np.sin(angle)
    r = np.array([beta + theta_e, beta - theta_e])
    bx, by = ray_trace(r * ux, r * uy, lens)
    np.testing.assert_allclose(bx, beta * ux, atol=1e-12)
    np.testing.assert_allclose(by, beta * uy, atol=1e-12)
    mu = magnification(r * ux, r * uy, lens)
    np.testing.assert_allclose(mu, [1 + theta_e / beta, 1 - theta_e / beta], rtol=1e-10)


@pytest.mark.parametrize("q", [0.2, 0.5, 0.8, 0.999])
def test_sie_tangential_critical_curve_encloses_pi_theta_e_squared(q):
    """det(A) = 0 found by bisection along 720 rays from the centre; polygon area / (pi theta_E^2) = 1 within 1e-3."""
    theta_e, phi = 1.4, 0.6
    lens = SIEShear(theta_e, q, phi)
    t = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    lo = np.full_like(t, 1e-3)
    hi = np.full_like(t, 10.0)

    def det(r):
        f_xx, f_xy, f_yy = hessian(r * np.cos(t), r * np.sin(t), lens)
        return (1 - f_xx) * (1 - f_yy) - f_xy**2

    assert np.all(det(lo) < 0) and np.all(det(hi) > 0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        inside = det(mid) < 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    r = 0.5 * (lo + hi)
    x, y = r * np.cos(t), r * np.sin(t)
    area = 0.5 * np.abs(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    assert abs(area / (np.pi * theta_e**2) - 1) < 1e-3, f"q={q}: area ratio {area / (np.pi * theta_e**2)}"
