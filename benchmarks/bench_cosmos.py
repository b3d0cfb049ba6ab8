"""Benchmark: a COSMOS-source 3-band stamp vs a Sersic-source stamp, one core, same process, library reads included.

Both: 64 x 64 at 0.262", SIE + shear, per-band Gaussian PSF (g 1.5", r 1.3", z 1.2"), the same
lens and source position per case from the default InjectionPriors (theta_E 0.5-3"). Sersic:
the source built from the case's parameters (``sersic_from_params``) and ``render_lensed_sersic``
(fast path, oversample 4, the physics core's default). COSMOS: the library built by
``dhs cosmos build``'s defaults from the real HST galaxies of tests/data/cosmos (AEGIS
deconvolved to a 0.1" Gaussian + COSMOS F814W as-is, cleaned, 128 x 128 at 0.03"), the galaxy
fetched per stamp exactly as 4c does (``loader.get_source(task_seed).at(x, y, phi)``: seeded
choice, the per-worker memory-mapped library and source cache), its fast path at
``COSMOS_OVERSAMPLE`` (8) and the same PSF step (``render.apply_bands``). The two are timed
interleaved, case by case, in CPU time of this process over several rounds (the machine is
shared); the median round gives stamps/s and the ratio. Two COSMOS access patterns:

- ``cached``: every galaxy of this small library stays built in the worker's source cache
  (any library up to ~500 galaxies at 128 x 128, :data:`~dhs_spark.sims.cosmos.SOURCE_CACHE_BYTES`);
- ``uncached``: the source cache is off, so every stamp builds its source from the memory map
  (a library far larger than the cache, galaxies drawn at random).

Also printed: the per-stamp library access alone, COSMOS fast vs exact path (relative L1
before the PSF, flux ratio), and the first-call numba time of the COSMOS kernel (cache warm or
cold as found).

    .venv/bin/python benchmarks/bench_cosmos.py            # ~1 minute
    .venv/bin/python benchmarks/bench_cosmos.py --quick    # ~20 s
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one core, for both contenders

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

SIZE, PIX, SERSIC_OVERSAMPLE = 64, 0.262, 4
FWHM = (1.5, 1.3, 1.2)
DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "cosmos"


def build_library_loader(workdir: str):
    """A loader over one library of the real galaxies (both catalogues, builder defaults), as 4c opens it."""
    from dhs_spark.sims.cosmos import COSMOSLoaderV2
    from dhs_spark.sims.cosmos_build import DrawnLibrary, draw_catalog, write_library

    drawn = [draw_catalog(catalog, galsim_dir=str(DATA / sub)) for sub, catalog in
             (("aegis_hst_5", "AEGIS_F814w_catalog.fits"), ("cosmos_f814w_10", "real_galaxy_catalog_23.5.fits"))]  # fmt: skip
    merged = DrawnLibrary(
        images=np.concatenate([d.images for d in drawn]),
        meta={k: np.concatenate([d.meta[k] for d in drawn]) for k in drawn[0].meta},
        pixscale_arcsec=drawn[0].pixscale_arcsec,
        attrs=drawn[0].attrs,
    )
    path = os.path.join(workdir, "cosmos.h5")
    write_library(merged, path)
    return COSMOSLoaderV2(path, mode="hdf5")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds")
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    n_cases = args.cases or (30 if args.quick else 60)
    n_rounds = args.rounds or (3 if args.quick else 7)

    with tempfile.TemporaryDirectory() as tmp:
        loader = build_library_loader(tmp)
        return _run(loader, n_cases, n_rounds)


def _run(loader, n_cases: int, n_rounds: int) -> int:
    from dhs_spark.config.experiment import InjectionPriors
    from dhs_spark.sims.cosmos import COSMOS_OVERSAMPLE
    from dhs_spark.sims.inject import band_fluxes_nmgy
    from dhs_spark.sims.priors import lens_from_params, sample_injection, sersic_from_params
    from dhs_spark.sims.render import apply_bands, band_psf_kernels, render_lensed_sersic, unit_lensed_image_exact

    cases = []
    for i in range(n_cases):
        seed = 1000 + i
        p = sample_injection(InjectionPriors(), (0.5, 3.0), seed)
        flux = band_fluxes_nmgy(p["source_r_mag"], p["source_color_g_r"], p["source_color_r_z"])
        cases.append((lens_from_params(p), p, seed, flux))

    # per stamp: the source fetched (COSMOS, as 4c) or built (Sersic) from the case, then the stamp rendered
    def cosmos_source(p, seed):
        return loader.get_source(seed).at(p["source_x_arcsec"], p["source_y_arcsec"], p["source_phi_rad"])

    def cosmos_stamp(lens, placed, flux):
        unit = placed.unit_lensed_image_fast(SIZE, PIX, COSMOS_OVERSAMPLE, lens)
        return apply_bands(unit, flux, band_psf_kernels(3, PIX, FWHM))

    def sersic_stamp(lens, sersic, flux):
        return render_lensed_sersic(SIZE, PIX, SERSIC_OVERSAMPLE, lens, sersic, flux, psf_fwhm=FWHM)

    lens0, p0, seed0, flux0 = cases[0]
    t0 = time.perf_counter()
    cosmos_stamp(lens0, cosmos_source(p0, seed0), flux0)
    first_call_s = time.perf_counter() - t0
    sersic_stamp(lens0, sersic_from_params(p0), flux0)
    library = loader.library()
    cache_bytes = library.source_cache_bytes

    clock = time.process_time
    results = {}
    for pattern, budget in (("cached", cache_bytes), ("uncached", 0)):
        library.source_cache_bytes = budget
        library._sources.clear()
        library._cached_bytes = 0
        rounds = []  # per round: CPU seconds of (Sersic build, Sersic stamp, COSMOS fetch, COSMOS stamp)
        for _ in range(n_rounds):
            acc = np.zeros(4)
            for lens, p, seed, flux in cases:
                t0 = clock()
                sersic = sersic_from_params(p)
                t1 = clock()
                sersic_stamp(lens, sersic, flux)
                t2 = clock()
                placed = cosmos_source(p, seed)
                t3 = clock()
                cosmos_stamp(lens, placed, flux)
                t4 = clock()
                acc += (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
            rounds.append(acc)
        rounds = np.array(rounds)
        total = (rounds[:, 2] + rounds[:, 3]) / (rounds[:, 0] + rounds[:, 1])
        mid = np.argsort(total)[n_rounds // 2]
        results[pattern] = (np.sort(total), rounds[mid])
    library.source_cache_bytes = cache_bytes

    l1, flux_ratio = [], []
    for lens, p, seed, _ in cases[: min(15, n_cases)]:
        placed = cosmos_source(p, seed)
        exact = unit_lensed_image_exact(SIZE, PIX, COSMOS_OVERSAMPLE, lens, placed)
        fast = placed.unit_lensed_image_fast(SIZE, PIX, COSMOS_OVERSAMPLE, lens)
        l1.append(np.abs(fast - exact).sum() / np.abs(exact).sum())
        flux_ratio.append(fast.sum() / exact.sum())

    print(f"cases {n_cases} x rounds {n_rounds}; 3-band {SIZE}x{SIZE} stamps at {PIX}\"/pix, PSF FWHM g/r/z {FWHM}; "
          f"library of {len(loader)} real galaxies")  # fmt: skip
    for pattern, (ratios, (s_build, t_sersic, c_fetch, t_cosmos)) in results.items():
        print(f"[{pattern}] Sersic (fast, oversample {SERSIC_OVERSAMPLE}): {n_cases / (s_build + t_sersic):7.1f} stamps/s; "
              f"COSMOS (fast, oversample {COSMOS_OVERSAMPLE}, library access included): {n_cases / (c_fetch + t_cosmos):7.1f} stamps/s (CPU time)")  # fmt: skip
        print(f"[{pattern}] cost ratio COSMOS / Sersic, source access included: {ratios[n_rounds // 2]:.2f} "
              f"(median round; all rounds {', '.join(f'{r:.2f}' for r in ratios)}); target <= 1.5")
        print(f"[{pattern}] per stamp: COSMOS library access (get_source + at) {1e6 * c_fetch / n_cases:.1f} us, "
              f"Sersic source built {1e6 * s_build / n_cases:.1f} us; render only: ratio {t_cosmos / t_sersic:.2f}")
    print(f"COSMOS fast vs exact (before PSF): relative L1 max {max(l1):.2e}, median {np.median(l1):.2e}; flux ratio {min(flux_ratio):.5f}-{max(flux_ratio):.5f}")
    print(f"COSMOS first call (numba compile or cache load, library open): {first_call_s:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
