"""Galaxy Zoo DECaLS ring galaxies (Walmsley et al. 2022, via zoobot; GPL-3.0, bundled).

``gz_decals_rings.csv``: 470 galaxies identified by IAU J-name (``id_str``), 235 with ``ring``=1
(volunteer-identified rings) and 235 with ``ring``=0. Only the rings are hard negatives: a ring
galaxy is the look-alike of an Einstein ring. Positions are parsed from the J-names.

Online: the same table from zoobot's repository (``urls['rings']``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from dhs_spark.catalogs.common import CatalogSource, find_files, missing_file_message, normalise, parse_jname
from dhs_spark.errors import InputDataError

FILE = "gz_decals_rings.csv"
RINGS_URL = "https://raw.githubusercontent.com/mwalmsley/zoobot/main/data/gz_decals_rings.csv"
REFERENCE = "Walmsley et al. (2022) MNRAS 509, 3966 (Galaxy Zoo DECaLS)"


def normalise_rings(table, path: str):
    import pandas as pd

    missing = [c for c in ("id_str", "ring") if c not in table.columns]
    if missing:
        raise InputDataError(f"{path}: lacks columns {missing} (has {list(table.columns)})")
    rings = table[pd.to_numeric(table["ring"], errors="coerce") == 1]
    coords = []
    for idx, name in zip(rings.index, rings["id_str"]):
        try:
            coords.append(parse_jname(name))
        except ValueError as exc:
            raise InputDataError(f"{path}: row {idx}: {exc}") from None
    df = pd.DataFrame({"name": rings["id_str"].to_numpy(), "ra": [c[0] for c in coords], "dec": [c[1] for c in coords],
                       "grade": "ring", "catalogue": "gz_decals_rings", "reference": REFERENCE})
    return normalise(df, "gz_decals_rings", REFERENCE, path)


def load_local(supplied_dir: Optional[Path]):
    import pandas as pd

    paths, origin = find_files((FILE,), supplied_dir, bundled=True)
    if not paths:
        raise FileNotFoundError(missing_file_message("gz_decals_rings", FILE, supplied_dir, "bundled table not found"))
    return normalise_rings(pd.read_csv(paths[0], dtype=str), str(paths[0])), paths[0], origin


def fetch_online(urls: dict, timeout_s: float):
    import io

    import pandas as pd
    import requests

    resp = requests.get(urls["rings"], timeout=timeout_s)
    resp.raise_for_status()
    return normalise_rings(pd.read_csv(io.StringIO(resp.text), dtype=str), urls["rings"])


SOURCE = CatalogSource(
    key="gz_decals_rings", kind="hardneg", description="Galaxy Zoo DECaLS ring galaxies (ring=1)",
    licence="GPL-3.0 (bundled)", load_local=load_local, fetch_online=fetch_online)
