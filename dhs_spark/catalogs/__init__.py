"""Known-lens and hard-negative catalogues: one module per catalogue family, a merge, and the
``dhs catalogs download`` command.

Families: :mod:`~dhs_spark.catalogs.spectroscopic` (SLACS, S4TM, BELLS; Auger et al. 2009
Einstein radii), :mod:`~dhs_spark.catalogs.lenscat` (DESI Legacy Survey candidates of Huang et
al. 2020/2021 and Storfer et al. 2022), :mod:`~dhs_spark.catalogs.stein2021`,
:mod:`~dhs_spark.catalogs.rings` (Galaxy Zoo DECaLS rings), :mod:`~dhs_spark.catalogs.mergers`
(Darg et al. 2010). Every loader returns the normalised columns of
:data:`~dhs_spark.catalogs.common.CATALOG_COLUMNS`.
"""

from dhs_spark.catalogs.common import CATALOG_COLUMNS, format_jname, parse_jname

__all__ = ["CATALOG_COLUMNS", "format_jname", "parse_jname"]
