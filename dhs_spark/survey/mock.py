"""A small, deterministic mock survey in the real DR10 coadd layout: the embedded default for
the demo and the pipeline tests.

What is real and what is made up:

- Brick geometry, PSF FWHM (psfsize_g/r/z) and depth (psfdepth_g/r/z, 5-sigma AB) are real
  rows of ``dr10_south_bricks_excerpt_{a,b}.csv`` (DR10 south bricks).
- LRG fluxes (g, r, z, W1) and Tractor types are real rows of ``dr10_lrg_sweep_excerpt.csv``
  (all pass ``select_lrg`` v3); their positions, sizes (half-light radius 0.6-1.6") and
  shapes are drawn, since the excerpt has no shape columns and comes from other bricks. The
  catalogue carries the drawn shapes as Tractor does (SHAPE_R, SHAPE_E1, SHAPE_E2:
  :func:`tractor_ellipticity`).
- Neighbour galaxies (blue, r-z < 0.28, so they fail every LRG variant) and stars (z-W1 < -0.2,
  TYPE PSF) are drawn from simple distributions.
- Each brick image is a ``brick_size_pix`` square (default 800 px = 3.5') TAN image at
  0.262"/px centred on the real brick centre, i.e. the middle of the brick, not the whole
  0.25-deg brick; every object lies inside it and inside its real brick.
- Objects are Sersic profiles (n = 1 for EXP/REX, 4 for DEV, 1-4 for SER; point sources for
  PSF) convolved with a Gaussian PSF of the brick's FWHM per band, rendered with 3x3
  sub-pixel sampling; no object Poisson noise (coadds are sky-dominated at these fluxes).
- Noise: per-pixel sigma from the point-source depth, sigma_pix = sigma_psf_flux / sqrt(NEA)
  with NEA = 4 pi sigma_psf^2 (the noise-equivalent area of a Gaussian PSF), times a smooth
  +-15% depth gradient; ``invvar`` = 1/sigma_pix^2. A few rectangles per band have no data
  (invvar 0, image 0, ALLMASK_<band> set); bright stars (r < 17.5) set BRIGHT within 15 px.

Files (``out_dir``)::

    coadd/<bri>/<brick>/legacysurvey-<brick>-{image,invvar}-{g,r,z}.fits.fz   (RICE, HDU 1, TAN WCS)
    coadd/<bri>/<brick>/legacysurvey-<brick>-maskbits.fits.fz
    survey-bricks-mock.csv       the bricks table, in the format of the shared CSV excerpts
    sweep-mock.parquet, sweep-mock.fits   the sweep-like catalogue (RA, DEC, BRICKNAME, OBJID,
                                 TYPE, FLUX_G/R/Z/W1 in nanomaggies, FLUX_IVAR_G/R/Z, SHAPE_R
                                 (arcsec), SHAPE_E1, SHAPE_E2, SERSIC, plus MOCK_ROLE = lrg |
                                 neighbour | star)

Look-alikes (opt-in, ``lookalikes=LookalikeOptions(...)``; off by default, and off leaves every
byte above unchanged): ring galaxies, spiral arms and blue companions on LRGs, and mergers with
tidal features (:mod:`dhs_spark.survey.lookalikes`) are added to the images, at the real
positions of ring / merger catalogue rows that fall inside a brick image and at mock positions
(free ones at least ``min_lrg_distance_pix`` from every mock LRG; spiral arms and blue companions
on mock LRGs), and listed in ``lookalikes-mock.parquet`` (:attr:`MockSurvey.lookalike_catalog_path`;
columns ``lookalikes.CATALOG_COLUMNS``). They use their own random stream, so the rest of the
survey keeps its bytes, except that LRGs are drawn away from catalogue look-alikes in the bricks
that hold one. The sweep catalogue is unchanged (an LRG with arms keeps its sweep fluxes).

Same seed -> same bytes: the RICE quantisation dither seed is derived from ``seed``, and the
tiles astropy cannot quantise (the smooth ``invvar`` maps, stored losslessly with gzip) get a
zero gzip timestamp instead of the wall-clock time.
"""

from __future__ import annotations

import functools
import gzip
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from unittest import mock

import numpy as np

from dhs_spark.config.seeds import rng_from_seed, stable_hash64
from dhs_spark.errors import InputDataError
from dhs_spark.survey.bricks import PIXSCALE_ARCSEC, brickname_for, psfdepth_mag5sigma_to_invvar
from dhs_spark.survey.coadds import BANDS, MASKBITS, coadd_brick_dir, coadd_file_name

log = logging.getLogger(__name__)

_REPO_DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "survey"
DEFAULT_SWEEP_PATH = _REPO_DATA / "dr10_lrg_sweep_excerpt.csv.gz"
DEFAULT_BRICKS_PATHS = (_REPO_DATA / "dr10_south_bricks_excerpt_a.csv", _REPO_DATA / "dr10_south_bricks_excerpt_b.csv")

GAUSS_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548
_OVERSAMPLE = 3
_EDGE_MARGIN_PIX = 64  # LRGs keep a 101-px stamp inside the mock brick image


@dataclass(frozen=True)
class MockSurvey:
    """Paths of a built mock survey. ``root`` holds ``coadd/`` (pass it to ``CoaddBrick``)."""

    root: Path
    bricknames: tuple[str, ...]
    bricks_table: Path
    catalog_parquet: Path
    catalog_fits: Path
    brick_size_pix: int
    seed: int
    lookalike_catalog_path: Optional[Path] = None  # lookalikes-mock.parquet when look-alikes were planted

    def brick_dir(self, brickname: str) -> Path:
        return Path(coadd_brick_dir(self.root, brickname))


def tractor_ellipticity(q: float, phi_rad: float) -> tuple[float, float]:
    """Tractor ``EllipseE`` components (shape_e1, shape_e2) of an ellipse with axis ratio ``q``
    whose major axis is at ``phi_rad`` counter-clockwise from +x (this project's convention).

    Tractor: |e| = (1 - q) / (1 + q), e1 = |e| cos 2 theta, e2 = |e| sin 2 theta with theta the
    position angle East of North. With North = +y and East = -x (+x is West in the coadds'
    WCS), the direction at theta is (-sin theta, cos theta), i.e. phi = theta + pi/2, so
    e1 = -|e| cos 2 phi and e2 = -|e| sin 2 phi.
    """
    e = (1.0 - q) / (1.0 + q)
    return float(-e * np.cos(2.0 * phi_rad)), float(-e * np.sin(2.0 * phi_rad))


def _sersic_bn(n: float) -> float:
    """b_n such that r_e encloses half the light (Ciotti & Bertin 1999 expansion, < 1e-4 rel. for n >= 0.5)."""
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25515.0 * n**2)


def _render(flux_nmgy: float, x: float, y: float, fwhm_arcsec: float, r_e_arcsec: float, n: float, q: float, phi_rad: float, half: int):
    """(stamp, x0, y0): an object of total flux ``flux_nmgy`` at 0-based pixel (x, y), convolved
    with a Gaussian PSF, on a (2 half + 1)^2 pixel box whose lower-left pixel is (x0, y0).

    r_e_arcsec <= 0 draws a point source. The Sersic profile is sampled at 3x3 sub-pixels,
    normalised to ``flux_nmgy`` on the box, convolved in Fourier space with the exact Gaussian
    transfer function and summed back to pixels (flux is conserved on the box).
    """
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    npix = 2 * half + 1
    os_ = _OVERSAMPLE
    sub = (np.arange(npix * os_) + 0.5) / os_ - 0.5 - half  # sub-pixel centres, pixels from (ix, iy)
    dx = (sub - (x - ix))[None, :] * PIXSCALE_ARCSEC
    dy = (sub - (y - iy))[:, None] * PIXSCALE_ARCSEC
    if r_e_arcsec <= 0:
        # point source: the PSF itself, sampled analytically on the sub-pixel grid
        sig = fwhm_arcsec / GAUSS_FWHM_PER_SIGMA
        model = np.exp(-0.5 * (dx**2 + dy**2) / sig**2)
    else:
        c, s = np.cos(phi_rad), np.sin(phi_rad)
        xr = c * dx + s * dy
        yr = -s * dx + c * dy
        r = np.sqrt(q * xr**2 + yr**2 / q)
        model = np.exp(-_sersic_bn(n) * ((r / r_e_arcsec) ** (1.0 / n) - 1.0))
        sig_os = fwhm_arcsec / GAUSS_FWHM_PER_SIGMA / PIXSCALE_ARCSEC * os_  # PSF sigma in sub-pixels
        ky = np.fft.fftfreq(model.shape[0])[:, None]
        kx = np.fft.rfftfreq(model.shape[1])[None, :]
        transfer = np.exp(-2.0 * np.pi**2 * sig_os**2 * (kx**2 + ky**2))
        model = np.fft.irfft2(np.fft.rfft2(model) * transfer, s=model.shape)
    model *= flux_nmgy / model.sum()
    stamp = model.reshape(npix, os_, npix, os_).sum(axis=(1, 3))
    return stamp, ix - half, iy - half


def _add(canvas: np.ndarray, stamp: np.ndarray, x0: int, y0: int) -> None:
    """Add ``stamp`` to ``canvas`` with its lower-left pixel at (x0, y0), clipped to the canvas."""
    h, w = stamp.shape
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(canvas.shape[0], y0 + h), min(canvas.shape[1], x0 + w)
    if ye > ys and xe > xs:
        canvas[ys:ye, xs:xe] += stamp[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _draw_xy(rng, lo: float, hi: float, avoid: np.ndarray, min_dist_pix: float, what: str, brick_size_pix: int, max_tries: int = 10_000) -> np.ndarray:
    """A uniform position in [lo, hi]^2 pixels at least ``min_dist_pix`` from every point of
    ``avoid`` (k, 2); bounded tries, then a clear error."""
    for _ in range(max_tries):
        xy = rng.uniform(lo, hi, size=2)
        if len(avoid) == 0 or np.min(np.hypot(*(avoid - xy).T)) >= min_dist_pix:
            return xy
    raise InputDataError(f"mock survey: no room for another {what} in a {brick_size_pix}-px brick; use fewer objects or a larger brick_size_pix")


def _catalog_hits(table, wcs, brick_size_pix: int, margin_pix: int) -> list:
    """(x_pix, y_pix, catalogue, name, lookalike_type, ra, dec) of the look-alike catalogue rows
    inside the brick image, ``margin_pix`` from its edges."""
    if len(table) == 0:
        return []
    x, y = wcs.all_world2pix(table["ra"].to_numpy(), table["dec"].to_numpy(), 0)
    inside = (x >= margin_pix) & (x <= brick_size_pix - 1 - margin_pix) & (y >= margin_pix) & (y <= brick_size_pix - 1 - margin_pix)
    return [(float(x[i]), float(y[i]), str(table["catalogue"].iat[i]), str(table["name"].iat[i]), str(table["lookalike_type"].iat[i]),
             float(table["ra"].iat[i]), float(table["dec"].iat[i])) for i in np.flatnonzero(inside)]  # fmt: skip


def _draw_lrg_xy(rng, lo, hi, lrg_xy: list, catalog_hits: list, lookalikes, brick_size_pix: int) -> np.ndarray:
    """An LRG position 40 px from the other LRGs (as before) and, where catalogue look-alikes
    sit in the brick, ``min_lrg_distance_pix`` from them. Without catalogue look-alikes this is
    exactly the draw of a survey without look-alikes (same random numbers)."""
    avoid = np.array(lrg_xy).reshape(-1, 2)
    if not catalog_hits:
        return _draw_xy(rng, lo, hi, avoid, 40.0, "LRG (40 px apart)", brick_size_pix)
    cat_xy = np.array([(h[0], h[1]) for h in catalog_hits])
    for _ in range(10_000):
        xy = _draw_xy(rng, lo, hi, avoid, 40.0, "LRG (40 px apart)", brick_size_pix)
        if np.min(np.hypot(*(cat_xy - xy).T)) >= lookalikes.min_lrg_distance_pix:
            return xy
    raise InputDataError(f"mock survey: no room for an LRG {lookalikes.min_lrg_distance_pix} px from the catalogue look-alikes in a {brick_size_pix}-px brick")


def _wcs_header(ra_c: float, dec_c: float, size: int):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra_c, dec_c]
    w.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]  # FITS 1-based: the image centre
    w.wcs.cd = [[-PIXSCALE_ARCSEC / 3600.0, 0.0], [0.0, PIXSCALE_ARCSEC / 3600.0]]
    return w


def _load_inputs(sweep_path, bricks_paths):
    import pandas as pd

    for p in [sweep_path, *bricks_paths]:
        if not Path(p).exists():
            raise InputDataError(
                f"mock survey input {p} not found: it is a copy of real DR10 data kept in the repository's tests/data/survey "
                "(not shipped in the installed package); pass sweep_path= / bricks_paths= pointing at copies of "
                "dr10_lrg_sweep_excerpt.csv and dr10_south_bricks_excerpt_*.csv"
            )
    sweep = pd.read_csv(sweep_path, dtype={"BRICKNAME": str})
    bricks = pd.concat([pd.read_csv(p, dtype={"brickname": str}) for p in bricks_paths], ignore_index=True)
    return sweep, bricks.sort_values("brickname").reset_index(drop=True)


def _write_compressed(path: Path, data: np.ndarray, header, dither_seed: int) -> None:
    from astropy.io import fits
    from astropy.io.fits.hdu.compressed import _codecs

    kwargs = {"compression_type": "RICE_1", "tile_shape": (100, data.shape[1])}
    if data.dtype.kind == "f":
        kwargs.update(quantize_level=16.0, dither_seed=dither_seed)  # lossy like the real coadds, seeded
    hdu = fits.CompImageHDU(data, header=header, **kwargs)
    # A tile with no measurable noise (the smooth invvar) cannot be quantised; astropy stores it
    # with gzip.compress, whose header holds the current time unless mtime=0. Patched, not
    # post-processed, so an astropy that moves this hook fails here loudly.
    with mock.patch.object(_codecs, "gzip_compress", functools.partial(gzip.compress, mtime=0)):
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def build_mock_survey(
    out_dir,
    n_bricks: int = 4,
    brick_size_pix: int = 800,
    seed: int = 42,
    n_lrg_per_brick: int = 10,
    n_neighbours_per_brick: int = 40,
    n_stars_per_brick: int = 12,
    sweep_path=DEFAULT_SWEEP_PATH,
    bricks_paths=DEFAULT_BRICKS_PATHS,
    lookalikes=None,
) -> MockSurvey:
    """Write a mock survey under ``out_dir`` (see the module docstring) and return its paths.

    ``lookalikes``: ``None`` (default: none planted) or a
    :class:`~dhs_spark.survey.lookalikes.LookalikeOptions` saying what to plant.
    """
    import pandas as pd
    from astropy.table import Table

    if lookalikes is not None:
        from dhs_spark.survey import lookalikes as lk

        if not isinstance(lookalikes, lk.LookalikeOptions):
            raise InputDataError(f"lookalikes must be None or a LookalikeOptions (got {type(lookalikes).__name__})")

    if brick_size_pix < 2 * _EDGE_MARGIN_PIX + 20:
        raise InputDataError(f"brick_size_pix must be >= {2 * _EDGE_MARGIN_PIX + 20} (got {brick_size_pix})")
    out = Path(out_dir)
    sweep, real_bricks = _load_inputs(sweep_path, bricks_paths)
    if n_bricks > len(real_bricks):
        raise InputDataError(f"n_bricks={n_bricks} exceeds the {len(real_bricks)} real brick rows available")
    rng = rng_from_seed(stable_hash64("mock-survey", int(seed)))
    chosen = real_bricks.iloc[np.sort(rng.choice(len(real_bricks), size=n_bricks, replace=False))].reset_index(drop=True)
    dither_seed = 1 + int(seed) % 10000
    if lookalikes is not None:
        la_catalog = lk.load_lookalike_catalogues(lookalikes.catalogs, lookalikes.catalog_dir)
        ok = (sweep["FLUX_G"] > 0) & (sweep["FLUX_R"] > 0) & (sweep["FLUX_Z"] > 0)
        red_colours = -2.5 * np.log10(np.c_[sweep["FLUX_G"][ok] / sweep["FLUX_R"][ok], sweep["FLUX_R"][ok] / sweep["FLUX_Z"][ok]])

    rows = []
    la_rows = []
    for bi, brick in chosen.iterrows():
        name = brick["brickname"]
        brng = rng_from_seed(stable_hash64("mock-brick", int(seed), name))
        wcs = _wcs_header(float(brick["ra"]), float(brick["dec"]), brick_size_pix)
        fwhm = {b: float(brick[f"psfsize_{b}"]) for b in BANDS}
        psf_ivar = psfdepth_mag5sigma_to_invvar([brick[f"psfdepth_{b}"] for b in BANDS])
        sigma_pix = {}
        for k, b in enumerate(BANDS):
            sig_psf_pix = fwhm[b] / GAUSS_FWHM_PER_SIGMA / PIXSCALE_ARCSEC
            sigma_pix[b] = (1.0 / np.sqrt(psf_ivar[k])) / np.sqrt(4.0 * np.pi * sig_psf_pix**2)

        # --- object list: LRGs (real photometry), neighbours, stars
        objs = []
        lrg_xy = []
        lo, hi = _EDGE_MARGIN_PIX, brick_size_pix - 1 - _EDGE_MARGIN_PIX
        catalog_hits = _catalog_hits(la_catalog, wcs, brick_size_pix, lookalikes.edge_margin_pix) if lookalikes is not None else []
        for _ in range(n_lrg_per_brick):
            lrg_xy.append(_draw_lrg_xy(brng, lo, hi, lrg_xy, catalog_hits, lookalikes, brick_size_pix))
        src_rows = brng.choice(len(sweep), size=n_lrg_per_brick, replace=False)
        for xy, si in zip(lrg_xy, src_rows):
            s = sweep.iloc[int(si)]
            typ = str(s["TYPE"]).strip()
            n = {"PSF": 0.0, "REX": 1.0, "EXP": 1.0, "DEV": 4.0}.get(typ, float(brng.uniform(1.0, 4.0)))
            r_e = 0.0 if typ == "PSF" else float(brng.uniform(0.6, 1.6))
            fl = [float(s["FLUX_G"]), float(s["FLUX_R"]), float(s["FLUX_Z"]), float(s["FLUX_W1"])]
            objs.append(("lrg", xy[0], xy[1], typ, fl, r_e, n, float(brng.uniform(0.5, 1.0)), float(brng.uniform(0, np.pi)), int(si)))
        lrg_arr = np.array(lrg_xy)
        for _ in range(n_neighbours_per_brick):
            # neighbours may sit close to an LRG but not on its core (>= 20 px)
            xy = _draw_xy(brng, 0, brick_size_pix - 1, lrg_arr, 20.0, "neighbour", brick_size_pix)
            r_mag = brng.uniform(21.0, 24.0)
            g_mag = r_mag + brng.uniform(0.3, 1.0)
            z_mag = r_mag - brng.uniform(0.0, 0.28)  # r - z < 0.3: fails every LRG variant
            w1_mag = z_mag - brng.uniform(-0.5, 0.7)
            typ = str(brng.choice(["EXP", "REX", "DEV"]))
            n = 4.0 if typ == "DEV" else 1.0
            fl = [10 ** ((22.5 - m) / 2.5) for m in (g_mag, r_mag, z_mag, w1_mag)]
            objs.append(("neighbour", xy[0], xy[1], typ, fl, float(brng.uniform(0.3, 1.0)), n, float(brng.uniform(0.3, 1.0)), float(brng.uniform(0, np.pi)), -1))
        for _ in range(n_stars_per_brick):
            xy = _draw_xy(brng, 0, brick_size_pix - 1, lrg_arr, 45.0, "star (45 px from LRGs)", brick_size_pix)
            r_mag = brng.uniform(16.5, 21.5)
            g_mag = r_mag + brng.uniform(0.3, 1.2)
            z_mag = r_mag - brng.uniform(0.1, 0.8)
            w1_mag = z_mag - brng.uniform(-1.2, -0.2)  # z - W1 < -0.2: fails the z-W1 cut
            fl = [10 ** ((22.5 - m) / 2.5) for m in (g_mag, r_mag, z_mag, w1_mag)]
            objs.append(("star", xy[0], xy[1], "PSF", fl, 0.0, 0.0, 1.0, 0.0, -1))

        planted = []
        if lookalikes is not None:
            lrgs = [(j, o[1], o[2], lk.Host(o[5], o[7], o[8], (o[4][0], o[4][1], o[4][2]), j)) for j, o in enumerate(objs) if o[0] == "lrg"]
            other = np.array([(o[1], o[2]) for o in objs if o[0] != "lrg"]).reshape(-1, 2)
            planted = lk.plan_brick_lookalikes(lookalikes, seed, name, brick_size_pix, catalog_hits, lrgs, other, red_colours)
            la_stamps = [lk.render_lookalike(pl.lookalike, pl.x_pix, pl.y_pix, [fwhm[b] for b in BANDS]) for pl in planted] if lookalikes.plant_pixels else []

        # --- pixels
        ny = nx = brick_size_pix
        yy, xx = np.mgrid[0:ny, 0:nx]
        angle = brng.uniform(0, 2 * np.pi)
        gradient = 1.0 + 0.15 * ((np.cos(angle) * xx + np.sin(angle) * yy) / (nx / np.sqrt(2)))  # smooth depth variation
        maskbits = np.zeros((ny, nx), dtype=np.int32)
        brick_dir = out / "coadd" / name[:3] / name
        brick_dir.mkdir(parents=True, exist_ok=True)
        for k, b in enumerate(BANDS):
            canvas = np.zeros((ny, nx))
            for role, x, y, _typ, fl, r_e, n, q, phi, _si in objs:
                flux = max(fl[k], 0.0)
                if flux <= 0:
                    continue
                half = 40 if role == "star" and fl[1] > 100 else 24
                stamp, x0, y0 = _render(flux, x, y, fwhm[b], r_e, n, q, phi, half)
                _add(canvas, stamp, x0, y0)
            for stamp, x0, y0 in (la_stamps if planted and lookalikes.plant_pixels else []):
                _add(canvas, stamp[k], x0, y0)
            invvar = gradient / sigma_pix[b] ** 2
            image = canvas + brng.standard_normal((ny, nx)) / np.sqrt(invvar)
            for _ in range(2):  # no-data rectangles, kept away from the LRG stamps (skipped if there is no room)
                for _try in range(1000):
                    w, h = brng.integers(5, 30, size=2)
                    x0, y0 = brng.integers(0, nx - w), brng.integers(0, ny - h)
                    cx, cy = x0 + w / 2, y0 + h / 2
                    if np.min(np.maximum(np.abs(lrg_arr[:, 0] - cx) - w / 2, np.abs(lrg_arr[:, 1] - cy) - h / 2)) > 60:
                        break
                else:
                    continue
                invvar[y0 : y0 + h, x0 : x0 + w] = 0.0
                image[y0 : y0 + h, x0 : x0 + w] = 0.0
                maskbits[y0 : y0 + h, x0 : x0 + w] |= 1 << MASKBITS[f"ALLMASK_{b.upper()}"]
            header = wcs.to_header()
            header["BRICKNAM"] = name
            header["BAND"] = b
            header["BUNIT"] = "nanomaggy"
            _write_compressed(brick_dir / coadd_file_name(name, "image", b), image.astype(np.float32), header, dither_seed)
            header["BUNIT"] = "1/nanomaggy^2"
            _write_compressed(brick_dir / coadd_file_name(name, "invvar", b), invvar.astype(np.float32), header, dither_seed)
        for role, x, y, _typ, fl, *_ in objs:
            if role == "star" and fl[1] > 10 ** ((22.5 - 17.5) / 2.5):
                maskbits[(xx - x) ** 2 + (yy - y) ** 2 <= 15**2] |= 1 << MASKBITS["BRIGHT"]
        mb_header = wcs.to_header()
        mb_header["BRICKNAM"] = name
        _write_compressed(brick_dir / coadd_file_name(name, "maskbits"), maskbits, mb_header, dither_seed)

        ra, dec = wcs.all_pix2world(np.array([o[1] for o in objs]), np.array([o[2] for o in objs]), 0)
        if planted:
            pra, pdec = wcs.all_pix2world(np.array([p.x_pix for p in planted]), np.array([p.y_pix for p in planted]), 0)
            for p, r_, d_ in zip(planted, pra, pdec):
                if p.source.startswith("catalog:"):  # the catalogue's own position, not its pixel round trip
                    r_, d_ = next((h[5], h[6]) for h in catalog_hits if h[3] == p.catalog_name)
                near = float(np.min(np.hypot(*(np.array(lrg_xy) - (p.x_pix, p.y_pix)).T))) * PIXSCALE_ARCSEC if lrg_xy else np.inf
                la_rows.append(lk.catalogue_row(p, float(r_), float(d_), name, near, lookalikes))
        flux_ivar = {b: psf_ivar[k] for k, b in enumerate(BANDS)}
        for j, (role, x, y, typ, fl, r_e, n, q, phi, si) in enumerate(objs):
            e1, e2 = tractor_ellipticity(q, phi) if r_e > 0 else (0.0, 0.0)
            rows.append(
                {
                    "RA": float(ra[j]), "DEC": float(dec[j]), "BRICKNAME": name, "OBJID": j, "TYPE": typ,
                    "FLUX_G": fl[0], "FLUX_R": fl[1], "FLUX_Z": fl[2], "FLUX_W1": fl[3],
                    "FLUX_IVAR_G": flux_ivar["g"], "FLUX_IVAR_R": flux_ivar["r"], "FLUX_IVAR_Z": flux_ivar["z"],
                    "SHAPE_R": r_e, "SHAPE_E1": e1, "SHAPE_E2": e2, "SERSIC": n,
                    "MOCK_ROLE": role, "MOCK_X_PIX": float(x), "MOCK_Y_PIX": float(y),
                    "MOCK_SWEEP_ROW": si, "MOCK_BRICK_INDEX": bi,
                }
            )  # fmt: skip

    cat = pd.DataFrame(rows)
    for col in ("FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1", "FLUX_IVAR_G", "FLUX_IVAR_R", "FLUX_IVAR_Z", "SHAPE_R", "SHAPE_E1", "SHAPE_E2", "SERSIC"):
        cat[col] = cat[col].astype(np.float32)  # sweep fluxes are float32
    wrong = cat["BRICKNAME"].to_numpy() != brickname_for(cat["RA"].to_numpy(), cat["DEC"].to_numpy())
    if wrong.any():  # cannot happen for brick_size_pix << 0.25 deg; guards a changed geometry
        raise InputDataError(f"mock survey: {int(wrong.sum())} objects fall outside their real brick; use a smaller brick_size_pix")
    cat_parquet = out / "sweep-mock.parquet"
    cat.to_parquet(cat_parquet, index=False)
    cat_fits = out / "sweep-mock.fits"
    Table.from_pandas(cat).write(cat_fits, overwrite=True)
    bricks_out = chosen[["brickname", "ra", "dec", "ra1", "ra2", "dec1", "dec2"]
                        + [f"psfsize_{b}" for b in BANDS] + [f"psfdepth_{b}" for b in BANDS] + ["ebv"]].copy()  # fmt: skip
    bricks_out["mock_n_lrg"] = n_lrg_per_brick
    bricks_table = out / "survey-bricks-mock.csv"
    bricks_out.to_csv(bricks_table, index=False)
    la_path = None
    if lookalikes is not None:
        la_cat = pd.DataFrame(la_rows, columns=list(lk.CATALOG_COLUMNS))
        wrong = la_cat["brickname"].to_numpy() != brickname_for(la_cat["ra"].to_numpy(), la_cat["dec"].to_numpy())
        if wrong.any():
            raise InputDataError(f"mock survey: {int(wrong.sum())} look-alikes fall outside their real brick")
        la_path = out / "lookalikes-mock.parquet"
        la_cat.to_parquet(la_path, index=False)
        log.info("mock survey: %d look-alikes (%d held out) -> %s", len(la_cat), int(la_cat["heldout"].sum()), la_path)
    log.info("mock survey: %d bricks of %d px, %d objects -> %s", n_bricks, brick_size_pix, len(cat), out)
    return MockSurvey(out, tuple(chosen["brickname"]), bricks_table, cat_parquet, cat_fits, int(brick_size_pix), int(seed), la_path)
