"""The one Parquet schema of manifests, stamps and rejects.

Producer (the Spark jobs in ``dhs_spark.jobs``) and consumer (``trainer.data``) both import
this module; nothing else defines these columns. Units are in the column names. Stamps are
float32 nanomaggies per pixel, stored as raw little-endian float32 bytes (numpy ``'<f4'``) in
band-major (C, H, W) order in the binary ``image`` column (and ``invvar``), with ``n_bands``
and ``stamp_size`` giving the shape (:data:`IMAGE_ENCODING`, also in every image field's
metadata). A binary value is one Parquet value per stamp, where a ``list<float32>`` is
encoded element by element (benchmarks/bench_spark_inject.py). Any reader
(pandas, pyarrow, Spark rows) decodes a value with numpy alone::

    img = np.frombuffer(row["image"], "<f4").reshape(row["n_bands"], row["stamp_size"], row["stamp_size"])

which is :func:`decode_image`; :func:`decode_image_column` decodes a whole Arrow column to
(N, C, H, W) without copying.

Band order is g, r, z. The host (and the lens centre) sit on pixel (stamp_size // 2,
stamp_size // 2), 0-based.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

PIPELINE_VERSION = "0.1.0"
IMAGE_DTYPE = "<f4"
IMAGE_ENCODING = "raw little-endian float32 ('<f4') bytes, band-major (C, H, W); C = n_bands, H = W = stamp_size"


@dataclass(frozen=True)
class Column:
    """One column: name (with unit), Arrow type, nullability and a description."""

    name: str
    type: pa.DataType
    doc: str
    nullable: bool = True


F64, F32, I64, I32, STR, BOOL = pa.float64(), pa.float32(), pa.int64(), pa.int32(), pa.string(), pa.bool_()

MANIFEST_COLUMNS: tuple[Column, ...] = (
    Column("task_id", STR, "unique stamp id: hash of the stamp identity (hex)", False),
    Column("experiment_id", STR, "experiment this row belongs to"),
    Column("config_id", STR, "grid cell / configuration id within the experiment"),
    Column("tier", STR, "debug | grid | train"),
    Column("split", STR, "train | val | test, from a hash of the HEALPix cell"),
    Column("healpix_index", I64, "HEALPix NESTED index at data.healpix_nside"),
    Column("brickname", STR, "DR10 brick holding the host"),
    Column("ra", F64, "host right ascension, degrees (ICRS)"),
    Column("dec", F64, "host declination, degrees (ICRS)"),
    Column("replicate", I32, "replicate number of this host x configuration"),
    Column("task_seed", I64, "per-task 63-bit seed (dhs_spark.config.seeds.task_seed)"),
    Column("is_control", BOOL, "True: no arc injected (label 0)"),
    Column("label", I32, "1 = injected lens, 0 = control, null injection or hard negative"),
    Column("is_null_injection", BOOL, "True: a null injection (zero source flux through the whole injection path; label 0, evaluation only unless the config says otherwise)"),
    Column("hard_neg_source", STR, "hard-negative rows only: the look-alike catalogue's tag, ':' and the row's type when the catalogue has one (e.g. lookalike:ring_collisional); label 0, never injected; null otherwise"),
    Column("hard_neg_weight", F32, "hard-negative rows only: the training weight given with the catalogue (4a --hard-negative-catalog); null otherwise"),
    Column("theta_e_arcsec", F64, "SIE Einstein radius (lenstronomy convention); 0 for controls"),
    Column("lens_q", F64, "SIE axis ratio (minor/major)"),
    Column("lens_phi_rad", F64, "SIE major-axis angle, radians counter-clockwise from +x"),
    Column("shear_gamma1", F64, "external shear component 1"),
    Column("shear_gamma2", F64, "external shear component 2"),
    Column("source_x_arcsec", F64, "unlensed source position x (west, numpy axis 1)"),
    Column("source_y_arcsec", F64, "unlensed source position y (up, numpy axis 0)"),
    Column("source_r_eff_arcsec", F64, "Sersic half-light radius (parametric sources)"),
    Column("source_sersic_n", F64, "Sersic index (parametric sources)"),
    Column("source_q", F64, "source axis ratio"),
    Column("source_phi_rad", F64, "source major-axis angle, radians ccw from +x"),
    Column("source_r_mag", F64, "unlensed source r-band AB magnitude"),
    Column("source_color_g_r", F64, "observed g-r colour of the source, AB"),
    Column("source_color_r_z", F64, "observed r-z colour of the source, AB"),
    Column("psf_fwhm_g_arcsec", F64, "brick psfsize_g (FWHM) from the bricks table"),
    Column("psf_fwhm_r_arcsec", F64, "brick psfsize_r (FWHM)"),
    Column("psf_fwhm_z_arcsec", F64, "brick psfsize_z (FWHM)"),
    Column("psf_fallback_bands", STR, "bands whose brick psfsize was 0/missing and took another band's (bricks table); '' if none"),
    Column("ebv", F64, "Milky Way E(B-V) of the host's brick, mag (bricks table); the arc is dimmed by 10^(-0.4 R_b E(B-V))"),
    Column("population_mode", STR, "host_conditioned | uniform (population.mode; a grid tier is uniform)"),
    Column("z_lens", F64, "lens (host) redshift"),
    Column("z_lens_source", STR, "where z_lens came from: column (supplied) | photo_z (from the host colours) | drawn"),
    Column("host_abs_mag_r", F64, "host rest-frame SDSS r absolute magnitude, AB (population.cosmology)"),
    Column("sigma_v_kms", F64, "lens velocity dispersion, km/s (SIS: theta_E = 4 pi (sigma/c)^2 D_ls/D_s)"),
    Column("z_source", F64, "source redshift used for theta_E and the source photometry"),
    Column("cosmos_ident", STR, "COSMOS galaxy ident when source_mode = cosmos (chosen in 4a from the row's split)"),
    Column("source_catalog_ident", STR, "ident of the parametric-catalogue row of a Sersic source"),
    Column("source_size_scale", F64, "angular size factor D_A(z_catalog) / D_A(z_source) applied to the source"),
    Column("source_mag_f814w_catalog", F64, "source catalogue HST F814W AB magnitude"),
    Column("source_zphot_catalog", F64, "source catalogue photometric redshift (NaN when missing)"),
    Column("source_z_catalog", F64, "redshift the catalogue magnitude was interpreted at"),
    Column("source_zphot_fallback", BOOL, "True: the catalogue redshift was missing or invalid (see dhs_spark.sims.source_population)"),
    Column("source_sed_beta_uv", F64, "UV slope beta of the source spectrum"),
    Column("source_sed_ebv_mag", F64, "Calzetti E_s(B-V) of the source spectrum, mag"),
    Column("arc_snr_expected", F64, "4a's expected arc_snr_sum (dhs_spark.sims.detectability), brick PSF and depth"),
    Column("magnification_expected", F64, "4a's expected total magnification (Sersic stand-in of the source)"),
    Column("detectable", BOOL, "the draw passed the detectability selection (population.selection); null when not judged"),
    Column("selection_draws", I32, "source draws made for this row by the detectability selection"),
)

STAMP_OUTPUT_COLUMNS: tuple[Column, ...] = (
    Column("image", pa.binary(), f"stamp, nanomaggies/pixel, bands g r z; {IMAGE_ENCODING}", False),
    Column("invvar", pa.binary(), f"inverse variance, 1/nanomaggy^2 per pixel; optional; {IMAGE_ENCODING}"),
    Column("arc_image", pa.binary(), f"what the injection added (arc after PSF, extinction and its shot noise), nanomaggies/pixel, so image - arc_image is the cutout; null for controls; {IMAGE_ENCODING}"),
    Column("n_bands", I32, "C of the image shape", False),
    Column("stamp_size", I32, "H = W of the image shape", False),
    Column("source_mode", STR, "parametric | cosmos | none (controls)"),
    Column("psf_model", STR, "gaussian | moffat | pixel"),
    Column("psf_source", STR, "where the PSF came from (brick psfsize, PsfEx CCD, coadd-psf service)"),
    Column("psf_fallback_analytic", BOOL, "True: the survey PSF (coadd-psf/PsfEx) failed for this brick and the analytic model was used; psf_fallback_reason says why"),
    Column("psf_fallback_reason", STR, "why the survey PSF failed (bands, position, error); '' if no fallback"),
    Column("psf_fwhm_used_g_arcsec", F64, "PSF FWHM actually used for g"),
    Column("psf_fwhm_used_r_arcsec", F64, "PSF FWHM actually used for r"),
    Column("psf_fwhm_used_z_arcsec", F64, "PSF FWHM actually used for z"),
    Column("source_pedestal_flux_fraction", F64, "COSMOS source: fraction of its raw HST stamp's sum that was sky pedestal, removed by the library builder"),
    Column("render_oversample", I32, "sub-pixels per axis of the arc render (>= dhs_spark.sims.cosmos.COSMOS_OVERSAMPLE for COSMOS sources); null for controls"),
    Column("magnification", F64, "lensed / unlensed source flux, before the PSF"),
    Column("unlensed_flux_g_nmgy", F64, "unlensed source flux, g"),
    Column("unlensed_flux_r_nmgy", F64, "unlensed source flux, r"),
    Column("unlensed_flux_z_nmgy", F64, "unlensed source flux, z"),
    Column("lensed_flux_g_nmgy", F64, "arc flux added to the stamp, g"),
    Column("lensed_flux_r_nmgy", F64, "arc flux added to the stamp, r"),
    Column("lensed_flux_z_nmgy", F64, "arc flux added to the stamp, z"),
    Column("arc_snr_sum", F64, "sqrt(sum(arc^2 * invvar)) over all bands and pixels"),
    Column("arc_visibility_snr", F64, "arc visibility of the injected arc alone: largest 45-deg sector SNR in the theta_E +- 0.8 arcsec annulus of the noiseless-plus-shot-noise arc over the cutout's invvar (the estimator of dhs_spark.anchors.arc_visibility_snr without a host to subtract)"),
    Column("extinction_g_mag", F64, "Milky Way extinction applied to the arc in g, mag (R_g E(B-V))"),
    Column("extinction_r_mag", F64, "Milky Way extinction applied to the arc in r, mag"),
    Column("extinction_z_mag", F64, "Milky Way extinction applied to the arc in z, mag"),
    Column("noise_model", STR, "the arc's shot noise: white | correlated (the coadd's noise correlation) | none"),
    Column("arc_snr_peak", F64, "max over pixels of arc * sqrt(invvar)"),
    Column("bad_pixel_frac", F64, "fraction of pixels with invvar <= 0 or masked"),
    Column("nan_count", I32, "non-finite pixels in the stamp (0 in any written stamp)"),
    Column("maskbits_or", I64, "bitwise OR of the maskbits inside the stamp"),
    Column("pipeline_version", STR, "dhs_spark.schema.PIPELINE_VERSION that wrote the row"),
)

REJECT_COLUMNS: tuple[Column, ...] = (
    Column("task_id", STR, "task that failed", False),
    Column("experiment_id", STR, "experiment"),
    Column("stage", STR, "4a | 4c | ... stage that rejected the row", False),
    Column("reason", STR, "short machine-readable reason, e.g. edge, nan_under_arc, corrupt_brick", False),
    Column("detail", STR, "human-readable detail: file, band, value"),
    Column("brickname", STR, "brick"),
    Column("ra", F64, "degrees"),
    Column("dec", F64, "degrees"),
    Column("split", STR, "split of the manifest row"),
)

STAMP_COLUMNS: tuple[Column, ...] = MANIFEST_COLUMNS + STAMP_OUTPUT_COLUMNS


def _metadata(c: Column) -> dict[str, str]:
    """Field metadata: the description, plus the encoding of binary image columns (pyarrow keeps
    it in the Parquet footer's ARROW:schema, Spark in its row-metadata key)."""
    return {"doc": c.doc, "encoding": IMAGE_ENCODING} if c.type == pa.binary() else {"doc": c.doc}


def arrow_schema(columns: tuple[Column, ...]) -> pa.Schema:
    """The pyarrow schema of ``columns`` (descriptions kept as field metadata)."""
    return pa.schema([pa.field(c.name, c.type, c.nullable, metadata=_metadata(c)) for c in columns])


def spark_schema(columns: tuple[Column, ...]):
    """The Spark StructType of ``columns`` (pyspark imported here, on the caller's side)."""
    from pyspark.sql import types as T

    def to_spark(tp: pa.DataType):
        if pa.types.is_list(tp):
            return T.ArrayType(to_spark(tp.value_type), containsNull=False)
        return {
            pa.float64(): T.DoubleType(),
            pa.float32(): T.FloatType(),
            pa.int64(): T.LongType(),
            pa.int32(): T.IntegerType(),
            pa.string(): T.StringType(),
            pa.bool_(): T.BooleanType(),
            pa.binary(): T.BinaryType(),
        }[tp]

    return T.StructType([T.StructField(c.name, to_spark(c.type), c.nullable, _metadata(c)) for c in columns])


def decode_image(value, n_bands: int, stamp_size: int) -> np.ndarray:
    """One ``image`` / ``invvar`` value (bytes, bytearray, memoryview, pyarrow BinaryScalar) ->
    (C, H, W) float32 array, a read-only view of ``value`` (no copy). ValueError on a wrong size."""
    if isinstance(value, pa.Scalar):
        value = value.as_buffer()
    shape = (int(n_bands), int(stamp_size), int(stamp_size))
    flat = np.frombuffer(value, dtype=IMAGE_DTYPE)
    if flat.size != shape[0] * shape[1] * shape[2]:
        raise ValueError(f"image has {flat.size} float32 values, n_bands x stamp_size^2 = {shape[0] * shape[1] * shape[2]}")
    return flat.reshape(shape)


def decode_image_column(column, n_bands, stamp_size, where: str = "") -> np.ndarray:
    """An Arrow binary column (Array or ChunkedArray) of images -> (N, C, H, W) float32.

    ``n_bands`` / ``stamp_size``: ints, or per-row arrays (the columns), which must be uniform.
    A view of the Arrow data buffer when the column is one chunk (a Parquet row group read),
    else one copy. Raises :class:`~dhs_spark.errors.InputDataError` naming ``where`` on null
    rows, a type other than binary, mixed shapes or a value of the wrong size.
    """
    from dhs_spark.errors import InputDataError

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise InputDataError(f"{where}: image column has type {arr.type}, expected binary ({IMAGE_ENCODING})")
    if arr.null_count:
        raise InputDataError(f"{where}: {arr.null_count} null images")
    c, s = np.unique(np.asarray(n_bands)), np.unique(np.asarray(stamp_size))
    if len(arr) == 0:
        return np.empty((0, 0, 0, 0), np.float32)
    if len(c) != 1 or len(s) != 1:
        raise InputDataError(f"{where}: mixed stamp shapes (n_bands {c.tolist()}, stamp_size {s.tolist()})")
    shape = (int(c[0]), int(s[0]), int(s[0]))
    nbytes = 4 * shape[0] * shape[1] * shape[2]
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64 if pa.types.is_large_binary(arr.type) else np.int32)[arr.offset : arr.offset + len(arr) + 1]
    lengths = np.diff(offsets)
    if np.any(lengths != nbytes):
        bad = int(np.flatnonzero(lengths != nbytes)[0])
        raise InputDataError(f"{where}: image of row {bad} has {lengths[bad]} bytes, n_bands x stamp_size^2 x 4 = {nbytes}")
    # Equal lengths make the values one contiguous run of the data buffer, in row order.
    flat = np.frombuffer(arr.buffers()[2], dtype=IMAGE_DTYPE, count=len(arr) * nbytes // 4, offset=int(offsets[0]))
    return flat.reshape(len(arr), *shape)


MANIFEST_SCHEMA = arrow_schema(MANIFEST_COLUMNS)
STAMP_SCHEMA = arrow_schema(STAMP_COLUMNS)
REJECT_SCHEMA = arrow_schema(REJECT_COLUMNS)

#: The score table of stage ``score`` (``dhs_spark.jobs.score_stage``): one row per scored stamp
#: or parent (search) object; rows that could not be cut go to a REJECT_COLUMNS table instead.
SCORE_COLUMNS: tuple[Column, ...] = (
    Column("task_id", STR, "the stamp's task id; for a parent (search) row the hex of stable_hash64('parent', brickname, ra, dec)", False),
    Column("ra", F64, "degrees (ICRS): the stamp's host or the parent object"),
    Column("dec", F64, "degrees (ICRS)"),
    Column("brickname", STR, "DR10 brick the stamp was cut from"),
    Column("label", I32, "the stamp's label (1 = injected lens, 0 = control, null injection or hard negative); null for parent rows (unknown)"),
    Column("split", STR, "train | val | test: the stamp's, or for a parent row the split 4a's rule gives its HEALPix cell"),
    Column("source_tag", STR, "what was scored: 'stamps', 'parent', or the row's hard_neg_source where the stamps have that column", False),
    Column("checkpoint_sha256", STR, "sha256 (hex) of the checkpoint file's bytes", False),
    Column("score", F64, "sigmoid probability in [0, 1] of the checkpoint's model (float32 forward pass after the checkpoint's preprocessing, stored as float64 as by dhs-score)", False),
    Column("is_control", BOOL, "the stamp's is_control (as dhs-score writes it); null for parent rows and stamps without the column"),
    Column("is_null_injection", BOOL, "the stamp's is_null_injection; null for parent rows and stamps without the column (with label and source_tag, what lets dhs hardneg collect prove a row real)"),
)
