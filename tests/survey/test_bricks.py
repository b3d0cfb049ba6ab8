"""Brick grid, bricks-table loader and psfdepth units, against real DR10 tables."""

from __future__ import annotations

import lzma

import numpy as np
import pandas as pd
import pytest

from dhs_spark.errors import InputDataError
from dhs_spark.survey import bricks as B


@pytest.fixture(scope="module")
def sweep(test_data):
    return pd.read_csv(test_data / "survey" / "dr10_lrg_sweep_excerpt.csv.gz", dtype={"BRICKNAME": str})


@pytest.fixture(scope="module")
def dr10_south_names(test_data):
    # all 319,078 DR10 south bricknames (shared/data/survey/dr10_south_bricknames_lrgcounts.csv, names only, sorted, xz)
    with lzma.open(test_data / "survey" / "dr10_south_bricknames.txt.xz", "rt") as fh:
        return np.array(fh.read().split())


def test_brickname_for_reproduces_every_sweep_row(sweep):
    names = B.brickname_for(sweep["RA"].to_numpy(), sweep["DEC"].to_numpy())
    assert len(names) == 6826
    mismatch = np.flatnonzero(names != sweep["BRICKNAME"].to_numpy())
    assert mismatch.size == 0, f"rows {mismatch[:5]}: {names[mismatch[:5]]} vs {sweep['BRICKNAME'].to_numpy()[mismatch[:5]]}"


def test_excerpt_bricks_are_in_the_dr10_south_list(sweep, dr10_south_names, test_data):
    assert len(dr10_south_names) == 319078
    excerpt = set(sweep["BRICKNAME"])
    for f in ("a", "b"):
        excerpt |= set(pd.read_csv(test_data / "survey" / f"dr10_south_bricks_excerpt_{f}.csv", dtype={"brickname": str})["brickname"])
    missing = excerpt - set(dr10_south_names)
    assert len(excerpt) == 44 + 44 + 61 and not missing, sorted(missing)[:5]


def test_every_dr10_south_name_is_a_grid_brick(dr10_south_names):
    # name -> centre -> name closes for all 319,078 real bricks (brick_center raises on a non-grid name)
    ra, dec = B.brick_center(dr10_south_names)
    np.testing.assert_array_equal(B.brickname_for(ra, dec), dr10_south_names)


def test_geometry_matches_the_official_fits_row(test_data):
    # legacypipe survey-bricks row of 2447p120 (BSD, legacypipe test data)
    official = B.read_fits_table(test_data / "survey" / "legacypipe_survey-bricks_1row.fits.gz").iloc[0]
    geo = B.brick_geometry(official["ra"], official["dec"])
    assert geo["brickname"][0] == official["brickname"] == "2447p120"
    for key in ("ra", "dec", "ra1", "ra2", "dec1", "dec2"):
        assert geo[key][0] == pytest.approx(official[key], abs=1e-8), key
    # corners just inside/outside the edges pick this brick / its neighbours
    eps = 1e-9
    assert B.brickname_for(official["ra1"] + eps, official["dec1"] + eps)[0] == "2447p120"
    assert B.brickname_for(official["ra1"] - eps, 12.0)[0] != "2447p120"
    assert B.brickname_for(official["ra"], official["dec2"] + eps)[0] != "2447p120"


def test_grid_poles_wrap_and_bad_input():
    assert B.brickname_for([0.0, 360.0, -0.0001], [0.0, 0.0, 0.0]).tolist() == ["0001p000", "0001p000", "3598p000"]
    assert B.brickname_for(10.0, 90.0)[0] == "1800p900" and B.brickname_for(10.0, -90.0)[0] == "1800m900"
    with pytest.raises(InputDataError, match="index 1"):
        B.brickname_for([1.0, np.nan], [0.0, 0.0])
    with pytest.raises(InputDataError, match="not a brick"):
        B.brick_center(["0002p000"])  # 0.25-deg columns at the equator are centred on 0.125, 0.375...


@pytest.mark.parametrize("mag", [20.0, 22.5, 23.398208618164062, 24.97499656677246, 27.0])
def test_psfdepth_roundtrip(mag):
    iv = B.psfdepth_mag5sigma_to_invvar(mag)
    assert B.psfdepth_invvar_to_mag5sigma(iv) == pytest.approx(mag, abs=1e-12)
    # 5 sigma at m5: flux(m5) = 10^((22.5 - m5)/2.5) nmgy = 5 / sqrt(invvar)
    assert 5.0 / np.sqrt(iv) == pytest.approx(10 ** ((22.5 - mag) / 2.5), rel=1e-12)


def test_psfdepth_no_data_conventions():
    assert np.isnan(B.psfdepth_invvar_to_mag5sigma([0.0, -1.0, np.nan])).all()
    assert (B.psfdepth_mag5sigma_to_invvar([np.nan, np.inf, 0.0]) == 0).all()


def test_pinned_real_brick_2326p000(test_data):
    t = B.load_bricks_table(test_data / "survey" / "dr10_south_bricks_excerpt_a.csv")
    row = t.set_index("brickname").loc["2326p000"]
    # CSV values (DR10 south, 5-sigma AB): psfsize_g/r/z 1.2940/1.4810/1.1054", psfdepth_g/r/z 24.975/24.547/23.398
    assert row["psf_fwhm_g_arcsec"] == pytest.approx(1.2939757108688354, abs=1e-12)
    assert row["psf_fwhm_z_arcsec"] == pytest.approx(1.105355143547058, abs=1e-12)
    assert row["psfdepth_r_mag5sigma"] == pytest.approx(24.546777725219727, abs=1e-9)
    # by hand: invvar = (5 / 10^((22.5 - 24.97499656677246)/2.5))^-2 = 2387.466 1/nmgy^2
    assert row["psfdepth_g_invvar_nmgy2"] == pytest.approx(2387.4664, rel=1e-6)
    assert row["psfdepth_z_invvar_nmgy2"] == pytest.approx((10 ** ((22.5 - 23.398208618164062) / 2.5) / 5) ** -2, rel=1e-12)
    assert row["ebv"] == pytest.approx(0.07259906828403473)
    assert (row["ra1"], row["ra2"], row["dec1"], row["dec2"]) == (232.5, 232.75, -0.125, 0.125)
    assert not row[["psf_fwhm_g_fallback", "psf_fwhm_r_fallback", "psf_fwhm_z_fallback"]].any()


def _official_style_fits(path, csv_rows):
    """A FITS bricks table in the official format (upper-case, psfdepth as invvar float32) from CSV rows."""
    from astropy.table import Table

    t = Table()
    t["BRICKNAME"] = csv_rows["brickname"].to_numpy().astype("S8")
    for c in ("ra", "dec", "ra1", "ra2", "dec1", "dec2"):
        t[c.upper()] = csv_rows[c].to_numpy()
    for b in "grz":
        t[f"PSFSIZE_{b.upper()}"] = csv_rows[f"psfsize_{b}"].to_numpy(np.float32)
        t[f"PSFDEPTH_{b.upper()}"] = B.psfdepth_mag5sigma_to_invvar(csv_rows[f"psfdepth_{b}"]).astype(np.float32)
    t["EBV"] = csv_rows["ebv"].to_numpy(np.float32)
    t["NEXPHIST_G"] = np.zeros((len(t), 11), np.int32)  # a vector column, as in the official file
    t.write(path, overwrite=True)


def test_fits_invvar_and_csv_mag_agree_and_fallback(tmp_path, test_data):
    csv = pd.read_csv(test_data / "survey" / "dr10_south_bricks_excerpt_b.csv", dtype={"brickname": str})
    rows = csv.iloc[:5].copy()
    rows.loc[rows.index[1], "psfsize_g"] = 0.0  # no g data: FWHM falls back to r
    rows.loc[rows.index[1], "psfdepth_g"] = np.nan
    fits_path = tmp_path / "survey-bricks-dr10-south.fits.gz"
    _official_style_fits(fits_path, rows)
    csv_path = tmp_path / "excerpt.csv"
    rows.to_csv(csv_path, index=False)
    from_fits = B.load_bricks_table(fits_path)
    from_csv = B.load_bricks_table(csv_path)
    for b in "grz":
        # float32 storage of the FITS invvar: 1e-7 relative, i.e. < 1e-6 mag
        np.testing.assert_allclose(from_fits[f"psfdepth_{b}_mag5sigma"], from_csv[f"psfdepth_{b}_mag5sigma"], atol=1e-6, err_msg=b)
        np.testing.assert_allclose(from_fits[f"psf_fwhm_{b}_arcsec"], from_csv[f"psf_fwhm_{b}_arcsec"], rtol=1e-7, err_msg=b)
    for t in (from_fits, from_csv):
        assert t["psf_fwhm_g_fallback"].tolist() == [False, True, False, False, False]
        assert t.loc[1, "psf_fwhm_g_arcsec"] == pytest.approx(rows.iloc[1]["psfsize_r"], rel=1e-7)
        assert t["has_g"].tolist() == [True, False, True, True, True] and t["has_r"].all()
    # the same FITS read as if its depths were magnitudes is caught, not silently converted
    with pytest.raises(InputDataError, match="psfdepth_unit"):
        B.load_bricks_table(fits_path, psfdepth_unit="mag")
    with pytest.raises(InputDataError, match="psfdepth_unit"):
        B.load_bricks_table(csv_path, psfdepth_unit="invvar")  # 24-mag depths misread as invvar would give ~22.5 mag


def test_loader_errors_name_the_file(tmp_path):
    bad = tmp_path / "bricks.csv"
    bad.write_text("name,ra\nx,1\n")
    with pytest.raises(InputDataError, match="bricks.csv.*brickname"):
        B.load_bricks_table(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("brickname,psfsize_r\n0001p000,1.2\n0001p000,1.3\n")
    with pytest.raises(InputDataError, match="more than once"):
        B.load_bricks_table(dup)
