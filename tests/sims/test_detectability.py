"""dhs_spark.sims.detectability.arc_sector_snr: the visibility statistic of the arc alone."""

from __future__ import annotations

import numpy as np
import pytest

from dhs_spark.sims.detectability import arc_sector_snr


def _sector_snr_by_hand(arc, invvar, theta_e, pixscale):
    """The statistic written out pixel by pixel: inverse-variance band stack, annulus
    theta_E +- 0.8" (inner edge >= 0.8"), 8 sectors of 45 degrees counter-clockwise from +x,
    sector SNR = sum / sqrt(n pixels); the largest."""
    n = arc.shape[-1]
    best = 0.0
    sums, counts = np.zeros(8), np.zeros(8)
    r_in, r_out = max(0.8, theta_e - 0.8), max(max(0.8, theta_e - 0.8) + 0.5, theta_e + 0.8)
    for y in range(n):
        for x in range(n):
            w = invvar[:, y, x].sum()
            r = np.hypot(x - n // 2, y - n // 2) * pixscale
            if w <= 0 or not (r_in <= r <= r_out):
                continue
            k = int(np.floor(np.mod(np.arctan2(y - n // 2, x - n // 2), 2 * np.pi) / (np.pi / 4))) % 8
            sums[k] += (arc[:, y, x] * invvar[:, y, x]).sum() / np.sqrt(w)
            counts[k] += 1
    for k in range(8):
        if counts[k]:
            best = max(best, sums[k] / np.sqrt(counts[k]))
    return best


@pytest.mark.parametrize("theta_e", [0.9, 1.5, 2.4])
def test_arc_sector_snr_equals_the_statistic_written_out(theta_e):
    rng = np.random.default_rng(int(theta_e * 10))
    arc = rng.normal(0.0, 1.0, (3, 33, 33))
    arc[:, 16:, 20:] += 3.0  # an "arc" in one quadrant
    invvar = rng.uniform(0.5, 2.0, (3, 33, 33))
    invvar[:, 5, :] = 0.0  # a dead row counts nowhere
    got = arc_sector_snr(arc, invvar, theta_e, 0.262)
    assert got > 3.0
    assert got == pytest.approx(_sector_snr_by_hand(arc, invvar, theta_e, 0.262), rel=1e-12)


def test_arc_sector_snr_of_nothing_is_zero():
    zeros = np.zeros((3, 21, 21))
    assert arc_sector_snr(zeros, np.ones_like(zeros), 1.2, 0.262) == 0.0
    assert arc_sector_snr(np.ones_like(zeros), np.ones_like(zeros), 0.0, 0.262) == 0.0
