"""Stein et al. (2021) DR9 self-supervised lens candidates (MIT, bundled).

``stein2021_new_candidates.tsv``: 1,192 candidates with grade A (404) or B (788), ra, dec,
z_spec (-99 when none), photometry and nobs. Names are built from the position
(``Jhhmmss.ss+ddmmss.s``). Online: VizieR has no copy; the bundled table is the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from dhs_spark.catalogs.common import CatalogSource, find_files, format_jname, missing_file_message, normalise
from dhs_spark.errors import InputDataError

FILE = "stein2021_new_candidates.tsv"
REFERENCE = "Stein et al. (2021) arXiv:2110.00023"


def read_stein(path: Path):
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    missing = [c for c in ("ra", "dec", "z_spec", "grade") if c not in table.columns]
    if missing:
        raise InputDataError(f"{path}: lacks columns {missing} (has {list(table.columns)})")
    z = pd.to_numeric(table["z_spec"], errors="coerce")
    df = pd.DataFrame({
        "name": [format_jname(r, d) for r, d in zip(table["ra"], table["dec"])], "ra": table["ra"], "dec": table["dec"],
        "z_lens": z.where(z > 0, np.nan), "grade": table["grade"].astype(str), "catalogue": "stein2021", "reference": REFERENCE,
    })
    return normalise(df, "stein2021", REFERENCE, str(path))


def load_local(supplied_dir: Optional[Path]):
    paths, origin = find_files((FILE,), supplied_dir, bundled=True)
    if not paths:
        raise FileNotFoundError(missing_file_message("stein2021", FILE, supplied_dir, "bundled table not found"))
    return read_stein(paths[0]), paths[0], origin


SOURCE = CatalogSource(
    key="stein2021", kind="lens", description="Stein et al. 2021 DR9 candidates (grade A/B)",
    licence="MIT (bundled)", load_local=load_local, fetch_online=None)
