"""``dhs cosmos build``: draw a GalSim galaxy catalogue into an HDF5 source library.

Example::

    dhs cosmos build --galsim-path ../shared/data/cosmos/aegis_hst_5 --catalog AEGIS_F814w_catalog.fits \\
        --output cosmos.h5 --n-sources 5 --stamp-size 128 --pixel-scale 0.03 --gal-type real --seed 42
"""

from __future__ import annotations

import sys


def _build(args) -> int:
    import logging

    from dhs_spark.errors import ConfigError, InputDataError
    from dhs_spark.sims.cosmos_build import LibraryCuts, StampCleaning, build_library

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        drawn = build_library(
            args.output,
            args.catalog,
            galsim_dir=args.galsim_path,
            gal_type=args.gal_type,
            n_sources=args.n_sources,
            stamp_size=args.stamp_size,
            pixel_scale_arcsec=args.pixel_scale,
            seed=args.seed,
            psf_treatment=args.psf_treatment,
            target_psf_fwhm_arcsec=args.target_psf_fwhm,
            whiten=args.whiten,
            exclusion_level=args.exclusion_level,
            cleaning=StampCleaning(detect_nsigma=args.detect_nsigma, footprint_grow_pix=args.footprint_grow_pix),
            cuts=LibraryCuts(
                min_snr=args.min_snr,
                hlr_range_arcsec=tuple(args.hlr_range),
                min_flux_fraction_in_stamp=args.min_flux_fraction_in_stamp,
                max_edge_fraction=args.max_edge_fraction,
            ),
        )
    except (ConfigError, InputDataError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    meta = drawn.meta
    print(
        f"wrote {args.output}: {drawn.images.shape[0]} galaxies, {args.stamp_size}x{args.stamp_size} at {args.pixel_scale}\"/pix; "
        f"half-light radius {meta['half_light_radius_arcsec'].min():.3f}-{meta['half_light_radius_arcsec'].max():.3f}\", "
        f"flux fraction in stamp >= {meta['flux_fraction_in_stamp'].min():.3f}; sky pedestal removed: "
        f"{meta['pedestal_flux_fraction'].min():.1%} to {meta['pedestal_flux_fraction'].max():.1%} of the raw stamps; "
        f"{drawn.attrs['n_drawn'] - drawn.images.shape[0]} of {drawn.attrs['n_drawn']} drawn galaxies rejected by the cuts"
    )
    return 0


def register(subparsers) -> None:
    from dhs_spark.sims.cosmos_build import LibraryCuts, StampCleaning

    parser = subparsers.add_parser("cosmos", help="real HST (COSMOS) source libraries")
    sub = parser.add_subparsers(dest="cosmos_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser("build", help="draw a GalSim catalogue into an HDF5 library of unit-flux 0.03\"/pix stamps")
    p.add_argument("--galsim-path", default=None, metavar="DIR", help="directory of the catalogue, its images and PSFs")
    p.add_argument("--catalog", required=True, metavar="FILE", help="RealGalaxyCatalog FITS file (relative to --galsim-path or absolute)")
    p.add_argument("--output", required=True, metavar="FILE.h5")
    p.add_argument("--n-sources", type=int, default=None, metavar="N", help="how many galaxies (chosen by --seed); default all")
    p.add_argument("--stamp-size", type=int, default=128, metavar="S")
    p.add_argument("--pixel-scale", type=float, default=0.03, metavar="ARCSEC")
    p.add_argument("--gal-type", choices=("real", "parametric"), default="real")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--psf-treatment", choices=("auto", "deconvolve", "hst_native"), default="auto")
    p.add_argument("--target-psf-fwhm", type=float, default=0.1, metavar="ARCSEC", help="Gaussian PSF after deconvolution")
    p.add_argument("--whiten", action="store_true", help="whiten the correlated noise left by deconvolution (adds noise)")
    p.add_argument("--exclusion-level", default="marginal", help="GalSim COSMOSCatalog exclusion level (parametric mode)")
    cuts, cleaning = LibraryCuts(), StampCleaning()
    p.add_argument("--min-snr", type=float, default=cuts.min_snr, help="keep galaxies with aperture SNR >= this")
    p.add_argument("--hlr-range", type=float, nargs=2, default=list(cuts.hlr_range_arcsec), metavar=("LO", "HI"),
                   help="keep galaxies with half-light radius in [LO, HI] arcsec")  # fmt: skip
    p.add_argument("--min-flux-fraction-in-stamp", type=float, default=cuts.min_flux_fraction_in_stamp, metavar="F",
                   help="keep galaxies whose library stamp holds at least this fraction of the cleaned flux")  # fmt: skip
    p.add_argument("--max-edge-fraction", type=float, default=cuts.max_edge_fraction, metavar="F",
                   help="reject galaxies whose isophote covers more than this fraction of their HST stamp's edge")  # fmt: skip
    p.add_argument("--detect-nsigma", type=float, default=cleaning.detect_nsigma, help="source detection threshold (filtered sky sigmas)")
    p.add_argument("--footprint-grow-pix", type=int, default=cleaning.footprint_grow_pix, metavar="PIX",
                   help="growth of the galaxy's isophote into its footprint (native pixels)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_build)
