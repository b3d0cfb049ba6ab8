"""What every catalogue family shares: the normalised columns, J-name parsing, where bundled
and user-supplied tables live, and the online fetch (VizieR ASU-TSV over plain ``requests``).

Normalised columns (:data:`CATALOG_COLUMNS`), one row per object:

- ``name`` (str): the catalogue's own identifier (IAU/SDSS J-name where it has one);
- ``ra``, ``dec`` (float64): ICRS degrees;
- ``z_lens``, ``z_src`` (float64): redshifts, NaN when unknown (hard negatives: ``z_lens`` is the
  galaxy's own redshift where known);
- ``theta_e_arcsec`` (float64): Einstein radius in arcsec, NaN when unknown;
- ``grade`` (str): the catalogue's grade or class (``confirmed`` for spectroscopic lenses,
  ``confident``/``probable`` for lenscat, ``A``/``B`` for Stein et al., ``ring``, Darg's class);
- ``catalogue`` (str): the source key (``slacs``, ``bells``, ``s4tm``, ``desi_lenscat``, ...);
  '|'-joined after a merge;
- ``reference`` (str): the publication(s); '|'-joined after a merge.

A table is bundled inside the package (``dhs_spark/data/catalogs``) only where its licence allows
it, with the licence beside it. Tables with no licence are "supplied": the user puts them in the
supplied directory (or fetches them online), and the error says where.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dhs_spark.errors import InputDataError

log = logging.getLogger(__name__)

CATALOG_COLUMNS = ("name", "ra", "dec", "z_lens", "z_src", "theta_e_arcsec", "grade", "catalogue", "reference")
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "data" / "catalogs"
VIZIER_ASU_URL = "https://vizier.cds.unistra.fr/viz-bin/asu-tsv"
DEFAULT_TIMEOUT_S = 30.0

# Jhhmmss.ss+ddmmss.s, with optional "SDSS"/"J" prefix and any number of decimals.
_JNAME = re.compile(r"J?\s*(\d{2})(\d{2})(\d{2}(?:\.\d*)?)\s*([+-])(\d{2})(\d{2})(\d{2}(?:\.\d*)?)")


def parse_jname(name: str) -> tuple[float, float]:
    """(ra, dec) in degrees from an IAU/SDSS J-name such as ``SDSS J000802.96-000408.2``.

    The name's digits are truncated coordinates, so the result is the name's own position (to
    its last digit: 0.15" in RA for hh mm ss.ss, 0.1" in Dec for dd mm ss.s), not the object's
    exact centroid. Raises ``ValueError`` naming the string when it holds no J-name.
    """
    m = _JNAME.search(str(name))
    if m is None:
        raise ValueError(f"not a J-name (Jhhmmss.ss+ddmmss.s): {name!r}")
    hh, mm, ss, sign, dd, dm, ds = m.groups()
    ra = 15.0 * (int(hh) + int(mm) / 60.0 + float(ss) / 3600.0)
    dec = int(dd) + int(dm) / 60.0 + float(ds) / 3600.0
    if not (0.0 <= ra < 360.0 and dec <= 90.0 and int(mm) < 60 and int(dm) < 60):
        raise ValueError(f"J-name out of range: {name!r}")
    return ra, -dec if sign == "-" else dec


def format_jname(ra_deg: float, dec_deg: float) -> str:
    """``Jhhmmss.ss+ddmmss.s`` of a position in degrees (truncated, as IAU names are)."""
    ra_s = np.floor(np.mod(ra_deg, 360.0) / 15.0 * 3600.0 * 100.0 + 1e-6) / 100.0
    hh, rem = divmod(ra_s, 3600.0)
    mm, ss = divmod(rem, 60.0)
    dec_s = np.floor(abs(dec_deg) * 3600.0 * 10.0 + 1e-6) / 10.0
    dd, rem = divmod(dec_s, 3600.0)
    dm, ds = divmod(rem, 60.0)
    sign = "-" if dec_deg < 0 else "+"
    return f"J{int(hh):02d}{int(mm):02d}{ss:05.2f}{sign}{int(dd):02d}{int(dm):02d}{ds:04.1f}"


def normalise(df, catalogue: str, reference: str, path: str = "<table>"):
    """Return ``df`` with exactly :data:`CATALOG_COLUMNS` (missing ones filled), typed, and
    checked: finite coordinates in range, each bad row named with its file and index."""
    import pandas as pd

    out = pd.DataFrame(index=df.index)
    for col in CATALOG_COLUMNS:
        out[col] = df[col] if col in df.columns else np.nan
    out["catalogue"] = out["catalogue"].where(out["catalogue"].notna(), catalogue)
    out["reference"] = out["reference"].where(out["reference"].notna(), reference)
    for col in ("ra", "dec", "z_lens", "z_src", "theta_e_arcsec"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype(np.float64)
    for col in ("name", "grade", "catalogue", "reference"):
        out[col] = out[col].astype(object).where(out[col].notna(), "").astype(str)
    bad = ~np.isfinite(out["ra"]) | ~np.isfinite(out["dec"]) | (out["dec"].abs() > 90)
    if bad.any():
        first = out.index[bad.to_numpy()][0]
        raise InputDataError(f"{path}: row {first} ({out.loc[first, 'name']!r}) has no valid ra/dec "
                             f"(ra={df.loc[first].get('ra')!r}, dec={df.loc[first].get('dec')!r})")
    out["ra"] = np.mod(out["ra"], 360.0)
    return out.reset_index(drop=True)


def first_number(value) -> float:
    """The first finite number in a '|'-joined field such as ``'0.26 | nan'`` (NaN if none)."""
    for part in str(value).split("|"):
        try:
            v = float(part.strip())
        except ValueError:
            continue
        if np.isfinite(v):
            return v
    return float("nan")


def first_token(value) -> str:
    """The first non-empty entry of a '|'-joined field."""
    parts = [p.strip() for p in str(value).split("|") if p.strip()]
    return parts[0] if parts else ""


def find_files(patterns: tuple[str, ...], supplied_dir: Optional[Path], bundled: bool) -> tuple[list[Path], str]:
    """Locate a table (one file or a glob of parts): the supplied directory first (a user's
    copy wins), then the bundled one. Returns ``(paths, origin)`` with origin 'supplied' or
    'bundled', or ``([], '')`` when no directory has a match."""
    dirs = ([(Path(supplied_dir), "supplied")] if supplied_dir else []) + ([(BUNDLED_DIR, "bundled")] if bundled else [])
    for directory, origin in dirs:
        hits = sorted({p for pattern in patterns for p in directory.glob(pattern)})
        if hits:
            return hits, origin
    return [], ""


def vizier_fetch(source: str, base_url: str = VIZIER_ASU_URL, timeout_s: float = DEFAULT_TIMEOUT_S):
    """Fetch a whole VizieR table as a DataFrame through the ASU-TSV interface.

    Asks VizieR to add its computed J2000 position in decimal degrees (``_RAJ2000``,
    ``_DEJ2000``), so every table has ``ra``/``dec`` whatever its own columns are. The TSV has
    '#' comment lines, then a header line, a units line and a dashes line before the rows.
    Raises ``requests.RequestException`` (network) or ``InputDataError`` (unreadable reply).
    """
    import pandas as pd
    import requests

    params = {"-source": source, "-out.max": "unlimited", "-out.add": "_RAJ,_DEJ", "-oc.form": "d", "-out.all": ""}
    resp = requests.get(base_url, params=params, timeout=timeout_s)
    resp.raise_for_status()
    lines = [ln for ln in resp.text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) < 3:
        raise InputDataError(f"VizieR {source} at {base_url}: reply has no table")
    header = lines[0]
    # VizieR puts a units line and a dashes line between the header and the rows.
    start = 1
    for i in range(1, min(4, len(lines))):
        if set(lines[i].replace("\t", "")) <= {"-", " "}:
            start = i + 1
            break
    table = pd.read_csv(io.StringIO("\n".join([header, *lines[start:]])), sep="\t", dtype=str)
    table.columns = [c.strip() for c in table.columns]
    if "_RAJ2000" not in table.columns or "_DEJ2000" not in table.columns:
        raise InputDataError(f"VizieR {source} at {base_url}: no _RAJ2000/_DEJ2000 columns in {list(table.columns)}")
    table["ra"] = pd.to_numeric(table["_RAJ2000"], errors="coerce")
    table["dec"] = pd.to_numeric(table["_DEJ2000"], errors="coerce")
    return table


def pick_column(table, candidates: tuple[str, ...]) -> Optional[str]:
    """The first column of ``table`` whose name matches one of ``candidates`` (case-insensitive)."""
    lower = {c.lower(): c for c in table.columns}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    return None


@dataclass(frozen=True)
class CatalogSource:
    """One catalogue source of the download.

    ``load_local(supplied_dir)`` returns ``(DataFrame, path, origin)`` from the supplied or
    bundled table, or raises ``FileNotFoundError`` whose message says which file to put where.
    ``fetch_online(urls, timeout_s)`` returns the normalised DataFrame from the network (``urls``
    maps 'vizier', 'lenscat', 'rings' to endpoints); None where no online copy exists.
    ``kind`` is 'lens', 'hardneg' or 'enrichment' (adds columns to another source's rows).
    """

    key: str
    kind: str
    description: str
    licence: str
    load_local: Callable
    fetch_online: Optional[Callable]


def missing_file_message(key: str, files: str, supplied_dir: Optional[Path], why: str) -> str:
    where = supplied_dir if supplied_dir else "<output-dir>/supplied"
    return f"{key}: {why}; put {files} into {where} (or run without --offline to fetch it)"
