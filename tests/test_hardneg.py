"""collect_hard_negatives: exclusion radius around known lenses, configured weights, model-FP
threshold and top-k, positional deduplication, and a lookup that round-trips."""

import numpy as np
import pandas as pd
import pytest

from dhs_spark.cli import main
from dhs_spark.config.experiment import HardNegativeConfig
from dhs_spark.hardneg import LOOKUP_COLUMNS, collect_hard_negatives
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
                           "score": [0.95, 0.79, 0.85, 0.99, 0.9]})
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
