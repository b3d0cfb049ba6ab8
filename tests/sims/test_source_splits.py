"""Source galaxies are assigned to stamp splits once, disjointly, stratified by magnitude
(:func:`dhs_spark.sims.lens_system.galaxy_splits`)."""

import numpy as np
import pytest

from dhs_spark.sims.lens_system import galaxy_splits

FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def _library(n, seed=0):
    rng = np.random.default_rng(seed)
    return np.array([f"g{i}" for i in range(n)]), rng.uniform(19.0, 25.0, n)


def test_every_galaxy_gets_one_split_in_proportion_and_any_input_order_gives_the_same():
    idents, mags = _library(1000)
    splits = galaxy_splits(idents, mags, FRACTIONS)
    counts = {name: int((splits == name).sum()) for name, _ in FRACTIONS}
    assert counts == pytest.approx({"train": 700, "val": 150, "test": 150}, abs=1)
    perm = np.random.default_rng(1).permutation(len(idents))
    again = galaxy_splits(idents[perm], mags[perm], FRACTIONS)
    assert np.array_equal(again, splits[perm]), "a galaxy's split does not depend on the order the library lists it in"


def test_each_split_spans_the_magnitude_range_in_proportion():
    idents, mags = _library(1000)
    splits = galaxy_splits(idents, mags, FRACTIONS)[np.argsort(mags)]
    # any 40 consecutive galaxies in magnitude order hold each split's share to within 2 galaxies
    for start in range(0, 1000 - 40, 20):
        window = splits[start:start + 40]
        for name, frac in FRACTIONS:
            assert abs((window == name).sum() - 40 * frac) <= 2, (start, name)


def test_a_small_library_gives_every_split_a_bright_galaxy():
    """The demo's case: 10 galaxies. A hash gave val one galaxy and test two of the faintest."""
    idents, mags = _library(10, seed=3)
    splits = galaxy_splits(idents, mags, FRACTIONS)
    rank = np.argsort(np.argsort(mags))  # 0 = brightest
    for name in ("val", "test"):
        assert 1 <= (splits == name).sum() <= 2
        assert rank[splits == name].min() < 5, f"{name}'s brightest galaxy is in the brighter half"


def test_zero_fraction_splits_get_nothing_and_bad_fractions_are_refused():
    idents, mags = _library(50)
    splits = galaxy_splits(idents, mags, (("train", 0.8), ("val", 0.2), ("test", 0.0)))
    assert not (splits == "test").any() and (splits == "val").sum() == 10
    nan_mags = mags.copy()
    nan_mags[:5] = np.nan
    assert set(galaxy_splits(idents, nan_mags, FRACTIONS)) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="split_fractions"):
        galaxy_splits(idents, mags, (("train", -0.1), ("val", 1.1)))
    with pytest.raises(ValueError, match="one value per galaxy"):
        galaxy_splits(idents, mags[:-1], FRACTIONS)


def test_pools_stratify_by_the_brightness_a_galaxy_has_at_the_reference_redshift():
    """A bright low-redshift galaxy is faint as a z = 1.8 source: the pool orders by that, not by
    the catalogue magnitude (the demo's z = 0.44, F814W 22.1 galaxy reads r ~ 25.4 at z = 1.8)."""
    from dhs_spark.sims.lens_system import cosmos_pool, mags_at_redshift

    idents = np.array(["near", "far"])
    m = mags_at_redshift(idents, [22.1, 22.9], [0.44, 0.96], 1.8, "Planck18")
    assert m[0] - 22.1 > 2.5 and m[0] > m[1], "moved from z = 0.44 to 1.8 the brighter catalogue galaxy ends fainter"
    assert np.array_equal(m, mags_at_redshift(idents, [22.1, 22.9], [0.44, 0.96], 1.8, "Planck18")), "deterministic per ident"
    ids, mags = _library(20, seed=5)
    zphot = np.linspace(0.3, 2.5, 20)
    meta = {"ident": ids, "mag": mags, "zphot": zphot, "half_light_radius_arcsec": np.full(20, 0.3)}
    pool = cosmos_pool(meta, FRACTIONS, z_reference=1.8, cosmology="Planck18")
    expected = galaxy_splits(ids, mags_at_redshift(ids, mags, zphot, 1.8, "Planck18"), FRACTIONS)
    for name, _ in FRACTIONS:
        assert set(pool.cosmos[name]["ident"]) == set(ids[expected == name])
