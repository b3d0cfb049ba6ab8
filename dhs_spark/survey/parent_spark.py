"""The LRG parent sample as a Spark step over DR10 sweep files (FITS or Parquet).

Parquet sweeps are read by Spark itself (column pruning, splitting); FITS sweeps, which Spark
cannot read, are distributed one file per task and read with astropy on the executor. Either
way each partition goes through the pure :func:`dhs_spark.survey.parent.parent_sample_frame`,
so the Spark result equals the pandas one row for row. Output columns: ``PARENT_COLUMNS``.
"""

from __future__ import annotations

from pathlib import Path

from dhs_spark.errors import InputDataError
from dhs_spark.survey.parent import DEFAULT_VARIANT, PARENT_COLUMNS, parent_sample_frame

SWEEP_COLUMNS = ("RA", "DEC", "BRICKNAME", "TYPE", "FLUX_G", "FLUX_R", "FLUX_Z", "FLUX_W1")
_SPARK_TYPES = {"float64": "double", "string": "string", "bool": "boolean"}


def parent_schema_ddl() -> str:
    """Spark DDL of :data:`~dhs_spark.survey.parent.PARENT_COLUMNS`."""
    return ", ".join(f"{name} {_SPARK_TYPES[kind]}" for name, kind, _doc in PARENT_COLUMNS)


def read_sweep_fits(path):
    """The sweep columns of one FITS sweep file as a pandas DataFrame (runs on executors)."""
    from dhs_spark.survey.bricks import read_fits_table

    try:
        df = read_fits_table(path)
    except Exception as exc:
        raise InputDataError(f"sweep file {path}: cannot read ({type(exc).__name__}: {exc})") from exc
    upper = {c.upper(): c for c in df.columns}
    missing = [c for c in SWEEP_COLUMNS if c not in upper]
    if missing:
        raise InputDataError(f"sweep file {path}: missing column(s) {missing}")
    return df[[upper[c] for c in SWEEP_COLUMNS]].set_axis(list(SWEEP_COLUMNS), axis=1)


def build_parent_sample(spark, paths, variant: str = DEFAULT_VARIANT, exclude_types=None):
    """Spark DataFrame of the parent sample of the sweep files ``paths`` (``.parquet`` or ``.fits[.gz]``).

    ``variant``: an LRG variant name; ``exclude_types``: optional morphology cut, e.g. ("PSF",).
    """
    from dhs_spark.survey.parent import LRG_VARIANTS

    if variant not in LRG_VARIANTS:
        raise ValueError(f"unknown LRG variant {variant!r}; choose one of {sorted(LRG_VARIANTS)}")
    paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    fits_paths = [p for p in paths if p.lower().endswith((".fits", ".fits.gz", ".fit"))]
    parquet_paths = [p for p in paths if p not in fits_paths]
    for p in parquet_paths:
        if not p.lower().endswith(".parquet") and not Path(p).is_dir():
            raise InputDataError(f"sweep file {p}: expected .parquet, a Parquet directory or .fits[.gz]")
    schema = parent_schema_ddl()
    exclude = tuple(exclude_types) if exclude_types else None

    def select_partition(batches):
        for pdf in batches:
            yield parent_sample_frame(pdf, variant, exclude)

    def read_and_select(batches):
        for pdf in batches:
            for path in pdf["path"]:
                yield parent_sample_frame(read_sweep_fits(path), variant, exclude)

    frames = []
    if parquet_paths:
        sdf = spark.read.parquet(*parquet_paths)
        upper = {c.upper(): c for c in sdf.columns}
        missing = [c for c in SWEEP_COLUMNS if c not in upper]
        if missing:
            raise InputDataError(f"sweep Parquet {parquet_paths[0]}...: missing column(s) {missing}")
        frames.append(sdf.select(*[sdf[upper[c]].alias(c) for c in SWEEP_COLUMNS]).mapInPandas(select_partition, schema))
    if fits_paths:
        files = spark.createDataFrame([(p,) for p in fits_paths], "path string").repartition(len(fits_paths))
        frames.append(files.mapInPandas(read_and_select, schema))
    if not frames:
        raise InputDataError("build_parent_sample: no sweep files given")
    result = frames[0]
    for other in frames[1:]:
        result = result.unionByName(other)
    return result
