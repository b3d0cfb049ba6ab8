"""DESI Legacy Surveys lens candidates from lenscat (Vujeva et al. 2024, MIT, bundled).

``lenscat_desi_candidates.csv``: 5,103 candidates of Huang et al. (2020, 2021) and Storfer et al.
(2022), graded ``confident`` (434) or ``probable``. ``lenscat_slacs_bells.csv``: lenscat's 183
SLACS/BELLS rows. Columns: name, ``RA [deg]``, ``DEC [deg]``, zlens, type, grading, ref, where a
multi-catalogue entry '|'-joins its names, redshifts and references: the first name is kept as
``name``, the first finite redshift as ``z_lens``, every reference in ``reference``.

Online: lenscat's own catalogue file (the same columns) from its GitHub repository, filtered to
the DESI-candidate references and to SLACS/BELLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dhs_spark.catalogs.common import CatalogSource, find_files, first_number, first_token, missing_file_message, normalise
from dhs_spark.errors import InputDataError

DESI_FILE = "lenscat_desi_candidates.csv"
SLACS_BELLS_FILE = "lenscat_slacs_bells.csv"
LENSCAT_URL = "https://raw.githubusercontent.com/lenscat/lenscat/main/lenscat/data/catalog.csv"
DESI_REFS = ("Huang et al. (2020)", "Huang et al. (2021)", "Storfer et al. (2022)")
SLACS_BELLS_REFS = ("SLACS", "Bolton et al.", "Brownstein et al.", "Auger et al.", "Shu et al.")
REQUIRED_COLUMNS = ("name", "RA [deg]", "DEC [deg]", "zlens", "grading", "ref")


def normalise_lenscat(table, catalogue: str, path: str):
    """lenscat columns -> normalised columns (see module docstring)."""
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(f"{path}: lenscat table lacks columns {missing} (has {list(table.columns)})")
    refs = table["ref"].fillna("").astype(str).map(lambda s: "|".join(p.strip() for p in s.split("|") if p.strip()))
    df = pd.DataFrame({
        "name": table["name"].map(first_token), "ra": table["RA [deg]"], "dec": table["DEC [deg]"],
        "z_lens": table["zlens"].map(first_number), "grade": table["grading"].astype(str).str.strip(),
        "catalogue": catalogue, "reference": refs,
    })
    return normalise(df, catalogue, "lenscat", path)


def read_lenscat(path: Path, catalogue: str):
    import pandas as pd

    return normalise_lenscat(pd.read_csv(path, dtype=str), catalogue, str(path))


def load_local(supplied_dir: Optional[Path]):
    import pandas as pd

    parts, used, origin = [], [], ""
    for fname, catalogue in ((DESI_FILE, "desi_lenscat"), (SLACS_BELLS_FILE, "lenscat_slacs_bells")):
        paths, origin = find_files((fname,), supplied_dir, bundled=True)
        if not paths:
            raise FileNotFoundError(missing_file_message("lenscat", fname, supplied_dir, "bundled table not found"))
        parts.append(read_lenscat(paths[0], catalogue))
        used.append(paths[0])
    return pd.concat(parts, ignore_index=True), used[0].parent, origin


def _has_any(refs: str, needles: tuple[str, ...]) -> bool:
    return any(n in refs for n in needles)


def fetch_online(urls: dict, timeout_s: float):
    import io

    import pandas as pd
    import requests

    resp = requests.get(urls["lenscat"], timeout=timeout_s)
    resp.raise_for_status()
    table = pd.read_csv(io.StringIO(resp.text), dtype=str)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise InputDataError(f"{urls['lenscat']}: lenscat table lacks columns {missing}")
    refs = table["ref"].fillna("")
    desi = table[refs.map(lambda s: _has_any(s, DESI_REFS))]
    rest = table[~refs.map(lambda s: _has_any(s, DESI_REFS)) & refs.map(lambda s: _has_any(s, SLACS_BELLS_REFS))]
    return pd.concat([normalise_lenscat(desi, "desi_lenscat", urls["lenscat"]),
                      normalise_lenscat(rest, "lenscat_slacs_bells", urls["lenscat"])], ignore_index=True)


SOURCE = CatalogSource(
    key="lenscat", kind="lens", description="DESI Legacy Survey candidates (Huang 2020/2021, Storfer 2022) and SLACS/BELLS via lenscat",
    licence="MIT (lenscat, bundled)", load_local=load_local, fetch_online=fetch_online)
