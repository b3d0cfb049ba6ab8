"""Darg et al. (2010) Galaxy Zoo merger sample (MNRAS 401, 1043).

No licence is given for the table, so it is not bundled: put the ``darg_*.csv`` parts (columns
``ID`` (J-name), ``RA``, ``DEC`` (deg), ``CLASS``) into the supplied directory, or let the online
path fetch it from VizieR. Rows of class ``exclude`` (objects Darg et al. removed from the
merger sample) are dropped; the other classes (disturbed, overlap, uncertain, big) are kept
with the class as ``grade``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dhs_spark.catalogs.common import CatalogSource, find_files, missing_file_message, normalise, pick_column, vizier_fetch
from dhs_spark.errors import InputDataError

PATTERNS = ("darg_*.csv", "darg2010_mergers.csv")
VIZIER_TABLE = "J/MNRAS/401/1043/table2"
REFERENCE = "Darg et al. (2010) MNRAS 401, 1043"
DROPPED_CLASSES = ("exclude",)


def normalise_darg(table, path: str):
    import pandas as pd

    missing = [c for c in ("ID", "RA", "DEC", "CLASS") if c not in table.columns]
    if missing:
        raise InputDataError(f"{path}: lacks columns {missing} (has {list(table.columns)})")
    cls = table["CLASS"].astype(str).str.strip().str.lower()
    kept = table[~cls.isin(DROPPED_CLASSES)]
    df = pd.DataFrame({"name": kept["ID"].astype(str).str.strip(), "ra": kept["RA"], "dec": kept["DEC"],
                       "grade": cls[kept.index], "catalogue": "darg2010_mergers", "reference": REFERENCE})
    return normalise(df, "darg2010_mergers", REFERENCE, path)


def load_local(supplied_dir: Optional[Path]):
    import pandas as pd

    paths, origin = find_files(PATTERNS, supplied_dir, bundled=False)
    if not paths:
        raise FileNotFoundError(missing_file_message(
            "darg2010_mergers", "darg_*.csv (Darg et al. 2010; columns ID,RA,DEC,CLASS)", supplied_dir,
            "no licence allows bundling this table"))
    parts = [normalise_darg(pd.read_csv(p, dtype=str), str(p)) for p in paths]
    return pd.concat(parts, ignore_index=True), paths[0].parent, origin


def fetch_online(urls: dict, timeout_s: float):
    import pandas as pd

    table = vizier_fetch(VIZIER_TABLE, urls["vizier"], timeout_s)
    name_col = pick_column(table, ("SDSS", "Name", "ID", "objID"))
    class_col = pick_column(table, ("Class", "CLASS", "Type"))
    if name_col is None or class_col is None:
        raise InputDataError(f"VizieR {VIZIER_TABLE}: expected a name and a class column, found {list(table.columns)}")
    renamed = pd.DataFrame({"ID": table[name_col], "RA": table["ra"], "DEC": table["dec"], "CLASS": table[class_col]})
    return normalise_darg(renamed, f"VizieR {VIZIER_TABLE}")


SOURCE = CatalogSource(
    key="darg2010_mergers", kind="hardneg", description="Darg et al. 2010 Galaxy Zoo mergers",
    licence="none given (supplied by the user or fetched)", load_local=load_local, fetch_online=fetch_online)
