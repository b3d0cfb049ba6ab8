"""Lensing simulations: pure numpy/numba physics, no Spark import.

- :mod:`~dhs_spark.sims.lensing`: SIE + external shear deflection, ray tracing, Hessian, magnification.
- :mod:`~dhs_spark.sims.sersic`: elliptical Sersic sources (total flux 1) and the source protocol.
- :mod:`~dhs_spark.sims.psf`: Gaussian / Moffat kernels, centre-preserving convolution, FWHM.
- :mod:`~dhs_spark.sims.render`: lensed images on the stamp grid (exact and fast paths).
- :mod:`~dhs_spark.sims.inject`: arc injection into real cutouts, with the truth record.
- :mod:`~dhs_spark.sims.priors`: injection parameters from the config's priors and one seed.

Submodules are imported explicitly (``from dhs_spark.sims.render import ...``) so that importing
the package stays light (numba is only imported with ``render``).
"""
