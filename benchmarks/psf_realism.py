"""How realistic are analytic PSFs for DR10? Measured on real legacypipe PsfEx models.

For each real PsfEx model (default: the 8 DECam CCDs of brick 2447p120 in tests/data/decam_ccds,
or ../shared/data/decam_ccds), at its CCD centre:

- the pipeline's seeing (survey-ccds ``fwhm``) and the model's Gaussian-fit FWHM (the same
  convention), in arcsec;
- a unit-flux Moffat (alpha, beta) fitted to the core (r <= 5"), its FWHM and beta;
- the fraction of a point source's light beyond 2" for the reference PSF, the PsfEx core plus the
  documented Legacy Surveys wings (:func:`dhs_spark.survey.psf.extend_with_wings`, on a grid of
  ``--radius-arcsec``), and for the analytic PSFs an injection would draw from the brick's psfsize
  (= survey-ccds FWHM here): a Gaussian and a Moffat of beta 3.5 (the seed's) and of the fitted
  beta, all pixel-integrated kernels (dhs_spark.sims.psf) on the same grid; "missed" is the
  reference's fraction minus the analytic one, in percent of the total light.

Prints a markdown table per CCD and a per-band summary (medians). Runs in a few seconds:

    .venv/bin/python benchmarks/psf_realism.py [--data DIR] [--radius-arcsec 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from dhs_spark.config.experiment import BANDS, PsfWingsConfig
from dhs_spark.sims.psf import gaussian_kernel, moffat_kernel
from dhs_spark.survey import psf

REPO = Path(__file__).resolve().parents[1]
SEED_MOFFAT_BETA = 3.5
R_OUT_ARCSEC = 2.0


def _default_data() -> Path:
    for d in (REPO / "tests" / "data" / "decam_ccds", REPO.parent / "shared" / "data" / "decam_ccds"):
        if (d / "survey-ccds-1.fits.gz").exists():
            return d
    raise SystemExit("no decam_ccds data found; pass --data")


def frac_beyond(kernel: np.ndarray, pixscale: float, r_arcsec: float) -> float:
    """Fraction of a normalised kernel's light at pixel centres farther than r_arcsec."""
    return float(kernel[psf.radius_grid_pix(kernel.shape[0]) * pixscale > r_arcsec].sum() / kernel.sum())


def measure(path: Path, ccd_row, size: int, wings: PsfWingsConfig) -> dict:
    band = ccd_row["filter"].strip()
    pix = psf.DR10_PIXSCALE_ARCSEC
    t0 = time.perf_counter()
    model = psf.load_psfex(str(path))
    core = psf.psfex_image(path, *model.centre_xy)
    ref = psf.extend_with_wings(core, band, pix, size, wings)
    t_ref = time.perf_counter() - t0
    fit = psf.fit_moffat(core, pix, 0.0, 5.0)
    psfsize = float(ccd_row["fwhm"]) * pix
    t0 = time.perf_counter()
    gauss = gaussian_kernel(psfsize, pix, size)
    moff_seed = moffat_kernel(psfsize, SEED_MOFFAT_BETA, pix, size)
    moff_fit = moffat_kernel(psfsize, fit.beta, pix, size)
    t_analytic = time.perf_counter() - t0
    f_ref = frac_beyond(ref, pix, R_OUT_ARCSEC)
    return {
        "band": band,
        "ccd": f"{ccd_row['expnum']}-{ccd_row['ccdname'].strip()}",
        "psfsize": psfsize,
        "fwhm_model": psf.gaussian_fwhm_arcsec(core, pix),
        "alpha": fit.alpha_arcsec,
        "beta": fit.beta,
        "fwhm_moffat": fit.fwhm_arcsec,
        "f_ref": f_ref,
        "miss_gauss": f_ref - frac_beyond(gauss, pix, R_OUT_ARCSEC),
        "miss_moffat_seed": f_ref - frac_beyond(moff_seed, pix, R_OUT_ARCSEC),
        "miss_moffat_fit": f_ref - frac_beyond(moff_fit, pix, R_OUT_ARCSEC),
        "t_ref_s": t_ref,
        "t_analytic_s": t_analytic,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="a decam_ccds folder (calib/psfex-single/..., survey-ccds-1.fits.gz)")
    ap.add_argument("--radius-arcsec", type=float, default=15.0, help="half-size of the kernels compared (arcsec)")
    args = ap.parse_args(argv)
    data = args.data or _default_data()
    rows = {int(r["expnum"]): r for r in fits.getdata(data / "survey-ccds-1.fits.gz", 1)}
    size = 2 * int(np.ceil(args.radius_arcsec / psf.DR10_PIXSCALE_ARCSEC)) + 1
    wings = PsfWingsConfig()
    results = []
    for path in sorted(data.glob("calib/psfex-single/**/*-psfex.fits")):
        expnum = psf.load_psfex(str(path)).expnum
        if expnum not in rows:
            print(f"skipping {path.name}: expnum {expnum} not in survey-ccds", file=sys.stderr)
            continue
        results.append(measure(path, rows[expnum], size, wings))
    results.sort(key=lambda r: (BANDS.index(r["band"]), r["ccd"]))

    print(f"PsfEx models of {data} at their CCD centres; kernels {size}x{size} px ({args.radius_arcsec:g}\" radius), 0.262\"/px.")
    print(f"Missed = light beyond {R_OUT_ARCSEC:g}\" of core+wings minus that of the analytic PSF of FWHM = psfsize (% of total).\n")
    print("| band | CCD | psfsize (\") | PsfEx FWHM (\") | Moffat alpha (\") | Moffat beta | Moffat FWHM (\") "
          "| core+wings >2\" (%) | Gaussian misses (%) | Moffat b=3.5 misses (%) | Moffat fitted-b misses (%) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['band']} | {r['ccd']} | {r['psfsize']:.2f} | {r['fwhm_model']:.2f} | {r['alpha']:.2f} | {r['beta']:.2f} | {r['fwhm_moffat']:.2f} "
              f"| {100 * r['f_ref']:.1f} | {100 * r['miss_gauss']:.1f} | {100 * r['miss_moffat_seed']:.1f} | {100 * r['miss_moffat_fit']:.1f} |")
    print("\nPer band (medians):\n")
    print("| band | n CCDs | PsfEx FWHM (\") | Moffat beta | core+wings >2\" (%) | Gaussian misses (%) | Moffat b=3.5 misses (%) | ratio core+wings / Moffat b=3.5 >2\" |")
    print("|---|---|---|---|---|---|---|---|")
    for band in BANDS:
        rs = [r for r in results if r["band"] == band]
        if not rs:
            continue

        def med(key, rs=rs):
            return statistics.median(r[key] for r in rs)

        ratio = statistics.median(r["f_ref"] / (r["f_ref"] - r["miss_moffat_seed"]) for r in rs)
        print(f"| {band} | {len(rs)} | {med('fwhm_model'):.2f} | {med('beta'):.2f} | {100 * med('f_ref'):.1f} | {100 * med('miss_gauss'):.1f} "
              f"| {100 * med('miss_moffat_seed'):.1f} | {ratio:.2f} |")
    t_ref = sum(r["t_ref_s"] for r in results)
    t_an = sum(r["t_analytic_s"] for r in results)
    print(f"\nTime per CCD: PsfEx core + wings {1e3 * t_ref / len(results):.1f} ms (first includes reading the file), "
          f"3 analytic kernels {1e3 * t_an / len(results):.1f} ms.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
