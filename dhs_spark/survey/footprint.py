"""Footprint cross-match: which DR10 brick holds each catalogue row, and is it usable.

Per row: ``brickname`` (from the brick grid, :func:`~dhs_spark.survey.bricks.brickname_for`),
``in_footprint`` (the brick is in the bricks table and has data in every requested band) and,
for rows outside, ``outside_reason``:

- ``invalid_position``: RA/Dec missing, non-finite or |Dec| > 90;
- ``brick_not_in_table``: the brick is not in the bricks table (outside the survey);
- ``no_<band>_coverage``: the brick has no data in that band (the first missing band is named);
- ``no_psf_size``: no band of the brick has a PSF size.

Rows are never dropped: every input row comes out, in order, with the brick's PSF FWHM
(arcsec, after the table's fallback, with its flag), psfdepth (inverse variance and 5-sigma
mag) and E(B-V), NaN where the brick is unknown. Everything is vectorised (one grid lookup and
one hash join), so 10^6 rows take about a second (benchmarks/bench_crossmatch.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhs_spark.errors import InputDataError
from dhs_spark.survey.bricks import BANDS, brickname_for, read_fits_table

OUTSIDE_REASONS = ("invalid_position", "brick_not_in_table", "no_psf_size") + tuple(f"no_{b}_coverage" for b in BANDS)


def _brick_columns(bands) -> list[str]:
    cols = []
    for b in bands:
        cols += [f"psf_fwhm_{b}_arcsec", f"psf_fwhm_{b}_fallback", f"psfdepth_{b}_invvar_nmgy2", f"psfdepth_{b}_mag5sigma"]
    return cols + ["ebv"]


def find_radec_columns(columns) -> tuple[str, str]:
    """The RA and Dec column names of a catalogue (ra/dec, RA/DEC, ra_deg/dec_deg, any case)."""
    lower = {str(c).lower(): c for c in columns}
    for ra_key, dec_key in (("ra", "dec"), ("ra_deg", "dec_deg"), ("radeg", "decdeg")):
        if ra_key in lower and dec_key in lower:
            return lower[ra_key], lower[dec_key]
    raise InputDataError(f"catalogue has no RA/Dec columns (looked for ra/dec, ra_deg/dec_deg; columns: {list(columns)[:20]})")


def crossmatch(catalog, bricks, bands=BANDS, ra_col: str | None = None, dec_col: str | None = None):
    """Cross-match a catalogue (pandas DataFrame) with a bricks table from ``load_bricks_table``.

    Returns a new DataFrame: the catalogue's columns followed by ``brickname``, ``in_footprint``,
    ``outside_reason`` (None inside) and the brick columns (module docstring), same row order.
    A catalogue column already called ``brickname`` (any case) is kept as ``brickname_input``.
    """
    import pandas as pd

    if ra_col is None or dec_col is None:
        ra_col, dec_col = find_radec_columns(catalog.columns)
    ra = pd.to_numeric(catalog[ra_col], errors="coerce").to_numpy(np.float64)
    dec = pd.to_numeric(catalog[dec_col], errors="coerce").to_numpy(np.float64)
    n = len(ra)
    valid = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)

    names = np.full(n, "", dtype="U8")
    names[valid] = brickname_for(ra[valid], dec[valid])
    idx = pd.Index(bricks["brickname"].to_numpy()).get_indexer(names)
    known = valid & (idx >= 0)

    out = catalog.copy()
    out = out.rename(columns={c: "brickname_input" for c in out.columns if str(c).lower() == "brickname"})
    out["brickname"] = np.where(valid, names, None)
    take = np.where(known, idx, 0)
    for col in _brick_columns(bands):
        if col not in bricks.columns:
            raise InputDataError(f"bricks table lacks column {col!r}: load it with dhs_spark.survey.bricks.load_bricks_table")
        values = bricks[col].to_numpy()[take]
        if values.dtype == bool:
            out[col] = np.where(known, values, False)
        else:
            out[col] = np.where(known, values.astype(np.float64), np.nan)

    reason = np.full(n, None, dtype=object)
    reason[~valid] = "invalid_position"
    reason[valid & ~known] = "brick_not_in_table"
    pending = known.copy()
    for b in bands:
        has = bricks[f"has_{b}"].to_numpy(bool)[take] if f"has_{b}" in bricks.columns else np.ones(n, bool)
        lacking = pending & ~has
        reason[lacking] = f"no_{b}_coverage"
        pending &= has
    no_psf = pending & np.all([~np.isfinite(out[f"psf_fwhm_{b}_arcsec"].to_numpy()) for b in bands], axis=0)
    reason[no_psf] = "no_psf_size"
    pending &= ~no_psf
    out["in_footprint"] = pending
    out["outside_reason"] = reason
    return out


def read_catalog(path):
    """A catalogue file (CSV[.gz], Parquet file or directory, FITS table) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputDataError(f"catalogue {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith((".fits", ".fits.gz", ".fit")):
            return read_fits_table(path)
        if name.endswith(".parquet") or path.is_dir():
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"catalogue {path}: cannot read ({exc})") from exc
