"""trainer.hardneg_join: the join is by sky position (not id), weights and per-source report."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dhs_spark.errors import InputDataError
from trainer.hardneg_join import join_hard_negatives, load_lookup

RADIUS = 1.0  # arcsec


def write_lookup(path, ra, dec, source, weight):
    n = len(ra)
    pq.write_table(
        pa.table({"ra": ra, "dec": dec, "healpix_index": np.arange(n), "source": source, "weight": weight, "score": np.full(n, 0.9)}),
        path,
    )
    return load_lookup(str(path))


def test_match_is_by_position_not_id(tmp_path):
    # Stamps: three negatives and one positive. The lookup's first entry is at the first stamp's
    # position (its id/healpix fields are unrelated: ids are never compared), the second sits
    # 2 x radius away from the second stamp, the third is on the positive.
    stamp_ra = np.array([150.0, 151.0, 152.0, 153.0])
    stamp_dec = np.array([2.0, 2.0, 2.0, -89.99])
    label = np.array([0, 0, 0, 1])
    two_radii_deg = 2 * RADIUS / 3600.0
    lookup = write_lookup(
        tmp_path / "lookup.parquet",
        ra=np.array([150.0, 151.0, 153.0]),
        dec=np.array([2.0, 2.0 + two_radii_deg, -89.99]),
        source=np.array(["ring", "model_fp", "ring"]),
        weight=np.array([2.0, 3.0, 2.0]),
    )
    join = join_hard_negatives(stamp_ra, stamp_dec, label, lookup, RADIUS, hard_neg_weight=5.0)
    np.testing.assert_array_equal(join.lookup_index, [0, -1, -1, 2])
    np.testing.assert_allclose(join.weights, [10.0, 1.0, 1.0, 1.0])  # 2 x 5; the positive is not up-weighted
    assert join.report["by_source"]["ring"] == {"lookup_entries": 2, "matched_negatives": 1, "matched_positives": 1, "unmatched_entries": 0}
    assert join.report["by_source"]["model_fp"] == {"lookup_entries": 1, "matched_negatives": 0, "matched_positives": 0, "unmatched_entries": 1}
    # Moving the unmatched entry to just inside the radius makes it match.
    inside = write_lookup(tmp_path / "l2.parquet", np.array([151.0]), np.array([2.0 + 0.9 * RADIUS / 3600]), np.array(["model_fp"]), np.array([3.0]))
    assert join_hard_negatives(stamp_ra, stamp_dec, label, inside, RADIUS, 5.0).weights[1] == 15.0


def test_nearest_entry_wins(tmp_path):
    lookup = write_lookup(
        tmp_path / "l.parquet", np.array([10.0, 10.0]), np.array([0.5 / 3600, 0.2 / 3600]), np.array(["a", "b"]), np.array([1.0, 4.0])
    )
    join = join_hard_negatives(np.array([10.0]), np.array([0.0]), np.array([0]), lookup, RADIUS, 2.0)
    assert join.lookup_index[0] == 1 and join.weights[0] == 8.0
    assert join.sep_arcsec[0] == pytest.approx(0.2, abs=1e-6)


def test_lookup_without_required_columns_names_the_file(tmp_path):
    pq.write_table(pa.table({"ra": [1.0], "dec": [2.0]}), tmp_path / "bad.parquet")
    with pytest.raises(InputDataError, match=r"bad\.parquet: hard-negative lookup lacks columns \['healpix_index', 'source', 'weight', 'score'\]"):
        load_lookup(str(tmp_path / "bad.parquet"))


# ---------------------------------------------------------------- the lookup's file name


def _lookup_at(path, ra: float):
    pq.write_table(pa.table({"ra": [ra], "dec": [0.0], "healpix_index": [0], "source": ["ring"], "weight": [2.0], "score": [0.9]}), path)


def test_a_directory_finds_the_canonical_lookup_before_the_legacy_name(tmp_path, caplog):
    from trainer.hardneg_join import resolve_lookup_path

    d = tmp_path / "hn"
    d.mkdir()
    _lookup_at(d / "hard_neg_lookup.parquet", ra=1.0)
    # the table dhs hardneg collect writes beside the lookup is not read as part of it
    pq.write_table(pa.table({"name": ["x"], "ra": [9.0], "dec": [0.0]}), d / "hard_negatives.parquet")
    with caplog.at_level("INFO", logger="trainer.hardneg_join"):
        legacy = load_lookup(str(d))
    assert legacy.ra.tolist() == [1.0] and legacy.path == f"{d}/hard_neg_lookup.parquet"
    assert "legacy name hard_neg_lookup.parquet; the canonical name is hard_negative_lookup.parquet" in caplog.text
    _lookup_at(d / "hard_negative_lookup.parquet", ra=2.0)
    caplog.clear()
    with caplog.at_level("INFO", logger="trainer.hardneg_join"):
        canonical = load_lookup(str(d) + "/")
    assert canonical.ra.tolist() == [2.0], "with both names present the canonical file is read"
    assert "hard_negative_lookup.parquet (canonical name" in caplog.text and "legacy" not in caplog.text
    assert resolve_lookup_path(str(d)) == f"{d}/hard_negative_lookup.parquet"


@pytest.mark.parametrize(("asked", "written"), [("hard_neg_lookup.parquet", "hard_negative_lookup.parquet"),
                                                ("hard_negative_lookup.parquet", "hard_neg_lookup.parquet")])  # fmt: skip
def test_a_missing_file_name_falls_back_to_the_other_name(tmp_path, caplog, asked, written):
    """The seed's config names hard_neg_lookup.parquet; dhs hardneg collect writes hard_negative_lookup.parquet."""
    _lookup_at(tmp_path / written, ra=3.0)
    with caplog.at_level("WARNING", logger="trainer.hardneg_join"):
        lookup = load_lookup(str(tmp_path / asked))
    assert lookup.ra.tolist() == [3.0] and lookup.path == f"{tmp_path}/{written}"
    assert f"{tmp_path / asked} does not exist; reading {tmp_path}/{written} instead" in caplog.text


def test_a_missing_lookup_with_an_unrelated_name_is_an_error(tmp_path):
    _lookup_at(tmp_path / "hard_negative_lookup.parquet", ra=3.0)
    with pytest.raises(InputDataError, match=r"other\.parquet: cannot read the hard-negative lookup"):
        load_lookup(str(tmp_path / "other.parquet"))
