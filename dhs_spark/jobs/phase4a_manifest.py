"""Phase 4a: the manifest, one row per stamp to make (MANIFEST_COLUMNS of dhs_spark.schema).

Hosts come from the parent sample (LRGs, optionally selected here from sweep rows) joined to
the bricks table for each brick's PSF FWHM per band. Each host is expanded into manifest rows
by :func:`expand_hosts`, a pure pandas function (run by ``mapInPandas``, testable without Spark):

- Tiers: ``debug`` (the first ``debug_hosts`` hosts in (brickname, ra, dec) order, one sampled
  configuration each), ``grid`` (every host x every grid cell: theta_E on
  :data:`GRID_THETA_E_STEPS` points across ``data.theta_e_range`` x source r magnitude on
  :data:`GRID_R_MAG_STEPS` points across ``priors.source_r_mag_range``; the other parameters
  sampled) and ``train`` (every host x ``data.n_replicates`` sampled configurations).
- Controls: a host is a *control host* when hash(global seed, host) < ``data.control_fraction``.
  ``unpaired`` (default): control hosts give only controls, the others only injections, so no
  cutout appears with and without an arc. ``paired``: control hosts give their injections too,
  plus the control twin (same cutout, no arc).
- Splits: hash(nside, HEALPix NESTED cell of the host) against the cumulative
  ``data.split_fractions`` (in the config's order). The split depends on the sky cell only, so
  one sky patch is in one split across every experiment that shares nside and fractions.
- Randomness: every sampled quantity comes from ``task_seed(global seed, brickname, ra, dec,
  config id, replicate)``; the task id is that seed in hex.
- Hard negatives (``--hard-negative-catalog``, :func:`hard_negative_rows`): look-alike
  catalogues (ring galaxies, mergers, model false positives; ra, dec in degrees) give one label-0
  row per position in the bricks table, never injected, split by the same HEALPix hash (a
  catalogue ``heldout`` column sends its rows to the last split, never trained on), with
  ``hard_neg_source`` and ``hard_neg_weight``. 4c cuts them with the same rules as every row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from dhs_spark.config.seeds import stable_hash64, task_seed
from dhs_spark.errors import InputDataError
from dhs_spark.jobs import paths as P
from dhs_spark.schema import MANIFEST_COLUMNS, spark_schema

log = logging.getLogger("dhs.jobs.4a")

GRID_THETA_E_STEPS = 6
GRID_R_MAG_STEPS = 4
CONTROL_CONFIG_ID = "control"
HOST_COLUMNS = ("brickname", "ra", "dec", "psf_fwhm_g_arcsec", "psf_fwhm_r_arcsec", "psf_fwhm_z_arcsec", "psf_fallback_bands")
#: Host columns the host-conditioned population reads when the parent sample / bricks table have
#: them (null otherwise): Tractor fluxes (nanomaggies) and shape, a supplied lens redshift, the
#: brick's E(B-V) and point-source depths (1/nmgy^2).
HOST_OPTIONAL_COLUMNS = ("flux_g", "flux_r", "flux_z", "flux_w1", "shape_r_arcsec", "shape_e1", "shape_e2", "z_lens", "ebv",
                         "psfdepth_g_invvar_nmgy2", "psfdepth_r_invvar_nmgy2", "psfdepth_z_invvar_nmgy2")  # fmt: skip
#: Manifest columns copied from the host onto every one of its rows.
HOST_RECORDED = ("ebv",)


@dataclass(frozen=True)
class HardNegativeCatalog:
    """A look-alike catalogue for 4a: ``uri`` (.parquet, .csv or .fits; ra and dec in degrees,
    optional brickname, type and heldout columns), the ``tag`` its rows carry in
    ``hard_neg_source``, and their training ``weight`` (> 0)."""

    uri: str
    tag: str
    weight: float = 1.0

    @classmethod
    def from_flag(cls, values) -> HardNegativeCatalog:
        """From ``--hard-negative-catalog PATH [TAG [WEIGHT]]`` (tag: the file's stem; weight 1)."""
        from pathlib import PurePosixPath

        values = list(values)
        if not 1 <= len(values) <= 3:
            raise InputDataError(f"--hard-negative-catalog takes PATH [TAG [WEIGHT]] (got {values})")
        tag = values[1] if len(values) > 1 else PurePosixPath(values[0].rstrip("/")).name.split(".")[0]
        try:
            weight = float(values[2]) if len(values) > 2 else 1.0
        except ValueError:
            raise InputDataError(f"--hard-negative-catalog {values[0]}: WEIGHT must be a number (got {values[2]!r})") from None
        if not (weight > 0 and np.isfinite(weight)):
            raise InputDataError(f"--hard-negative-catalog {values[0]}: WEIGHT must be finite and > 0 (got {weight})")
        if not tag or ":" in tag:
            raise InputDataError(f"--hard-negative-catalog {values[0]}: TAG must be non-empty without ':' (got {tag!r})")
        return cls(values[0], tag, weight)


#: Catalogue columns (first found) whose value refines a hard-negative row's tag to "<tag>:<value>".
HARD_NEGATIVE_TYPE_COLUMNS = ("lookalike_type", "hardneg_type", "type")


@dataclass(frozen=True)
class GridCell:
    """One configuration: ``theta_e_range`` (arcsec; lo == hi fixes it) and an optional fixed
    unlensed source r magnitude (AB)."""

    config_id: str
    theta_e_range: tuple[float, float]
    source_r_mag: float | None = None


@dataclass(frozen=True)
class ManifestParams:
    """Everything :func:`expand_hosts` needs (picklable, shipped to executors)."""

    experiment_id: str
    global_seed: int
    tier: str
    cells: tuple[GridCell, ...]
    n_replicates: int
    control_type: str
    control_fraction: float
    split_fractions: tuple[tuple[str, float], ...]
    healpix_nside: int
    priors: object  # dhs_spark.config.InjectionPriors
    population: object = None  # dhs_spark.config.PopulationConfig
    source_pool: object = None  # dhs_spark.sims.lens_system.SourcePool (host-conditioned mode; real COSMOS sources)
    null_injection_fraction: float = 0.0
    stamp_size: int = 64
    pixscale_arcsec: float = 0.262

    @property
    def host_conditioned(self) -> bool:
        """Lenses from the host population: the 'train' and 'debug' tiers with population.mode
        'host_conditioned' (a completeness grid is uniform by construction)."""
        return self.tier != "grid" and self.population is not None and self.population.mode == "host_conditioned"


def grid_cells(cfg, tier: str) -> tuple[GridCell, ...]:
    """The configurations of ``tier`` (see the module docstring)."""
    lo, hi = (float(v) for v in cfg.data.theta_e_range)
    if tier != "grid":
        return (GridCell(tier, (lo, hi)),)
    m_lo, m_hi = (float(v) for v in cfg.priors.source_r_mag_range)
    cells = []
    for te in np.linspace(lo, hi, GRID_THETA_E_STEPS):
        for mag in np.linspace(m_lo, m_hi, GRID_R_MAG_STEPS):
            te_r, mag_r = round(float(te), 4), round(float(mag), 3)
            cells.append(GridCell(f"grid_te{te_r:.4f}_mr{mag_r:.3f}", (te_r, te_r), mag_r))
    return tuple(cells)


def source_pool(cfg):
    """The :class:`~dhs_spark.sims.lens_system.SourcePool` of the config's source mode, each
    galaxy assigned to one split by strata of its magnitude at the median source redshift (:func:`~dhs_spark.sims.lens_system.galaxy_splits`) (read on the driver: library metadata only, no images)."""
    from dhs_spark.sims import lens_system

    fractions = tuple((str(k), float(v)) for k, v in cfg.data.split_fractions.items())
    # galaxies are stratified into splits by their brightness at the median source redshift
    z_ref = float(cfg.population.z_source_median)
    if cfg.data.source_mode == "cosmos":
        from dhs_spark.sims.cosmos import COSMOSLoaderV2

        if cfg.data.cosmos_loader_mode == "synthetic":
            raise InputDataError("population.mode 'host_conditioned' needs real COSMOS sources (their magnitudes and redshifts); "
                                 "data.cosmos_loader_mode 'synthetic' has none: use population.mode 'uniform'")  # fmt: skip
        meta = COSMOSLoaderV2(cosmos_path=cfg.data.cosmos_library_path, mode=cfg.data.cosmos_loader_mode).metadata_frame()
        meta = meta[meta["passes_cuts"]]
        pool = lens_system.cosmos_pool({k: meta[k].to_numpy() for k in meta.columns}, fractions, z_ref, cfg.population.cosmology)
    else:
        from dhs_spark.sims.source_population import load_parametric_catalog

        pool = lens_system.parametric_pool(load_parametric_catalog(cfg.population.parametric_catalog_path), fractions, z_ref, cfg.population.cosmology)
    pool.check([name for name, frac in fractions if frac > 0])
    return pool


def manifest_params(cfg, tier: str) -> ManifestParams:
    if tier not in ("debug", "grid", "train"):
        raise ValueError(f"tier must be debug, grid or train (got {tier!r})")
    conditioned = tier != "grid" and cfg.population.mode == "host_conditioned"
    # Real COSMOS galaxies are always chosen here, from the row's own split, so that no galaxy
    # feeds two splits (the uniform priors included; synthetic galaxies are unique per task).
    real_cosmos = cfg.data.source_mode == "cosmos" and cfg.data.cosmos_loader_mode != "synthetic"
    return ManifestParams(
        experiment_id=cfg.experiment_id,
        global_seed=int(cfg.seeds.global_seed),
        tier=tier,
        cells=grid_cells(cfg, tier),
        n_replicates=1 if tier == "debug" else int(cfg.data.n_replicates),
        control_type=cfg.data.control_type,
        control_fraction=float(cfg.data.control_fraction),
        split_fractions=tuple((str(k), float(v)) for k, v in cfg.data.split_fractions.items()),
        healpix_nside=int(cfg.data.healpix_nside),
        priors=cfg.priors,
        population=cfg.population,
        source_pool=source_pool(cfg) if conditioned or real_cosmos else None,
        null_injection_fraction=float(cfg.data.null_injection_fraction),
        stamp_size=int(cfg.data.stamp_size),
        pixscale_arcsec=float(cfg.data.pixel_scale_arcsec),
    )


def split_of_cell(cell: int, nside: int, split_fractions: tuple[tuple[str, float], ...]) -> str:
    """The split of HEALPix cell ``cell``: its hash in [0, 1) against the cumulative fractions."""
    u = stable_hash64("split", int(nside), int(cell)) / 2.0**64
    edge = 0.0
    for name, frac in split_fractions:
        edge += frac
        if u < edge:
            return name
    return split_fractions[-1][0]  # u within rounding of 1


def is_control_host(global_seed: int, brickname: str, ra: float, dec: float, control_fraction: float) -> bool:
    return stable_hash64(int(global_seed), "control-host", str(brickname), float(ra), float(dec)) / 2.0**64 < control_fraction


def is_null_injection(seed: int, fraction: float) -> bool:
    """Whether the injection row of ``seed`` is a null injection (zero source flux)."""
    return fraction > 0 and stable_hash64("null-injection", int(seed)) / 2.0**64 < fraction


def _row(params: ManifestParams, host: dict, cell_id: int, split: str, config_id: str, replicate: int, control: bool) -> dict:
    seed = task_seed(params.global_seed, host["brickname"], host["ra"], host["dec"], config_id, replicate)
    null = not control and is_null_injection(seed, params.null_injection_fraction)
    row = {c.name: None for c in MANIFEST_COLUMNS}
    row.update({k: host[k] for k in HOST_COLUMNS})
    row.update({k: host.get(k) for k in HOST_RECORDED})
    row.update(
        task_id=f"{seed:016x}",
        experiment_id=params.experiment_id,
        config_id=config_id,
        tier=params.tier,
        split=split,
        healpix_index=cell_id,
        replicate=replicate,
        task_seed=seed,
        is_control=control,
        is_null_injection=null,
        label=0 if control or null else 1,
        population_mode="host_conditioned" if params.host_conditioned else "uniform",
    )
    if control:
        row["theta_e_arcsec"] = 0.0
    return row


#: Lens fields of :func:`dhs_spark.sims.population.draw_lenses` written to every injection row;
#: the host's own (redshift, luminosity, velocity dispersion) go on its controls too.
_LENS_FIELDS = ("theta_e_arcsec", "lens_q", "lens_phi_rad", "shear_gamma1", "shear_gamma2", "z_source")
_HOST_LENS_FIELDS = ("z_lens", "z_lens_source", "host_abs_mag_r", "sigma_v_kms")


def _host_lenses(hosts, params: ManifestParams) -> list:
    """One lens per host (a galaxy has one redshift and one velocity dispersion), drawn with a
    host seed; a dict per host, or None for a host no lens in the population's theta_E range can
    be drawn for (the host is then left out entirely, controls included, so that injections and
    controls come from the same hosts)."""
    import numpy as np

    from dhs_spark.sims.population import draw_lenses

    columns = {c: hosts[c].to_numpy(dtype=float) if c in hosts.columns else np.full(len(hosts), np.nan)
               for c in ("flux_g", "flux_r", "flux_z", "flux_w1", "z_lens", "shape_e1", "shape_e2")}  # fmt: skip
    seeds = np.array([task_seed(params.global_seed, b, float(r), float(d), "host-lens", 0)
                      for b, r, d in zip(hosts["brickname"], hosts["ra"], hosts["dec"])], dtype=np.uint64)  # fmt: skip
    drawn = draw_lenses(columns, seeds, params.population)
    drawn["host_abs_mag_r"] = drawn.pop("host_abs_mag")
    out = []
    for i in range(len(hosts)):
        if drawn["reject_reason"][i]:
            out.append(None)
            continue
        lens = {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in drawn.items() if k != "reject_reason"}
        out.append(lens)
    return out


def _inject_fields(params: ManifestParams, host: dict, lens, split: str, row: dict, gc) -> dict:
    """The lens and source fields of one injection row."""
    from dhs_spark.sims.lens_system import draw_system, split_galaxy_ident
    from dhs_spark.sims.priors import sample_injection

    if lens is None:  # uniform priors
        fields = sample_injection(params.priors, gc.theta_e_range, row["task_seed"])
        if gc.source_r_mag is not None:
            fields["source_r_mag"] = gc.source_r_mag
        if params.source_pool is not None and params.source_pool.kind == "cosmos":
            fields["cosmos_ident"] = split_galaxy_ident(params.source_pool, split, row["task_seed"])
        return fields
    fields = {k: lens[k] for k in _LENS_FIELDS}
    system = draw_system(lens, host, split, row["task_seed"], params.source_pool, params.population, params.priors, params.stamp_size,
                         params.pixscale_arcsec)  # fmt: skip
    fields.update({k: v for k, v in system.items() if k in _MANIFEST_NAMES})
    return fields


MANIFEST_ROWS_PER_CHUNK = 4096
_MANIFEST_NAMES = frozenset(c.name for c in MANIFEST_COLUMNS)


def _manifest_frame(rows: list):
    import pandas as pd

    frame = pd.DataFrame(rows, columns=[c.name for c in MANIFEST_COLUMNS])
    return frame.astype({"replicate": "int32", "label": "int32", "healpix_index": "int64", "task_seed": "int64", "selection_draws": "Int32",
                         "hard_neg_weight": "float32"})  # fmt: skip


def hard_negative_rows(catalog, bricks, params: ManifestParams, spec: HardNegativeCatalog):
    """Manifest rows (pandas, MANIFEST_COLUMNS) of one look-alike catalogue, and their counts.

    ``catalog``: pandas with ra and dec (degrees; the names :func:`dhs_spark.survey.footprint.
    find_radec_columns` knows), optionally ``brickname`` (else the DR10 brick of the position),
    a type column (:data:`HARD_NEGATIVE_TYPE_COLUMNS`) and ``heldout``. ``bricks``: pandas with
    brickname and the host columns of a brick (PSF FWHM, fallback bands, E(B-V)). A row whose
    brick is not in ``bricks`` is outside the footprint: counted, not written. Each row in it
    gives one label-0 row (task seed from the position, ``hard_negative:<tag>``), split by its
    HEALPix cell, or the last split when ``heldout`` is true. Counts: ``n_catalog``,
    ``n_outside_footprint``, ``n_duplicates`` (same brick and position, kept once), ``n_rows``.
    """
    import pandas as pd

    from dhs_spark.healpix import healpix_index
    from dhs_spark.survey.bricks import brickname_for
    from dhs_spark.survey.footprint import find_radec_columns

    cat = catalog.rename(columns={c: c.lower() for c in catalog.columns})
    try:
        ra_col, dec_col = find_radec_columns(cat.columns)
    except InputDataError as err:
        raise InputDataError(f"{spec.uri}: hard-negative catalogue: {err}") from None
    ra = pd.to_numeric(cat[ra_col], errors="coerce").to_numpy(float)
    dec = pd.to_numeric(cat[dec_col], errors="coerce").to_numpy(float)
    bad = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90))
    if bad.any():
        raise InputDataError(f"{spec.uri}: {int(bad.sum())} rows with no valid ra/dec, first at row {int(np.flatnonzero(bad)[0])}")
    names = cat["brickname"].astype(str).str.strip().to_numpy() if "brickname" in cat.columns else brickname_for(ra, dec)
    type_col = next((c for c in HARD_NEGATIVE_TYPE_COLUMNS if c in cat.columns), None)
    heldout = cat["heldout"].fillna(False).astype(bool).to_numpy() if "heldout" in cat.columns else np.zeros(len(cat), bool)
    by_brick = bricks.set_index("brickname")
    inside = np.isin(names, by_brick.index.to_numpy())
    counts = {"n_catalog": int(len(cat)), "n_outside_footprint": int((~inside).sum()), "n_duplicates": 0, "n_rows": 0}
    rows, seen = [], set()
    cells = healpix_index(ra, dec, params.healpix_nside) if len(cat) else np.zeros(0, np.int64)
    config_id = f"hard_negative:{spec.tag}"
    for i in np.flatnonzero(inside):
        key = (names[i], float(ra[i]), float(dec[i]))
        if key in seen:
            counts["n_duplicates"] += 1
            continue
        seen.add(key)
        brick = by_brick.loc[names[i]]
        host = {"brickname": names[i], "ra": float(ra[i]), "dec": float(dec[i]), **{k: brick[k] for k in HOST_COLUMNS[3:]},
                **{k: (None if pd.isna(brick.get(k)) else float(brick[k])) for k in HOST_RECORDED if k in brick.index}}  # fmt: skip
        split = params.split_fractions[-1][0] if heldout[i] else split_of_cell(int(cells[i]), params.healpix_nside, params.split_fractions)
        row = _row(params, host, int(cells[i]), split, config_id, 0, False)
        kind = str(cat[type_col].iloc[i]).strip() if type_col and pd.notna(cat[type_col].iloc[i]) else ""
        row.update(label=0, is_null_injection=False, theta_e_arcsec=0.0, population_mode=None,
                   hard_neg_source=f"{spec.tag}:{kind}" if kind else spec.tag, hard_neg_weight=float(spec.weight))  # fmt: skip
        rows.append(row)
    counts["n_rows"] = len(rows)
    return _manifest_frame(rows), counts


def expand_hosts(hosts, params: ManifestParams):
    """Manifest rows (pandas DataFrame of MANIFEST_COLUMNS) for a pandas DataFrame of hosts.

    ``hosts`` needs :data:`HOST_COLUMNS`. Row order follows the input, then cell, then replicate.
    """

    from dhs_spark.healpix import healpix_index

    missing = [c for c in HOST_COLUMNS if c not in hosts.columns]
    if missing:
        raise InputDataError(f"4a hosts: missing columns {missing} (have {list(hosts.columns)})")
    rows = []
    if len(hosts):
        cells = healpix_index(hosts["ra"].to_numpy(), hosts["dec"].to_numpy(), params.healpix_nside)
        lenses = _host_lenses(hosts, params) if params.host_conditioned else [None] * len(hosts)
        for host, cell, lens in zip(hosts.to_dict("records"), cells, lenses):
            if params.host_conditioned and lens is None:
                continue
            host["ra"], host["dec"] = float(host["ra"]), float(host["dec"])
            split = split_of_cell(int(cell), params.healpix_nside, params.split_fractions)
            control_host = is_control_host(params.global_seed, host["brickname"], host["ra"], host["dec"], params.control_fraction)
            host_fields = {k: lens[k] for k in _HOST_LENS_FIELDS} if lens is not None else {}
            for replicate in range(params.n_replicates):
                if not (control_host and params.control_type == "unpaired"):
                    for gc in params.cells:
                        row = _row(params, host, int(cell), split, gc.config_id, replicate, False)
                        row.update(host_fields)
                        row.update(_inject_fields(params, host, lens, split, row, gc))
                        rows.append(row)
                if control_host:
                    row = _row(params, host, int(cell), split, CONTROL_CONFIG_ID, replicate, True)
                    row.update(host_fields)
                    rows.append(row)
    return _manifest_frame(rows)


def _read_table(spark, uri: str):
    """A Spark DataFrame of a .parquet (file or dir), .csv or .fits table, columns lower-cased."""
    name = uri.lower().rstrip("/")
    if name.endswith((".csv", ".csv.gz")):
        df = spark.read.csv(uri, header=True, inferSchema=True)
    elif name.endswith((".fits", ".fits.gz", ".fit")):
        import tempfile

        from astropy.table import Table

        local = P.copy_to_local(spark, uri, tempfile.mkdtemp(prefix="dhs4a_"))
        tab = Table.read(local, hdu=1)
        pdf = tab[[c for c in tab.colnames if tab[c].ndim <= 1]].to_pandas()
        for col in pdf.columns:
            if pdf[col].dtype == object:
                pdf[col] = pdf[col].map(lambda v: v.decode("ascii").strip() if isinstance(v, bytes) else v)
        df = spark.createDataFrame(pdf)
    else:
        df = spark.read.parquet(uri)
    return df.toDF(*[c.lower() for c in df.columns])


def brick_frame(spark, inputs):
    """pandas: the bricks table's per-brick host columns (brickname, PSF FWHM per band, fallback
    bands, and E(B-V) and point-source depths where the table has them)."""
    import tempfile

    from dhs_spark.survey.bricks import load_bricks_table

    bricks_local = P.copy_to_local(spark, P.to_uri(inputs.bricks_table), tempfile.mkdtemp(prefix="dhs4a_"))
    bricks = load_bricks_table(bricks_local)
    fallback = bricks[[f"psf_fwhm_{b}_fallback" for b in "grz"]].to_numpy()
    bricks["psf_fallback_bands"] = [",".join(b for b, f in zip("grz", flags) if f) for flags in fallback]
    brick_cols = ["brickname", "psf_fwhm_g_arcsec", "psf_fwhm_r_arcsec", "psf_fwhm_z_arcsec", "psf_fallback_bands"]
    brick_cols += [c for c in ("ebv", "psfdepth_g_invvar_nmgy2", "psfdepth_r_invvar_nmgy2", "psfdepth_z_invvar_nmgy2") if c in bricks.columns]
    return bricks[brick_cols]


def host_frame(spark, inputs, cfg, tier: str, debug_hosts: int, bricks=None):
    """Spark DataFrame of hosts (HOST_COLUMNS): parent sample joined to the bricks table
    (``bricks``: :func:`brick_frame`'s table when the caller has read it already)."""
    from pyspark.sql import functions as F

    if not inputs.parent_sample or not inputs.bricks_table:
        raise InputDataError("4a needs --parent-sample and --bricks-table (or --mock-survey)")
    parent = _read_table(spark, P.to_uri(inputs.parent_sample))
    if inputs.select_lrg:
        from dhs_spark.survey.parent import select_lrg

        variant = cfg.data.phase3_parent_sample

        def select(batches: Iterator):
            for pdf in batches:
                yield pdf.loc[select_lrg(pdf, variant)]

        parent = parent.mapInPandas(select, parent.schema)
    for col in ("brickname", "ra", "dec"):
        if col not in parent.columns:
            raise InputDataError(f"{inputs.parent_sample}: parent sample has no {col!r} column (columns: {parent.columns})")
    bricks_df = spark.createDataFrame(brick_frame(spark, inputs) if bricks is None else bricks)
    # Optional host columns (Tractor sweep names, lower-cased): null when the parent sample lacks them.
    renames = {"flux_g": "flux_g", "flux_r": "flux_r", "flux_z": "flux_z", "flux_w1": "flux_w1", "shape_r": "shape_r_arcsec",
               "shape_e1": "shape_e1", "shape_e2": "shape_e2"}  # fmt: skip
    z_col = cfg.population.lens_redshift_column
    if z_col:
        if z_col.lower() not in parent.columns:
            raise InputDataError(f"{inputs.parent_sample}: population.lens_redshift_column {z_col!r} is not a column (columns: {parent.columns})")
        renames[z_col.lower()] = "z_lens"
    optional = [F.col(src).cast("double").alias(dst) if src in parent.columns else F.lit(None).cast("double").alias(dst) for src, dst in renames.items()]
    if "z_lens" not in renames.values():
        optional.append(F.lit(None).cast("double").alias("z_lens"))
    hosts = (
        parent.select(F.trim(F.col("brickname").cast("string")).alias("brickname"), F.col("ra").cast("double"), F.col("dec").cast("double"), *optional)
        .dropDuplicates(["brickname", "ra", "dec"])
        .join(F.broadcast(bricks_df), "brickname", "left")
    )
    for col in HOST_OPTIONAL_COLUMNS:
        if col not in hosts.columns:
            hosts = hosts.withColumn(col, F.lit(None).cast("double"))
    unknown = hosts.filter(F.col("psf_fwhm_r_arcsec").isNull() & F.col("psf_fallback_bands").isNull()).select("brickname").distinct().limit(5).collect()
    if unknown:
        raise InputDataError(f"{inputs.bricks_table}: no row for bricks {[r.brickname for r in unknown]} of the parent sample")
    if tier == "debug":
        hosts = hosts.orderBy("brickname", "ra", "dec").limit(debug_hosts)
    return hosts.select(*HOST_COLUMNS, *HOST_OPTIONAL_COLUMNS)


def produce(spark, cfg, paths: P.ExperimentPaths, inputs, opts, staging: str) -> dict:
    """Write the manifest and its CSV summary into ``staging``; return the counts."""
    params = manifest_params(cfg, opts.tier)
    bricks = brick_frame(spark, inputs) if inputs.bricks_table else None  # read once: hosts and hard negatives
    hosts = host_frame(spark, inputs, cfg, opts.tier, opts.debug_hosts, bricks)

    # Bound the rows built per yield: a host expands to n_replicates x (cells + 1) rows, and a
    # whole Arrow batch of hosts at once held ~11 KB per row in the (reused) Python worker.
    hosts_per_chunk = max(1, MANIFEST_ROWS_PER_CHUNK // (params.n_replicates * (len(params.cells) + 1)))

    def expand(batches):
        for pdf in batches:
            for start in range(0, len(pdf), hosts_per_chunk):
                yield expand_hosts(pdf.iloc[start : start + hosts_per_chunk], params)

    # Hosts are few bytes but, host-conditioned, cost milliseconds each (lens and source draws, the
    # detectability renders): spread them over every core. Without this, adaptive execution
    # coalesces the small shuffle after dropDuplicates into one partition and 4a runs on one core.
    # Rows depend only on their host, so the partitioning changes no row.
    n_parts = int(opts.partitions) if opts.partitions else 2 * spark.sparkContext.defaultParallelism
    manifest = hosts.repartition(n_parts, "brickname", "ra", "dec").mapInPandas(expand, spark_schema(MANIFEST_COLUMNS))
    hard_negative_counts = {}
    for spec in inputs.hard_negative_catalogs:
        rows, hard_negative_counts[spec.tag] = hard_negative_rows(_read_table(spark, P.to_uri(spec.uri)).toPandas(), bricks, params, spec)
        log.info("4a hard negatives %s (%s, weight %g): %s", spec.tag, spec.uri, spec.weight, hard_negative_counts[spec.tag])
        if len(rows):
            manifest = manifest.unionByName(spark.createDataFrame(rows, schema=spark_schema(MANIFEST_COLUMNS)))
    out = P.join(staging, "manifest")
    manifest.write.mode("overwrite").parquet(out)
    written = spark.read.schema(spark_schema(MANIFEST_COLUMNS)).parquet(out)
    summary = written.groupBy("tier", "split", "is_control").count().orderBy("tier", "split", "is_control").toPandas()
    P.write_text(spark, P.join(staging, "summary.csv"), summary.to_csv(index=False))
    n_rows = int(summary["count"].sum()) if len(summary) else 0
    n_distinct = written.select("task_id").distinct().count()
    if n_distinct != n_rows:
        raise InputDataError(f"4a: {n_rows - n_distinct} duplicate task ids (duplicate hosts in {inputs.parent_sample}?)")
    counts = {"n_rows": n_rows, "n_controls": int(summary.loc[summary["is_control"], "count"].sum()), "tier": opts.tier}
    counts["n_injections"] = n_rows - counts["n_controls"]
    if hard_negative_counts:
        counts["hard_negatives"] = hard_negative_counts
        counts["n_injections"] -= sum(c["n_rows"] for c in hard_negative_counts.values())
    log.info("4a manifest: %s", counts)
    return counts


def verify(spark, cfg, paths: P.ExperimentPaths, marker: dict) -> bool:
    """Whether the committed manifest still holds ``marker['n_rows']`` distinct tasks."""
    if not P.exists(spark, paths.manifest):
        return False
    df = spark.read.parquet(paths.manifest)
    return df.count() == marker.get("n_rows") == df.select("task_id").distinct().count()


