"""dhs_spark.healpix: nested indices, neighbours, and the KD-tree angular cross-match, checked
against brute-force great-circle separations from astropy (an independent formula)."""

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from dhs_spark.healpix import group_within, healpix_index, match_within, nearest_within, neighbours


def test_healpix_index_is_nested_and_cell_centres_map_back():
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=128, order="nested")
    idx = np.array([0, 17, 123456, hp.npix - 1])
    lon, lat = hp.healpix_to_lonlat(idx)
    got = healpix_index(lon.to_value(u.deg), lat.to_value(u.deg), nside=128)
    np.testing.assert_array_equal(got, idx, err_msg="cell centres must map back to their own nested index")
    # Nested ordering: the 4 children of a parent cell at nside 128 share its nside-64 index.
    assert np.all(got // 4 == healpix_index(lon.to_value(u.deg), lat.to_value(u.deg), nside=64))


def test_neighbours_are_adjacent_cells():
    from astropy.coordinates import ICRS
    from astropy_healpix import HEALPix

    hp = HEALPix(nside=128, order="nested", frame=ICRS())
    cell = healpix_index(150.0, 2.0, 128)
    nb = neighbours(cell, 128)[:, 0]
    assert nb.shape == (8,) and len(set(nb.tolist())) == 8
    c0 = hp.healpix_to_skycoord(cell)
    sep = hp.healpix_to_skycoord(nb).separation(c0).to_value(u.arcmin)
    res = hp.pixel_resolution.to_value(u.arcmin)
    assert np.all(sep < 1.6 * res), f"neighbour centres {sep} arcmin must lie within ~1.5 cell sizes ({res:.1f}')"


def test_match_within_equals_brute_force_including_ra_wrap_and_pole():
    rng = np.random.default_rng(3)
    base_ra = np.array([0.0001, 359.9999, 120.0, 45.0])
    base_dec = np.array([0.0, 0.0, 89.9995, -30.0])
    ra1 = np.mod(np.repeat(base_ra, 40) + rng.normal(0, 3 / 3600, 160) / np.cos(np.deg2rad(np.repeat(base_dec, 40))).clip(0.01), 360)
    dec1 = np.clip(np.repeat(base_dec, 40) + rng.normal(0, 3 / 3600, 160), -90, 90)
    ra2, dec2 = ra1[::-1].copy(), dec1[::-1].copy()
    radius = 2.5
    i, j, sep = match_within(ra1, dec1, ra2, dec2, radius)
    c1, c2 = SkyCoord(ra1 * u.deg, dec1 * u.deg), SkyCoord(ra2 * u.deg, dec2 * u.deg)
    full = c1[:, None].separation(c2[None, :]).to_value(u.arcsec)
    want = set(zip(*np.nonzero(full <= radius)))
    assert set(zip(i.tolist(), j.tolist())) == want, "KD-tree pairs must equal the brute-force pairs"
    np.testing.assert_allclose(sep, full[i, j], atol=1e-6, err_msg="separations (arcsec) vs astropy")
    assert any(abs(a - b) > 359 for a, b in zip(ra1[i], ra2[j])), "the test must contain pairs across RA = 0/360"


def test_nearest_and_groups():
    ra = np.array([10.0, 10.0 + 1.5 / 3600, 10.0 + 3.0 / 3600, 20.0])
    dec = np.zeros(4)
    np.testing.assert_array_equal(group_within(ra, dec, 2.0), [0, 0, 0, 1])  # 0-1 and 1-2 within 2": one chain
    idx, sep = nearest_within([10.0 + 2.9 / 3600, 30.0], [0.0, 0.0], ra, dec, 2.0)
    assert idx.tolist() == [2, -1] and sep[0] == pytest.approx(0.1, abs=1e-6) and np.isinf(sep[1])
    with pytest.raises(ValueError, match="radius_arcsec"):
        match_within(ra, dec, ra, dec, 0.0)
    with pytest.raises(ValueError, match="dec"):
        healpix_index([1.0], [95.0])
