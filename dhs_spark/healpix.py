"""Sky-position helpers: the one module that imports the HEALPix backend (astropy_healpix).

Conventions: right ascension and declination are ICRS degrees; HEALPix indices are NESTED
ordering unless a function says otherwise (nested keeps neighbouring cells close in index,
which is what position-hashed splits and sorted lookups want). Angular radii are arcsec.

``match_within`` is the general angular cross-match (a KD-tree on unit vectors, so it is
exact at the poles and across RA = 0/360); the catalogue merge, hard-negative mining and the
trainer's position join all use it.
"""

from __future__ import annotations

import numpy as np

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


def _as_deg(values, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: non-finite coordinate at index {bad} ({arr[bad]!r})")
    return arr


def _check_dec(dec: np.ndarray, name: str = "dec") -> None:
    if np.any(np.abs(dec) > 90.0):
        bad = int(np.flatnonzero(np.abs(dec) > 90.0)[0])
        raise ValueError(f"{name}: declination must lie in [-90, 90] deg, got {dec[bad]!r} at index {bad}")


def healpix_index(ra_deg, dec_deg, nside: int = 128) -> np.ndarray:
    """NESTED HEALPix index (int64) of each (ra, dec) in degrees at ``nside`` (a power of 2)."""
    from astropy import units as u
    from astropy_healpix import core

    if nside < 1 or nside & (nside - 1):
        raise ValueError(f"nside must be a power of 2, got {nside!r}")
    ra = _as_deg(ra_deg, "ra")
    dec = _as_deg(dec_deg, "dec")
    _check_dec(dec)
    idx = core.lonlat_to_healpix(np.mod(ra, 360.0) * u.deg, dec * u.deg, nside, order="nested")
    return np.asarray(idx, dtype=np.int64)


def neighbours(index, nside: int = 128) -> np.ndarray:
    """The 8 NESTED neighbours of each cell, shape (8, N) (SW, W, NW, N, NE, E, SE, S order of
    astropy_healpix); -1 where a cell has only 7 neighbours."""
    from astropy_healpix import core

    return np.asarray(core.neighbours(np.atleast_1d(np.asarray(index, dtype=np.int64)), nside, order="nested"), dtype=np.int64)


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """Unit vectors (N, 3) on the celestial sphere of (ra, dec) in degrees."""
    ra = np.deg2rad(_as_deg(ra_deg, "ra"))
    dec_arr = _as_deg(dec_deg, "dec")
    _check_dec(dec_arr)
    dec = np.deg2rad(dec_arr)
    cos_dec = np.cos(dec)
    return np.column_stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)])


def angular_separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in arcsec (elementwise, broadcasting), Vincenty-stable form."""
    ra1, dec1, ra2, dec2 = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(np.cos(dec2) * np.sin(dra), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra))
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.arctan2(num, den) * ARCSEC_PER_RAD


def match_within(ra1, dec1, ra2, dec2, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j) with ``sep(point1[i], point2[j]) <= radius_arcsec``.

    Returns ``(idx1, idx2, sep_arcsec)``: int64 index arrays into the two inputs and the exact
    great-circle separations, sorted by ``idx1`` then separation. Pass the same arrays twice for
    a self-match (pairs i == j are then included; drop them with ``idx1 != idx2``).
    The KD-tree queries chord length 2 sin(r/2) on unit vectors, which is exact at any position.
    """
    from scipy.spatial import cKDTree

    if not radius_arcsec > 0:
        raise ValueError(f"radius_arcsec must be positive, got {radius_arcsec!r}")
    v1 = unit_vectors(ra1, dec1)
    v2 = unit_vectors(ra2, dec2)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if len(v1) == 0 or len(v2) == 0:
        return empty
    chord = 2.0 * np.sin(radius_arcsec / ARCSEC_PER_RAD / 2.0)
    # Slightly larger search radius so float rounding at the boundary cannot lose a pair;
    # the exact separations below decide.
    hits = cKDTree(v2).query_ball_point(v1, r=chord * (1 + 1e-9) + 1e-15)
    counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
    if counts.sum() == 0:
        return empty
    idx1 = np.repeat(np.arange(len(v1), dtype=np.int64), counts)
    idx2 = np.concatenate([np.asarray(h, dtype=np.int64) for h in hits if len(h)])
    ra1a, dec1a = np.asarray(ra1, dtype=np.float64).ravel(), np.asarray(dec1, dtype=np.float64).ravel()
    ra2a, dec2a = np.asarray(ra2, dtype=np.float64).ravel(), np.asarray(dec2, dtype=np.float64).ravel()
    sep = angular_separation_arcsec(ra1a[idx1], dec1a[idx1], ra2a[idx2], dec2a[idx2])
    keep = sep <= radius_arcsec
    idx1, idx2, sep = idx1[keep], idx2[keep], sep[keep]
    order = np.lexsort((sep, idx1))
    return idx1[order], idx2[order], sep[order]


def nearest_within(ra1, dec1, ra2, dec2, radius_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """For each point of set 1, the index of its nearest set-2 point within the radius (-1 if
    none) and that separation in arcsec (inf if none)."""
    n1 = len(np.atleast_1d(ra1))
    nearest = np.full(n1, -1, dtype=np.int64)
    sep_out = np.full(n1, np.inf)
    idx1, idx2, sep = match_within(ra1, dec1, ra2, dec2, radius_arcsec)
    if len(idx1):
        first = np.concatenate([[True], idx1[1:] != idx1[:-1]])  # sorted by idx1 then separation
        nearest[idx1[first]] = idx2[first]
        sep_out[idx1[first]] = sep[first]
    return nearest, sep_out


def group_within(ra_deg, dec_deg, radius_arcsec: float) -> np.ndarray:
    """Friends-of-friends group label (int64, 0..G-1 in order of first member) of each point:
    points closer than ``radius_arcsec`` share a group, transitively."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(np.atleast_1d(ra_deg))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    i, j, _ = match_within(ra_deg, dec_deg, ra_deg, dec_deg, radius_arcsec)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # Relabel so that group numbers follow the order of each group's first member.
    _, first_pos, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first_pos))
    return rank[inverse].astype(np.int64)
