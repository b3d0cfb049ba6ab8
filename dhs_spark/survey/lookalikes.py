"""Lens look-alikes for the mock survey: ring galaxies, blue spiral arms and blue companions
around red bulges, and mergers with tidal features, as PSF-convolved grz images in nanomaggies
on the DR10 pixel grid (0.262"/px).

Why: a lens finder trained on injected arcs around LRGs learns "blue curved light near a red
galaxy". Real galaxies that show exactly that (ring galaxies, spiral arms, star-forming
companions, tidal tails and shells) are the false positives of every DR10 lens search
(DESIGN.md §1 (b)). Offline, the mock survey had none; this module makes them.

Models (all analytic, pure numpy). The project's real HST stamps are not used: the ten COSMOS
F814W stamps (``tests/data/cosmos/cosmos_f814w_10``) and five AEGIS galaxies are single-band or
two-band without g/r/z colours, so they cannot carry the blue-on-red structure that makes these
impostors, and they were not screened for rings or mergers (a possible later addition: a
COSMOS irregular as the knotty light of a ring or tail, coloured as below).

``ring_collisional``
    Collisional ("Cartwheel"-type) ring (Appleton & Struck-Marcell 1996, Fund. Cosmic Phys.
    16, 111): a narrow, knotty, star-forming ring of radius R (1.5-5") and an old nucleus
    displaced from the ring centre by 0.2-0.5 R (off-centre impact; a modelling choice within
    the morphologies ASM96 review, not a fitted distribution), the ring brighter on the
    nucleus side (1 + a cos(theta - theta_nucleus), a = 0.3-0.8), 6-12 compact HII-region knots
    carrying 30-50% of the ring light, and, half of the time, a compact red intruder at 1.6-2.4 R.
``ring_resonance``
    Resonance ring (Buta & Combes 1996, Fund. Cosmic Phys. 17, 95): a red early-type bulge, a
    bar whose half-length is the inner-ring radius (inner rings enclose the bar, at about the
    4:1 ultraharmonic resonance), an inner ring of radius R (1.5-5") with intrinsic axis ratio
    0.81 elongated along the bar (Buta 1995, ApJS 96, 39), a faint exponential disc, and, half
    of the time when it fits (2.2 R <= 7"), an outer ring at 2.2 R (the outer/inner ring ratio
    of Buta & Combes 1996, about the outer Lindblad resonance). Rings are smoother than
    collisional ones (knots 10-20% of the ring light).
``spiral_arms``
    Two logarithmic arms r = r_in exp((theta - theta_0) tan p) (pitch p = 12-25 deg, the Sb-Sc
    range of Kennicutt 1981, AJ 86, 1847) from r_in = 1.2-2" to r_out = 4-6.5" around a red
    bulge, blue, as bright as the bulge within -0.2..+0.8 mag, with HII knots (25% of the arm
    light) and a faint exponential disc (0.8-1.5 mag below the arms). The
    bulge is the mock LRG itself when planted on one (nothing is redrawn), otherwise an
    LRG-like de Vaucouleurs bulge.
``blue_companion``
    1-3 compact star-forming knots (Sersic n = 1, r_e = 0.1-0.35") at 1-3" from an LRG (the
    mock LRG itself, or an LRG-like bulge when standalone), r = 20.5-22.5.
``merger_tidal``
    Two red nuclei 1.5-4" apart (flux ratio 1 to 3) with either two anti-symmetric curved tidal
    tails (Toomre & Toomre 1972, ApJ 178, 623: the prograde-encounter tails leave each galaxy on
    the side away from its companion and curve the same way, point-symmetric about the centre)
    of length 4-8" (0.2-1.2 mag fainter than their nucleus), or 2-4 interleaved shells (Quinn 1984, ApJ 279, 596: sharp-edged arcs on
    alternating sides of the host, radii 1.5-6").

Colours (g-r, r-z, observed frame):

- *red* components (bulges, nuclei, intruders): a real DR10 LRG colour pair. The mock survey
  passes the colours of the real LRG sweep rows it uses (``dr10_lrg_sweep_excerpt``); without
  a pool, a bivariate normal with that excerpt's mean (1.576, 1.256) and covariance
  ((0.193, 0.075), (0.075, 0.127)), clipped to its 5-95% range, stands in
  (:data:`RED_COLOUR_MEAN`).
- *blue* (star-forming) components (rings, arms, knots, companions): uniform in the DESI ELG
  colour box of the south (Raichoor et al. 2023, AJ 165, 126; desitarget ``isELG_colors``:
  r-z > 0.15, g-r < 0.5 (r-z) + 0.1, g-r < -1.2 (r-z) + 1.6, the low-priority edge included)
  restricted to 0.2 <= g-r <= 0.5, the g-r range asked of blue companions.
- *mixed* components (discs, bars, tails, shells): half red and half blue light by r-band flux
  (fluxes added per band); a modelling choice, not a literature number: tidal debris and
  discs hold both the old stars of the parent and young stars.

Magnitudes are in the ranges stated per model (r-band AB, 22.5 - 2.5 log10 flux_nmgy), chosen
so the impostors are as bright as the LRGs of the mock (r = 19.5-22) and their features as
bright as the arcs it injects.

Sersic components are truncated (logistic edge) at 6 r_e (n >= 2), 5 r_e (n = 1) or 4 r_e
(Gaussian knots), as ``mock._render`` confines its objects to a finite box.

Rendering follows ``mock._render``: each component is sampled on an ``oversample`` x
``oversample`` sub-pixel grid and normalised to its own flux there, the sum is convolved in
Fourier space with the brick's Gaussian PSF (FWHM per band), and summed back to pixels, so the
stamp's flux in each band is the requested flux (the stamp is sized so that the PSF-convolved
light leaves less than 1e-3 of it at the border).

Conventions: angles in arcsec, x to the right (numpy axis 1), y up (axis 0), position angles in
radians counter-clockwise from +x; a look-alike's position is its centre (ring centre, bulge or
host centre, the merger's brighter nucleus).

Held-out part: :func:`is_heldout` is a salted hash of the look-alike's id (its type, brick and
position), ~30% held out, so the same object is held out in every build; a held-out look-alike
must never be used in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import ConfigError, InputDataError

log = logging.getLogger(__name__)

PIXSCALE_ARCSEC = 0.262  # DR10 coadd pixel scale (as dhs_spark.survey.bricks)
GAUSS_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
NMGY_ZEROPOINT_MAG = 22.5

LOOKALIKE_TYPES = ("ring_collisional", "ring_resonance", "spiral_arms", "blue_companion", "merger_tidal")
LRG_ATTACHED_TYPES = ("spiral_arms", "blue_companion")  # planted on a mock LRG (its id and position)
HELDOUT_FRACTION = 0.3
HELDOUT_SALT = "dhs-lookalike-heldout-v1"

# Mean and covariance of (g-r, r-z) of the 6,822 rows with positive grz flux in
# tests/data/survey/dr10_lrg_sweep_excerpt.csv.gz (real DR10 LRGs), and their 5-95% range.
RED_COLOUR_MEAN = (1.576, 1.256)
RED_COLOUR_COV = ((0.193, 0.075), (0.075, 0.127))
RED_COLOUR_RANGE = ((0.79, 2.12), (0.73, 1.85))
# Blue (star-forming) colour box: DESI ELG south (Raichoor et al. 2023), g-r restricted to [0.2, 0.5].
BLUE_GR_RANGE = (0.2, 0.5)
BLUE_RZ_RANGE = (0.15, 1.25)

BULGE_R_MAG = (19.5, 21.0)  # standalone LRG-like bulge / host
CATALOGUE_TYPE = {"gz_decals_rings": None, "darg2010_mergers": "merger_tidal"}  # None: a ring, type by hash
COLLISIONAL_RING_SHARE = 0.2  # of catalogue rings drawn as collisional (GZ gives "ring" only)


# --------------------------------------------------------------------------------------------
# colours and fluxes


def flux_grz_from_r(r_mag: float, g_minus_r: float, r_minus_z: float) -> tuple[float, float, float]:
    """(g, r, z) fluxes in nanomaggies of an object with r-band AB magnitude ``r_mag`` and the
    given colours: f_r = 10^((22.5 - r)/2.5), f_g = f_r 10^(-0.4 (g-r)), f_z = f_r 10^(0.4 (r-z))."""
    f_r = 10.0 ** ((NMGY_ZEROPOINT_MAG - r_mag) / 2.5)
    return (f_r * 10.0 ** (-0.4 * g_minus_r), f_r, f_r * 10.0 ** (0.4 * r_minus_z))


def colours_of(flux_grz) -> tuple[float, float]:
    """(g-r, r-z) in AB magnitudes of positive grz fluxes."""
    g, r, z = (float(f) for f in flux_grz)
    return -2.5 * math.log10(g / r), -2.5 * math.log10(r / z)


def in_blue_box(g_minus_r: float, r_minus_z: float) -> bool:
    """True inside the blue (star-forming) colour box of the module docstring."""
    return (
        BLUE_GR_RANGE[0] <= g_minus_r <= BLUE_GR_RANGE[1]
        and r_minus_z > 0.15
        and g_minus_r < 0.5 * r_minus_z + 0.1
        and g_minus_r < -1.2 * r_minus_z + 1.6
    )


def draw_blue_colour(rng: np.random.Generator) -> tuple[float, float]:
    """(g-r, r-z) uniform in the blue box (rejection sampling; the box holds ~25% of the
    enclosing rectangle, so this ends in a few tries)."""
    while True:
        gr = float(rng.uniform(*BLUE_GR_RANGE))
        rz = float(rng.uniform(*BLUE_RZ_RANGE))
        if in_blue_box(gr, rz):
            return gr, rz


def draw_red_colour(rng: np.random.Generator, red_colours: Optional[np.ndarray] = None) -> tuple[float, float]:
    """(g-r, r-z) of an old population: a row of ``red_colours`` ((k, 2) real LRG colours), or
    without one the clipped bivariate normal of :data:`RED_COLOUR_MEAN`."""
    if red_colours is not None and len(red_colours):
        gr, rz = red_colours[int(rng.integers(len(red_colours)))]
        return float(gr), float(rz)
    gr, rz = rng.multivariate_normal(RED_COLOUR_MEAN, RED_COLOUR_COV)
    return float(np.clip(gr, *RED_COLOUR_RANGE[0])), float(np.clip(rz, *RED_COLOUR_RANGE[1]))


def mixed_flux(r_mag: float, red: tuple[float, float], blue: tuple[float, float], red_share_r: float = 0.5) -> tuple[float, float, float]:
    """grz fluxes of a component holding ``red_share_r`` of its r-band light in the red
    population and the rest in the blue one (fluxes add per band)."""
    fr = flux_grz_from_r(r_mag, *red)
    fb = flux_grz_from_r(r_mag, *blue)
    return tuple(red_share_r * a + (1.0 - red_share_r) * b for a, b in zip(fr, fb))


# --------------------------------------------------------------------------------------------
# shapes: unnormalised surface brightness on (dx, dy) arcsec grids


def _rot(dx, dy, phi_rad):
    """Coordinates in a frame whose +x axis is at ``phi_rad`` counter-clockwise from +x."""
    c, s = math.cos(phi_rad), math.sin(phi_rad)
    return c * dx + s * dy, -s * dx + c * dy


def _sersic_bn(n: float) -> float:
    """b_n (Ciotti & Bertin 1999), as ``mock._sersic_bn``."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


@dataclass(frozen=True)
class SersicShape:
    """Sersic profile exp(-b_n ((r/r_e)^(1/n) - 1)), r = sqrt(q x'^2 + y'^2/q) in the frame of
    the major axis at ``phi_rad`` (as ``mock._render``); centre (x_arcsec, y_arcsec). n = 0.5 is
    a Gaussian (compact knots)."""

    x_arcsec: float
    y_arcsec: float
    r_e_arcsec: float
    n: float
    q: float = 1.0
    phi_rad: float = 0.0

    def truncation_r_e(self) -> float:
        """Truncation radius in units of r_e: 6 for n >= 2, 5 for n >= 1 (> 99.8% of an
        exponential's light), 4 for a Gaussian. A de Vaucouleurs profile still holds a few
        per cent beyond 6 r_e; the truncation (like ``mock._render``'s box) keeps the
        look-alike's light, and its requested flux, on a finite box."""
        return 6.0 if self.n >= 2 else 5.0 if self.n >= 1 else 4.0

    def sb(self, dx, dy):
        xr, yr = _rot(dx - self.x_arcsec, dy - self.y_arcsec, self.phi_rad)
        r = np.sqrt(self.q * xr**2 + yr**2 / self.q)
        r_t = self.truncation_r_e() * self.r_e_arcsec
        taper = 1.0 / (1.0 + np.exp(np.clip((r - r_t) / (0.05 * r_t), -50.0, 50.0)))
        return np.exp(-_sersic_bn(self.n) * ((r / self.r_e_arcsec) ** (1.0 / self.n) - 1.0)) * taper

    def reach_arcsec(self) -> float:
        return math.hypot(self.x_arcsec, self.y_arcsec) + 1.15 * self.truncation_r_e() * self.r_e_arcsec / math.sqrt(self.q)


@dataclass(frozen=True)
class RingShape:
    """A thin circular ring of radius ``radius_arcsec`` seen with axis ratio ``q`` (major axis
    at ``phi_rad``): rho = sqrt(x'^2 + (y'/q)^2) is the radius in the ring's plane and
    sb = exp(-(rho - R)^2 / (2 w^2)) (1 + a cos(theta - theta_a)), theta the in-plane azimuth."""

    x_arcsec: float
    y_arcsec: float
    radius_arcsec: float
    width_arcsec: float
    q: float = 1.0
    phi_rad: float = 0.0
    asym_amp: float = 0.0
    asym_theta_rad: float = 0.0

    def sb(self, dx, dy):
        xr, yr = _rot(dx - self.x_arcsec, dy - self.y_arcsec, self.phi_rad)
        yp = yr / self.q
        rho = np.hypot(xr, yp)
        theta = np.arctan2(yp, xr)
        return np.exp(-0.5 * ((rho - self.radius_arcsec) / self.width_arcsec) ** 2) * (1.0 + self.asym_amp * np.cos(theta - self.asym_theta_rad))

    def reach_arcsec(self) -> float:
        return math.hypot(self.x_arcsec, self.y_arcsec) + self.radius_arcsec + 4.0 * self.width_arcsec

    def point_at(self, theta_rad: float, radius_arcsec: Optional[float] = None) -> tuple[float, float]:
        """Sky offset (arcsec) of the in-plane point at azimuth ``theta_rad`` on the ring."""
        r = self.radius_arcsec if radius_arcsec is None else radius_arcsec
        xr, yr = r * math.cos(theta_rad), self.q * r * math.sin(theta_rad)
        c, s = math.cos(self.phi_rad), math.sin(self.phi_rad)
        return self.x_arcsec + c * xr - s * yr, self.y_arcsec + s * xr + c * yr


@dataclass(frozen=True)
class SpiralShape:
    """``n_arms`` logarithmic arms r = r_in exp((theta - phase) tan(pitch)) in a disc seen with
    axis ratio ``q`` (major axis at ``phi_rad``). sb = exp(-d^2/(2 w^2)) exp(-r/h) T(r), with d
    = r |dtheta| sin(pitch) the distance to the nearest arm (dtheta wrapped to +-pi/n_arms) and
    T a soft taper to zero inside r_in and outside r_out (0.2" and 0.3" logistic edges).
    ``chirality`` +1 winds counter-clockwise outwards, -1 clockwise."""

    r_in_arcsec: float
    r_out_arcsec: float
    pitch_rad: float
    phase_rad: float
    width_arcsec: float
    scale_arcsec: float
    n_arms: int = 2
    chirality: int = 1
    q: float = 1.0
    phi_rad: float = 0.0

    def sb(self, dx, dy):
        xr, yr = _rot(dx, dy, self.phi_rad)
        yp = yr / self.q
        r = np.maximum(np.hypot(xr, yp), 1e-6)
        theta = self.chirality * np.arctan2(yp, xr)
        theta_arm = self.phase_rad + np.log(r / self.r_in_arcsec) / math.tan(self.pitch_rad)
        period = 2.0 * math.pi / self.n_arms
        dth = np.mod(theta - theta_arm + period / 2.0, period) - period / 2.0
        d = r * np.abs(dth) * math.sin(self.pitch_rad)
        taper = 1.0 / (1.0 + np.exp(-(r - self.r_in_arcsec) / 0.2)) / (1.0 + np.exp((r - self.r_out_arcsec) / 0.3))
        return np.exp(-0.5 * (d / self.width_arcsec) ** 2) * np.exp(-r / self.scale_arcsec) * taper

    def reach_arcsec(self) -> float:
        return self.r_out_arcsec + 1.5

    def point_at(self, t: float, arm: int = 0) -> tuple[float, float]:
        """Sky offset (arcsec) of the arm point at fractional position ``t`` in [0, 1] from r_in to r_out."""
        r = self.r_in_arcsec * (self.r_out_arcsec / self.r_in_arcsec) ** t
        theta = self.chirality * (self.phase_rad + arm * 2.0 * math.pi / self.n_arms + math.log(r / self.r_in_arcsec) / math.tan(self.pitch_rad))
        xr, yr = r * math.cos(theta), self.q * r * math.sin(theta)
        c, s = math.cos(self.phi_rad), math.sin(self.phi_rad)
        return c * xr - s * yr, s * xr + c * yr


@dataclass(frozen=True)
class ArcShape:
    """A tidal tail: a ribbon along a circular arc that starts at (x0, y0) heading along
    ``heading_rad`` and curves with radius ``curvature_radius_arcsec`` (``turn`` +1 to the left,
    -1 to the right) for ``length_arcsec``. sb = exp(-e^2/(2 w(s)^2)) / w(s) exp(-s/L) T(s),
    e the distance across the arc, s the arc length from the start, w(s) = w0 + (w1 - w0) s/S,
    L = ``decay_arcsec``, T a 0.3" logistic end taper."""

    x0_arcsec: float
    y0_arcsec: float
    heading_rad: float
    curvature_radius_arcsec: float
    turn: int
    length_arcsec: float
    width0_arcsec: float
    width1_arcsec: float
    decay_arcsec: float

    def _centre(self):
        ux, uy = math.cos(self.heading_rad), math.sin(self.heading_rad)
        rc, t = self.curvature_radius_arcsec, self.turn
        return self.x0_arcsec - t * rc * uy, self.y0_arcsec + t * rc * ux  # centre to the left (t=+1) of the heading

    def sb(self, dx, dy):
        cx, cy = self._centre()
        rc = self.curvature_radius_arcsec
        rho = np.hypot(dx - cx, dy - cy)
        alpha = np.arctan2(dy - cy, dx - cx)
        alpha0 = math.atan2(self.y0_arcsec - cy, self.x0_arcsec - cx)
        s = np.mod(self.turn * (alpha - alpha0), 2.0 * math.pi) * rc
        w = self.width0_arcsec + (self.width1_arcsec - self.width0_arcsec) * np.clip(s / self.length_arcsec, 0.0, 1.0)
        on = np.exp(-0.5 * ((rho - rc) / w) ** 2) / w
        return on * np.exp(-s / self.decay_arcsec) / (1.0 + np.exp((s - self.length_arcsec) / 0.3))

    def reach_arcsec(self) -> float:
        return math.hypot(self.x0_arcsec, self.y0_arcsec) + self.length_arcsec + 3.0 * self.width1_arcsec

    def point_at(self, t: float) -> tuple[float, float]:
        """Sky offset (arcsec) of the point at fraction ``t`` of the tail's length."""
        cx, cy = self._centre()
        alpha0 = math.atan2(self.y0_arcsec - cy, self.x0_arcsec - cx)
        a = alpha0 + self.turn * t * self.length_arcsec / self.curvature_radius_arcsec
        return cx + self.curvature_radius_arcsec * math.cos(a), cy + self.curvature_radius_arcsec * math.sin(a)


@dataclass(frozen=True)
class ShellShape:
    """A stellar shell: an arc of radius ``radius_arcsec`` about (x, y), opening ``open_rad``
    (Gaussian angular window of FWHM ``open_rad`` about ``direction_rad``), with a sharp outer
    edge (0.05" Gaussian) and light falling inwards as exp(-(R - rho)/t), t = ``thickness_arcsec``
    (edge-brightened like a projected thin shell)."""

    x_arcsec: float
    y_arcsec: float
    radius_arcsec: float
    thickness_arcsec: float
    direction_rad: float
    open_rad: float

    def sb(self, dx, dy):
        rx, ry = dx - self.x_arcsec, dy - self.y_arcsec
        rho = np.hypot(rx, ry)
        dth = np.mod(np.arctan2(ry, rx) - self.direction_rad + math.pi, 2.0 * math.pi) - math.pi
        window = np.exp(-0.5 * (dth / (self.open_rad / GAUSS_FWHM_PER_SIGMA)) ** 2)
        radial = np.where(rho <= self.radius_arcsec, np.exp(-(self.radius_arcsec - rho) / self.thickness_arcsec), np.exp(-0.5 * ((rho - self.radius_arcsec) / 0.05) ** 2))
        return radial * window

    def reach_arcsec(self) -> float:
        return math.hypot(self.x_arcsec, self.y_arcsec) + self.radius_arcsec + 0.5


Shape = Union[SersicShape, RingShape, SpiralShape, ArcShape, ShellShape]


@dataclass(frozen=True)
class Component:
    """One part of a look-alike: a shape (offsets in arcsec from the look-alike's position) and
    its total grz flux in nanomaggies. ``role`` names it (nucleus, ring, knot, arm, ...)."""

    role: str
    shape: Shape
    flux_grz_nmgy: tuple[float, float, float]


@dataclass(frozen=True)
class Lookalike:
    """A look-alike: its type tag, components, the parameters it was drawn with (name -> number,
    units in the names), and the radius (arcsec) that holds its light before the PSF."""

    lookalike_type: str
    components: tuple[Component, ...]
    params: tuple[tuple[str, float], ...]
    extent_arcsec: float

    def __post_init__(self):
        if self.lookalike_type not in LOOKALIKE_TYPES:
            raise ConfigError("lookalike_type", f"must be one of {LOOKALIKE_TYPES}", self.lookalike_type)

    @property
    def flux_nmgy(self) -> np.ndarray:
        """Total (g, r, z) flux in nanomaggies: the sum of the components' fluxes."""
        return np.sum([c.flux_grz_nmgy for c in self.components], axis=0)

    def params_dict(self) -> dict:
        return dict(self.params)

    def component_flux(self, role: str) -> np.ndarray:
        """(g, r, z) flux of the components with ``role``."""
        return np.sum([c.flux_grz_nmgy for c in self.components if c.role == role], axis=0)

    def to_json(self) -> str:
        """The whole look-alike as JSON (type, extent, parameters, every component's shape and
        flux): :func:`lookalike_from_json` rebuilds it exactly, so a planted look-alike can be
        re-rendered from its catalogue row."""
        comps = [{"role": c.role, "shape": type(c.shape).__name__, "fields": dataclasses.asdict(c.shape), "flux_grz_nmgy": list(c.flux_grz_nmgy)} for c in self.components]
        return json.dumps({"lookalike_type": self.lookalike_type, "extent_arcsec": self.extent_arcsec, "params": dict(self.params), "components": comps}, sort_keys=True)


_SHAPES = {cls.__name__: cls for cls in (SersicShape, RingShape, SpiralShape, ArcShape, ShellShape)}


def lookalike_from_json(text: str) -> Lookalike:
    """The :class:`Lookalike` written by :meth:`Lookalike.to_json` (floats round-trip exactly)."""
    d = json.loads(text)
    comps = tuple(Component(c["role"], _SHAPES[c["shape"]](**c["fields"]), tuple(float(f) for f in c["flux_grz_nmgy"])) for c in d["components"])
    return Lookalike(d["lookalike_type"], comps, tuple(sorted((k, float(v)) for k, v in d["params"].items())), float(d["extent_arcsec"]))


@dataclass(frozen=True)
class Host:
    """The LRG an attached look-alike (spiral arms, blue companion) sits on: its Sersic shape
    (half-light radius in arcsec, axis ratio, position angle in radians ccw from +x) and grz flux
    in nanomaggies. Its light is already in the image and is not drawn again."""

    r_e_arcsec: float
    q: float
    phi_rad: float
    flux_grz_nmgy: tuple[float, float, float]
    objid: int = -1


# --------------------------------------------------------------------------------------------
# models


class _Params:
    """Collects drawn parameters; ``overrides`` replace a drawn value after the draw, so the
    random stream does not depend on which parameters are overridden."""

    def __init__(self, overrides: Optional[dict]):
        self.overrides = dict(overrides or {})
        self.values: dict[str, float] = {}

    def __call__(self, name: str, value):
        v = self.overrides.pop(name, value)
        self.values[name] = v
        return v

    def check_used(self, lookalike_type: str):
        if self.overrides:
            raise ConfigError("overrides", f"unknown parameter(s) for {lookalike_type}: {sorted(self.overrides)}; known: {sorted(self.values)}", sorted(self.overrides))


def _mag(f_r: float) -> float:
    return NMGY_ZEROPOINT_MAG - 2.5 * math.log10(f_r)


def _bulge(p: _Params, rng, red_colours, host: Optional[Host]) -> tuple[list[Component], float, float, float, float]:
    """The red LRG-like bulge (or the host's shape when attached): (components, r_e, q, phi, r_mag)."""
    r_e = p("bulge_r_e_arcsec", float(rng.uniform(0.6, 1.2)))
    q = p("bulge_q", float(rng.uniform(0.6, 1.0)))
    phi = p("bulge_phi_rad", float(rng.uniform(0.0, math.pi)))
    r_mag = p("bulge_r_mag", float(rng.uniform(*BULGE_R_MAG)))
    gr, rz = draw_red_colour(rng, red_colours)
    gr, rz = p("bulge_g_minus_r", gr), p("bulge_r_minus_z", rz)
    if host is not None:  # attached: the LRG is the bulge; record its shape, draw nothing
        p.values.update(bulge_r_e_arcsec=host.r_e_arcsec, bulge_q=host.q, bulge_phi_rad=host.phi_rad, host_objid=host.objid)
        f = host.flux_grz_nmgy
        p.values.update(bulge_r_mag=_mag(f[1]), bulge_g_minus_r=colours_of(f)[0], bulge_r_minus_z=colours_of(f)[1])
        return [], host.r_e_arcsec, host.q, host.phi_rad, _mag(f[1])
    comp = Component("bulge", SersicShape(0.0, 0.0, r_e, 4.0, q, phi), flux_grz_from_r(r_mag, gr, rz))
    return [comp], r_e, q, phi, r_mag


def _ring_collisional(p: _Params, rng, red_colours, host) -> list[Component]:
    R = p("radius_arcsec", float(rng.uniform(1.5, 5.0)))
    q = p("q", float(rng.uniform(0.55, 1.0)))
    phi = p("phi_rad", float(rng.uniform(0.0, math.pi)))
    width = p("width_arcsec", float(rng.uniform(0.08, 0.15)) * R)
    off_frac = p("nucleus_offset_frac", float(rng.uniform(0.2, 0.5)))
    off_theta = p("nucleus_theta_rad", float(rng.uniform(0.0, 2 * math.pi)))
    asym = p("asym_amp", float(rng.uniform(0.3, 0.8)))
    ring_r = p("ring_r_mag", float(rng.uniform(19.8, 21.3)))
    ring_gr, ring_rz = draw_blue_colour(rng)
    ring_gr, ring_rz = p("ring_g_minus_r", ring_gr), p("ring_r_minus_z", ring_rz)
    nuc_r = p("nucleus_r_mag", ring_r + float(rng.uniform(-0.3, 1.2)))
    nuc_re = p("nucleus_r_e_arcsec", float(rng.uniform(0.25, 0.5)))
    nuc_gr, nuc_rz = draw_red_colour(rng, red_colours)
    nuc_gr, nuc_rz = p("nucleus_g_minus_r", nuc_gr), p("nucleus_r_minus_z", nuc_rz)
    n_knots = int(p("n_knots", int(rng.integers(6, 13))))
    knot_frac = p("knot_frac", float(rng.uniform(0.3, 0.5)))
    knot_theta = rng.uniform(0.0, 2 * math.pi, size=max(n_knots, 1))
    knot_w = rng.uniform(0.5, 1.5, size=max(n_knots, 1))
    knot_sigma = rng.uniform(0.1, 0.25, size=max(n_knots, 1))
    intruder = int(p("intruder", int(rng.uniform() < 0.5)))
    intr_d = p("intruder_dist_frac", float(rng.uniform(1.6, 2.4)))
    intr_theta = p("intruder_theta_rad", float(rng.uniform(0.0, 2 * math.pi)))
    intr_r = p("intruder_r_mag", nuc_r + float(rng.uniform(0.3, 1.2)))
    intr_gr, intr_rz = draw_red_colour(rng, red_colours)

    ring_shape = RingShape(0.0, 0.0, R, width, q, phi, asym, off_theta)
    nx, ny = ring_shape.point_at(off_theta, off_frac * R)
    ring_flux = np.array(flux_grz_from_r(ring_r, ring_gr, ring_rz))
    comps = [
        Component("nucleus", SersicShape(nx, ny, nuc_re, 2.0, 0.85, phi), flux_grz_from_r(nuc_r, nuc_gr, nuc_rz)),
        Component("ring", ring_shape, tuple((1.0 - knot_frac) * ring_flux)),
    ]
    if n_knots > 0:
        # knots favour the bright (nucleus) side: accept azimuths with probability ~ (1 + a cos)
        w = knot_w[:n_knots] * (1.0 + asym * np.cos(knot_theta[:n_knots] - off_theta))
        w = w / w.sum()
        for th, wk, sg in zip(knot_theta[:n_knots], w, knot_sigma[:n_knots]):
            kx, ky = ring_shape.point_at(float(th))
            comps.append(Component("knot", SersicShape(kx, ky, float(sg), 0.5), tuple(knot_frac * wk * ring_flux)))
    if intruder:
        ix, iy = intr_d * R * math.cos(intr_theta), intr_d * R * math.sin(intr_theta)
        comps.append(Component("intruder", SersicShape(ix, iy, 0.3, 2.0, 0.8, phi), flux_grz_from_r(intr_r, intr_gr, intr_rz)))
    return comps


def _ring_resonance(p: _Params, rng, red_colours, host) -> list[Component]:
    comps, _r_e, _q_b, _phi_b, bulge_r = _bulge(p, rng, red_colours, None)
    R = p("radius_arcsec", float(rng.uniform(1.5, 5.0)))
    q_inc = p("q", float(rng.uniform(0.6, 1.0)))  # projection of the disc plane
    bar_phi = p("bar_phi_rad", float(rng.uniform(0.0, math.pi)))
    width = p("width_arcsec", float(rng.uniform(0.05, 0.1)) * R + 0.05)
    ring_r = p("ring_r_mag", bulge_r + float(rng.uniform(-0.3, 0.7)))
    ring_gr, ring_rz = draw_blue_colour(rng)
    ring_gr, ring_rz = p("ring_g_minus_r", ring_gr), p("ring_r_minus_z", ring_rz)
    red_gr, red_rz = p.values["bulge_g_minus_r"], p.values["bulge_r_minus_z"]
    bar_r = p("bar_r_mag", bulge_r + float(rng.uniform(1.0, 2.0)))
    disc_r = p("disc_r_mag", bulge_r + float(rng.uniform(1.2, 2.0)))
    outer = int(p("outer_ring", int(rng.uniform() < 0.5 and 2.2 * R <= 7.0)))
    outer_r = p("outer_ring_r_mag", ring_r + float(rng.uniform(0.3, 1.0)))
    knot_frac = p("knot_frac", float(rng.uniform(0.1, 0.2)))
    n_knots = int(p("n_knots", int(rng.integers(4, 9))))
    knot_theta = rng.uniform(0.0, 2 * math.pi, size=max(n_knots, 1))
    knot_sigma = rng.uniform(0.1, 0.2, size=max(n_knots, 1))
    # The bar sits in the disc plane; its sky shape follows from the projection (approximated by
    # a Gaussian bar of axis ratio 0.25 in the plane, projected along the disc's major axis phi).
    # Intrinsic inner-ring axis ratio 0.81 along the bar (Buta 1995); for simplicity the ring's
    # sky axis ratio is q_inc * 0.81 with its major axis along the bar's sky direction.
    red = (red_gr, red_rz)
    blue = (ring_gr, ring_rz)
    ring_shape = RingShape(0.0, 0.0, R, width, q_inc * 0.81, bar_phi)
    ring_flux = np.array(flux_grz_from_r(ring_r, *blue))
    comps.append(Component("ring", ring_shape, tuple((1.0 - knot_frac) * ring_flux)))
    for th, sg in zip(knot_theta[:n_knots], knot_sigma[:n_knots]):
        kx, ky = ring_shape.point_at(float(th))
        comps.append(Component("knot", SersicShape(kx, ky, float(sg), 0.5), tuple(knot_frac / n_knots * ring_flux)))
    # bar: half-length ~ R (enclosed by the inner ring); Sersic n = 0.5 with r_e = 0.55 R along the bar
    comps.append(Component("bar", SersicShape(0.0, 0.0, 0.55 * R, 0.5, 0.25 * (0.5 + 0.5 * q_inc), bar_phi), mixed_flux(bar_r, red, blue, 0.8)))
    comps.append(Component("disc", SersicShape(0.0, 0.0, 0.9 * R, 1.0, q_inc, bar_phi), mixed_flux(disc_r, red, blue, 0.5)))
    if outer:
        comps.append(Component("outer_ring", RingShape(0.0, 0.0, 2.2 * R, 1.5 * width, q_inc * 0.82, bar_phi), flux_grz_from_r(outer_r, *blue)))
    return comps


def _spiral_arms(p: _Params, rng, red_colours, host) -> list[Component]:
    comps, r_e, q_b, phi_b, bulge_r = _bulge(p, rng, red_colours, host)
    pitch_deg = p("pitch_deg", float(rng.uniform(12.0, 25.0)))
    r_in = p("r_in_arcsec", float(rng.uniform(1.2, 2.0)))
    r_out = p("r_out_arcsec", float(rng.uniform(4.0, 6.5)))
    phase = p("phase_rad", float(rng.uniform(0.0, 2 * math.pi)))
    chir = int(p("chirality", int(rng.choice([-1, 1]))))
    q = p("q", float(rng.uniform(0.55, 1.0)))
    phi = p("phi_rad", float(rng.uniform(0.0, math.pi)))
    width = p("arm_width_arcsec", float(rng.uniform(0.22, 0.38)))
    arm_r = p("arm_r_mag", bulge_r + float(rng.uniform(-0.2, 0.8)))
    gr, rz = draw_blue_colour(rng)
    gr, rz = p("arm_g_minus_r", gr), p("arm_r_minus_z", rz)
    disc_r = p("disc_r_mag", arm_r + float(rng.uniform(0.8, 1.5)))
    knot_frac = p("knot_frac", 0.25)
    n_knots = int(p("n_knots", int(rng.integers(5, 11))))
    knot_t = rng.uniform(0.1, 0.9, size=max(n_knots, 1))
    knot_arm = rng.integers(0, 2, size=max(n_knots, 1))
    knot_sigma = rng.uniform(0.1, 0.2, size=max(n_knots, 1))
    red = (p.values["bulge_g_minus_r"], p.values["bulge_r_minus_z"])
    arms = SpiralShape(r_in, r_out, math.radians(pitch_deg), phase, width, r_out, 2, chir, q, phi)
    arm_flux = np.array(flux_grz_from_r(arm_r, gr, rz))
    comps.append(Component("arm", arms, tuple((1.0 - knot_frac) * arm_flux)))
    for t, a, sg in zip(knot_t[:n_knots], knot_arm[:n_knots], knot_sigma[:n_knots]):
        kx, ky = arms.point_at(float(t), int(a))
        comps.append(Component("knot", SersicShape(kx, ky, float(sg), 0.5), tuple(knot_frac / n_knots * arm_flux)))
    comps.append(Component("disc", SersicShape(0.0, 0.0, 0.45 * r_out, 1.0, q, phi), mixed_flux(disc_r, red, (gr, rz), 0.5)))
    return comps


def _blue_companion(p: _Params, rng, red_colours, host) -> list[Component]:
    comps, *_ = _bulge(p, rng, red_colours, host)
    n = int(p("n_companions", int(rng.integers(1, 4))))
    gr, rz = draw_blue_colour(rng)
    gr, rz = p("companion_g_minus_r", gr), p("companion_r_minus_z", rz)
    seps = rng.uniform(1.0, 3.0, size=3)
    thetas = rng.uniform(0.0, 2 * math.pi, size=3)
    r_mags = rng.uniform(20.5, 22.5, size=3)
    r_es = rng.uniform(0.1, 0.35, size=3)
    for i in range(n):
        sep = p(f"separation_arcsec_{i}", float(seps[i]))
        th = p(f"theta_rad_{i}", float(thetas[i]))
        rm = p(f"companion_r_mag_{i}", float(r_mags[i]))
        re_ = p(f"companion_r_e_arcsec_{i}", float(r_es[i]))
        comps.append(Component("companion", SersicShape(sep * math.cos(th), sep * math.sin(th), re_, 1.0), flux_grz_from_r(rm, gr, rz)))
    p.values["separation_arcsec"] = p.values["separation_arcsec_0"]
    return comps


def _merger_tidal(p: _Params, rng, red_colours, host) -> list[Component]:
    sep = p("separation_arcsec", float(rng.uniform(1.5, 4.0)))
    pa = p("pair_pa_rad", float(rng.uniform(0.0, 2 * math.pi)))
    r_a = p("nucleus_a_r_mag", float(rng.uniform(19.5, 21.0)))
    r_b = p("nucleus_b_r_mag", r_a + float(rng.uniform(0.0, 1.2)))
    re_a = p("nucleus_a_r_e_arcsec", float(rng.uniform(0.4, 0.9)))
    re_b = p("nucleus_b_r_e_arcsec", float(rng.uniform(0.3, 0.7)))
    col_a = draw_red_colour(rng, red_colours)
    col_b = draw_red_colour(rng, red_colours)
    p("nucleus_a_g_minus_r", col_a[0])
    p("nucleus_a_r_minus_z", col_a[1])
    blue = draw_blue_colour(rng)
    p("debris_blue_g_minus_r", blue[0])
    p("debris_blue_r_minus_z", blue[1])
    shells = int(p("shells", int(rng.uniform() < 0.3)))
    turn = int(p("turn", int(rng.choice([-1, 1]))))
    tail_len = p("tail_length_arcsec", float(rng.uniform(4.0, 8.0)))
    tail_rc = p("tail_curvature_radius_arcsec", float(rng.uniform(2.0, 5.0)))
    tail_dr = p("tail_r_mag_below_nucleus", float(rng.uniform(0.2, 1.2)))
    tail_w = p("tail_width_arcsec", float(rng.uniform(0.3, 0.55)))
    n_shells = int(p("n_shells", int(rng.integers(2, 5))))
    shell_radii = np.sort(rng.uniform(1.5, 6.0, size=4))
    shell_open = rng.uniform(1.6, 2.4, size=4)
    # nucleus A at the position, B at sep along pa
    bx, by = sep * math.cos(pa), sep * math.sin(pa)
    comps = [
        Component("nucleus", SersicShape(0.0, 0.0, re_a, 4.0, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, math.pi))), flux_grz_from_r(r_a, *col_a)),
        Component("nucleus", SersicShape(bx, by, re_b, 3.0, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0, math.pi))), flux_grz_from_r(r_b, *col_b)),
    ]
    if not shells:
        # each tail leaves its galaxy on the side away from the companion, 30-60 deg off the pair axis,
        # both turning the same way: the pair is point-symmetric (Toomre & Toomre 1972)
        off = float(rng.uniform(math.radians(30), math.radians(60)))
        for (x0, y0, head, r_nuc) in ((0.0, 0.0, pa + math.pi + turn * off, r_a), (bx, by, pa + turn * off, r_b)):
            comps.append(Component("tail", ArcShape(x0, y0, head, tail_rc, turn, tail_len, tail_w, 1.6 * tail_w, tail_len), mixed_flux(r_nuc + tail_dr, col_a, blue, 0.5)))
    else:
        # interleaved shells about nucleus A, alternating sides along the pair axis (Quinn 1984)
        for k in range(n_shells):
            direction = pa + (0.0 if k % 2 == 0 else math.pi)
            rs = float(shell_radii[4 - n_shells + k])
            comps.append(Component("shell", ShellShape(0.0, 0.0, rs, 0.35 + 0.1 * rs, direction, float(shell_open[k])), mixed_flux(r_a + tail_dr + 0.2 * k, col_a, blue, 0.6)))
    return comps


_MODELS = {
    "ring_collisional": _ring_collisional,
    "ring_resonance": _ring_resonance,
    "spiral_arms": _spiral_arms,
    "blue_companion": _blue_companion,
    "merger_tidal": _merger_tidal,
}


def draw_lookalike(
    lookalike_type: str,
    seed: int,
    red_colours: Optional[np.ndarray] = None,
    host: Optional[Host] = None,
    overrides: Optional[dict] = None,
) -> Lookalike:
    """Draw a look-alike of ``lookalike_type`` (one of :data:`LOOKALIKE_TYPES`) from its model
    (module docstring) with the 64-bit ``seed``: same seed, same look-alike.

    ``red_colours``: optional (k, 2) array of real (g-r, r-z) pairs for the red components.
    ``host``: for ``spiral_arms`` and ``blue_companion``, the LRG they sit on (its light is not
    drawn; its shape orients nothing but is recorded); ignored by the other types.
    ``overrides``: parameter name -> value to fix (e.g. ``{"radius_arcsec": 3.0, "q": 1.0}``);
    an unknown name raises ``ConfigError``. The random stream is drawn in full either way.
    """
    if lookalike_type not in _MODELS:
        raise ConfigError("lookalike_type", f"must be one of {LOOKALIKE_TYPES}", lookalike_type)
    rng = rng_from_seed(stable_hash64("lookalike", lookalike_type, int(seed)))
    p = _Params(overrides)
    comps = _MODELS[lookalike_type](p, rng, red_colours, host if lookalike_type in LRG_ATTACHED_TYPES else None)
    p.check_used(lookalike_type)
    if not comps:
        raise InputDataError(f"{lookalike_type}: no component to draw")
    for c in comps:
        if not all(np.isfinite(c.flux_grz_nmgy)) or min(c.flux_grz_nmgy) < 0:
            raise InputDataError(f"{lookalike_type}: component {c.role} has flux {c.flux_grz_nmgy}")
    extent = max(c.shape.reach_arcsec() for c in comps)
    params = tuple(sorted((k, float(v)) for k, v in p.values.items()))
    return Lookalike(lookalike_type, tuple(comps), params, float(extent))


# --------------------------------------------------------------------------------------------
# rendering


def stamp_half_pix(la: Lookalike, fwhm_grz_arcsec) -> int:
    """Half-size (pixels) of the box that holds ``la`` convolved with the widest PSF."""
    return int(math.ceil((la.extent_arcsec + 2.5 * max(fwhm_grz_arcsec)) / PIXSCALE_ARCSEC)) + 2


def render_lookalike(
    la: Lookalike,
    x_pix: float,
    y_pix: float,
    fwhm_grz_arcsec,
    oversample: int = 3,
    half_pix: Optional[int] = None,
) -> tuple[np.ndarray, int, int]:
    """(stamp, x0, y0): ``la`` centred at 0-based pixel (x_pix, y_pix), convolved per band with a
    Gaussian PSF of FWHM ``fwhm_grz_arcsec`` (g, r, z), on a (3, 2 half + 1, 2 half + 1) float64
    array in nanomaggies per pixel whose lower-left pixel is (x0, y0) (``mock._render``'s box).

    Each component is sampled at ``oversample`` x ``oversample`` sub-pixels (3: 0.087", a third
    of the smallest knot's 0.1" half-light radius after the PSF; 5 cost 2.8x more, 70 s of the
    demo's 224 look-alikes, for no visible change) and normalised to
    its flux there; the sum is convolved with the exact Gaussian transfer function (FFT,
    circular, so flux is conserved on the box) and summed back to pixels. The default box
    (:func:`stamp_half_pix`) leaves < 1e-3 of the light at the border.
    """
    fwhm = [float(f) for f in fwhm_grz_arcsec]
    if len(fwhm) != 3 or min(fwhm) <= 0:
        raise ConfigError("fwhm_grz_arcsec", "needs three positive PSF FWHMs (g, r, z) in arcsec", fwhm_grz_arcsec)
    half = stamp_half_pix(la, fwhm) if half_pix is None else int(half_pix)
    ix, iy = int(math.floor(x_pix + 0.5)), int(math.floor(y_pix + 0.5))
    npix, os_ = 2 * half + 1, int(oversample)
    sub = (np.arange(npix * os_) + 0.5) / os_ - 0.5 - half
    dx = ((sub - (x_pix - ix)) * PIXSCALE_ARCSEC)[None, :]
    dy = ((sub - (y_pix - iy)) * PIXSCALE_ARCSEC)[:, None]
    model = np.zeros((3, npix * os_, npix * os_))
    for comp in la.components:
        sb = comp.shape.sb(dx, dy)
        total = float(sb.sum())
        if not np.isfinite(total) or total <= 0:
            raise InputDataError(f"{la.lookalike_type}: component {comp.role} has no light on the {npix}-px box (shape {comp.shape})")
        sb = sb / total
        for k in range(3):
            if comp.flux_grz_nmgy[k] != 0.0:
                model[k] += comp.flux_grz_nmgy[k] * sb
    ky = np.fft.fftfreq(model.shape[1])[:, None]
    kx = np.fft.rfftfreq(model.shape[2])[None, :]
    out = np.empty((3, npix, npix))
    for k in range(3):
        sig_os = fwhm[k] / GAUSS_FWHM_PER_SIGMA / PIXSCALE_ARCSEC * os_
        transfer = np.exp(-2.0 * math.pi**2 * sig_os**2 * (kx**2 + ky**2))
        conv = np.fft.irfft2(np.fft.rfft2(model[k]) * transfer, s=model[k].shape)
        out[k] = conv.reshape(npix, os_, npix, os_).sum(axis=(1, 3))
    return out, ix - half, iy - half


# --------------------------------------------------------------------------------------------
# ids, held-out flag, catalogues


def lookalike_id(lookalike_type: str, brickname: str, ra_deg: float, dec_deg: float) -> str:
    """A look-alike's id: type, brick and position (1e-6 deg = 0.0036"), e.g.
    ``ring_collisional:2356p000:235.612345+0.012345``."""
    return f"{lookalike_type}:{brickname}:{ra_deg:.6f}{dec_deg:+.6f}"


def is_heldout(lookalike_id_: str, fraction: float = HELDOUT_FRACTION, salt: str = HELDOUT_SALT) -> bool:
    """True for the held-out part: a uniform number from the salted 64-bit hash of the id is
    below ``fraction``. Deterministic; the salt is the only way to re-draw the split."""
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError("heldout_fraction", "must be in [0, 1]", fraction)
    return (stable_hash64(salt, str(lookalike_id_)) >> 11) / float(1 << 53) < fraction


def catalogue_ring_type(name: str) -> str:
    """Ring type of a catalogue ring (Galaxy Zoo gives 'ring' only): collisional for a salted
    hash share of :data:`COLLISIONAL_RING_SHARE`, resonance otherwise (resonance rings are by
    far the commoner kind; Buta & Combes 1996)."""
    u = (stable_hash64("dhs-lookalike-ringtype-v1", str(name)) >> 11) / float(1 << 53)
    return "ring_collisional" if u < COLLISIONAL_RING_SHARE else "ring_resonance"


def load_lookalike_catalogues(names, catalog_dir: Optional[Union[str, Path]] = None):
    """Rows (name, ra, dec, catalogue, lookalike_type) of the ring / merger catalogues ``names``
    (keys of :data:`CATALOGUE_TYPE`), read through ``dhs_spark.catalogs`` (GZ DECaLS rings are
    bundled; Darg et al. 2010 mergers only from ``catalog_dir``, skipped with a log line when
    absent). Unknown names raise ``ConfigError``."""
    import pandas as pd

    from dhs_spark.catalogs import mergers, rings

    loaders = {"gz_decals_rings": rings.load_local, "darg2010_mergers": mergers.load_local}
    parts = []
    for nm in names:
        if nm not in loaders:
            raise ConfigError("lookalikes.catalogs", f"unknown catalogue; known: {sorted(loaders)}", nm)
        try:
            table, path, origin = loaders[nm](Path(catalog_dir) if catalog_dir else None)
        except FileNotFoundError as exc:
            log.info("look-alikes: catalogue %s not available (%s); skipped", nm, exc)
            continue
        df = table[["name", "ra", "dec"]].copy()
        df["catalogue"] = nm
        df["lookalike_type"] = [CATALOGUE_TYPE[nm] or catalogue_ring_type(n) for n in df["name"]]
        parts.append(df)
        log.info("look-alikes: %d rows of %s (%s, %s)", len(df), nm, origin, path)
    if not parts:
        return pd.DataFrame({"name": [], "ra": [], "dec": [], "catalogue": [], "lookalike_type": []})
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class LookalikeOptions:
    """What :func:`~dhs_spark.survey.mock.build_mock_survey` plants when given these options.

    - ``n_free_per_brick``: look-alikes at mock positions away from the mock LRGs (types cycle
      through :data:`LOOKALIKE_TYPES` from a per-brick offset; the attached types get their own
      LRG-like bulge);
    - ``n_lrg_hosts_per_brick``: spiral arms or blue companions planted on mock LRGs (alternating,
      from a per-brick offset); the row carries the LRG's OBJID and position;
    - ``catalogs``: ring / merger catalogues whose rows inside a mock brick image are planted at
      their real positions (``catalog_dir``: where user-supplied tables such as Darg's live);
    - ``min_lrg_distance_pix``: free and catalogue look-alikes keep at least this distance from
      every mock LRG (70 px: a 101-px stamp around the LRG stays clear of a 5" ring);
    - ``edge_margin_pix``: free and catalogue positions stay this far inside the brick image;
    - ``heldout_fraction``, ``heldout_salt``: see :func:`is_heldout`;
    - ``plant_pixels``: False writes the catalogue (and keeps LRGs away from catalogue
      positions) but leaves the look-alikes out of the images: the paired null survey, the same
      bricks without the impostors (as a null injection is to an injection);
    - ``types``: the types planted at free positions and on LRGs.
    """

    n_free_per_brick: int = 5
    n_lrg_hosts_per_brick: int = 2
    catalogs: tuple[str, ...] = ("gz_decals_rings", "darg2010_mergers")
    catalog_dir: Optional[str] = None
    min_lrg_distance_pix: float = 70.0
    edge_margin_pix: int = 30
    heldout_fraction: float = HELDOUT_FRACTION
    heldout_salt: str = HELDOUT_SALT
    plant_pixels: bool = True
    types: tuple[str, ...] = field(default=LOOKALIKE_TYPES)

    def __post_init__(self):
        for name in ("n_free_per_brick", "n_lrg_hosts_per_brick", "edge_margin_pix"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"lookalikes.{name}", "must be >= 0", getattr(self, name))
        if not 0.0 <= self.heldout_fraction <= 1.0:
            raise ConfigError("lookalikes.heldout_fraction", "must be in [0, 1]", self.heldout_fraction)
        bad = [t for t in self.types if t not in LOOKALIKE_TYPES]
        if bad or not self.types:
            raise ConfigError("lookalikes.types", f"must be a non-empty subset of {LOOKALIKE_TYPES}", self.types)
        unknown = [c for c in self.catalogs if c not in CATALOGUE_TYPE]
        if unknown:
            raise ConfigError("lookalikes.catalogs", f"unknown catalogue; known: {sorted(CATALOGUE_TYPE)}", unknown)


@dataclass(frozen=True)
class PlantedLookalike:
    """A look-alike planted in a brick at 0-based pixel (x_pix, y_pix); ``source`` is
    ``catalog:<name>`` or ``mock``; ``host_objid`` the mock LRG's OBJID (-1 if none)."""

    lookalike: Lookalike
    x_pix: float
    y_pix: float
    source: str
    catalog_name: str = ""
    host_objid: int = -1


def plan_brick_lookalikes(
    options: LookalikeOptions,
    seed: int,
    brickname: str,
    brick_size_pix: int,
    catalog_hits: list,
    lrgs: list,
    other_xy: np.ndarray,
    red_colours: Optional[np.ndarray] = None,
) -> list[PlantedLookalike]:
    """The look-alikes of one mock brick (pure; the mock renders and records them).

    ``catalog_hits``: (x_pix, y_pix, catalogue, name, lookalike_type, ...) of catalogue rows inside
    the brick image; ``lrgs``: (objid, x_pix, y_pix, Host) of the brick's mock LRGs;
    ``other_xy``: (k, 2) pixel positions of stars and neighbours (free positions keep 12 px
    from them). Free positions come from their own random stream (the mock's streams are not
    touched); a brick too crowded for them raises ``InputDataError``.
    """
    rng = rng_from_seed(stable_hash64("mock-lookalikes", int(seed), str(brickname)))
    planted = []
    for x, y, cat, name, typ, *_ in catalog_hits:
        s = stable_hash64("lookalike-catalog", int(seed), cat, str(name))
        planted.append(PlantedLookalike(draw_lookalike(typ, s, red_colours), float(x), float(y), f"catalog:{cat}", str(name)))
    attached = [t for t in options.types if t in LRG_ATTACHED_TYPES]
    n_hosts = min(options.n_lrg_hosts_per_brick, len(lrgs)) if attached else 0
    host_idx = rng.choice(len(lrgs), size=n_hosts, replace=False) if n_hosts else []
    start = int(rng.integers(len(attached))) if attached else 0
    for j, li in enumerate(sorted(int(i) for i in host_idx)):
        objid, x, y, host = lrgs[li]
        typ = attached[(start + j) % len(attached)]
        la = draw_lookalike(typ, stable_hash64("lookalike-host", int(seed), brickname, int(objid)), red_colours, host=host)
        planted.append(PlantedLookalike(la, float(x), float(y), "mock", "", int(objid)))
    lrg_xy = np.array([(x, y) for _, x, y, _ in lrgs]).reshape(-1, 2)
    taken = [(p.x_pix, p.y_pix) for p in planted if p.host_objid < 0]
    lo, hi = options.edge_margin_pix, brick_size_pix - 1 - options.edge_margin_pix
    start = int(rng.integers(len(options.types)))
    for j in range(options.n_free_per_brick):
        typ = options.types[(start + j) % len(options.types)]
        for _ in range(10_000):
            xy = rng.uniform(lo, hi, size=2)
            if len(lrg_xy) and np.min(np.hypot(*(lrg_xy - xy).T)) < options.min_lrg_distance_pix:
                continue
            if taken and np.min(np.hypot(*(np.array(taken) - xy).T)) < 45.0:
                continue
            if len(other_xy) and np.min(np.hypot(*(np.asarray(other_xy) - xy).T)) < 12.0:
                continue
            break
        else:
            raise InputDataError(
                f"mock survey {brickname}: no room for look-alike {j + 1} of {options.n_free_per_brick} "
                f"({options.min_lrg_distance_pix} px from LRGs) in a {brick_size_pix}-px brick; plant fewer or use larger bricks")
        taken.append((float(xy[0]), float(xy[1])))
        la = draw_lookalike(typ, stable_hash64("lookalike-free", int(seed), brickname, j), red_colours)
        planted.append(PlantedLookalike(la, float(xy[0]), float(xy[1]), "mock"))
    return planted


# Columns of the look-alike catalogue (one row per planted look-alike).
CATALOG_COLUMNS = (
    "lookalike_id", "ra", "dec", "brickname", "x_pix", "y_pix", "lookalike_type", "heldout", "source",
    "catalog_name", "host_objid", "flux_g_nmgy", "flux_r_nmgy", "flux_z_nmgy", "radius_arcsec",
    "separation_arcsec", "extent_arcsec", "nearest_lrg_arcsec", "params_json", "model_json",
)  # fmt: skip


def catalogue_row(pl: PlantedLookalike, ra_deg: float, dec_deg: float, brickname: str, nearest_lrg_arcsec: float, options: LookalikeOptions) -> dict:
    """The catalogue row of a planted look-alike (columns :data:`CATALOG_COLUMNS`)."""
    la = pl.lookalike
    lid = lookalike_id(la.lookalike_type, brickname, ra_deg, dec_deg)
    prm = la.params_dict()
    f = la.flux_nmgy
    return {
        "lookalike_id": lid, "ra": float(ra_deg), "dec": float(dec_deg), "brickname": brickname,
        "x_pix": float(pl.x_pix), "y_pix": float(pl.y_pix), "lookalike_type": la.lookalike_type,
        "heldout": bool(is_heldout(lid, options.heldout_fraction, options.heldout_salt)),
        "source": pl.source, "catalog_name": pl.catalog_name, "host_objid": int(pl.host_objid),
        "flux_g_nmgy": float(f[0]), "flux_r_nmgy": float(f[1]), "flux_z_nmgy": float(f[2]),
        "radius_arcsec": float(prm.get("radius_arcsec", np.nan)),
        "separation_arcsec": float(prm.get("separation_arcsec", np.nan)),
        "extent_arcsec": float(la.extent_arcsec), "nearest_lrg_arcsec": float(nearest_lrg_arcsec),
        "params_json": json.dumps(prm, sort_keys=True), "model_json": la.to_json(),
    }  # fmt: skip


# --------------------------------------------------------------------------------------------
# gallery


def render_gallery_png(
    path,
    seed: int = 1,
    n_per_type: int = 3,
    fwhm_grz_arcsec=(1.45, 1.3, 1.2),
    sigma_pix_grz_nmgy=(0.0028, 0.0046, 0.012),
    size_pix: int = 81,
) -> Path:
    """Save a PNG gallery: ``n_per_type`` examples of each look-alike type (rows) as grz colour
    images (Lupton et al. 2004 asinh stretch: z -> red, r -> green, g -> blue), each on a
    ``size_pix`` stamp with DR10-like PSFs and Gaussian pixel noise ``sigma_pix_grz_nmgy``
    (the median-depth noise of the mock bricks). Attached types are drawn on an LRG-like bulge.
    Needs matplotlib (the ``report`` extra). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import make_lupton_rgb

    from dhs_spark.survey.mock import _add as add_clipped  # the mock's own stamp-into-canvas add (mock imports this module)

    rng = rng_from_seed(stable_hash64("lookalike-gallery", int(seed)))
    fig, axes = plt.subplots(len(LOOKALIKE_TYPES), n_per_type, figsize=(2.2 * n_per_type, 2.3 * len(LOOKALIKE_TYPES)), squeeze=False)
    c = size_pix // 2
    for i, typ in enumerate(LOOKALIKE_TYPES):
        for j in range(n_per_type):
            la = draw_lookalike(typ, stable_hash64("gallery", int(seed), typ, j))
            stamp, x0, y0 = render_lookalike(la, c, c, fwhm_grz_arcsec)
            img = np.zeros((3, size_pix, size_pix))
            for k in range(3):
                add_clipped(img[k], stamp[k], x0, y0)
                img[k] += rng.standard_normal((size_pix, size_pix)) * sigma_pix_grz_nmgy[k]
            # channel weights of the Legacy Surveys viewer (legacypipe get_rgb: z/0.025, r/0.01, g/0.0066)
            rgb = make_lupton_rgb(img[2] / 0.025, img[1] / 0.01, img[0] / 0.0066, minimum=-1.0, stretch=6.0, Q=6)
            ax = axes[i, j]
            ax.imshow(rgb, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            prm = la.params_dict()
            label = typ if j == 0 else ""
            if "radius_arcsec" in prm:
                extra = f"R={prm['radius_arcsec']:.1f}\""
            elif "separation_arcsec" in prm:
                extra = f"sep={prm['separation_arcsec']:.1f}\""
            else:
                extra = f"pitch={prm['pitch_deg']:.0f} deg"
            ax.set_title(f"{label}\n{extra}" if label else extra, fontsize=7)
    fig.suptitle(f"DR10 mock look-alikes ({size_pix}x{size_pix} px, 0.262\"/px), grz", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
