"""The phase-4 pipeline driver: flags -> resolved config -> stages 4a, 4c, 4d (and ``score``).

``emr/phase4_pipeline.py`` calls :func:`main`; tests and the demo call :func:`main` with a
``spark`` session or :func:`run_stages` directly. Flags override the YAML config; the resolved
config is validated on the driver before any Spark work and written into every stage directory
as ``_stage_config.json`` (see :mod:`dhs_spark.jobs.paths` for the layout and the commit rule).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from dhs_spark.config import ExperimentConfig, from_dict, from_yaml, load_variant
from dhs_spark.config.experiment import CONFIG_DIR, new_experiment_id
from dhs_spark.errors import ConfigError, ConfigErrors, DHSError, InputDataError
from dhs_spark.jobs import paths as P
from dhs_spark.schema import PIPELINE_VERSION

log = logging.getLogger("dhs.jobs")

STAGES = ("4a", "4c", "4d")
#: Stages run only when asked for by name (not by ``--stage all``): ``score`` needs a checkpoint.
EXTRA_STAGES = ("score",)
FAIL_ONCE_ENV = "DHS_FAIL_ONCE_TASK_ID"
SOURCE_MODE_FLAG = {"sersic": "parametric", "parametric": "parametric", "cosmos": "cosmos"}


@dataclass(frozen=True)
class PipelineInputs:
    """Survey inputs (paths or URIs): the parent sample (or a sweep catalogue to select LRGs
    from, when ``select_lrg``), the bricks table, the root holding the brick coadds, and any
    hard-negative catalogues."""

    parent_sample: Optional[str] = None
    bricks_table: Optional[str] = None
    coadd_root: Optional[str] = None
    select_lrg: bool = False
    #: look-alike catalogues whose positions 4a adds as label-0 hard-negative rows
    #: (:class:`dhs_spark.jobs.phase4a_manifest.HardNegativeCatalog`)
    hard_negative_catalogs: tuple = ()


@dataclass(frozen=True)
class RunOptions:
    """How the stages run (not what they compute: nothing here changes a stamp's bytes except
    ``write_invvar``, which adds a column)."""

    tier: str = "train"
    debug_hosts: int = 16
    partitions: int = 0
    resume: bool = False
    write_invvar: bool = False
    fail_once_task_id: Optional[str] = None
    gate_max_rows: int = 200_000
    psf_kernels_fn: Optional[str] = None
    real_cutouts: Optional[str] = None
    checkpoint: Optional[str] = None
    score_input: str = "stamps"
    score_stamps: Optional[str] = None
    score_split: Optional[str] = None
    score_batch_size: int = 256
    score_device: str = "auto"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phase4_pipeline.py",
        description=(
            "Dark Halo Scope phase 4: 4a manifest -> 4c injected stamps -> 4d quality gates. "
            "Runs under spark-submit (local[N,F] or YARN with s3:// paths). Flags override --config; the "
            "resolved config is written to <output>/<experiment-id>/<stage dir>/_stage_config.json."
        ),
    )
    p.add_argument("--stage", required=True, choices=[*STAGES, "all", *EXTRA_STAGES],
                   help="stage to run; 'all' runs 4a, 4c, 4d in order; 'score' scores stamps or the parent sample with --checkpoint")  # fmt: skip
    p.add_argument("--config", help="experiment YAML (dhs_spark.config.ExperimentConfig); defaults are used when omitted")
    p.add_argument("--variant", help="data variant: a YAML path or a name in configs/data_variants/; replaces the config's data section")
    p.add_argument("--psf-model", choices=["gaussian", "moffat", "pixel"], help="data.psf_model")
    p.add_argument("--moffat-beta", type=float, help="data.moffat_beta (Moffat index, > 1)")
    p.add_argument("--source-mode", choices=sorted(SOURCE_MODE_FLAG), help="data.source_mode ('sersic' means 'parametric')")
    p.add_argument("--cosmos-library", help="data.cosmos_library_path (local path or s3:// URI of the HDF5 library)")
    p.add_argument("--cosmos-loader-mode", choices=["hdf5", "galsim", "synthetic"], help="data.cosmos_loader_mode")
    p.add_argument("--experiment-id", help="experiment id (default: the config's, else a new time-sorted id)")
    p.add_argument("--output", help="output root; the experiment directory is <output>/<experiment-id> (default: the config's output_dir)")
    p.add_argument("--seed", type=int, help="seeds.global_seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field by dotted path, value in YAML (repeatable), e.g. data.oversample=2")
    p.add_argument("--parent-sample", help="4a: parent-sample table (.parquet, .csv or .fits) with brickname, ra, dec")
    p.add_argument("--select-lrg", action="store_true", help="4a: --parent-sample is a sweep catalogue; select LRGs with data.phase3_parent_sample's cuts")
    p.add_argument("--hard-negative-catalog", nargs="+", action="append", metavar="PATH [TAG [WEIGHT]]",
                   help="4a (repeatable): a look-alike catalogue (.parquet/.csv/.fits with ra, dec; optional brickname, lookalike_type, heldout) "
                        "whose positions become label-0 hard-negative rows tagged TAG (default: the file's stem) with training weight WEIGHT (default 1)")
    p.add_argument("--bricks-table", help="4a: bricks table (psfsize per band) read by dhs_spark.survey.bricks.load_bricks_table")
    p.add_argument("--coadd-root", help="4c, score --score-input parent: directory or URI holding the brick coadds")
    p.add_argument("--mock-survey", help="build the embedded mock survey in this directory and use it for every input above")
    p.add_argument("--tier", default="train", choices=["debug", "grid", "train"], help="4a: debug (a few hosts), grid (every host x every grid cell) or train (sampled)")
    p.add_argument("--debug-hosts", type=int, default=16, help="4a: hosts in the debug tier")
    p.add_argument("--partitions", type=int, default=0, help="4a: partitions of the hosts (0: 2 x spark.default.parallelism); 4c: partitions of the brick repartition (0: spark.default.parallelism); "
                   "score: stamps hash-partitioned by task id (0: the Parquet read's own splits, no shuffle), parent rows by brick (0: spark.default.parallelism)")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="skip a stage whose committed output is complete and reconciles; otherwise replace it")
    p.add_argument("--write-invvar", action="store_true", help="4c: also write the inverse-variance stamp")
    p.add_argument("--psf-kernels-fn", help="4c with --psf-model pixel: 'module:function' returning per-band PSF kernels (the real-PSF hook)")
    p.add_argument("--coadd-psf-url", help="data.coadd_psf_url: 4c with --psf-model pixel takes each brick's coadd PSF from this Legacy Survey viewer root, "
                   "e.g. https://www.legacysurvey.org/viewer (one request per brick; analytic fallback flagged per stamp)")  # fmt: skip
    p.add_argument("--gate-max-rows", type=int, default=200_000, help="4d: rows sampled (by task-id hash) for the core-only classifier")
    p.add_argument("--real-cutouts", help="4d: directory of real lens cutouts (.npz, dhs_spark.anchors.NpzCutoutDirectory layout, read on the driver) "
                   "measured with the same arc estimator as the stamps, side by side in the report, e.g. tests/data/cutouts_dr10")  # fmt: skip
    p.add_argument("--checkpoint", help="score: dhs-train checkpoint file (best.pt), local or s3://; its bytes are broadcast to the executors")
    p.add_argument("--score-input", choices=["stamps", "parent"], default="stamps",
                   help="score: 'stamps' (this experiment's 4c stamps, or --score-stamps) or 'parent' (every selected parent-sample LRG cut from "
                   "--coadd-root with 4c's rules, no injection; needs --parent-sample, --bricks-table, --coadd-root)")  # fmt: skip
    p.add_argument("--score-stamps", help="score --score-input stamps: a stamp Parquet file or directory to score instead of this experiment's 4c stamps")
    p.add_argument("--score-split", choices=["train", "val", "test"], help="score --score-input stamps: only this split (default: every row)")
    p.add_argument("--score-batch-size", type=int, default=256, help="score: stamps per forward pass (every pass is this size; part of --resume's fingerprint)")
    p.add_argument("--score-device", default="auto", help="score: auto (CUDA where the executor has one, else CPU), cpu or cuda[:N]")
    p.add_argument("--master", help="Spark master when run without spark-submit, e.g. local[2] (spark-submit's --master wins)")
    p.add_argument("--log-level", default="INFO", help="python logging level")
    return p


def _set_dotted(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigErrors([ConfigError(dotted, "is not inside a mapping", value)])
    node[keys[-1]] = value


def _variant_data(name_or_path: str) -> dict:
    candidates = [Path(name_or_path), CONFIG_DIR / "data_variants" / f"{name_or_path}.yaml", CONFIG_DIR / f"{name_or_path}.yaml"]
    for path in candidates:
        if path.is_file():
            return dataclasses.asdict(load_variant(str(path)))
    raise ConfigErrors([ConfigError("--variant", f"no variant file; looked for {', '.join(map(str, candidates))}", name_or_path)])


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config after flags: --config, then --variant, then each flag, then --set; validated."""
    cfg = from_yaml(args.config) if args.config else ExperimentConfig()  # main() made a remote --config local
    data = cfg.to_dict()
    if args.variant:
        data["data"] = _variant_data(args.variant)
    flag_fields = {
        "data.psf_model": args.psf_model,
        "data.moffat_beta": args.moffat_beta,
        "data.source_mode": SOURCE_MODE_FLAG[args.source_mode] if args.source_mode else None,
        "data.cosmos_library_path": args.cosmos_library,
        "data.cosmos_loader_mode": args.cosmos_loader_mode,
        "data.coadd_psf_url": args.coadd_psf_url,
        "seeds.global_seed": args.seed,
    }
    for dotted, value in flag_fields.items():
        if value is not None:
            _set_dotted(data, dotted, value)
    for item in args.set:
        if "=" not in item:
            raise ConfigErrors([ConfigError("--set", "expected KEY=VALUE", item)])
        key, text = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(text))
    exp_id = args.experiment_id or data.get("experiment_id")
    if not exp_id:
        exp_id = new_experiment_id(data.get("experiment_name") or "experiment")
        log.info("no --experiment-id and none in the config: using new id %s", exp_id)
    data["experiment_id"] = exp_id
    if args.output:
        data["output_dir"] = P.join(P.to_uri(args.output), exp_id)
    elif data.get("output_dir"):
        data["output_dir"] = P.to_uri(data["output_dir"])
    return from_dict(_plain(data), args.config)


def _plain(data):
    """Tuples -> lists, as YAML would give them (the typed builder converts back)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_plain(v) for v in data]
    return data


def resolve_inputs(args: argparse.Namespace, cfg: ExperimentConfig) -> PipelineInputs:
    """Input paths from the flags, or from a freshly built mock survey with --mock-survey."""
    from dhs_spark.jobs.phase4a_manifest import HardNegativeCatalog

    hard_negatives = tuple(HardNegativeCatalog.from_flag(v) for v in (args.hard_negative_catalog or []))
    tags = [h.tag for h in hard_negatives]
    if len(set(tags)) != len(tags):
        raise InputDataError(f"--hard-negative-catalog: each catalogue needs its own TAG (got {tags})")
    if args.mock_survey:
        from dhs_spark.survey.mock import build_mock_survey

        mock = build_mock_survey(args.mock_survey)
        log.info("mock survey built in %s", args.mock_survey)
        return PipelineInputs(parent_sample=str(mock.catalog_parquet), bricks_table=str(mock.bricks_table), coadd_root=str(mock.root), select_lrg=True,
                              hard_negative_catalogs=hard_negatives)  # fmt: skip
    return PipelineInputs(args.parent_sample, args.bricks_table, args.coadd_root, args.select_lrg, hard_negatives)


def _stage_module(stage: str):
    if stage == "4a":
        from dhs_spark.jobs import phase4a_manifest as module
    elif stage == "4c":
        from dhs_spark.jobs import phase4c_stamps as module
    elif stage == "score":
        from dhs_spark.jobs import score_stage as module
    else:
        from dhs_spark.jobs import phase4d_gates as module
    return module


def config_fingerprint(cfg: ExperimentConfig, inputs: PipelineInputs, opts: RunOptions, extra: Optional[dict] = None) -> str:
    """sha256 of what determines a stage's output (config, inputs, tier; ``extra``: a stage's own,
    e.g. the score stage's checkpoint sha256): --resume reuses an output only when this matches.
    Run-only settings (resume, partitions, the failure hook) are left out, since they never
    change the rows."""
    what = {"config": cfg.to_dict(), "inputs": dataclasses.asdict(inputs), "tier": opts.tier, "debug_hosts": opts.debug_hosts, "invvar": opts.write_invvar, "psf": opts.psf_kernels_fn}
    if extra is not None:
        what["extra"] = extra
    for volatile in ("created_at", "git_commit", "git_branch", "git_dirty"):
        what["config"].pop(volatile, None)
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(spark, stage: str, cfg: ExperimentConfig, inputs: PipelineInputs, opts: RunOptions) -> dict:
    """Run one stage into a staging directory and commit it; returns its ``_COMPLETE.json``.

    With ``opts.resume`` a committed stage whose data still reconciles with its marker is
    skipped (returned with ``skipped: True``); anything else is recomputed and replaced.
    """
    module = _stage_module(stage)
    paths = P.ExperimentPaths.from_config(cfg)
    final = paths.score_dir(opts.score_input) if stage == "score" else paths.stage_dir(stage)
    fingerprint = config_fingerprint(cfg, inputs, opts, module.fingerprint_extra(spark, opts) if stage == "score" else None)
    if opts.resume:
        marker = P.read_marker(spark, final)
        if marker is not None and marker.get("config_sha256") == fingerprint and module.verify(spark, cfg, paths, marker):
            log.info("stage %s: complete output at %s reconciles; skipped (--resume)", stage, final)
            return {**marker, "skipped": True}
        log.info("stage %s: no complete output at %s; running", stage, final)
    run_id = uuid.uuid4().hex
    staging = paths.staging_dir(stage, run_id)
    P.delete(spark, staging)
    stage_config = {
        "stage": stage,
        "run_id": run_id,
        "pipeline_version": PIPELINE_VERSION,
        "config": cfg.to_dict(),
        "inputs": dataclasses.asdict(inputs),
        "options": dataclasses.asdict(opts),
    }
    P.write_text(spark, P.join(staging, P.STAGE_CONFIG), json.dumps(stage_config, indent=2, sort_keys=True))
    summary = module.produce(spark, cfg, paths, inputs, opts, staging)
    marker = {"stage": stage, "run_id": run_id, "pipeline_version": PIPELINE_VERSION, "config_sha256": fingerprint, **summary}
    P.write_text(spark, P.join(staging, P.COMPLETE_MARKER), json.dumps(marker, indent=2, sort_keys=True))
    P.commit(spark, staging, final)
    log.info("stage %s committed to %s: %s", stage, final, {k: v for k, v in marker.items() if not isinstance(v, (dict, list))})
    return marker


def run_stages(spark, stages: list[str], cfg: ExperimentConfig, inputs: PipelineInputs, opts: RunOptions) -> dict[str, dict]:
    """Run ``stages`` in order; returns each stage's marker."""
    return {stage: run_stage(spark, stage, cfg, inputs, opts) for stage in stages}


def _session(args):
    from dhs_spark.spark_session import local_spark_session, stamp_spark_conf

    if args.master:
        return local_spark_session(app_name="dhs-phase4", master=args.master)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("dhs-phase4")
    for key, value in stamp_spark_conf().items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def main(argv: list[str] | None = None, spark=None) -> int:
    """Parse, resolve, run. Exit codes: 0 ok, 1 a gate failed (4d), 2 bad config or input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spark = spark or _session(args)
    if args.config and "://" in args.config and not P.is_local(args.config):
        import tempfile

        args.config = str(P.copy_to_local(spark, args.config, tempfile.mkdtemp(prefix="dhs_config_")))
    try:
        cfg = resolve_config(args)
        inputs = resolve_inputs(args, cfg)
    except DHSError as exc:
        log.error("%s", exc)
        return 2
    opts = RunOptions(
        tier=args.tier,
        debug_hosts=args.debug_hosts,
        partitions=args.partitions,
        resume=args.resume,
        write_invvar=args.write_invvar,
        fail_once_task_id=os.environ.get(FAIL_ONCE_ENV) or None,
        gate_max_rows=args.gate_max_rows,
        real_cutouts=args.real_cutouts,
        psf_kernels_fn=args.psf_kernels_fn,
        checkpoint=args.checkpoint,
        score_input=args.score_input,
        score_stamps=args.score_stamps,
        score_split=args.score_split,
        score_batch_size=args.score_batch_size,
        score_device=args.score_device,
    )
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    try:
        if "score" in stages and not opts.checkpoint:  # before any Spark work
            raise ConfigError("--checkpoint", "--stage score needs a trained checkpoint: pass --checkpoint PATH (best.pt written by dhs-train; local or s3://)")
        if "4c" in stages:  # before 4a runs: a pixel PSF needs its provider
            from dhs_spark.jobs.phase4c_stamps import check_psf_provider

            check_psf_provider(cfg.data, opts.psf_kernels_fn)
        markers = run_stages(spark, stages, cfg, inputs, opts)
    except DHSError as exc:
        log.error("%s", exc)
        return 2
    gates = markers.get("4d")
    if gates is not None and not gates.get("passed", False):
        log.error("4d quality gates failed: %s", gates.get("failures"))
        return 1
    return 0
