"""The mock survey: real layout and inputs, LRG selection, determinism."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from dhs_spark.survey.bricks import brickname_for, load_bricks_table
from dhs_spark.survey.coadds import coadd_file_name
from dhs_spark.survey.mock import build_mock_survey
from dhs_spark.survey.parent import LRG_VARIANTS, select_lrg


def test_layout_and_headers(mock_survey):
    assert len(mock_survey.bricknames) == 2
    for name in mock_survey.bricknames:
        d = mock_survey.brick_dir(name)
        assert d == mock_survey.root / "coadd" / name[:3] / name
        for kind in ("image", "invvar"):
            for b in "grz":
                with fits.open(d / coadd_file_name(name, kind, b)) as hdul:
                    assert hdul[0].data is None and hdul[1].data.shape == (400, 400)  # .fz: data in HDU 1
                    h = hdul[1].header
                    assert h["CTYPE1"] == "RA---TAN" and h["BAND"] == b and h["BRICKNAM"] == name
        with fits.open(d / coadd_file_name(name, "maskbits")) as hdul:
            assert hdul[1].data.dtype.kind == "i"


def test_catalogue_and_bricks_table(mock_survey, test_data):
    cat = pd.read_parquet(mock_survey.catalog_parquet)
    fits_cat = pd.DataFrame(fits.getdata(mock_survey.catalog_fits).tolist(), columns=fits.getdata(mock_survey.catalog_fits).names)
    assert len(fits_cat) == len(cat) and np.allclose(fits_cat["RA"], cat["RA"])
    assert (brickname_for(cat["RA"], cat["DEC"]) == cat["BRICKNAME"]).all()
    is_lrg = (cat["MOCK_ROLE"] == "lrg").to_numpy()
    assert is_lrg.sum() == 12
    # LRGs (real sweep photometry) pass the default cut; neighbours and stars fail every variant
    assert (select_lrg(cat) == is_lrg).all()
    for v in LRG_VARIANTS:
        assert not select_lrg(cat[~is_lrg], v).any(), v
    sweep = pd.read_csv(test_data / "survey" / "dr10_lrg_sweep_excerpt.csv.gz")
    lrg = cat[is_lrg]
    src = sweep.iloc[lrg["MOCK_SWEEP_ROW"].to_numpy()]
    np.testing.assert_allclose(lrg["FLUX_Z"], src["FLUX_Z"], rtol=1e-6)  # float32 copies of the real fluxes
    assert (lrg["TYPE"].to_numpy() == src["TYPE"].to_numpy()).all()
    bricks = load_bricks_table(mock_survey.bricks_table)
    assert list(bricks["brickname"]) == list(mock_survey.bricknames)
    real = pd.concat([pd.read_csv(test_data / "survey" / f"dr10_south_bricks_excerpt_{f}.csv", dtype={"brickname": str}) for f in "ab"])
    real = real.set_index("brickname").loc[list(mock_survey.bricknames)]
    np.testing.assert_allclose(bricks["psf_fwhm_r_arcsec"], real["psfsize_r"])
    np.testing.assert_allclose(bricks["psfdepth_z_mag5sigma"], real["psfdepth_z"], atol=1e-9)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path, monkeypatch):
    kw = dict(n_bricks=1, brick_size_pix=200, n_lrg_per_brick=2, n_neighbours_per_brick=5, n_stars_per_brick=2)
    # the two builds see clocks a day apart: nothing may depend on the wall-clock time
    # (astropy's gzip'd invvar tiles once carried it)
    monkeypatch.setattr(time, "time", lambda: 1.7e9)
    a = build_mock_survey(tmp_path / "a", seed=3, **kw)
    monkeypatch.setattr(time, "time", lambda: 1.7e9 + 86400.0)
    b = build_mock_survey(tmp_path / "b", seed=3, **kw)
    monkeypatch.undo()
    c = build_mock_survey(tmp_path / "c", seed=4, **kw)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)


def test_bad_arguments(tmp_path):
    from dhs_spark.errors import InputDataError

    with pytest.raises(InputDataError, match="brick_size_pix"):
        build_mock_survey(tmp_path, brick_size_pix=50)
    with pytest.raises(InputDataError, match="no room"):  # 10 LRGs 40 px apart cannot fit in a 150-px brick
        build_mock_survey(tmp_path, n_bricks=1, brick_size_pix=150)
    with pytest.raises(InputDataError, match="not found"):
        build_mock_survey(tmp_path, sweep_path=tmp_path / "nope.csv")
