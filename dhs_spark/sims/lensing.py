"""Singular isothermal ellipsoid (SIE) plus external shear: deflection, ray tracing, Hessian.

Conventions (DESIGN.md §2): angles in arcsec, image x to the right (numpy axis 1), y up (numpy
axis 0), position angles in radians counter-clockwise from +x.

SIE (lenstronomy's convention, ``LensModel/Profiles/sie.py``): in the frame of the lens's major
axis (x' along the major axis, angle ``phi_rad``),

    kappa(x', y') = theta_E / (2 sqrt(q x'^2 + y'^2 / q)),

so that theta_E is the product-averaged (circularised) Einstein radius: the mean convergence
inside the tangential critical curve is 1 and the curve encloses an area pi theta_E^2. ``q`` is
the minor/major axis ratio, valid in (0, 1] (q = 1 is the SIS). lenstronomy's ellipticity is
e1, e2 = (1 - q)/(1 + q) (cos 2 phi, sin 2 phi).

The deflection is Kormann et al. (1994) / Keeton & Kochanek (1998) with zero core. With
b = theta_E sqrt(q) and e = sqrt(1 - q^2), psi = sqrt(q^2 x'^2 + y'^2):

    alpha_x' = b / e * arctan(e x' / psi),    alpha_y' = b / e * arctanh(e y' / psi).

As q -> 1 both become b x'/psi, b y'/psi; ``_atan_over`` and ``_atanh_over`` switch to their
Taylor series when e is small so that q = 1 is exact and q = 0.9999999 loses no digits. At the
centre itself (psi = 0) the deflection is set to 0 (it is direction-dependent there).

External shear has potential (gamma1 (x^2 - y^2) + 2 gamma2 x y) / 2 about the lens centre,
so alpha = (gamma1 x + gamma2 y, gamma2 x - gamma1 y) (lenstronomy's SHEAR with ra_0, dec_0 at
the lens centre).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import numpy as np

# Below this e = sqrt(1 - q^2) the arctan/arctanh ratios use their series: e^6 / 7 < 1e-17.
_SERIES_E = 1e-3


@dataclass(frozen=True)
class SIEShear:
    """An SIE lens plus external shear.

    Attributes:
        theta_e_arcsec: Einstein radius (lenstronomy's product-averaged convention), > 0.
        q: axis ratio minor/major, in (0, 1]; 1 is the SIS.
        phi_rad: major-axis angle, radians counter-clockwise from +x.
        gamma1, gamma2: external shear components (dimensionless), about the lens centre.
        center_x_arcsec, center_y_arcsec: lens centre, arcsec from the stamp centre.
    """

    theta_e_arcsec: float
    q: float = 1.0
    phi_rad: float = 0.0
    gamma1: float = 0.0
    gamma2: float = 0.0
    center_x_arcsec: float = 0.0
    center_y_arcsec: float = 0.0

    def __post_init__(self):
        if not (np.isfinite(self.theta_e_arcsec) and self.theta_e_arcsec >= 0):
            raise ValueError(f"theta_e_arcsec must be finite and >= 0 (got {self.theta_e_arcsec!r})")
        if not (0.0 < self.q <= 1.0):
            raise ValueError(f"lens q must be in (0, 1] (got {self.q!r})")
        for name in ("phi_rad", "gamma1", "gamma2", "center_x_arcsec", "center_y_arcsec"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"lens {name} must be finite (got {getattr(self, name)!r})")

    @classmethod
    def from_dict(cls, lens: Mapping[str, float]) -> SIEShear:
        """Build from the Reference-API dict ``dict(theta_e, q, phi, gamma1, gamma2, center_x, center_y)``."""
        known = {"theta_e", "q", "phi", "gamma1", "gamma2", "center_x", "center_y"}
        unknown = set(lens) - known
        if unknown:
            raise ValueError(f"unknown lens keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        if "theta_e" not in lens:
            raise ValueError("lens dict needs 'theta_e' (arcsec)")
        return cls(
            theta_e_arcsec=float(lens["theta_e"]),
            q=float(lens.get("q", 1.0)),
            phi_rad=float(lens.get("phi", 0.0)),
            gamma1=float(lens.get("gamma1", 0.0)),
            gamma2=float(lens.get("gamma2", 0.0)),
            center_x_arcsec=float(lens.get("center_x", 0.0)),
            center_y_arcsec=float(lens.get("center_y", 0.0)),
        )


LensLike = Union[SIEShear, Mapping[str, float]]


def as_lens(lens: LensLike) -> SIEShear:
    """``lens`` as an :class:`SIEShear` (accepts the Reference-API dict form)."""
    return lens if isinstance(lens, SIEShear) else SIEShear.from_dict(lens)


def _atan_over(e: float, u: np.ndarray) -> np.ndarray:
    """arctan(e u) / e, with the series u (1 - z^2/3 + z^4/5), z = e u, for small e."""
    if e < _SERIES_E:
        z2 = (e * u) ** 2
        return u * (1.0 - z2 / 3.0 + z2 * z2 / 5.0)
    return np.arctan(e * u) / e


def _atanh_over(e: float, v: np.ndarray) -> np.ndarray:
    """arctanh(e v) / e, with the series v (1 + z^2/3 + z^4/5), z = e v, for small e."""
    if e < _SERIES_E:
        z2 = (e * v) ** 2
        return v * (1.0 + z2 / 3.0 + z2 * z2 / 5.0)
    return np.arctanh(e * v) / e


def sie_shear_deflection(x, y, theta_e, q, phi, gamma1=0.0, gamma2=0.0, center_x=0.0, center_y=0.0):
    """Deflection (alpha_x, alpha_y) in arcsec of an SIE + external shear at image positions (x, y).

    Args:
        x, y: image-plane positions, arcsec (arrays of any matching shape, or scalars).
        theta_e: Einstein radius, arcsec (lenstronomy convention, see the module docstring).
        q: axis ratio minor/major in (0, 1].
        phi: major-axis angle, radians counter-clockwise from +x.
        gamma1, gamma2: external shear about the lens centre.
        center_x, center_y: lens centre, arcsec.

    Returns:
        (alpha_x, alpha_y), float64 arrays of the broadcast shape of x and y, arcsec.
    """
    if not (0.0 < q <= 1.0):
        raise ValueError(f"lens q must be in (0, 1] (got {q!r})")
    dx = np.asarray(x, dtype=np.float64) - center_x
    dy = np.asarray(y, dtype=np.float64) - center_y
    cos_p, sin_p = np.cos(phi), np.sin(phi)
    xp = cos_p * dx + sin_p * dy
    yp = -sin_p * dx + cos_p * dy
    psi = np.sqrt(q * q * xp * xp + yp * yp)
    safe = psi > 0.0
    psi_safe = np.where(safe, psi, 1.0)
    e = float(np.sqrt(max(1.0 - q * q, 0.0)))
    b = theta_e * np.sqrt(q)
    ax_p = np.where(safe, b * _atan_over(e, xp / psi_safe), 0.0)
    ay_p = np.where(safe, b * _atanh_over(e, yp / psi_safe), 0.0)
    alpha_x = cos_p * ax_p - sin_p * ay_p + gamma1 * dx + gamma2 * dy
    alpha_y = sin_p * ax_p + cos_p * ay_p + gamma2 * dx - gamma1 * dy
    return alpha_x, alpha_y


def _lens_args(lens: SIEShear) -> tuple:
    return (lens.theta_e_arcsec, lens.q, lens.phi_rad, lens.gamma1, lens.gamma2, lens.center_x_arcsec, lens.center_y_arcsec)


def deflection(x, y, lens: LensLike):
    """(alpha_x, alpha_y) in arcsec of ``lens`` (an :class:`SIEShear` or the Reference-API dict)."""
    return sie_shear_deflection(x, y, *_lens_args(as_lens(lens)))


def ray_trace(x, y, lens: LensLike):
    """Source-plane positions (beta_x, beta_y) = (x, y) - alpha(x, y), arcsec."""
    alpha_x, alpha_y = deflection(x, y, lens)
    return np.asarray(x, dtype=np.float64) - alpha_x, np.asarray(y, dtype=np.float64) - alpha_y


def hessian(x, y, lens: LensLike):
    """Second derivatives of the lensing potential (f_xx, f_xy, f_yy), analytic, dimensionless.

    SIE in its major-axis frame (Keeton & Kochanek 1998, zero core), with
    D = psi (x'^2 + y'^2): f_x'x' = b y'^2 / D, f_y'y' = b x'^2 / D, f_x'y' = -b x' y' / D
    (so kappa = b / (2 psi) and |shear| = kappa), rotated back to the sky frame; external shear
    adds (gamma1, gamma2, -gamma1). At the lens centre the Hessian is singular (inf/NaN there).
    """
    lens = as_lens(lens)
    dx = np.asarray(x, dtype=np.float64) - lens.center_x_arcsec
    dy = np.asarray(y, dtype=np.float64) - lens.center_y_arcsec
    cos_p, sin_p = np.cos(lens.phi_rad), np.sin(lens.phi_rad)
    xp = cos_p * dx + sin_p * dy
    yp = -sin_p * dx + cos_p * dy
    q = lens.q
    b = lens.theta_e_arcsec * np.sqrt(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        psi = np.sqrt(q * q * xp * xp + yp * yp)
        denom = psi * (xp * xp + yp * yp)
        fxx_p = b * yp * yp / denom
        fyy_p = b * xp * xp / denom
        fxy_p = -b * xp * yp / denom
    # rotate the tensor back to the sky frame: H = R H' R^T with R the rotation by +phi
    c2, s2, cs = cos_p * cos_p, sin_p * sin_p, cos_p * sin_p
    f_xx = c2 * fxx_p - 2 * cs * fxy_p + s2 * fyy_p
    f_yy = s2 * fxx_p + 2 * cs * fxy_p + c2 * fyy_p
    f_xy = cs * (fxx_p - fyy_p) + (c2 - s2) * fxy_p
    return f_xx + lens.gamma1, f_xy + lens.gamma2, f_yy - lens.gamma1


def convergence(x, y, lens: LensLike):
    """kappa = (f_xx + f_yy) / 2 (external shear adds none)."""
    f_xx, _, f_yy = hessian(x, y, lens)
    return 0.5 * (f_xx + f_yy)


def magnification(x, y, lens: LensLike):
    """Signed point-source magnification 1 / det(A), A = I - Hessian; negative = parity-flipped image."""
    f_xx, f_xy, f_yy = hessian(x, y, lens)
    return 1.0 / ((1.0 - f_xx) * (1.0 - f_yy) - f_xy * f_xy)
