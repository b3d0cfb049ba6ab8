"""SLACS, S4TM and BELLS: the spectroscopically selected lenses (125 in all).

Local table: ``slacs_s4tm_bells_du.dat`` (Du et al. compilation, BSD-3, bundled): lens name,
survey, spectrograph, SDSS J-name coordinates ``hhmmss.ss+ddmmss.s``, z_lens, z_src, velocity
dispersion, ... Positions come from the SDSS names (so they match them exactly).

Einstein radii: Auger et al. (2009) give theta_E for most SLACS lenses. That table has no
licence, so it is not bundled: put ``slacs_auger2009.cat`` in the supplied directory, or let
the online path fetch it from VizieR; without it ``theta_e_arcsec`` stays NaN.

Online: VizieR tables of Bolton et al. 2008 (SLACS), Shu et al. 2017 (S4TM) and Brownstein et al.
2012 (BELLS), and Auger et al. 2009 for theta_E. The VizieR column names are matched from short
alias lists; a reply without the expected columns raises and the download falls back to the
local table (the online parser is tested against a local stand-in server, not against VizieR).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from dhs_spark.catalogs.common import (
    CatalogSource,
    find_files,
    format_jname,
    missing_file_message,
    normalise,
    parse_jname,
    pick_column,
    vizier_fetch,
)
from dhs_spark.errors import InputDataError

DU_FILE = "slacs_s4tm_bells_du.dat"
AUGER_FILE = "slacs_auger2009.cat"
REFERENCES = {
    "slacs": "Bolton et al. (2008) ApJ 682, 964; Auger et al. (2009) ApJ 705, 1099",
    "s4tm": "Shu et al. (2015) ApJ 803, 71; Shu et al. (2017) ApJ 851, 48",
    "bells": "Brownstein et al. (2012) ApJ 744, 41",
}
VIZIER_TABLES = {"slacs": "J/ApJ/682/964/table4", "s4tm": "J/ApJ/851/48/table3", "bells": "J/ApJ/744/41/table2"}
VIZIER_AUGER = "J/ApJ/705/1099/table3"


def short_name(jname: str) -> str:
    """``Jhhmm+ddmm`` of a full J-name (the form SLACS papers use, e.g. J0029-0055)."""
    ra, dec = parse_jname(jname)
    full = format_jname(ra, dec)
    return full[:5] + full[10:15]


def read_du_table(path: Path):
    """Parse the Du et al. whitespace table; one row per lens, normalised columns."""
    import pandas as pd

    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 6:
            raise InputDataError(f"{path}: line {lineno}: expected >= 6 columns, got {len(parts)}: {line!r}")
        lens_name, survey, _spectrograph, radec, z_lens, z_src = parts[:6]
        try:
            ra, dec = parse_jname("J" + radec)
        except ValueError as exc:
            raise InputDataError(f"{path}: line {lineno} ({lens_name}): {exc}") from None
        key = survey.lower()
        if key not in REFERENCES:
            raise InputDataError(f"{path}: line {lineno} ({lens_name}): unknown survey {survey!r}, expected SLACS/S4TM/BELLS")
        rows.append({"name": f"SDSS J{radec}", "short_name": lens_name, "ra": ra, "dec": dec, "z_lens": z_lens,
                     "z_src": z_src, "grade": "confirmed", "catalogue": key, "reference": REFERENCES[key]})
    df = pd.DataFrame(rows)
    short = df.pop("short_name")
    out = normalise(df, "slacs", "", str(path))
    out.insert(1, "short_name", short.to_numpy())
    return out


def read_auger_table(path: Path):
    """Auger et al. 2009 SLACS table: ``short_name`` (Jhhmm+ddmm) -> ``theta_e_arcsec``."""
    import pandas as pd

    rows = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            rows.append({"short_name": parts[0].replace("SDSS", ""), "theta_e_arcsec": float(parts[7])})
        except (IndexError, ValueError):
            raise InputDataError(f"{path}: line {lineno}: expected name and theta_Ein in column 8: {line!r}") from None
    return pd.DataFrame(rows)


def add_theta_e(lenses, auger):
    """Fill ``theta_e_arcsec`` of lenses whose short name appears in the Auger table."""
    theta = dict(zip(auger["short_name"], auger["theta_e_arcsec"]))
    filled = lenses["short_name"].map(theta)
    lenses = lenses.copy()
    lenses["theta_e_arcsec"] = filled.where(filled.notna(), lenses["theta_e_arcsec"]).astype(np.float64)
    return lenses


def load_local(supplied_dir: Optional[Path]):
    paths, origin = find_files((DU_FILE,), supplied_dir, bundled=True)
    if not paths:
        raise FileNotFoundError(missing_file_message("slacs_s4tm_bells", DU_FILE, supplied_dir, "bundled table not found"))
    return read_du_table(paths[0]), paths[0], origin


def load_auger_local(supplied_dir: Optional[Path]):
    paths, origin = find_files((AUGER_FILE,), supplied_dir, bundled=False)
    if not paths:
        raise FileNotFoundError(missing_file_message(
            "auger2009_theta_e", f"{AUGER_FILE} (Auger et al. 2009: name RA dec zd zs Reff_arcsec Reff_kpc theta_Ein ...)",
            supplied_dir, "no licence allows bundling this table"))
    return read_auger_table(paths[0]), paths[0], origin


def fetch_online(urls: dict, timeout_s: float):
    import pandas as pd

    parts = []
    for key, table_id in VIZIER_TABLES.items():
        table = vizier_fetch(table_id, urls["vizier"], timeout_s)
        name_col = pick_column(table, ("SDSS", "Name", "Lens", "ID"))
        zl_col = pick_column(table, ("zFG", "zL", "z_L", "zl", "zlens", "zd"))
        zs_col = pick_column(table, ("zBG", "zS", "z_S", "zs", "zsrc"))
        if name_col is None or zl_col is None or zs_col is None:
            raise InputDataError(f"VizieR {table_id}: expected name, z_lens and z_src columns, found {list(table.columns)}")
        df = pd.DataFrame({"name": table[name_col].str.strip(), "ra": table["ra"], "dec": table["dec"], "z_lens": table[zl_col],
                           "z_src": table[zs_col], "grade": "confirmed", "catalogue": key, "reference": REFERENCES[key]})
        parts.append(normalise(df, key, REFERENCES[key], f"VizieR {table_id}"))
    out = pd.concat(parts, ignore_index=True)
    out.insert(1, "short_name", [format_jname(r, d)[:5] + format_jname(r, d)[10:15] for r, d in zip(out["ra"], out["dec"])])
    return out


def fetch_auger_online(urls: dict, timeout_s: float):
    import pandas as pd

    table = vizier_fetch(VIZIER_AUGER, urls["vizier"], timeout_s)
    theta_col = pick_column(table, ("bSIE", "thetaE", "theta_Ein", "REin", "bE"))
    if theta_col is None:
        raise InputDataError(f"VizieR {VIZIER_AUGER}: no Einstein-radius column in {list(table.columns)}")
    names = [format_jname(r, d)[:5] + format_jname(r, d)[10:15] for r, d in zip(table["ra"], table["dec"])]
    return pd.DataFrame({"short_name": names, "theta_e_arcsec": pd.to_numeric(table[theta_col], errors="coerce")})


SOURCE = CatalogSource(
    key="slacs_s4tm_bells", kind="lens", description="SLACS + S4TM + BELLS spectroscopic lenses (125)",
    licence="BSD-3 (Du et al. compilation, bundled)", load_local=load_local, fetch_online=fetch_online)
AUGER_SOURCE = CatalogSource(
    key="auger2009_theta_e", kind="enrichment", description="Auger et al. 2009 Einstein radii of SLACS lenses",
    licence="none given (supplied by the user or fetched)", load_local=load_auger_local, fetch_online=fetch_auger_online)
