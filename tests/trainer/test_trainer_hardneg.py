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
