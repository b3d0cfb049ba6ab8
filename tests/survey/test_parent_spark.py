"""The Spark parent-sample step over FITS and Parquet sweeps equals the pure pandas selection."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from dhs_spark.errors import InputDataError
from dhs_spark.survey.parent import PARENT_COLUMNS, parent_sample_frame
from dhs_spark.survey.parent_spark import build_parent_sample


@pytest.fixture(scope="module")
def sweep_files(test_data, tmp_path_factory):
    """The real excerpt split into a Parquet file and two FITS files (bytes columns, float32 fluxes, like real sweeps)."""
    d = tmp_path_factory.mktemp("sweeps")
    sweep = pd.read_csv(test_data / "survey" / "dr10_lrg_sweep_excerpt.csv.gz", dtype={"BRICKNAME": str})
    cols = ["RA", "DEC", "BRICKNAME", "TYPE", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1"]
    part = sweep[cols].copy()
    for c in ("FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1"):
        part[c] = part[c].astype(np.float32)
    part.iloc[:3000].to_parquet(d / "sweep-0.parquet", index=False)
    for i, chunk in enumerate((part.iloc[3000:5000], part.iloc[5000:])):
        t = Table.from_pandas(chunk.reset_index(drop=True))
        t["BRICKNAME"] = t["BRICKNAME"].astype("S8")
        t["TYPE"] = t["TYPE"].astype("S4")
        t.write(d / f"sweep-{i + 1}.fits", overwrite=True)
    return part, [d / "sweep-0.parquet", d / "sweep-1.fits", d / "sweep-2.fits"]


def test_spark_equals_pandas(spark, sweep_files):
    part, paths = sweep_files
    df = build_parent_sample(spark, paths, variant="v2_baseline_dr10", exclude_types=("PSF",))
    assert df.columns == [c for c, _, _ in PARENT_COLUMNS]
    got = df.toPandas().sort_values(["ra", "dec"]).reset_index(drop=True)
    expect = parent_sample_frame(part, "v2_baseline_dr10", exclude_types=("PSF",)).sort_values(["ra", "dec"]).reset_index(drop=True)
    assert 0 < len(got) == len(expect) < 816
    pd.testing.assert_frame_equal(got, expect, check_dtype=False)
    assert set(got["type"]) <= {"DEV", "EXP", "REX", "SER"} and got["brickname"].str.len().eq(8).all()


def test_missing_column_is_named(spark, tmp_path):
    pd.DataFrame({"RA": [1.0], "DEC": [0.0]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(InputDataError, match="FLUX_G"):
        build_parent_sample(spark, [tmp_path / "bad.parquet"])
