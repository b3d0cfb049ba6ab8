"""Elliptical Sersic sources normalised to total flux 1, and the source protocol.

A *source* is any object with

- ``kind``: ``'parametric'`` or ``'cosmos'``;
- ``ident``: an identifier string (COSMOS ident) or None;
- ``surface_brightness(x_arcsec, y_arcsec) -> ndarray``: surface brightness per arcsec^2 at
  source-plane positions (arcsec, x right = numpy axis 1, y up = numpy axis 0), for the source
  scaled to TOTAL FLUX 1, so its integral over the plane is 1. Renderers multiply by the band
  flux in nanomaggies.

:class:`SersicSource` implements it. The Sersic profile is

    I(R) = I_e exp(-b_n [(R / r_eff)^(1/n) - 1]),   R = sqrt(q x'^2 + y'^2 / q),

with x' along the source's major axis (angle ``phi_rad`` counter-clockwise from +x), q the
minor/major axis ratio (lenstronomy's SERSIC_ELLIPSE radius) and r_eff the true half-light
radius on that elliptical radius: b_n solves P(2n, b_n) = 1/2 exactly (regularised lower
incomplete gamma function), not lenstronomy's approximation 1.9992 n - 0.3271. Ellipses of
constant R have area pi R^2 for any q, so the total flux is

    L = 2 pi n r_eff^2 I_e e^(b_n) b_n^(-2n) Gamma(2n),

and I_e = 1 / that for unit flux.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Optional

import numpy as np

SERSIC_N_RANGE = (0.5, 6.0)


@lru_cache(maxsize=256)
def sersic_b_n(n: float) -> float:
    """Exact b_n for Sersic index n: the root of P(2n, b) = 1/2 (scipy.special.gammaincinv)."""
    from scipy.special import gammaincinv

    return float(gammaincinv(2.0 * n, 0.5))


def sersic_total_flux(i_e: float, r_eff_arcsec: float, n: float) -> float:
    """Total flux of an elliptical Sersic with surface brightness ``i_e`` at the half-light radius."""
    b = sersic_b_n(n)
    return 2.0 * math.pi * n * r_eff_arcsec**2 * i_e * math.exp(b + math.lgamma(2.0 * n) - 2.0 * n * math.log(b))


@dataclass(frozen=True)
class SersicSource:
    """An elliptical Sersic source of total flux 1 (see the module docstring for the formula).

    Attributes:
        x_arcsec, y_arcsec: centre in the source plane, arcsec from the lens-plane origin.
        r_eff_arcsec: half-light radius on R = sqrt(q x'^2 + y'^2/q), arcsec, > 0.
        n: Sersic index in [0.5, 6].
        q: axis ratio minor/major in (0, 1].
        phi_rad: major-axis angle, radians counter-clockwise from +x.
        ident: optional identifier carried into the truth record.
    """

    x_arcsec: float
    y_arcsec: float
    r_eff_arcsec: float
    n: float = 1.0
    q: float = 1.0
    phi_rad: float = 0.0
    ident: Optional[str] = None

    kind = "parametric"

    def __post_init__(self):
        if not (np.isfinite(self.r_eff_arcsec) and self.r_eff_arcsec > 0):
            raise ValueError(f"source r_eff_arcsec must be > 0 (got {self.r_eff_arcsec!r})")
        lo, hi = SERSIC_N_RANGE
        if not (lo <= self.n <= hi):
            raise ValueError(f"Sersic n must be in [{lo}, {hi}] (got {self.n!r})")
        if not (0.0 < self.q <= 1.0):
            raise ValueError(f"source q must be in (0, 1] (got {self.q!r})")
        for name in ("x_arcsec", "y_arcsec", "phi_rad"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"source {name} must be finite (got {getattr(self, name)!r})")

    @classmethod
    def from_dict(cls, source: Mapping[str, float]) -> SersicSource:
        """Build from the Reference-API dict ``dict(x, y, r_eff, n, q, phi)`` (arcsec, radians)."""
        known = {"x", "y", "r_eff", "n", "q", "phi"}
        unknown = set(source) - known
        if unknown:
            raise ValueError(f"unknown source keys {sorted(unknown)}; expected a subset of {sorted(known)}")
        if "r_eff" not in source:
            raise ValueError("source dict needs 'r_eff' (arcsec)")
        return cls(
            x_arcsec=float(source.get("x", 0.0)),
            y_arcsec=float(source.get("y", 0.0)),
            r_eff_arcsec=float(source["r_eff"]),
            n=float(source.get("n", 1.0)),
            q=float(source.get("q", 1.0)),
            phi_rad=float(source.get("phi", 0.0)),
        )

    @property
    def b_n(self) -> float:
        return sersic_b_n(self.n)

    @property
    def i_e(self) -> float:
        """Surface brightness at the half-light radius for total flux 1, per arcsec^2."""
        return 1.0 / sersic_total_flux(1.0, self.r_eff_arcsec, self.n)

    def elliptical_radius(self, x_arcsec, y_arcsec) -> np.ndarray:
        """R = sqrt(q x'^2 + y'^2 / q) in arcsec about the source centre."""
        dx = np.asarray(x_arcsec, dtype=np.float64) - self.x_arcsec
        dy = np.asarray(y_arcsec, dtype=np.float64) - self.y_arcsec
        c, s = math.cos(self.phi_rad), math.sin(self.phi_rad)
        xp = c * dx + s * dy
        yp = -s * dx + c * dy
        return np.sqrt(self.q * xp * xp + yp * yp / self.q)

    def surface_brightness(self, x_arcsec, y_arcsec) -> np.ndarray:
        """Surface brightness per arcsec^2 (total flux 1) at source-plane positions, float64."""
        r = self.elliptical_radius(x_arcsec, y_arcsec)
        b = self.b_n
        return self.i_e * np.exp(-b * ((r / self.r_eff_arcsec) ** (1.0 / self.n) - 1.0))


def as_source(source) -> object:
    """``source`` itself if it follows the source protocol, else a :class:`SersicSource` from the dict form."""
    if hasattr(source, "surface_brightness") and hasattr(source, "kind"):
        return source
    if isinstance(source, Mapping):
        return SersicSource.from_dict(source)
    raise TypeError(f"source must follow the source protocol or be a Sersic dict (got {type(source).__name__})")
