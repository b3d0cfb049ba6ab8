"""The end-to-end demo on the embedded default (``make demo``)::

    python -m dhs_spark.demo --output demo_out [--force] [--seed 42] [--quick]

Stages (each prints progress and its time; a rerun reuses the stages that finished with the
same settings, ``--force`` redoes them all, ``--redo NAME`` one of them):

 1. ``mock_survey``: a mock DR10 survey (real brick PSF/depth rows and real LRG photometry, drawn
    positions and noise; :mod:`dhs_spark.survey.mock`).
 2. ``cosmos_library``: the real HST galaxies shipped in ``tests/data/cosmos`` (10 COSMOS F814W
    with their HST PSF left in, 5 AEGIS F814W deconvolved by GalSim) drawn into one HDF5 library,
    split by the hash of each galaxy's ident (:meth:`COSMOSLoaderV2.in_split`): the train side
    feeds the pipeline, the held-out side only the held-out anchor set.
 3. ``catalogues``: ``dhs catalogs download --all --offline --merge`` (bundled tables plus the
    Darg et al. mergers from ``tests/data/catalogs/supplied``), cross-matched with the DR10
    bricks (the real brick excerpt for PSF/depth, the list of all DR10 south bricknames for the
    footprint).
 4. ``spark_pipeline``: ``spark-submit emr/phase4_pipeline.py --stage all --source-mode cosmos``
    in ``local[2]``: 4a manifest, 4c stamps, 4d data gates.
 5. ``train``: a small ResNet on CPU (:func:`trainer.train.fit`), with its model-level gates.
 6. ``score``: every stamp scored; ROC, tpr@fpr and completeness on the test split.
 7. ``hard_negatives``: the Spark score stage scores the mock parent sample (every selected
    LRG, un-injected) with Gen5; its real false positives (>= 0.8) plus the real ring and merger
    catalogues, excluded around known lenses, make the lookup
    (:func:`dhs_spark.hardneg.collect_hard_negatives`).
 8. ``retrain``: Gen6, the same model and schedule plus the training split's lens look-alikes
    (rings, spiral arms, blue companions, mergers planted in the mock survey) and the mined
    false positives.
 9. ``loop``: Gen5 against Gen6 on the held-out look-alikes and injections
    (:mod:`trainer.loop_metrics`), with bootstrap intervals.
10. ``anchors``: the six real DR10 candidate cutouts scored through the anchor baseline, and a
    held-out injected set: test-split hosts with galaxies never used in training.
11. ``realism``: arc visibility and colours of real lenses, injections and controls; the probe.
12. ``gallery``: host, arc alone and stamp, per band and RGB, for COSMOS and Sersic sources.
13. ``report``: ``<output>/report.html`` (self-contained) and ``<output>/summary.json``.

``summary.json`` holds every number the report shows under ``results`` (equal across runs with
the same seed and profile), the stage times under ``timings_s`` and run details under ``run``.
The demo runs from a checkout of the repository: it reads the real data in ``tests/data`` and
``emr/phase4_pipeline.py``, which the installed package does not ship.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dhs_spark.errors import DHSError, InputDataError
from dhs_spark.stages import StageRunner

log = logging.getLogger("dhs.demo")

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = REPO_ROOT / "tests" / "data"
COSMOS_CATALOGUES = (  # (directory under tests/data/cosmos, RealGalaxyCatalog file)
    ("cosmos_f814w_10", "real_galaxy_catalog_23.5.fits"),
    ("aegis_hst_5", "AEGIS_F814w_catalog.fits"),
)
CUTOUTS_DIR = TEST_DATA / "cutouts_dr10"
PS1_LENSES = TEST_DATA / "real_lenses_ps1"
SUPPLIED_CATALOGUES = TEST_DATA / "catalogs" / "supplied"
PIPELINE_SCRIPT = REPO_ROOT / "emr" / "phase4_pipeline.py"
EXPERIMENT_ID = "demo"
SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.15), ("test", 0.15))  # the config default, checked below
#: hard_neg_source tag of the mock survey's look-alikes (4a --hard-negative-catalog)
LOOKALIKE_TAG = "lookalike"
#: Free look-alikes keep this far from every mock LRG (pixels): outside a 64-px LRG stamp's centre
#: half; the mock's 70 px leaves no room among the demo's 90 LRGs per 640-px brick.
LOOKALIKE_MIN_LRG_DISTANCE_PIX = 45.0


@dataclass(frozen=True)
class DemoProfile:
    """How big the demo is. ``default`` fits in ~5 minutes on 2 cores; ``quick`` (tests) is the
    same code path on a few hundred stamps. ``healpix_nside`` is raised from the config default
    (128) so that a few dozen mock bricks fill all three splits; at 256 a cell is 0.23 deg."""

    name: str
    n_bricks: int
    brick_size_pix: int
    n_lrg_per_brick: int
    n_neighbours_per_brick: int
    n_stars_per_brick: int
    healpix_nside: int
    epochs: int
    # source configurations per host: the host-conditioned population keeps the ~25% of LRGs
    # that can hold a theta_E >= 1" lens, so each kept host carries several sources. Distinct
    # hosts matter more than replicates: at the same ~2,000 stamps, 60 LRGs per brick x 4
    # replicates gave a synthetic test AUROC of 0.67 (the CNN learnt the few hosts), 90 x 3 gave 0.81.
    n_replicates: int = 3
    stamp_size: int = 64
    batch_size: int = 32
    model_width: int = 16
    learning_rate: float = 2e-3
    spark_master: str = "local[2]"
    gallery_examples: int = 3
    n_bootstrap: int = 1000
    # lens look-alikes planted per brick (dhs_spark.survey.lookalikes): at free positions, and
    # spiral arms / blue companions on LRGs; 4a turns them into hard-negative rows
    n_lookalikes_free_per_brick: int = 4
    n_lookalikes_on_lrgs_per_brick: int = 3
    #: loss weight of a look-alike stamp in the Gen6 training (hard_negatives.weight x the catalogue's 1.0)
    lookalike_weight: float = 2.0


PROFILES = {
    "default": DemoProfile("default", n_bricks=32, brick_size_pix=640, n_lrg_per_brick=90, n_neighbours_per_brick=30, n_stars_per_brick=8,
                           healpix_nside=256, epochs=5),
    "quick": DemoProfile("quick", n_bricks=8, brick_size_pix=400, n_lrg_per_brick=20, n_neighbours_per_brick=10, n_stars_per_brick=3,
                         healpix_nside=1024, epochs=2, gallery_examples=2, n_bootstrap=200),
}  # fmt: skip


class DemoError(DHSError):
    """A demo stage could not finish (the message says which and why)."""


@dataclass(frozen=True)
class DemoPaths:
    """Where every output of the demo goes (all under ``root``)."""

    root: Path

    @property
    def mock(self) -> Path:
        return self.root / "mock_survey"

    @property
    def cosmos(self) -> Path:
        return self.root / "cosmos"

    @property
    def cosmos_all(self) -> Path:
        return self.cosmos / "cosmos_all.h5"

    @property
    def cosmos_train(self) -> Path:
        return self.cosmos / "cosmos_train.h5"

    @property
    def cosmos_heldout(self) -> Path:
        return self.cosmos / "cosmos_heldout.h5"

    @property
    def catalogs(self) -> Path:
        return self.root / "catalogs"

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    @property
    def experiment(self) -> Path:
        return self.pipeline / EXPERIMENT_ID

    @property
    def stamps(self) -> Path:
        return self.experiment / "phase4c_stamps" / "stamps"

    @property
    def training_view(self) -> Path:
        return self.root / "training_view"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def checkpoint(self) -> Path:
        return self.train / "best.pt"

    @property
    def train_gen6(self) -> Path:
        return self.root / "train_gen6"

    @property
    def checkpoint_gen6(self) -> Path:
        return self.train_gen6 / "best.pt"

    @property
    def parent_scores(self) -> Path:
        return self.experiment / "score" / "parent" / "scores"

    @property
    def scores_gen6(self) -> Path:
        return self.root / "scores" / "scores_gen6.parquet"

    @property
    def scores(self) -> Path:
        return self.root / "scores" / "scores.parquet"

    @property
    def hardneg(self) -> Path:
        return self.root / "hard_negatives"

    @property
    def anchors(self) -> Path:
        return self.root / "anchors"

    @property
    def realism(self) -> Path:
        return self.root / "realism"

    @property
    def gallery(self) -> Path:
        return self.root / "gallery" / "gallery.npz"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


def _say(msg: str) -> None:
    print(f"    {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# 1. mock survey
# ---------------------------------------------------------------------------------------------
def stage_mock_survey(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    import pandas as pd

    from dhs_spark.config.experiment import DataVariantConfig
    from dhs_spark.survey.lookalikes import LookalikeOptions
    from dhs_spark.survey.mock import build_mock_survey
    from dhs_spark.survey.parent import select_lrg

    if paths.mock.exists():
        shutil.rmtree(paths.mock)
    _say(f"{prof.n_bricks} bricks of {prof.brick_size_pix} px, {prof.n_lrg_per_brick} LRGs each -> {paths.mock}")
    mock = build_mock_survey(paths.mock, n_bricks=prof.n_bricks, brick_size_pix=prof.brick_size_pix, seed=seed, n_lrg_per_brick=prof.n_lrg_per_brick,
                             n_neighbours_per_brick=prof.n_neighbours_per_brick, n_stars_per_brick=prof.n_stars_per_brick,
                             lookalikes=LookalikeOptions(n_free_per_brick=prof.n_lookalikes_free_per_brick, n_lrg_hosts_per_brick=prof.n_lookalikes_on_lrgs_per_brick,
                                                         min_lrg_distance_pix=LOOKALIKE_MIN_LRG_DISTANCE_PIX))  # fmt: skip
    looks = pd.read_parquet(mock.lookalike_catalog_path)
    _say(f"{len(looks)} lens look-alikes planted ({int(looks['heldout'].sum())} held out): {looks['lookalike_type'].value_counts().sort_index().to_dict()}")
    cat = pd.read_parquet(mock.catalog_parquet)
    variant = DataVariantConfig().phase3_parent_sample
    selected = select_lrg(cat, variant)
    roles = cat["MOCK_ROLE"].value_counts().to_dict()
    return {
        "n_bricks": len(mock.bricknames),
        "brick_size_pix": prof.brick_size_pix,
        "n_objects": int(len(cat)),
        "objects_by_role": {str(k): int(v) for k, v in sorted(roles.items())},
        "lrg_variant": variant,
        "n_selected_lrg": int(selected.sum()),
        "n_selected_not_lrg_role": int((selected & (cat["MOCK_ROLE"] != "lrg")).sum()),
        "lookalikes": {"n": int(len(looks)), "n_heldout": int(looks["heldout"].sum()),
                       "by_type": {str(k): int(v) for k, v in looks["lookalike_type"].value_counts().sort_index().items()},
                       "by_source": {str(k): int(v) for k, v in looks["source"].value_counts().sort_index().items()}},
    }


# ---------------------------------------------------------------------------------------------
# 2. COSMOS library
# ---------------------------------------------------------------------------------------------
def _concat_libraries(drawn: list):
    """One DrawnLibrary from several (same stamp size and pixel scale); attributes name every input."""
    from dhs_spark.sims.cosmos import LIBRARY_COLUMNS
    from dhs_spark.sims.cosmos_build import DrawnLibrary

    if len({d.images.shape[1:] for d in drawn}) != 1 or len({d.pixscale_arcsec for d in drawn}) != 1:
        raise DemoError("COSMOS libraries to merge differ in stamp size or pixel scale")
    attrs = dict(drawn[0].attrs)
    for key in ("source_catalog", "source_catalog_sha256", "psf_treatment"):
        attrs[key] = " + ".join(str(d.attrs[key]) for d in drawn)
    attrs["n_sources"] = int(sum(len(d.images) for d in drawn))
    attrs["n_drawn"] = int(sum(int(d.attrs.get("n_drawn", len(d.images))) for d in drawn))
    attrs["rejected"] = json.dumps([r for d in drawn for r in json.loads(d.attrs.get("rejected", "[]"))])
    meta = {c: np.concatenate([d.meta[c] for d in drawn]) for c in LIBRARY_COLUMNS}
    return DrawnLibrary(images=np.concatenate([d.images for d in drawn]), meta=meta, pixscale_arcsec=drawn[0].pixscale_arcsec, attrs=attrs)


def _subset_library(lib, keep: np.ndarray):
    from dhs_spark.sims.cosmos import LIBRARY_COLUMNS
    from dhs_spark.sims.cosmos_build import DrawnLibrary

    attrs = dict(lib.attrs, n_sources=int(keep.sum()))
    return DrawnLibrary(images=lib.images[keep], meta={c: lib.meta[c][keep] for c in LIBRARY_COLUMNS}, pixscale_arcsec=lib.pixscale_arcsec, attrs=attrs)


def stage_cosmos_library(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    from dhs_spark.sims.cosmos import COSMOSLoaderV2
    from dhs_spark.sims.cosmos_build import draw_catalog, write_library

    paths.cosmos.mkdir(parents=True, exist_ok=True)
    drawn = []
    for directory, catalog in COSMOS_CATALOGUES:
        path = TEST_DATA / "cosmos" / directory / catalog
        if not path.exists():
            raise InputDataError(f"COSMOS catalogue {path} not found: the demo runs from a checkout of the repository (tests/data/cosmos)")
        _say(f"drawing the real HST galaxies of {directory} ({catalog})")
        drawn.append(draw_catalog(str(path), seed=seed))
    lib = _concat_libraries(drawn)
    write_library(lib, str(paths.cosmos_all))
    # The loader's ident-hash split: the same rule any other user of the library applies.
    splitter = COSMOSLoaderV2(str(paths.cosmos_all), split="test")
    heldout = np.array([splitter.in_split(i) for i in lib.meta["ident"]], dtype=bool)
    if heldout.all() or not heldout.any():
        raise DemoError(f"the ident-hash split left {int(heldout.sum())} of {len(heldout)} galaxies held out: both sides need some")
    write_library(_subset_library(lib, ~heldout), str(paths.cosmos_train))
    write_library(_subset_library(lib, heldout), str(paths.cosmos_heldout))
    hlr = lib.meta["half_light_radius_arcsec"]
    _say(f"{len(heldout)} galaxies: {int((~heldout).sum())} for training, {int(heldout.sum())} held out")
    return {
        "n_galaxies": int(len(heldout)),
        "catalogues": [{"name": d, "n": int(len(x.images)), "psf_treatment_option": str(x.attrs["psf_treatment"]),
                        "psf_fwhm_arcsec": sorted({round(float(f), 4) for f in x.meta["psf_fwhm_arcsec"]})} for (d, _), x in zip(COSMOS_CATALOGUES, drawn)],
        "train_idents": [str(i) for i in lib.meta["ident"][~heldout]],
        "heldout_idents": [str(i) for i in lib.meta["ident"][heldout]],
        "test_fraction": splitter.test_fraction,
        "split_salt": splitter.split_salt,
        "half_light_radius_arcsec_min_max": [float(hlr.min()), float(hlr.max())],
        "stamp_size": int(lib.images.shape[1]),
        "pixel_scale_arcsec": float(lib.pixscale_arcsec),
    }


# ---------------------------------------------------------------------------------------------
# 3. catalogues
# ---------------------------------------------------------------------------------------------
def _dr10_south_bricknames() -> set[str]:
    import lzma

    path = TEST_DATA / "survey" / "dr10_south_bricknames.txt.xz"
    with lzma.open(path, "rt") as fh:
        return {line.strip() for line in fh if line.strip()}


def stage_catalogues(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    import pandas as pd

    from dhs_spark.catalogs.download import download_catalogs
    from dhs_spark.survey.bricks import brickname_for, load_bricks_table
    from dhs_spark.survey.footprint import crossmatch
    from dhs_spark.survey.mock import DEFAULT_BRICKS_PATHS

    result = download_catalogs(paths.catalogs, offline=True, merge=True, supplied_dir=SUPPLIED_CATALOGUES)
    for line in result.summary_lines():
        _say(line)
    if result.missing_required:
        raise DemoError(f"required catalogues missing: {result.missing_required}")
    excerpt = paths.catalogs / "dr10_south_bricks_excerpt.csv"
    pd.concat([pd.read_csv(p, dtype={"brickname": str}) for p in DEFAULT_BRICKS_PATHS]).to_csv(excerpt, index=False)
    bricks = load_bricks_table(excerpt)
    dr10_names = _dr10_south_bricknames()
    footprint = {}
    for kind in ("known_lenses", "hard_negatives"):
        table = pd.read_parquet(paths.catalogs / f"{kind}_merged.parquet")
        xm = crossmatch(table, bricks)
        xm.to_parquet(paths.catalogs / f"{kind}_crossmatch.parquet", index=False)
        in_south = np.isin(brickname_for(table["ra"].to_numpy(float), table["dec"].to_numpy(float)), list(dr10_names))
        footprint[kind] = {
            "n": int(len(table)),
            "n_in_dr10_south_brick": int(in_south.sum()),
            "n_in_brick_excerpt_with_psf": int(xm["in_footprint"].sum()),
        }
    sources = {r.key: {"status": r.status, "required": r.required, "n_rows": int(r.n_rows)} for r in result.reports}
    return {"sources": sources, "counts": {k: int(v) for k, v in result.counts.items()}, "footprint": footprint,
            "n_dr10_south_bricks": len(dr10_names), "n_bricks_in_excerpt": int(len(bricks))}


# ---------------------------------------------------------------------------------------------
# 4. Spark pipeline
# ---------------------------------------------------------------------------------------------
def spark_command(paths: DemoPaths, prof: DemoProfile, seed: int) -> list[str]:
    """The spark-submit command line of stage 4 (also printed in the report)."""
    submit = Path(sys.executable).parent / "spark-submit"
    submit = str(submit) if submit.exists() else shutil.which("spark-submit")
    if submit is None:
        raise DemoError("spark-submit not found beside this Python nor on PATH: install the 'spark' extra (pip install -e '.[spark]')")
    if not PIPELINE_SCRIPT.exists():
        raise DemoError(f"{PIPELINE_SCRIPT} not found: the demo runs from a checkout of the repository")
    mock = paths.mock
    return [
        submit, "--master", prof.spark_master, "--driver-memory", "2g",
        "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
        str(PIPELINE_SCRIPT), "--stage", "all", "--source-mode", "cosmos", "--cosmos-library", str(paths.cosmos_train),
        "--parent-sample", str(mock / "sweep-mock.parquet"), "--select-lrg", "--bricks-table", str(mock / "survey-bricks-mock.csv"),
        "--coadd-root", str(mock), "--output", str(paths.pipeline), "--experiment-id", EXPERIMENT_ID, "--seed", str(seed),
        "--set", f"data.stamp_size={prof.stamp_size}", "--set", f"data.healpix_nside={prof.healpix_nside}",
        "--set", f"data.n_replicates={prof.n_replicates}", "--real-cutouts", str(CUTOUTS_DIR), "--log-level", "INFO",
        "--hard-negative-catalog", str(mock / "lookalikes-mock.parquet"), LOOKALIKE_TAG, "1.0",
    ]  # fmt: skip


def score_command(paths: DemoPaths, prof: DemoProfile, seed: int) -> list[str]:
    """The spark-submit command line that scores the mock parent sample (every selected LRG,
    un-injected, cut by 4c's code) with the Gen5 checkpoint: the search a hard-negative miner reads."""
    cmd = spark_command(paths, prof, seed)
    cmd[cmd.index("--stage") + 1] = "score"
    return cmd + ["--score-input", "parent", "--checkpoint", str(paths.checkpoint)]


def _run_logged(cmd: list[str], log_path: Path, show) -> int:
    """Run ``cmd``, every output line to ``log_path``; lines for which ``show(line)`` is true are
    also printed. Returns the exit code."""
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as fh, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT) as proc:
        for line in proc.stdout:
            fh.write(line)
            if show(line):
                _say("spark | " + line.rstrip()[:220])
    return proc.returncode


def _show_pipeline_line(line: str) -> bool:
    return " dhs.jobs" in line and (" INFO " in line or " ERROR " in line or " WARNING " in line) and "committed to" not in line


def stage_spark_pipeline(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    cmd = spark_command(paths, prof, seed)
    log_path = paths.logs / "spark_pipeline.log"
    _say(f"spark-submit --master {prof.spark_master} emr/phase4_pipeline.py --stage all --source-mode cosmos ... (full log: {log_path})")
    code = _run_logged(cmd, log_path, _show_pipeline_line)
    gates_path = paths.experiment / "phase4d_gates" / "gates.json"
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        what = "the 4d data gates failed" if code == 1 else f"exit code {code}"
        raise DemoError(f"spark pipeline: {what}; see {log_path}; last lines:\n{tail}")
    gates = json.loads(gates_path.read_text())
    stage_cfg = json.loads((paths.experiment / "phase4c_stamps" / "_stage_config.json").read_text())["config"]
    if stage_cfg["data"]["split_fractions"] != dict(SPLIT_FRACTIONS):
        raise DemoError(f"pipeline split fractions {stage_cfg['data']['split_fractions']} differ from the demo's {SPLIT_FRACTIONS}")
    keep = ("passed", "failures", "gates", "counts", "nonfinite", "theta_e_bins", "shortcut_gate", "lens_population", "realism")
    return {"gates": {k: gates[k] for k in keep}, "source_mode": stage_cfg["data"]["source_mode"], "stamp_size": stage_cfg["data"]["stamp_size"],
            "healpix_nside": stage_cfg["data"]["healpix_nside"], "psf_model": stage_cfg["data"]["psf_model"],
            "control_type": stage_cfg["data"]["control_type"], "control_fraction": stage_cfg["data"]["control_fraction"]}  # fmt: skip


def pipeline_config(paths: DemoPaths):
    """The resolved ExperimentConfig the pipeline's 4c stage ran with."""
    from dhs_spark.config import from_dict

    return from_dict(json.loads((paths.experiment / "phase4c_stamps" / "_stage_config.json").read_text())["config"])


# ---------------------------------------------------------------------------------------------
# 5. training
# ---------------------------------------------------------------------------------------------
def write_training_view(stamps_dir: Path, out_dir: Path) -> dict[str, int]:
    """One Parquet file per split with ``split`` as a column, rows sorted by task_id.

    The trainer reads 4c's ``split=<value>/`` directories directly, in the order of their
    files (one per 4c partition) and rows (brick order within a partition), which follows the
    partition count. This copy puts the stamps in one canonical order, so that the demo's
    numbers (through the seeded shuffle) never depend on how 4c was partitioned.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    table = ds.dataset(str(stamps_dir), format="parquet", partitioning="hive").to_table()
    if "split" not in table.column_names:
        raise DemoError(f"{stamps_dir}: no split=... partitions")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    counts = {}
    for split, _ in SPLIT_FRACTIONS:
        sub = table.filter(pc.equal(table["split"], split)).sort_by("task_id")
        sub = sub.set_column(sub.schema.get_field_index("split"), "split", sub["split"].cast("string"))
        pq.write_table(sub, out_dir / f"{split}.parquet", row_group_size=256)
        counts[split] = int(sub.num_rows)
    return counts


def training_config(paths: DemoPaths, prof: DemoProfile, seed: int, generation: int = 5):
    """The trainer's config. Gen5 learns from injections and controls only (the look-alike stamps
    stay out of its training: ``hard_negatives.sources = []``); Gen6 adds the training split's
    look-alikes (weight ``prof.lookalike_weight``) and up-weights stamps at the Gen5 false
    positives mined from the parent sample (the position lookup)."""
    from dhs_spark.config.experiment import ExperimentConfig, HardNegativeConfig, ModelConfig, SeedConfig, TrainingConfig

    pipe = pipeline_config(paths)
    if generation == 5:
        hard = HardNegativeConfig(sources=[])
    else:
        hard = HardNegativeConfig(sources=[LOOKALIKE_TAG], weight=prof.lookalike_weight, enabled=True,
                                  hard_neg_path=str(paths.hardneg / "hard_negative_lookup.parquet"))  # fmt: skip
    return ExperimentConfig(
        experiment_name="demo",
        experiment_id=f"demo-train-gen{generation}",
        output_dir=str(paths.train if generation == 5 else paths.train_gen6),
        hard_negatives=hard,
        seeds=SeedConfig(global_seed=seed),
        data=pipe.data,
        priors=pipe.priors,
        model=ModelConfig(architecture="resnet_small", width=prof.model_width),
        training=TrainingConfig(epochs=prof.epochs, batch_size=prof.batch_size, learning_rate=prof.learning_rate, warmup_epochs=1,
                                early_stopping_patience=prof.epochs, num_workers=0, amp=False, device="cpu"),
    )  # fmt: skip


def _fit(paths: DemoPaths, prof: DemoProfile, seed: int, generation: int) -> dict:
    from trainer.train import fit, json_safe

    cfg = training_config(paths, prof, seed, generation)
    logging.getLogger("trainer").setLevel(logging.INFO)
    _say(f"Gen{generation}: resnet_small (width {prof.model_width}) on CPU, {prof.epochs} epochs, batch {prof.batch_size}")
    metrics = fit(cfg, str(paths.training_view))
    epochs = [{k: e[k] for k in ("epoch", "lr", "train_loss", "val_loss", "val_auroc") if k in e} for e in metrics["epochs"]]
    data = {k: v for k, v in metrics["data"].items() if k != "path"}  # results hold no absolute paths (runs are compared)
    return json_safe({"data": data, "epochs": epochs, "best": metrics["best"], "test_auroc_in_training": metrics.get("test", {}).get("auroc"),
                      "gates": metrics["gates"], "hard_negative_stamps": metrics.get("hard_negative_stamps"), "hard_negative_join": metrics.get("hard_negatives"),
                      "model": dataclasses.asdict(cfg.model), "training": {k: getattr(cfg.training, k) for k in ("epochs", "batch_size", "learning_rate", "device")}})  # fmt: skip


def stage_train(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    counts = write_training_view(paths.stamps, paths.training_view)
    _say(f"training view {paths.training_view}: {counts}")
    if min(counts.values()) == 0:
        raise DemoError(f"a split is empty ({counts}): raise the number of bricks or data.healpix_nside")
    return {"view_counts": counts, **_fit(paths, prof, seed, 5)}


# ---------------------------------------------------------------------------------------------
# 6. scoring and synthetic metrics
# ---------------------------------------------------------------------------------------------
def _truth_table(view: Path, columns: tuple[str, ...]):
    import pyarrow.parquet as pq

    return pq.ParquetDataset(str(view)).read(columns=list(columns)).to_pandas()


def stage_score(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    import pandas as pd

    from trainer.metrics import ARC_SNR_BINS, THETA_E_BINS_ARCSEC, auroc, completeness_by_bins, roc_curve, tpr_at_fpr_report
    from trainer.score import score_parquet
    from trainer.train import json_safe

    paths.scores.parent.mkdir(parents=True, exist_ok=True)
    n = score_parquet(str(paths.checkpoint), str(paths.training_view), str(paths.scores), device="cpu")
    _say(f"scored {n} stamps -> {paths.scores}")
    scores = pd.read_parquet(paths.scores)
    truth = _truth_table(paths.training_view, ("task_id", "split", "theta_e_arcsec", "arc_snr_sum"))
    table = scores.merge(truth, on="task_id", how="left", validate="one_to_one")
    test = table[table["split"] == "test"]
    y, s = test["label"].to_numpy(int), test["score"].to_numpy(float)
    cfg = training_config(paths, prof, seed)
    fpr, tpr, _ = roc_curve(y, s)
    thr = cfg.evaluation.score_threshold
    by_split = {sp: {"n": int(len(g)), "mean_score_positives": float(g.loc[g.label == 1, "score"].mean()),
                     "mean_score_negatives": float(g.loc[g.label == 0, "score"].mean())} for sp, g in table.groupby("split")}  # fmt: skip
    return json_safe({
        "n_scored": int(n),
        "by_split": by_split,
        "test": {
            "n_positives": int(y.sum()), "n_negatives": int((y == 0).sum()), "auroc": auroc(y, s),
            "tpr_at_fpr": tpr_at_fpr_report(y, s, cfg.evaluation.fpr_targets),
            "roc": {"fpr": fpr.round(6).tolist(), "tpr": tpr.round(6).tolist()},
            "score_threshold": thr,
            "completeness_theta_e": completeness_by_bins(s, y == 1, test["theta_e_arcsec"].to_numpy(float), THETA_E_BINS_ARCSEC, thr),
            "completeness_arc_snr": completeness_by_bins(s, y == 1, test["arc_snr_sum"].to_numpy(float), ARC_SNR_BINS, thr),
        },
    })  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 7-9. hard negatives, Gen6, the loop
# ---------------------------------------------------------------------------------------------
def stage_hard_negatives(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    """The mining half of the loop: the Spark score stage scores the mock parent sample (every
    selected LRG, un-injected) with Gen5; :func:`dhs_spark.hardneg.collect_hard_negatives`
    keeps the real rows scoring >= the threshold (never an injection, nothing near a known lens)
    plus the real ring and merger catalogues, into the lookup Gen6 trains with."""
    import pandas as pd

    from dhs_spark.hardneg import collect_hard_negatives
    from trainer.hardneg_join import join_hard_negatives, load_lookup
    from trainer.train import json_safe

    cmd = score_command(paths, prof, seed)
    log_path = paths.logs / "spark_score_parent.log"
    _say(f"spark-submit ... emr/phase4_pipeline.py --stage score --score-input parent --checkpoint {paths.checkpoint.name} (full log: {log_path})")
    code = _run_logged(cmd, log_path, _show_pipeline_line)
    if code != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-30:])
        raise DemoError(f"spark score stage: exit code {code}; see {log_path}; last lines:\n{tail}")
    parent = pd.read_parquet(paths.parent_scores)
    _say(f"parent sample scored: {len(parent)} LRGs, {int((parent['score'] >= 0.5).sum())} score >= 0.5")
    cfg = training_config(paths, prof, seed).hard_negatives
    paths.hardneg.mkdir(parents=True, exist_ok=True)
    merged = paths.catalogs / "hard_negatives_merged.parquet"
    result = collect_hard_negatives(model_scores_path=paths.parent_scores, ring_catalog_path=merged, merger_catalog_path=merged,
                                    known_lens_path=paths.catalogs / "known_lenses_merged.parquet", output_dir=paths.hardneg, config=cfg)  # fmt: skip
    by_source = result.table["source"].value_counts().to_dict()
    _say(f"{len(result.table)} hard negatives: {by_source}")
    truth = _truth_table(paths.training_view, ("ra", "dec", "label"))
    join = join_hard_negatives(truth["ra"].to_numpy(float), truth["dec"].to_numpy(float), truth["label"].to_numpy(int),
                               load_lookup(str(result.lookup_path)), cfg.match_radius_arcsec, cfg.hard_neg_weight)  # fmt: skip
    return json_safe({"counts": {k: int(v) for k, v in result.counts.items()}, "by_source": {str(k): int(v) for k, v in sorted(by_source.items())},
            "n_total": int(len(result.table)), "min_score_threshold": cfg.min_score_threshold,
            "parent_scored": {"n": int(len(parent)), "score_quantiles_50_90_99": [float(q) for q in np.quantile(parent["score"], (0.5, 0.9, 0.99))]},
            "weights": {"model_fp": cfg.weight_model_fp, "ring": cfg.weight_ring, "merger": cfg.weight_merger},
            "exclusion_radius_arcsec": cfg.exclusion_radius_arcsec, "join_preview": join.report})  # fmt: skip


def stage_retrain(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    """Gen6: the same data, model and schedule as Gen5, plus the training split's look-alike
    stamps and the mined false positives' positions (:func:`training_config`)."""
    return _fit(paths, prof, seed, 6)


def stage_loop(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    """Gen5 against Gen6 on the held-out (test-split) injections, controls and look-alikes
    (:func:`trainer.loop_metrics.compare_generations`): contamination by look-alike type at 50%
    completeness, tpr at fpr 1e-2 and 1e-3, completeness by arc visibility, each with a
    bootstrap interval, and the paired Gen6 - Gen5 difference."""
    import pandas as pd

    from trainer.loop_metrics import compare_generations
    from trainer.score import score_parquet
    from trainer.train import json_safe

    n = score_parquet(str(paths.checkpoint_gen6), str(paths.training_view), str(paths.scores_gen6), device="cpu")
    _say(f"Gen6 scored {n} stamps -> {paths.scores_gen6}")
    truth = _truth_table(paths.training_view, ("task_id", "split", "label", "is_control", "is_null_injection", "hard_neg_source", "arc_visibility_snr"))
    gen5 = pd.read_parquet(paths.scores)[["task_id", "score"]].rename(columns={"score": "gen5"})
    gen6 = pd.read_parquet(paths.scores_gen6)[["task_id", "score"]].rename(columns={"score": "gen6"})
    table = truth.merge(gen5, on="task_id", validate="one_to_one").merge(gen6, on="task_id", validate="one_to_one")
    test = table[(table["split"] == "test") & ~table["is_null_injection"].fillna(False).astype(bool)].sort_values("task_id")
    out = compare_generations({"gen5": test["gen5"].to_numpy(), "gen6": test["gen6"].to_numpy()}, test["label"].to_numpy(int),
                              test["is_control"].to_numpy(bool), test["hard_neg_source"].tolist(), test["arc_visibility_snr"].to_numpy(float),
                              n_bootstrap=prof.n_bootstrap, seed=seed)  # fmt: skip
    d = out["difference"]["contamination:all"]
    _say(f"contamination of held-out look-alikes at 50% completeness: Gen5 {out['generations']['gen5']['contamination:all']['value']:.3f}, "
         f"Gen6 {out['generations']['gen6']['contamination:all']['value']:.3f} (difference {d['value']:+.3f}, 95% interval {d['interval']})")
    return json_safe(out)


# ---------------------------------------------------------------------------------------------
# 10. anchors
# ---------------------------------------------------------------------------------------------
def _injection_rows(view: Path, split: str) -> list[dict]:
    """Manifest columns of the injection rows of ``split`` (no images), sorted by task_id."""
    import pyarrow.parquet as pq

    from dhs_spark.schema import MANIFEST_COLUMNS

    table = pq.read_table(view / f"{split}.parquet", columns=[c.name for c in MANIFEST_COLUMNS] + ["arc_snr_sum"])
    rows = [r for r in table.to_pylist() if not r["is_control"] and not r["hard_neg_source"]]
    return sorted(rows, key=lambda r: r["task_id"])


def _images_of(view: Path, split: str, label: int) -> np.ndarray:
    """The stamps of ``split`` with ``label``: injections for 1, controls for 0 (not null
    injections or look-alikes)."""
    import pyarrow.parquet as pq

    from trainer.data import StampIndex, load_images

    index = StampIndex.scan(str(view / f"{split}.parquet"))
    keep = index.meta["label"] == label
    if label == 0:
        keep &= pq.read_table(view / f"{split}.parquet", columns=["is_control"])["is_control"].to_numpy(zero_copy_only=False).astype(bool)
    return load_images(index, np.flatnonzero(keep))


def stage_anchors(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    import pandas as pd

    from dhs_spark.anchors import NpzCutoutDirectory, bootstrap_ci, compute_anchor_metrics, run_anchor_baseline
    from dhs_spark.config.seeds import stable_hash64
    from dhs_spark.errors import RejectError
    from dhs_spark.jobs.phase4c_stamps import make_stamp, stamp_params
    from dhs_spark.sims.cosmos import COSMOSLoaderV2
    from dhs_spark.survey.coadds import BANDS, CoaddBrick
    from trainer.score import score_images
    from trainer.train import json_safe

    ev = training_config(paths, prof, seed).evaluation
    ev = dataclasses.replace(ev, n_bootstrap=prof.n_bootstrap)

    # (a) real DR10: the merged catalogues, scored where a real cutout is available offline.
    _say(f"real anchors: merged catalogues against the real DR10 cutouts in {CUTOUTS_DIR} (cropped to the checkpoint's stamp size)")
    cutouts = NpzCutoutDirectory(CUTOUTS_DIR)
    real = run_anchor_baseline(paths.catalogs / "known_lenses_merged.parquet", paths.catalogs / "hard_negatives_merged.parquet", paths.anchors / "real",
                               checkpoint_path=paths.checkpoint, cutouts=cutouts, evaluation=ev, seed=seed)  # fmt: skip
    scored = pd.read_parquet(paths.anchors / "real" / "anchor_scores.parquet")
    scored = scored[scored["score"].notna()].sort_values("name")
    real_rows = [{"name": r.name, "catalogue": r.catalogue, "ra": r.ra, "dec": r.dec, "score": r.score, "arc_snr": r.arc_snr,
                  "recovered": bool(r.score >= ev.score_threshold)} for r in scored.itertuples()]  # fmt: skip

    # (b) held-out injections: test-split hosts and lens parameters, galaxies never used in training.
    cfg = pipeline_config(paths)
    params = stamp_params(cfg, str(paths.mock.resolve()), cosmos_library=str(paths.cosmos_heldout))
    loader = COSMOSLoaderV2(str(paths.cosmos_heldout), mode="hdf5")
    heldout = sorted(loader.idents())
    rows = [r for r in _injection_rows(paths.training_view, "test") if not r.get("is_null_injection")]
    _say(f"held-out set: {len(rows)} test-split injections re-made with the {len(loader)} held-out galaxies {heldout}")
    images, rejects, idents, bricks = [], {}, [], {}
    for row in rows:
        # the row's lens, source magnitude, colours and size scale; a held-out galaxy's light profile
        row = dict(row, cosmos_ident=heldout[stable_hash64("heldout-galaxy", int(row["task_seed"])) % len(heldout)])
        brick = bricks.setdefault(row["brickname"], CoaddBrick(params.coadd_root, row["brickname"], BANDS))
        try:
            out, image, _, _ = make_stamp(row, brick, params, loader)
        except RejectError as exc:
            rejects[exc.reason] = rejects.get(exc.reason, 0) + 1
            continue
        images.append(image)
        idents.append(out["cosmos_ident"])
    heldout_idents = set(loader.idents())
    if not set(idents) <= heldout_idents:
        raise DemoError(f"held-out injections used galaxies {sorted(set(idents) - heldout_idents)} outside the held-out split")
    pos_heldout = score_images(str(paths.checkpoint), np.stack(images))
    pos_train_gal = score_images(str(paths.checkpoint), _images_of(paths.training_view, "test", 1))
    neg = score_images(str(paths.checkpoint), _images_of(paths.training_view, "test", 0))
    held = compute_anchor_metrics(pos_heldout, neg, ev)
    same = compute_anchor_metrics(pos_train_gal, neg, ev)
    ci = bootstrap_ci(pos_heldout, neg, ev, n_bootstrap=ev.n_bootstrap, seed=seed)
    return json_safe({
        "real": {"metrics": real["metrics"], "criteria_passed": real["criteria_passed"], "rejects": real["rejects"],
                 "gates": real["gates"], "anchor_gate_passed": real["anchor_gate_passed"], "per_grade": real["per_grade"],
                 "top_grade": real["top_grade"], "stamp_size": real["inputs"]["stamp_size"],
                 "arc_visible": {k: real["arc_visible"][k] for k in ("arc_snr_min", "n_lenses_with_cutout", "n_visible")},
                 "scored": real_rows, "n_catalogue_rows": real["inputs"]["n_rows"]},
        "heldout": {"metrics": held.to_dict(), "criteria_passed": held.criteria_passed(), "bootstrap_ci": ci,
                    "n_injections": len(images), "rejects": rejects, "galaxies_used": sorted(set(idents)),
                    "same_hosts_training_galaxies": same.to_dict()},
        "criteria": real["metrics"]["gate_criteria"],
    })  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 11. realism
# ---------------------------------------------------------------------------------------------
#: Stamps per set for the arc measurements (~60 ms each), and injections for the probe (test split).
REALISM_MAX_STAMPS = 300
PROBE_MAX_INJECTED = 1000
#: "Bright" injections for the recall-gap gate: the detectable population's test split has lensed
#: r of 21-24 (the cited study's r <= 21 holds none of them), so the demo's bright bin is r <= 22.
PROBE_BRIGHT_MAG_MAX = 22.0


def stage_realism(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    """The same arc measurement (visibility, host-subtracted colours) on the real DR10
    candidates, the real PS1 SLED lenses, this run's injections and its controls; then the
    linear probe on the trained model's features, real DR10 candidates against test-split
    injections (:mod:`dhs_spark.realism`)."""
    from dhs_spark.realism import ProbeConfig, load_cutout_dir, load_stamps, run_arcs, run_probe
    from trainer.train import json_safe

    _say(f"arc visibility and colours: DR10 candidates, PS1 SLED lenses, up to {REALISM_MAX_STAMPS} injections and controls")
    arcs = run_arcs(paths.realism / "arcs", cutouts_dir=CUTOUTS_DIR, stamps=paths.stamps, ps1_path=PS1_LENSES, stamp_size=prof.stamp_size,
                    max_stamps=REALISM_MAX_STAMPS, seed=seed)  # fmt: skip
    real, _, real_meta = load_cutout_dir(CUTOUTS_DIR, stamp_size=None)
    injected, injected_meta = load_stamps(paths.stamps, "injected", PROBE_MAX_INJECTED, seed, "test", stamp_size=None)
    _say(f"linear probe: {len(real)} real DR10 candidates against {len(injected)} test-split injections")
    probe = run_probe(paths.checkpoint, np.stack(real), real_meta, injected, injected_meta, paths.realism / "probe", seed,
                      ProbeConfig(n_permutations=100, n_bootstrap=prof.n_bootstrap, max_injected=PROBE_MAX_INJECTED,
                                  bright_mag_max=PROBE_BRIGHT_MAG_MAX))  # fmt: skip
    return json_safe({"arcs": {k: arcs[k] for k in ("sets", "rejected", "estimator")},
                      "probe": {k: probe[k] for k in ("probe", "probe_matched", "matching", "recovery", "gates", "config")}})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# 12. gallery
# ---------------------------------------------------------------------------------------------
def pick_gallery_rows(rows: list[dict], n: int) -> list[dict]:
    """``n`` injections with theta_E >= 1" spread over the upper arc-SNR quantiles (0.5-0.95),
    so that the gallery shows arcs a person can see next to fainter ones; deterministic."""
    cand = sorted((r for r in rows if r["theta_e_arcsec"] >= 1.0), key=lambda r: (r["arc_snr_sum"], r["task_id"]))
    if len(cand) < n:
        cand = sorted(rows, key=lambda r: (r["arc_snr_sum"], r["task_id"]))
    if not cand:
        raise DemoError("no injections to show in the gallery")
    picks = []
    for q in np.linspace(0.5, 0.95, n):
        row = cand[min(int(q * len(cand)), len(cand) - 1)]
        if row not in picks:
            picks.append(row)
    return picks


def stage_gallery(paths: DemoPaths, prof: DemoProfile, seed: int) -> dict:
    """Host, stamp and arc alone (stamp - host) for the same test-split rows with their COSMOS
    source (the pipeline's stamp, re-made here and checked equal) and with a Sersic source (the
    same lens, magnitude and colours through the same :func:`make_stamp`, source_mode parametric)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from dhs_spark.jobs.phase4c_stamps import make_stamp, stamp_params
    from dhs_spark.schema import decode_image_column
    from dhs_spark.sims.cosmos import COSMOSLoaderV2
    from dhs_spark.sims.lens_system import COSMOS_PROXY_SERSIC_N
    from dhs_spark.survey.coadds import BANDS, CoaddBrick
    from trainer.train import json_safe

    cfg = pipeline_config(paths)
    cosmos = stamp_params(cfg, str(paths.mock.resolve()), cosmos_library=str(paths.cosmos_train))
    sersic = dataclasses.replace(cosmos, source_mode="parametric", cosmos_library=None)
    loader = COSMOSLoaderV2(str(paths.cosmos_train), mode="hdf5")
    rows = pick_gallery_rows(_injection_rows(paths.training_view, "test"), prof.gallery_examples)
    ids = [r["task_id"] for r in rows]
    table = pq.read_table(paths.training_view / "test.parquet", columns=["task_id", "image"], filters=pc.field("task_id").isin(ids))
    pipeline_images = dict(zip(table["task_id"].to_pylist(), decode_image_column(table["image"], len(BANDS), prof.stamp_size)))
    s = prof.stamp_size
    arrays = {"host": [], "cosmos": [], "sersic": []}
    examples = []
    for row in rows:
        brick = CoaddBrick(cosmos.coadd_root, row["brickname"], BANDS)
        host = brick.cutout(row["ra"], row["dec"], s).image.astype(np.float32)
        out_c, img_c, _, _ = make_stamp(row, brick, cosmos, loader)
        # the Sersic stand-in of the COSMOS galaxy: its half-light radius, the profile 4a's detectability proxy uses
        row_s = dict(row, source_sersic_n=COSMOS_PROXY_SERSIC_N, source_q=1.0) if row.get("source_sersic_n") is None else row
        out_s, img_s, _, _ = make_stamp(row_s, brick, sersic)
        from_pipeline = pipeline_images[row["task_id"]].reshape(3, s, s)
        arrays["host"].append(host)
        arrays["cosmos"].append(from_pipeline)
        arrays["sersic"].append(img_s)
        examples.append({
            "task_id": row["task_id"], "brickname": row["brickname"], "theta_e_arcsec": row["theta_e_arcsec"], "source_r_mag": row["source_r_mag"],
            "cosmos": {"ident": out_c["cosmos_ident"], "magnification": out_c["magnification"], "arc_snr_sum": out_c["arc_snr_sum"],
                       "remade_equals_pipeline": bool(np.array_equal(img_c, from_pipeline)),
                       "remade_max_abs_diff_nmgy": float(np.abs(img_c - from_pipeline).max())},
            "sersic": {"r_eff_arcsec": row_s["source_r_eff_arcsec"], "sersic_n": row_s["source_sersic_n"], "magnification": out_s["magnification"],
                       "arc_snr_sum": out_s["arc_snr_sum"]},
        })  # fmt: skip
    paths.gallery.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(paths.gallery, **{k: np.stack(v) for k, v in arrays.items()})
    differ = [e["task_id"] for e in examples if not e["cosmos"]["remade_equals_pipeline"]]
    if differ:  # reported (and shown in the report), not fatal: the gallery still shows the pipeline's stamps
        log.warning("gallery: stamps %s re-made in this process differ from the pipeline's bytes (code changed since stage 4, or "
                    "the render is not deterministic across processes)", differ)
    return json_safe({"examples": examples})


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
STAGES = (
    ("mock_survey", stage_mock_survey),
    ("cosmos_library", stage_cosmos_library),
    ("catalogues", stage_catalogues),
    ("spark_pipeline", stage_spark_pipeline),
    ("train", stage_train),
    ("score", stage_score),
    ("hard_negatives", stage_hard_negatives),
    ("retrain", stage_retrain),
    ("loop", stage_loop),
    ("anchors", stage_anchors),
    ("realism", stage_realism),
    ("gallery", stage_gallery),
)
STAGE_NAMES = tuple(name for name, _ in STAGES) + ("report",)


def fingerprint(prof: DemoProfile, seed: int) -> str:
    """What every stage's output depends on: the profile, the seed and this module's source (a
    changed stage, or a changed result layout the report reads, must not reuse old markers)."""
    what = {"profile": dataclasses.asdict(prof), "seed": seed, "demo_source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def run_demo(output, seed: int = 42, profile: str = "default", force: bool = False, redo: tuple[str, ...] = ()) -> dict:
    """Run every stage into ``output``; returns the summary written to ``summary.json``."""
    from dhs_spark.demo_report import build_summary, write_demo_report

    if profile not in PROFILES:
        raise DemoError(f"unknown profile {profile!r}; known: {sorted(PROFILES)}")
    unknown = sorted(set(redo) - set(STAGE_NAMES))
    if unknown:
        raise DemoError(f"--redo: unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}")
    prof = PROFILES[profile]
    paths = DemoPaths(Path(output).resolve())
    paths.root.mkdir(parents=True, exist_ok=True)
    runner = StageRunner(paths.root, force=force, redo=frozenset(redo))
    fp = fingerprint(prof, seed)
    total = len(STAGE_NAMES)
    start = time.perf_counter()
    print(f"Dark Halo Scope demo: profile {prof.name}, seed {seed}, output {paths.root}", flush=True)
    for i, (name, fn) in enumerate(STAGES, 1):
        runner.run(i, total, name, lambda fn=fn: fn(paths, prof, seed), fingerprint=fp)
    t0 = time.perf_counter()
    print(f"[{total}/{total}] report ...", flush=True)
    summary = build_summary(paths, prof, seed, runner)
    summary["timings_s"]["report"] = 0.0  # filled in below, after the report is written
    write_demo_report(paths, summary)
    summary["timings_s"]["report"] = round(time.perf_counter() - t0, 2)
    summary["run"]["wall_s"] = round(time.perf_counter() - start, 2)
    paths.summary.write_text(json.dumps(summary, indent=1, sort_keys=True))
    write_demo_report(paths, summary)  # again, now with the report's own time
    print(f"[{total}/{total}] report: done in {summary['timings_s']['report']:.1f} s -> {paths.report}", flush=True)
    print(f"demo finished in {summary['run']['wall_s']:.1f} s (stages reused: {sum(runner.reused.values())})", flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dhs_spark.demo", description="The end-to-end demo on the embedded default: mock survey, real COSMOS "
                                     "sources, Spark phase 4, CPU training, scoring, hard negatives, anchors, HTML report.")  # fmt: skip
    parser.add_argument("--output", default="demo_out", help="output directory (default demo_out)")
    parser.add_argument("--seed", type=int, default=42, help="global seed (default 42)")
    parser.add_argument("--force", action="store_true", help="redo every stage instead of reusing finished ones")
    parser.add_argument("--redo", action="append", default=[], metavar="STAGE", help=f"redo this stage (repeatable): {', '.join(STAGE_NAMES[:-1])}")
    parser.add_argument("--quick", action="store_true", help="the small profile used by the tests (same code path, a few hundred stamps)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="    %(levelname)s %(name)s: %(message)s")
    try:
        run_demo(args.output, seed=args.seed, profile="quick" if args.quick else "default", force=args.force, redo=tuple(args.redo))
    except DHSError as exc:
        print(f"demo FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
