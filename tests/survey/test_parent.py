"""LRG selection against the real sweep excerpt's flags."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dhs_spark.errors import InputDataError
from dhs_spark.survey.parent import LRG_VARIANTS, flux_to_mag, morphology_mask, parent_sample_frame, select_all_variants, select_lrg


@pytest.fixture(scope="module")
def sweep(test_data):
    return pd.read_csv(test_data / "survey" / "dr10_lrg_sweep_excerpt.csv.gz", dtype={"BRICKNAME": str})


@pytest.mark.parametrize("variant", sorted(LRG_VARIANTS))
def test_select_lrg_reproduces_excerpt_flags(sweep, variant):
    flag = sweep[f"is_lrg_{variant.split('_')[0]}"].to_numpy(bool)
    got = select_lrg(sweep[["FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1", "TYPE"]], variant)
    bad = np.flatnonzero(got != flag)
    assert bad.size == 0, f"{variant}: rows {bad[:5]} differ"


def test_excerpt_flags_are_not_trivial(sweep):
    # the comparison above can fail: v1 and v2 reject most rows of the excerpt (all pass v3)
    counts = {v: int(select_lrg(sweep, v).sum()) for v in LRG_VARIANTS}
    assert counts == {"v1_pure_massive": 342, "v2_baseline_dr10": 816, "v3_color_relaxed": 6826, "v4_mag_relaxed": 6826, "v5_very_relaxed": 6826}
    allv = select_all_variants(sweep)
    assert all((allv[v] == select_lrg(sweep, v)).all() for v in LRG_VARIANTS)


def test_magnitudes_match_excerpt_columns(sweep):
    np.testing.assert_allclose(flux_to_mag(sweep["FLUX_Z"]), sweep["z_mag"], atol=1e-9)
    assert np.isnan(flux_to_mag(sweep["FLUX_G"])[sweep["FLUX_G"].to_numpy() <= 0]).all()


def test_cuts_are_strict_and_nonpositive_fluxes_fail_silently():
    z = 20.4  # exactly on the v3 z limit with colours exactly on the colour limits
    fz = 10 ** ((22.5 - z) / 2.5)
    rows = pd.DataFrame(
        {
            "FLUX_G": [1.0, 1.0, 1.0, -1.0, 1.0],
            "FLUX_R": [fz * 10 ** (-1.0 / 2.5), fz * 10 ** (-1.0 / 2.5), 0.0, 1.0, np.nan],
            "FLUX_Z": [fz, fz * 1.001, 10.0, 10.0, 10.0],
            "FLUX_W1": [fz * 10, fz * 10, 50.0, 50.0, 50.0],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = select_lrg(rows, "v3_color_relaxed")
    # row 0: z == 20.4 exactly -> fails (strict); row 1: z slightly brighter -> passes;
    # row 2: r flux 0 -> no magnitude -> fails; row 3: g <= 0 is not used -> passes; row 4: NaN r fails
    assert got.tolist() == [False, True, False, True, False]


def test_lowercase_columns_structured_arrays_and_errors(sweep):
    lower = sweep.rename(columns=str.lower)
    assert (select_lrg(lower, "v1_pure_massive") == select_lrg(sweep, "v1_pure_massive")).all()
    rec = sweep[["FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1"]].to_records(index=False)
    assert (select_lrg(rec, "v2_baseline_dr10") == select_lrg(sweep, "v2_baseline_dr10")).all()
    with pytest.raises(InputDataError, match="FLUX_W1"):
        select_lrg(sweep.drop(columns="FLUX_W1"))
    with pytest.raises(ValueError, match="unknown LRG variant"):
        select_lrg(sweep, "v9")


def test_morphology_is_a_separate_step(sweep):
    mask = morphology_mask(sweep)
    assert int((~mask).sum()) == int((sweep["TYPE"] == "PSF").sum()) == 256
    frame = parent_sample_frame(sweep, "v3_color_relaxed", exclude_types=("PSF",))
    assert len(frame) == 6826 - 256 and "PSF" not in set(frame["type"])
    frame_all = parent_sample_frame(sweep, "v1_pure_massive")
    assert len(frame_all) == 342 and frame_all["is_lrg_v1"].all() and frame_all["is_lrg_v3"].all()
    np.testing.assert_array_equal(frame_all["ra"], sweep.loc[select_lrg(sweep, "v1_pure_massive"), "RA"])
