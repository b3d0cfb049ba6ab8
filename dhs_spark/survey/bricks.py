"""DR10 brick grid, the bricks summary table, and psfdepth unit conversions.

The brick grid (legacypipe / desiutil ``Bricks(bricksize=0.25)``): rows of constant Dec centred
on multiples of 0.25 deg from -90 to +90 (edges at centre +- 0.125 deg, clipped to the poles);
each row is cut into an even number of equal-RA columns, ``ncol = 2 ceil(360 / 0.25 cos(dec_lo)
/ 2)`` where ``dec_lo`` is the row edge nearest the equator (so no brick is wider than 0.25
deg), with one brick at each pole. A brick is named ``AAAApDDD`` / ``AAAAmDDD``: the first four
digits of the centre RA x 10000 rounded to an integer (7 digits, zero padded; i.e. RA to 0.1
deg), ``p``/``m`` for the sign of the centre Dec and the first three digits of |Dec| x 10000
(6 digits). Example: the brick holding (244.7, 12.0) is ``2447p120``, centre (244.7234, 12.0).

The bricks summary (``survey-bricks-dr10-south.fits.gz`` and the Data Lab / CSV copies) gives
``psfsize_<band>`` as the median PSF FWHM in arcsec and ``psfdepth_<band>`` as the 5-sigma
point-source depth, which is an inverse variance (1/nanomaggy^2) in the official FITS file and an
AB magnitude in the CSV copies. :func:`load_bricks_table` reads either and names every column
by its unit (see :data:`BRICK_TABLE_COLUMNS`).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np

from dhs_spark.errors import InputDataError

log = logging.getLogger(__name__)

BANDS = ("g", "r", "z")
BRICK_SIZE_DEG = 0.25
PIXSCALE_ARCSEC = 0.262  # DR10 coadd pixel scale
COADD_SIZE_PIX = 3600  # DR10 coadd bricks are 3600 x 3600 px (0.262 deg, overlapping neighbours by ~80 px)
NANOMAGGY_ZEROPOINT_MAG = 22.5

# Columns of the table returned by load_bricks_table (per band for g, r, z).
BRICK_TABLE_COLUMNS = (
    "brickname",  # str, 8 chars
    "ra", "dec",  # brick centre, degrees
    "ra1", "ra2", "dec1", "dec2",  # brick edges, degrees
    "psf_fwhm_{b}_arcsec",  # PSF FWHM, arcsec (psfsize_<b>), after the fallback below
    "psf_fwhm_{b}_fallback",  # bool: True when psfsize_<b> was 0/missing and another band's value is used
    "psfdepth_{b}_invvar_nmgy2",  # point-source depth as inverse variance, 1/nanomaggy^2 (0: no data; NaN: not in the table)
    "psfdepth_{b}_mag5sigma",  # the same depth as a 5-sigma AB magnitude (NaN: no data)
    "has_{b}",  # bool: the band has data in this brick (depth > 0)
    "ebv",  # SFD E(B-V), mag
)


# --------------------------------------------------------------------------- grid


@cache
def _grid(bricksize: float = BRICK_SIZE_DEG):
    """(row centre Dec, number of columns) per row of the brick grid."""
    center_dec = np.arange(-90.0, 90.0 + bricksize / 2, bricksize)
    center_dec[-1] = min(90.0, center_dec[-1])
    dec_lo = np.maximum(0.0, np.abs(center_dec) - bricksize / 2)
    ncol = (np.ceil(360.0 / bricksize * np.cos(np.deg2rad(dec_lo)) / 2) * 2).astype(np.int64)
    ncol[0] = 1
    if center_dec[-1] == 90.0:
        ncol[-1] = 1
    center_dec.setflags(write=False)
    ncol.setflags(write=False)
    return center_dec, ncol


def brick_rowcol(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Grid row and column (0-based int64 arrays) of the bricks holding (ra, dec) in degrees."""
    center_dec, ncol = _grid()
    ra = np.mod(np.asarray(ra, dtype=np.float64), 360.0)
    dec = np.asarray(dec, dtype=np.float64)
    row = np.clip(((dec + 90.0 + BRICK_SIZE_DEG / 2) / BRICK_SIZE_DEG).astype(np.int64), 0, len(ncol) - 1)
    col = (ra / 360.0 * ncol[row]).astype(np.int64)
    return row, np.minimum(col, ncol[row] - 1)


def _names_from_rowcol(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    center_dec, ncol = _grid()
    ra_c = (col + 0.5) * (360.0 / ncol[row])
    ra_c = np.where(ncol[row] == 1, 180.0, ra_c)
    dec_c = center_dec[row]
    # "{:07.0f}".format(ra * 10000)[:4]: rint gives the same round-half-even on the same float.
    ra_digits = np.rint(ra_c * 10000).astype(np.int64) // 1000
    dec_digits = np.rint(np.abs(dec_c) * 10000).astype(np.int64) // 1000
    sign = np.where(dec_c >= 0, "p", "m")
    out = np.char.add(np.char.add(np.char.zfill(ra_digits.astype("U4"), 4), sign), np.char.zfill(dec_digits.astype("U3"), 3))
    return out.astype("U8")


def brickname_for(ra, dec) -> np.ndarray:
    """DR10 bricknames (array of str) of the bricks holding positions ``ra``, ``dec`` (degrees)."""
    ra = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    dec = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputDataError(f"brickname_for: {int(bad.sum())} invalid position(s), first at index {i}: ra={ra[i]!r}, dec={dec[i]!r}")
    row, col = brick_rowcol(ra, dec)
    return _names_from_rowcol(row, col)


def brick_geometry(ra, dec) -> dict[str, np.ndarray]:
    """Name, centre and edges (degrees) of the bricks holding (ra, dec): keys as in the bricks table."""
    center_dec, ncol = _grid()
    row, col = brick_rowcol(np.atleast_1d(ra), np.atleast_1d(dec))
    width = 360.0 / ncol[row]
    ra_c = np.where(ncol[row] == 1, 180.0, (col + 0.5) * width)
    dec_c = center_dec[row]
    return {
        "brickname": _names_from_rowcol(row, col),
        "ra": ra_c,
        "dec": dec_c,
        "ra1": col * width,
        "ra2": (col + 1) * width,
        "dec1": np.maximum(dec_c - BRICK_SIZE_DEG / 2, -90.0),
        "dec2": np.minimum(dec_c + BRICK_SIZE_DEG / 2, 90.0),
    }


def brick_center(bricknames) -> tuple[np.ndarray, np.ndarray]:
    """Exact centre (ra, dec) in degrees of each named brick; InputDataError for a name not on the grid."""
    names = np.atleast_1d(np.asarray(bricknames, dtype="U8"))
    center_dec, ncol = _grid()
    ok = np.array([len(n) == 8 and n[:4].isdigit() and n[4] in "pm" and n[5:].isdigit() for n in names], dtype=bool)
    if not ok.all():
        raise InputDataError(f"brick_center: malformed brickname {names[~ok][0]!r} (expected AAAApDDD or AAAAmDDD)")
    ra_approx = np.array([int(n[:4]) for n in names], dtype=np.float64) / 10.0 + 0.05
    dec_name = np.array([int(n[5:]) for n in names], dtype=np.float64) / 10.0 * np.where(np.char.find(names, "m") == 4, -1.0, 1.0)
    row = np.clip(np.rint((dec_name + 90.0) / BRICK_SIZE_DEG).astype(np.int64), 0, len(ncol) - 1)
    col0 = (ra_approx / 360.0 * ncol[row]).astype(np.int64)
    found = np.full(len(names), -1, dtype=np.int64)
    for dcol in (0, -1, 1):  # the centre lies within 0.05 deg of ra_approx; a brick is >= ~0.25 deg wide
        cand = np.mod(col0 + dcol, ncol[row])
        hit = (found < 0) & (_names_from_rowcol(row, cand) == names)
        found[hit] = cand[hit]
    if (found < 0).any():
        raise InputDataError(f"brick_center: {names[found < 0][0]!r} is not a brick of the DR10 0.25-deg grid")
    geo_ra = np.where(ncol[row] == 1, 180.0, (found + 0.5) * 360.0 / ncol[row])
    return geo_ra, center_dec[row].copy()


# --------------------------------------------------------------------------- depth units


def psfdepth_invvar_to_mag5sigma(invvar_nmgy2) -> np.ndarray:
    """5-sigma AB depth from a point-source inverse variance (1/nanomaggy^2).

    m5 = 22.5 - 2.5 log10(5 / sqrt(invvar)); non-positive or non-finite invvar (no data) -> NaN.
    """
    iv = np.asarray(invvar_nmgy2, dtype=np.float64)
    good = np.isfinite(iv) & (iv > 0)
    out = np.full(iv.shape, np.nan)
    out[good] = NANOMAGGY_ZEROPOINT_MAG - 2.5 * np.log10(5.0 / np.sqrt(iv[good]))
    return out


def psfdepth_mag5sigma_to_invvar(mag5sigma) -> np.ndarray:
    """Point-source inverse variance (1/nanomaggy^2) from a 5-sigma AB depth; NaN/inf depth (no data) -> 0."""
    m = np.asarray(mag5sigma, dtype=np.float64)
    good = np.isfinite(m) & (m > 0) & (m < 40)  # > 40 mag is no depth (and would overflow)
    out = np.zeros(m.shape)
    sigma_nmgy = 10.0 ** ((NANOMAGGY_ZEROPOINT_MAG - m[good]) / 2.5) / 5.0
    out[good] = 1.0 / sigma_nmgy**2
    return out


# --------------------------------------------------------------------------- table loader

# Sanity range of a 5-sigma point-source depth; a file whose depths fall outside it was given
# in the other unit (inverse variances of ~10-10^5 would read as absurd magnitudes).
_MAG5_RANGE = (18.0, 30.0)


def read_fits_table(path):
    """HDU 1 of a FITS table as a pandas DataFrame: vector columns (nexphist...) dropped, bytes decoded and stripped."""
    from astropy.table import Table

    tab = Table.read(path, hdu=1)
    df = tab[[c for c in tab.colnames if tab[c].ndim <= 1]].to_pandas()
    for col in df.columns:
        if df[col].dtype == object and len(df) and isinstance(df[col].iloc[0], bytes):
            df[col] = df[col].str.decode("ascii").str.strip()
    return df


def _read_any_table(path: Path):
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith((".fits", ".fits.gz", ".fit")):
            return read_fits_table(path), "fits"
        if name.endswith(".parquet") or path.is_dir():
            return pd.read_parquet(path), "parquet"
        if name.endswith((".csv", ".csv.gz")):
            return pd.read_csv(path, dtype={"brickname": str, "BRICKNAME": str}), "csv"
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path}: cannot read bricks table ({exc})") from exc
    raise InputDataError(f"{path}: unknown bricks-table format (expected .fits[.gz], .csv[.gz] or .parquet)")


def load_bricks_table(path, psfdepth_unit: str = "auto", bands=BANDS):
    """Read a DR10 bricks summary into a pandas DataFrame with unit-named columns.

    ``path``: the official ``survey-bricks-dr10-south.fits.gz`` (or any FITS with the same
    columns), a CSV excerpt (``shared/data/survey/dr10_south_bricks_excerpt_*.csv``, the mock's
    table) or Parquet. Column names are matched case-insensitively.

    ``psfdepth_unit``: unit of the input ``psfdepth_<band>`` columns, ``"invvar"``
    (1/nanomaggy^2) or ``"mag"`` (5-sigma AB). ``"auto"`` takes the documented convention of the
    format: FITS -> invvar (the official file), CSV/Parquet -> mag (Data Lab copies). Either way
    the result is checked against the range of real depths (18-30 mag), so a table given in the
    other unit fails loudly instead of producing nonsense. Columns already named
    ``psfdepth_<b>_invvar_nmgy2`` / ``psfdepth_<b>_mag5sigma`` are taken as they are.

    PSF FWHM fallback: a zero, negative or missing ``psfsize_<b>`` takes r's value (then g's,
    then z's); ``psf_fwhm_<b>_fallback`` records that it happened and a log line counts it.
    Geometry columns (ra1..dec2) missing from the input are computed from the grid.

    Returns the columns of :data:`BRICK_TABLE_COLUMNS` plus every other scalar input column
    (lower-cased), one row per brick, index 0..n-1.
    """
    import pandas as pd

    path = Path(path)
    df, fmt = _read_any_table(path)
    df = df.rename(columns={c: c.lower() for c in df.columns})
    if "brickname" not in df.columns:
        raise InputDataError(f"{path}: bricks table has no 'brickname' column (columns: {list(df.columns)[:12]}...)")
    df["brickname"] = df["brickname"].astype(str).str.strip()
    if psfdepth_unit not in ("auto", "invvar", "mag"):
        raise ValueError(f"psfdepth_unit must be 'auto', 'invvar' or 'mag' (got {psfdepth_unit!r})")
    unit = psfdepth_unit if psfdepth_unit != "auto" else ("invvar" if fmt == "fits" else "mag")

    if not {"ra", "dec"} <= set(df.columns):
        ra_c, dec_c = brick_center(df["brickname"].to_numpy())
        df["ra"], df["dec"] = ra_c, dec_c
    if not {"ra1", "ra2", "dec1", "dec2"} <= set(df.columns):
        geo = brick_geometry(df["ra"].to_numpy(), df["dec"].to_numpy())
        for key in ("ra1", "ra2", "dec1", "dec2"):
            df[key] = geo[key]

    out = {}
    raw_fwhm = {}
    looks_like_mag = []  # per band: every invvar value in 15..30, as magnitudes would be
    for b in bands:
        col = f"psfsize_{b}"
        raw_fwhm[b] = df[col].to_numpy(np.float64) if col in df.columns else np.full(len(df), np.nan)

        iv_col, mag_col = f"psfdepth_{b}_invvar_nmgy2", f"psfdepth_{b}_mag5sigma"
        if iv_col in df.columns:
            iv = df[iv_col].to_numpy(np.float64)
        elif mag_col in df.columns:
            iv = psfdepth_mag5sigma_to_invvar(df[mag_col].to_numpy(np.float64))
        elif f"psfdepth_{b}" in df.columns:
            raw = df[f"psfdepth_{b}"].to_numpy(np.float64)
            iv = np.where(np.isfinite(raw) & (raw > 0), raw, 0.0) if unit == "invvar" else psfdepth_mag5sigma_to_invvar(raw)
        else:
            iv = np.full(len(df), np.nan)  # depth unknown: coverage falls back to psfsize below
        mag = psfdepth_invvar_to_mag5sigma(iv)
        finite = mag[np.isfinite(mag)]
        if finite.size and not _MAG5_RANGE[0] <= np.median(finite) <= _MAG5_RANGE[1]:
            raise InputDataError(
                f"{path}: psfdepth_{b} read as {unit!r} gives a median 5-sigma depth of {np.median(finite):.2f} mag, "
                f"outside {_MAG5_RANGE}: the column is probably in the other unit (pass psfdepth_unit=...)"
            )
        if f"psfdepth_{b}" in df.columns:
            raw = df[f"psfdepth_{b}"].to_numpy(np.float64)
            raw = raw[np.isfinite(raw) & (raw > 0)]
            if unit == "invvar":
                looks_like_mag.append(raw.size > 0 and bool(np.all((raw > 15) & (raw < 30))))
            elif raw.size and not _MAG5_RANGE[0] <= np.median(raw) <= _MAG5_RANGE[1]:
                raise InputDataError(
                    f"{path}: psfdepth_{b} read as 5-sigma magnitudes has median {np.median(raw):.4g}, outside {_MAG5_RANGE}: "
                    "the column is probably an inverse variance (pass psfdepth_unit='invvar')"
                )
        out[f"psfdepth_{b}_invvar_nmgy2"] = iv  # NaN only when the table has no depth column at all
        out[f"psfdepth_{b}_mag5sigma"] = mag
        has_depth = np.isfinite(iv) & (iv > 0)
        has_size = np.isfinite(raw_fwhm[b]) & (raw_fwhm[b] > 0)
        out[f"has_{b}"] = np.where(np.isnan(iv), has_size, has_depth)

    if looks_like_mag and all(looks_like_mag):
        # invvar 15-30 (depth 22.4-22.8 mag) in every band of every brick is not a real table; magnitudes are
        raise InputDataError(f"{path}: psfdepth_* read as inverse variances all lie in 15-30, as 5-sigma magnitudes would: the columns are probably in the other unit (pass psfdepth_unit='mag')")

    fallback_order = [b for b in ("r", "g", "z") if b in bands]
    n_fallback = 0
    for b in bands:
        fwhm = raw_fwhm[b].copy()
        bad = ~(np.isfinite(fwhm) & (fwhm > 0))
        flagged = bad.copy()
        for other in fallback_order:
            if not bad.any():
                break
            donor = raw_fwhm[other]
            use = bad & np.isfinite(donor) & (donor > 0)
            fwhm[use] = donor[use]
            bad &= ~use
        fwhm[bad] = np.nan  # no band has a PSF size: left NaN (the cross-match flags such bricks)
        out[f"psf_fwhm_{b}_arcsec"] = fwhm
        out[f"psf_fwhm_{b}_fallback"] = flagged
        n_fallback += int(flagged.sum())
    if n_fallback:
        log.info("%s: %d band x brick PSF sizes were 0/missing and fell back to another band", path, n_fallback)

    if "ebv" not in df.columns:
        df["ebv"] = np.nan
    base = ["brickname", "ra", "dec", "ra1", "ra2", "dec1", "dec2"]
    result = pd.concat([df[base].reset_index(drop=True), pd.DataFrame(out)], axis=1)
    result["ebv"] = df["ebv"].to_numpy(np.float64)
    consumed = set(base) | {"ebv"} | {f"psfsize_{b}" for b in bands} | {f"psfdepth_{b}" for b in bands} | set(out)
    for col in df.columns:
        if col not in consumed:
            result[col] = df[col].to_numpy()
    dup = result["brickname"].duplicated()
    if dup.any():
        raise InputDataError(f"{path}: brickname {result['brickname'][dup].iloc[0]!r} appears more than once")
    return result
