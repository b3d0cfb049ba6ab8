"""collect_hard_negatives: exclusion radius around known lenses, configured weights, model-FP
threshold and top-k, positional deduplication, a lookup that round-trips, and model false
positives taken from real, un-injected score rows only."""

import logging

import numpy as np
import pandas as pd
import pytest

from dhs_spark.cli import main
from dhs_spark.config.experiment import HardNegativeConfig
from dhs_spark.errors import InputDataError
from dhs_spark.hardneg import LOOKUP_COLUMNS, bundled_known_lenses, collect_hard_negatives, real_score_rows
from dhs_spark.healpix import healpix_index

DEC0 = 10.0


def _ra_offset(arcsec: float) -> float:
    return arcsec / 3600.0 / np.cos(np.deg2rad(DEC0))


@pytest.fixture()
def inputs(tmp_path):
    lenses = pd.DataFrame({"name": ["LENS"], "ra": [100.0], "dec": [DEC0]})
    rings = pd.DataFrame({"name": ["ring4", "ring6", "ring_far"], "ra": [100.0 + _ra_offset(4.0), 100.0 + _ra_offset(6.0), 120.0],
                          "dec": [DEC0, DEC0, DEC0], "hardneg_type": "ring"})
    mergers = pd.DataFrame({"name": ["m1", "m_dup"], "ra": [130.0, 120.0 + _ra_offset(1.0)], "dec": [DEC0, DEC0], "hardneg_type": "merger"})
    scores = pd.DataFrame({"ra": [140.0, 141.0, 142.0, 143.0, 120.0 - _ra_offset(0.5)], "dec": [DEC0] * 5,
                           "score": [0.95, 0.79, 0.85, 0.99, 0.9], "label": 0, "is_control": True})  # real controls
    paths = {}
    for name, df in (("lenses", lenses), ("rings", rings), ("mergers", mergers)):
        paths[name] = tmp_path / f"{name}.parquet"
        df.to_parquet(paths[name])
    paths["scores"] = tmp_path / "scores.csv"
    scores.to_csv(paths["scores"], index=False)
    return paths


def test_exclusion_radius_weights_threshold_and_dedup(inputs, tmp_path):
    cfg = HardNegativeConfig(min_score_threshold=0.8, top_k_per_source=3, exclusion_radius_arcsec=5.0)
    res = collect_hard_negatives(model_scores_path=inputs["scores"], ring_catalog_path=inputs["rings"], merger_catalog_path=inputs["mergers"],
                                 known_lens_path=inputs["lenses"], output_dir=tmp_path / "out", config=cfg)
    t = res.table
    names = set(t["name"])
    assert "ring4" not in names, "a ring 4\" from a known lens is inside the 5\" exclusion radius"
    assert "ring6" in names, "a ring 6\" from a known lens is kept"
    assert res.counts["excluded_near_lens"] == 1
    # model FPs: 4 scores >= 0.8, top 3 kept: 0.99, 0.95, 0.9 (0.85 is 4th; 0.79 below threshold)
    fp = t[t["source"] == "model_fp"]
    assert sorted(fp["score"].round(2).tolist()) == [0.9, 0.95, 0.99]
    # ring_far, m_dup and the 0.9 model FP are within 2" of each other: one row, the heaviest source leads
    group = t[np.isclose(t["ra"], 120.0, atol=_ra_offset(2.0))]
    assert len(group) == 1 and group["source"].iloc[0] == "model_fp" and set(group["all_sources"].iloc[0].split("|")) == {"model_fp", "ring", "merger"}
    w = dict(zip(t["source"], t["weight"]))
    assert w == {"model_fp": 3.0, "ring": 2.0, "merger": 1.5}


def test_weights_follow_config_and_lookup_round_trips(inputs, tmp_path):
    cfg = HardNegativeConfig(weight_model_fp=7.0, weight_ring=4.0, weight_merger=0.5)
    res = collect_hard_negatives(ring_catalog_path=inputs["rings"], merger_catalog_path=inputs["mergers"], model_scores_path=inputs["scores"],
                                 known_lens_path=inputs["lenses"], output_dir=tmp_path / "out", config=cfg)
    lookup = pd.read_parquet(res.lookup_path)
    assert tuple(lookup.columns) == LOOKUP_COLUMNS
    assert dict(zip(lookup["source"], lookup["weight"])) == {"model_fp": 7.0, "ring": 4.0, "merger": 0.5}
    np.testing.assert_array_equal(lookup["healpix_index"], healpix_index(lookup["ra"], lookup["dec"], 128))
    assert lookup["healpix_index"].is_monotonic_increasing
    merged = lookup.merge(res.table, on=["ra", "dec"], suffixes=("", "_t"))
    assert len(merged) == len(lookup) == len(res.table)
    np.testing.assert_array_equal(merged["weight"], merged["weight_t"])
    # the trainer's position join reads the same file
    from trainer.hardneg_join import load_lookup

    loaded = load_lookup(str(res.lookup_path))
    assert len(loaded) == len(lookup) and set(loaded.weight.tolist()) == {7.0, 4.0, 0.5}


def test_cli_collect(inputs, tmp_path, capsys):
    rc = main(["hardneg", "collect", "--ring-catalog", str(inputs["rings"]), "--known-lenses", str(inputs["lenses"]),
               "--output-dir", str(tmp_path / "cli"), "--create-lookup"])
    assert rc == 0
    assert (tmp_path / "cli" / "hard_negative_lookup.parquet").exists()
    assert "excluded_near_lens: 1" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"x": [1]}).to_csv(bad, index=False)
    assert main(["hardneg", "collect", "--ring-catalog", str(bad), "--output-dir", str(tmp_path / "cli2")]) == 2
    assert "needs ra/dec columns" in capsys.readouterr().err


# ---------------------------------------------------------------- model false positives: real rows only

LENS_RA = 100.0  # the known lens of the `inputs` fixture, at (100, DEC0)


def _score_table() -> pd.DataFrame:
    """A dhs-score table (label, is_control, is_null_injection) with every kind of row, all scored
    far above the threshold except the last: injected positives, null injections, real controls
    far from any lens, a real control 2" from the known lens, and a real control scored low."""
    rows = [
        # name, ra, dec, score, label, is_control, is_null_injection
        ("pos_a", 150.0, DEC0, 0.999, 1, False, False),
        ("pos_b", 151.0, DEC0, 0.998, 1, False, False),
        ("null_a", 152.0, DEC0, 0.997, 0, False, True),
        ("null_b", 153.0, DEC0, 0.996, 0, False, True),
        ("real_a", 154.0, DEC0, 0.95, 0, True, False),
        ("real_b", 155.0, DEC0, 0.90, 0, True, False),
        ("real_near_lens", LENS_RA + _ra_offset(2.0), DEC0, 0.99, 0, True, False),
        ("real_low", 156.0, DEC0, 0.30, 0, True, False),
    ]
    return pd.DataFrame(rows, columns=["name", "ra", "dec", "score", "label", "is_control", "is_null_injection"])


@pytest.fixture()
def score_table(tmp_path):
    path = tmp_path / "scores.parquet"
    _score_table().to_parquet(path, index=False)
    return path


def test_injected_positives_never_become_model_fps(score_table, inputs, tmp_path, caplog):
    """The acceptance test: only the real, far-from-lens, high-scoring rows come out as model_fp."""
    cfg = HardNegativeConfig(min_score_threshold=0.8, exclusion_radius_arcsec=5.0)
    with caplog.at_level(logging.WARNING, logger="dhs_spark.hardneg"):
        res = collect_hard_negatives(model_scores_path=score_table, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out",
                                     config=cfg, allow_injected=True)
    assert sorted(res.table["name"]) == ["real_a", "real_b"], "no injected positive, null injection, near-lens or low-score row"
    assert set(res.table["source"]) == {"model_fp"}
    c = res.counts
    assert (c["model_fp_dropped_injected_positives"], c["model_fp_dropped_null_injections"], c["model_fp_real"]) == (2, 2, 4)
    assert c["model_fp_in"] == 3 and c["excluded_near_lens"] == 1 and c["model_fp_kept"] == 2
    logged = caplog.text
    assert "allow_injected: dropping 2 of 8 rows are injected positives (column 'label' == 1)" in logged
    assert "dropping 2 null injections" in logged
    # the lookup the trainer reads holds the same two positions, no injected one
    lookup = pd.read_parquet(res.lookup_path)
    assert sorted(lookup["ra"].round(6)) == [154.0, 155.0]


def test_injected_positives_are_an_error_without_the_flag(score_table, inputs, tmp_path, capsys):
    with pytest.raises(InputDataError, match=r"scores\.parquet: 2 of 8 rows are injected positives \(column 'label' == 1\).*--allow-injected"):
        collect_hard_negatives(model_scores_path=score_table, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "hard_negatives.parquet").exists(), "nothing written on error"
    # the same through the CLI: exit 2 and the message; with --allow-injected it runs
    argv = ["hardneg", "collect", "--model-scores", str(score_table), "--known-lenses", str(inputs["lenses"]), "--output-dir", str(tmp_path / "cli"),
            "--create-lookup"]  # fmt: skip
    assert main(argv) == 2
    assert "2 of 8 rows are injected positives (column 'label' == 1)" in capsys.readouterr().err
    assert main([*argv, "--allow-injected"]) == 0
    out = capsys.readouterr().out
    assert "model_fp_dropped_injected_positives: 2" in out and "model_fp_kept: 2" in out
    assert sorted(pd.read_parquet(tmp_path / "cli" / "hard_negative_lookup.parquet")["ra"].round(6)) == [154.0, 155.0]


def test_null_injections_alone_are_dropped_without_the_flag(score_table, inputs, tmp_path):
    """A caller that kept label 0 (controls and null injections) gets the controls, not the nulls."""
    negatives = tmp_path / "negatives.parquet"
    table = _score_table()
    table[table["label"] == 0].to_parquet(negatives, index=False)
    res = collect_hard_negatives(model_scores_path=negatives, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out")
    assert sorted(res.table["name"]) == ["real_a", "real_b"] and res.counts["model_fp_dropped_null_injections"] == 2


@pytest.mark.parametrize("allow", [False, True])
def test_a_table_that_cannot_prove_rows_real_is_an_error(tmp_path, inputs, allow):
    path = tmp_path / "bare.csv"
    pd.DataFrame({"ra": [154.0], "dec": [DEC0], "score": [0.99]}).to_csv(path, index=False)
    with pytest.raises(InputDataError, match=r"bare\.csv: cannot prove any row is real .* needs 'label' and one of \['is_null_injection', 'is_control'"):
        collect_hard_negatives(model_scores_path=path, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out", allow_injected=allow)
    # a label alone proves nothing either: label 0 rows include null injections
    pd.DataFrame({"ra": [154.0], "dec": [DEC0], "score": [0.99], "label": [0]}).to_csv(path, index=False)
    with pytest.raises(InputDataError, match="cannot prove any row is real"):
        collect_hard_negatives(model_scores_path=path, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out", allow_injected=allow)


def test_rows_with_null_flags_are_unproven(tmp_path):
    """label 0 with both flags null (not a control, null-injection status unknown): an error, or
    dropped with allow_injected; never a model FP."""
    df = pd.DataFrame({"ra": [1.0, 2.0, 3.0], "dec": [0.0] * 3, "score": [0.9] * 3, "label": [0, 0, 0],
                       "is_control": [True, None, False], "is_null_injection": [None, None, False]})  # fmt: skip
    with pytest.raises(InputDataError, match=r"1 of 3 rows cannot be proven real .*first: row 1, label=0, is_null_injection=None, is_control=None"):
        real_score_rows(df, "t.parquet")
    real, counts = real_score_rows(df, "t.parquet", allow_injected=True)
    assert real.tolist() == [True, False, True] and counts["model_fp_dropped_unproven"] == 1


def test_score_stage_rows_parent_and_hard_negative_tags_are_real():
    """The Spark score stage's table (label, source_tag): parent rows (label null) are real cut-outs,
    a hard-negative tag proves a label-0 stamp real, a plain 'stamps' label-0 row proves nothing
    (it could be a null injection) and an injected positive is still an injected positive."""
    df = pd.DataFrame({"ra": [1.0, 2.0, 3.0, 4.0], "dec": [0.0] * 4, "score": [0.9] * 4, "label": [None, 0, 0, 1],
                       "source_tag": ["parent", "ring", "stamps", "stamps"]})  # fmt: skip
    real, counts = real_score_rows(df, "stage.parquet", allow_injected=True)
    assert real.tolist() == [True, True, False, False]
    assert (counts["model_fp_dropped_unproven"], counts["model_fp_dropped_injected_positives"]) == (1, 1)


def test_a_score_stage_directory_is_read_whole(tmp_path, inputs):
    """The score stage writes scores/ as a Parquet directory (split=... folders): collect reads
    every file of it, and its parent rows are the model false positives."""
    scores = tmp_path / "scores"
    for i, split in enumerate(("train", "test")):
        (scores / f"split={split}").mkdir(parents=True)
        pd.DataFrame({"ra": [150.0 + i, 152.0 + i], "dec": [DEC0, DEC0], "score": [0.95, 0.2], "label": pd.array([None, None], "Int32"),
                      "source_tag": ["parent", "parent"], "task_id": [f"p{i}a", f"p{i}b"]}).to_parquet(scores / f"split={split}" / "part-0.parquet")  # fmt: skip
    res = collect_hard_negatives(model_scores_path=scores, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out")
    fp = res.table[res.table["source"] == "model_fp"]
    assert sorted(fp["ra"].round(6)) == [150.0, 151.0], "the high-scoring parent row of each file"
    (scores / "split=train" / "part-0.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="not a readable Parquet directory"):
        collect_hard_negatives(model_scores_path=scores, known_lens_path=inputs["lenses"], output_dir=tmp_path / "out2")


def test_exclusion_radius_flag(tmp_path, inputs, capsys):
    """A real row 4" from the known lens: dropped at the default 5", kept at --exclusion-radius-arcsec 3."""
    path = tmp_path / "s.parquet"
    pd.DataFrame({"ra": [LENS_RA + _ra_offset(4.0), 154.0], "dec": [DEC0, DEC0], "score": [0.99, 0.95], "label": [0, 0],
                  "is_null_injection": [False, False]}).to_parquet(path)  # fmt: skip
    argv = ["hardneg", "collect", "--model-scores", str(path), "--known-lenses", str(inputs["lenses"])]
    assert main([*argv, "--output-dir", str(tmp_path / "a")]) == 0
    assert "excluded_near_lens: 1" in capsys.readouterr().out
    assert main([*argv, "--output-dir", str(tmp_path / "b"), "--exclusion-radius-arcsec", "3"]) == 0
    assert "excluded_near_lens: 0" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "b" / "hard_negatives.parquet")) == 2
    assert main([*argv, "--output-dir", str(tmp_path / "c"), "--exclusion-radius-arcsec", "0"]) == 2
    assert "exclusion_radius_arcsec must be a positive number of arcsec, got 0.0" in capsys.readouterr().err
    # a directory holding known_lenses_merged.parquet is read as that file
    (tmp_path / "cat").mkdir()
    pd.read_parquet(inputs["lenses"]).to_parquet(tmp_path / "cat" / "known_lenses_merged.parquet")
    res = collect_hard_negatives(model_scores_path=path, known_lens_path=tmp_path / "cat", output_dir=tmp_path / "d")
    assert res.counts["excluded_near_lens"] == 1 and res.counts["known_lenses"] == 1


def test_without_a_known_lens_table_the_bundled_catalogues_are_excluded_around(tmp_path, caplog):
    lenses = bundled_known_lenses()
    assert len(lenses) > 6000, "SLACS/S4TM/BELLS + lenscat + Stein et al. are bundled"
    lens = lenses.iloc[0]
    path = tmp_path / "s.parquet"
    # a real control 1" north of a bundled lens, and one at the south pole (no bundled lens within 5")
    pd.DataFrame({"name": ["on_lens", "far"], "ra": [lens["ra"], 0.0], "dec": [lens["dec"] + 1 / 3600, -89.9], "score": [0.99, 0.99],
                  "label": [0, 0], "is_control": [True, True]}).to_parquet(path)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dhs_spark.hardneg"):
        res = collect_hard_negatives(model_scores_path=path, output_dir=tmp_path / "out")
    assert res.table["name"].tolist() == ["far"]
    assert res.counts["known_lenses"] == len(lenses) and res.counts["excluded_near_lens"] == 1
    assert "no known-lens table given: excluding around the" in caplog.text and "bundled known lenses" in caplog.text
