"""Footprint cross-match and the `dhs crossmatch` / `dhs survey` commands."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dhs_spark.cli import main
from dhs_spark.survey.bricks import load_bricks_table
from dhs_spark.survey.footprint import crossmatch


@pytest.fixture(scope="module")
def bricks(test_data):
    t = load_bricks_table(test_data / "survey" / "dr10_south_bricks_excerpt_a.csv")
    t.loc[t["brickname"] == "2328p002", ["has_z", "psfdepth_z_invvar_nmgy2"]] = (False, 0.0)  # a brick without z data
    return t


def test_rows_kept_with_reasons(bricks):
    cat = pd.DataFrame(
        {
            "RA": [232.6, 232.9, 10.0, np.nan, 232.6],
            "DEC": [0.01, 0.26, 0.0, 1.0, 95.0],
            "name": list("abcde"),
        }
    )
    out = crossmatch(cat, bricks)
    assert list(out["name"]) == list("abcde")  # every row, in order
    assert out["brickname"].tolist() == ["2326p000", "2328p002", "0101p000", None, None]
    assert out["in_footprint"].tolist() == [True, False, False, False, False]
    assert out["outside_reason"].tolist() == [None, "no_z_coverage", "brick_not_in_table", "invalid_position", "invalid_position"]
    row = bricks.set_index("brickname").loc["2326p000"]
    assert out.loc[0, "psf_fwhm_r_arcsec"] == row["psf_fwhm_r_arcsec"] and out.loc[0, "ebv"] == row["ebv"]
    assert out.loc[0, "psfdepth_g_mag5sigma"] == pytest.approx(24.97499656677246)
    assert np.isnan(out.loc[2, "psf_fwhm_g_arcsec"]) and not out.loc[2, "psf_fwhm_g_fallback"]
    # asking only for g and r puts the z-less brick back in the footprint
    assert crossmatch(cat, bricks, bands=("g", "r"))["in_footprint"].tolist() == [True, True, False, False, False]


def test_matches_a_per_row_reference(bricks):
    rng = np.random.default_rng(0)
    cat = pd.DataFrame({"ra": rng.uniform(232.4, 236.6, 5000), "dec": rng.uniform(-0.2, 1.0, 5000)})
    out = crossmatch(cat, bricks)
    inside = set(bricks.loc[bricks[["has_g", "has_r", "has_z"]].all(axis=1), "brickname"])
    for i in range(0, 5000, 7):  # reference: bricks' own ra1..dec2 boxes, row by row
        r, d = cat.loc[i, "ra"], cat.loc[i, "dec"]
        hit = bricks[(bricks.ra1 <= r) & (r < bricks.ra2) & (bricks.dec1 <= d) & (d < bricks.dec2)]
        expect = len(hit) == 1 and hit["brickname"].iloc[0] in inside
        assert out.loc[i, "in_footprint"] == expect, i
        if len(hit):
            assert out.loc[i, "brickname"] == hit["brickname"].iloc[0]
    assert 0 < out["in_footprint"].sum() < 5000


def test_crossmatch_cli(tmp_path, test_data, capsys):
    sweep = pd.read_csv(test_data / "survey" / "dr10_lrg_sweep_excerpt.csv.gz").iloc[:300]
    cat = tmp_path / "cat.parquet"
    sweep.to_parquet(cat)
    rc = main(["crossmatch", "--catalog", str(cat), "--brick-metadata", str(test_data / "survey" / "dr10_south_bricks_excerpt_a.csv"), "--output-dir", str(tmp_path / "out")])
    assert rc == 0
    res = pd.read_parquet(tmp_path / "out" / "crossmatch.parquet")
    assert len(res) == 300 and (res["brickname"] == res["brickname_input"]).all()
    # the sweep excerpt's bricks are not in excerpt a: all rows outside, with the reason
    assert not res["in_footprint"].any() and set(res["outside_reason"]) == {"brick_not_in_table"}
    summary = json.loads((tmp_path / "out" / "crossmatch_summary.json").read_text())
    assert summary["n_rows"] == 300 and summary["outside_reasons"] == {"brick_not_in_table": 300}
    bricks_csv = str(test_data / "survey" / "dr10_south_bricks_excerpt_a.csv")
    assert main(["crossmatch", "--catalog", str(tmp_path / "nope.csv"), "--brick-metadata", bricks_csv, "--output-dir", str(tmp_path)]) == 2
    assert "nope.csv" in capsys.readouterr().err
    # a sweep file given as the bricks table: its repeated bricknames are reported, naming the file
    assert main(["crossmatch", "--catalog", str(cat), "--brick-metadata", str(cat), "--output-dir", str(tmp_path)]) == 2
    assert "cat.parquet" in capsys.readouterr().err


def test_mock_cli_then_crossmatch_mock_catalogue(tmp_path, capsys):
    rc = main(["survey", "mock", "--output-dir", str(tmp_path / "m"), "--n-bricks", "1", "--brick-size-pix", "300"])
    assert rc == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rc = main(["crossmatch", "--catalog", info["catalog"], "--brick-metadata", info["bricks_table"], "--output-dir", str(tmp_path / "x")])
    assert rc == 0
    res = pd.read_parquet(tmp_path / "x" / "crossmatch.parquet")
    assert res["in_footprint"].all() and (res["brickname"] == info["bricks"][0]).all()
