"""Hard-negative rows: look-alike catalogues through 4a (label-0 rows, never injected) and 4c
(cut with the same rules as every row), so ring galaxies and mergers become training images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from dhs_spark.config import ExperimentConfig
from dhs_spark.errors import InputDataError
from dhs_spark.jobs import paths as P
from dhs_spark.jobs.phase4a_manifest import HardNegativeCatalog, hard_negative_rows, manifest_params
from dhs_spark.jobs.pipeline import main
from dhs_spark.schema import decode_image
from dhs_spark.survey.bricks import brick_center, brickname_for

STAMP = 48


def _bricks(names):
    return pd.DataFrame({"brickname": names, "psf_fwhm_g_arcsec": 1.4, "psf_fwhm_r_arcsec": 1.3, "psf_fwhm_z_arcsec": 1.2,
                         "psf_fallback_bands": "", "ebv": 0.03})  # fmt: skip


def test_rows_are_label_0_tagged_split_by_cell_and_heldout_rows_go_to_the_last_split():
    brick = str(brickname_for(150.0, 2.5)[0])
    ra0, dec0 = (float(v[0]) for v in brick_center([brick]))
    cat = pd.DataFrame({
        "RA": [ra0, ra0 + 0.01, ra0 + 0.01, 10.0, ra0 - 0.02],
        "DEC": [dec0, dec0 + 0.01, dec0 + 0.01, -40.0, dec0],
        "lookalike_type": ["ring_collisional", "merger_tidal", "merger_tidal", "ring_resonance", None],
        "heldout": [False, True, True, False, False],
    })  # fmt: skip
    params = manifest_params(ExperimentConfig(output_dir="/x", experiment_id="e"), "train")
    rows, counts = hard_negative_rows(cat, _bricks([brick]), params, HardNegativeCatalog("cat.csv", "rings", 2.5))
    assert counts == {"n_catalog": 5, "n_outside_footprint": 1, "n_duplicates": 1, "n_rows": 3}
    assert (rows.label == 0).all() and not rows.is_control.any() and not rows.is_null_injection.any()
    assert (rows.theta_e_arcsec == 0).all() and rows.source_r_mag.isna().all(), "never injected"
    assert list(rows.hard_neg_source) == ["rings:ring_collisional", "rings:merger_tidal", "rings"]
    assert np.allclose(rows.hard_neg_weight, 2.5) and rows.hard_neg_weight.dtype == np.float32
    assert rows.split.iloc[1] == "test", "a heldout look-alike is never in the training split"
    assert np.isclose(rows.ebv, 0.03).all() and (rows.psf_fwhm_r_arcsec == 1.3).all(), "the brick's PSF and E(B-V), as for hosts"
    assert rows.task_id.is_unique and rows.config_id.eq("hard_negative:rings").all()
    again, _ = hard_negative_rows(cat, _bricks([brick]), params, HardNegativeCatalog("cat.csv", "rings", 2.5))
    assert again.equals(rows), "same catalogue, same rows"


def test_bad_catalogues_and_flags_are_clear_errors():
    params = manifest_params(ExperimentConfig(output_dir="/x", experiment_id="e"), "train")
    with pytest.raises(InputDataError, match="no RA/Dec columns"):
        hard_negative_rows(pd.DataFrame({"x": [1.0]}), _bricks(list(brickname_for(150.0, 2.5))), params, HardNegativeCatalog("c.csv", "c"))
    with pytest.raises(InputDataError, match="1 rows with no valid ra/dec, first at row 1"):
        hard_negative_rows(pd.DataFrame({"ra": [150.0, np.nan], "dec": [2.5, 2.5]}), _bricks(list(brickname_for(150.0, 2.5))), params, HardNegativeCatalog("c.csv", "c"))
    assert HardNegativeCatalog.from_flag(["s3://b/rings.csv"]) == HardNegativeCatalog("s3://b/rings.csv", "rings", 1.0)
    with pytest.raises(InputDataError, match="WEIGHT must be finite and > 0"):
        HardNegativeCatalog.from_flag(["r.csv", "rings", "0"])
    with pytest.raises(InputDataError, match="WEIGHT must be a number"):
        HardNegativeCatalog.from_flag(["r.csv", "rings", "heavy"])
    with pytest.raises(SystemExit):  # argparse: PATH is required
        main(["--stage", "4a", "--output", "/x", "--hard-negative-catalog"])


@pytest.fixture(scope="module")
def lookalike_run(spark, tmp_path_factory):
    from dhs_spark.survey.lookalikes import LookalikeOptions
    from dhs_spark.survey.mock import build_mock_survey

    root = tmp_path_factory.mktemp("hardneg")
    mock = build_mock_survey(root / "mock", n_bricks=3, brick_size_pix=400, n_lrg_per_brick=4, n_neighbours_per_brick=6, n_stars_per_brick=2,
                             lookalikes=LookalikeOptions(n_free_per_brick=3, n_lrg_hosts_per_brick=1))  # fmt: skip
    looks = pd.read_parquet(mock.lookalike_catalog_path)
    # a second catalogue: one position in a brick's bounds but off its (smaller) mock image, one off the footprint
    ra_c, dec_c = brick_center([mock.bricknames[0]])
    extra = pd.DataFrame({"ra": [float(ra_c[0]) + 0.1, 200.0], "dec": [float(dec_c[0]) + 0.1, 60.0]})
    extra_csv = root / "extra.csv"
    extra.to_csv(extra_csv, index=False)
    out = root / "out"
    args = ["--output", str(out), "--experiment-id", "hn", "--set", f"data.stamp_size={STAMP}", "--set", "data.n_replicates=1",
            "--set", "population.mode=uniform", "--log-level", "WARNING", "--source-mode", "sersic",
            "--parent-sample", str(mock.catalog_parquet), "--select-lrg", "--bricks-table", str(mock.bricks_table), "--coadd-root", str(mock.root),
            "--hard-negative-catalog", str(mock.lookalike_catalog_path), "lookalike", "2.0", "--hard-negative-catalog", str(extra_csv)]  # fmt: skip
    for stage in ("4a", "4c"):
        assert main(["--stage", stage, *args], spark=spark) == 0
    paths = P.ExperimentPaths(P.to_uri(str(out / "hn")))
    read = lambda uri: ds.dataset(uri.replace("file://", ""), format="parquet", partitioning="hive").to_table().to_pandas()  # noqa: E731
    return {"mock": mock, "looks": looks, "manifest": read(paths.manifest), "stamps": read(paths.stamps), "rejects": read(paths.rejects)}


def test_every_catalogue_row_in_the_footprint_ends_as_a_stamp_or_a_reject_with_a_reason(lookalike_run):
    looks, manifest = lookalike_run["looks"], lookalike_run["manifest"]
    stamps, rejects = lookalike_run["stamps"], lookalike_run["rejects"]
    hard = manifest[manifest.hard_neg_source.notna()]
    mine = hard[hard.hard_neg_source.str.startswith("lookalike")]
    assert len(looks) > 0 and len(mine) == len(looks.drop_duplicates(["brickname", "ra", "dec"])), "every look-alike position (all in the footprint) gets a row"
    assert set(zip(mine.ra.round(9), mine.dec.round(9))) == set(zip(looks.ra.round(9), looks.dec.round(9)))
    extra = hard[hard.hard_neg_source == "extra"]
    assert len(extra) == 1, "the footprint row of the second catalogue; the other is outside every brick"
    done = set(stamps.task_id) | set(rejects.task_id)
    assert set(hard.task_id) <= done, "no hard-negative row is lost"
    assert rejects.loc[rejects.task_id.isin(hard.task_id), "reason"].str.len().gt(0).all()
    assert extra.task_id.iloc[0] in set(rejects.task_id), "a position off the mock image is a reject with its reason"
    assert rejects.set_index("task_id").loc[extra.task_id.iloc[0], "reason"] in ("off_brick", "edge")
    kinds = {s.split(":", 1)[1] for s in mine.hard_neg_source}
    assert kinds == set(looks.lookalike_type), "the catalogue's type refines the tag"


def test_hard_negative_stamps_are_the_coadd_cutout_with_no_arc(lookalike_run):
    from dhs_spark.survey.coadds import CoaddBrick

    stamps = lookalike_run["stamps"]
    hard = stamps[stamps.hard_neg_source.notna()]
    assert len(hard) > 0
    assert (hard.label == 0).all() and hard.arc_image.isna().all() and (hard.source_mode == "none").all()
    assert np.allclose(hard.hard_neg_weight[hard.hard_neg_source.str.startswith("lookalike")], 2.0)
    row = hard.iloc[0]
    brick = CoaddBrick(str(lookalike_run["mock"].root), row.brickname, ("g", "r", "z"))
    cut = brick.cutout(row.ra, row.dec, STAMP)
    assert np.array_equal(decode_image(row.image, row.n_bands, row.stamp_size), cut.image.astype(np.float32)), "nothing added"
