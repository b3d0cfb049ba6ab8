"""Milky Way extinction of the injected arc: A_b = R_b E(B-V) with the DR10 DECam coefficients."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dhs_spark.sims.inject import BANDS, DECAM_EXTINCTION_COEFFS, extinction_mag, inject_arc
from dhs_spark.sims.lensing import SIEShear
from dhs_spark.sims.sersic import SersicSource


def _inject(ebv, **kwargs):
    rng = np.random.default_rng(0)
    cutout = rng.normal(0, 0.005, (3, 64, 64)).astype(np.float32)
    invvar = np.full((3, 64, 64), 4e4, dtype=np.float32)
    args = (cutout, invvar, SIEShear(1.3, 0.8, 0.4), SersicSource(0.2, -0.1, 0.3), 21.0, 0.6, 0.4, [1.4, 1.25, 1.15])
    return inject_arc(*args, ebv=ebv, **kwargs)


def test_coefficients_are_the_dr10_catalogue_values():
    """A / E(B-V) for DECam g, r, z of https://www.legacysurvey.org/dr10/catalogs/#galactic-extinction-coefficients
    (E. Schlafly, 7000 K source at airmass 1.3, as in Schlafly & Finkbeiner 2011): 3.214, 2.165, 1.211.
    The g coefficient would be 3.219 at airmass 1 and 3.202 at airmass 2 (same page): a 0.5% spread."""
    assert DECAM_EXTINCTION_COEFFS == (3.214, 2.165, 1.211)
    assert BANDS == ("g", "r", "z")
    np.testing.assert_allclose(extinction_mag(0.1), [0.3214, 0.2165, 0.1211], rtol=1e-12)


@pytest.mark.parametrize("ebv", [0.02, 0.1, 0.5])
def test_arc_is_dimmed_by_exactly_the_transmission(ebv):
    """Acceptance: every pixel of the arc (no noise) and its total are dimmed by 10^(-0.4 R_b E(B-V))
    relative to ebv = 0 (float32 rounding: rtol 1e-6); the truth records A_b, the transmission, the
    intrinsic unlensed and lensed fluxes (unchanged) and the observed lensed flux (dimmed)."""
    clear, dusty = _inject(0.0), _inject(ebv)
    t0, t = clear.truth, dusty.truth
    assert t["ebv"] == ebv and t0["ebv"] == 0.0
    for b, band in enumerate(BANDS):
        a_b = DECAM_EXTINCTION_COEFFS[b] * ebv
        trans = 10 ** (-0.4 * a_b)
        bright = clear.arc[b] > 1e-3 * clear.arc[b].max()
        np.testing.assert_allclose(dusty.arc[b][bright] / clear.arc[b][bright], trans, rtol=1e-6, err_msg=band)
        assert t[f"arc_flux_in_stamp_{band}_nmgy"] / t0[f"arc_flux_in_stamp_{band}_nmgy"] == pytest.approx(trans, rel=1e-6)
        assert t[f"extinction_{band}_mag"] == pytest.approx(a_b, rel=1e-12)
        assert t[f"extinction_transmission_{band}"] == pytest.approx(trans, rel=1e-12)
        assert t[f"unlensed_flux_{band}_nmgy"] == t0[f"unlensed_flux_{band}_nmgy"], "unlensed flux is intrinsic (pre-extinction)"
        assert t[f"lensed_flux_{band}_nmgy"] == t0[f"lensed_flux_{band}_nmgy"], "lensed flux is pre-extinction"
        assert t[f"lensed_flux_observed_{band}_nmgy"] == pytest.approx(t[f"lensed_flux_{band}_nmgy"] * trans, rel=1e-12)
        assert t0[f"lensed_flux_observed_{band}_nmgy"] == t0[f"lensed_flux_{band}_nmgy"]
    # extinction reddens: g loses more than z
    assert t["extinction_transmission_g"] < t["extinction_transmission_r"] < t["extinction_transmission_z"] < 1.0
    assert t["arc_snr_sum"] < t0["arc_snr_sum"]


def test_extinction_with_arc_noise_dims_the_mean_not_the_rule():
    """With its own noise, the arc's expected flux is still dimmed (Poisson of the dimmed arc); the
    reject rule's footprint does not depend on E(B-V) (a fraction of each band's peak)."""
    noisy = _inject(0.3, add_poisson=True, rng=np.random.default_rng(3))
    clear = _inject(0.0)
    for b, band in enumerate(BANDS):
        expected = clear.truth[f"arc_flux_in_stamp_{band}_nmgy"] * 10 ** (-0.4 * DECAM_EXTINCTION_COEFFS[b] * 0.3)
        gain = noisy.truth[f"poisson_gain_{band}"]
        assert abs(noisy.truth[f"arc_flux_in_stamp_{band}_nmgy"] - expected) < 5 * math.sqrt(expected / gain), band


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_bad_ebv_is_refused(bad):
    with pytest.raises(ValueError, match="ebv"):
        _inject(bad)
