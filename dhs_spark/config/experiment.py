"""Experiment configuration: one typed object per experiment, saved beside its outputs.

Units are in the field names (``_arcsec``, ``_mag``, ``_nmgy``). Angles on the sky are arcsec,
position angles radians counter-clockwise from +x (see ../shared/DESIGN.md §2). Defaults of
:class:`InjectionPriors` are the realistic priors of DESIGN.md §3.

Load with :func:`from_yaml` (safe loading, every problem reported at once, each naming its
dotted field path and the file), save with :func:`to_yaml`; a config survives the round trip
unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from dhs_spark.config.typed import build, to_plain
from dhs_spark.errors import ConfigError, ConfigErrors

BANDS = ("g", "r", "z")  # the one band order used everywhere


@dataclass
class SeedConfig:
    """Seeds. Every per-stamp random quantity derives from ``global_seed`` and the stamp's
    identity (:func:`dhs_spark.config.seeds.task_seed`), never from a partition index."""

    global_seed: int = 42
    torch_deterministic: bool = True


@dataclass
class PsfWingsConfig:
    """Outer wings added to survey PSF images (``psf_model: pixel``): the Legacy Surveys DR9/DR10
    extended PSF model (https://www.legacysurvey.org/dr10/psf). ``blend_radii_arcsec`` = R1..R4:
    survey PSF inside R1, blended into an inner Moffat (fitted between ``inner_fit_range_arcsec``)
    over R1-R2, into the outer profile over R3-R4. Outer profile per arcsec^2 of a unit-flux star:
    ``A r^-2`` in g and r (r in arcsec), ``weight * Moffat(alpha, beta)`` in z."""

    enabled: bool = True
    blend_radii_arcsec: tuple[float, float, float, float] = (5.0, 6.0, 7.0, 8.0)
    inner_fit_range_arcsec: tuple[float, float] = (1.8, 5.0)
    power_law_amplitude_g: float = 4.5e-4
    power_law_amplitude_r: float = 3.3e-4
    z_moffat_alpha_arcsec: float = 17.65
    z_moffat_beta: float = 1.7
    z_moffat_weight: float = 0.0145


@dataclass
class DataVariantConfig:
    """A data-generation variant (Gen1..Gen6): how stamps are simulated.

    ``source_mode``: 'parametric' (Sersic) or 'cosmos' (real HST galaxies from
    ``cosmos_library_path``). ``psf_model``: 'gaussian', 'moffat' (needs ``moffat_beta``) or
    'pixel' (a survey PSF image: the coadd-PSF service at ``coadd_psf_url``, see phase 4c).
    ``theta_e_range`` is the Einstein-radius prior in arcsec.
    """

    variant_name: str = "v4_sota"
    description: str = ""
    parent_variant: Optional[str] = None
    changes_from_parent: str = ""
    deprecated: bool = False
    phase3_parent_sample: str = "v3_color_relaxed"
    phase4a_manifest: str = "phase4a_manifest"
    phase4c_stamps: str = "phase4c_stamps"
    psf_model: Literal["gaussian", "moffat", "pixel"] = "gaussian"
    moffat_beta: Optional[float] = None
    source_mode: Literal["parametric", "cosmos"] = "parametric"
    cosmos_library_path: Optional[str] = None
    cosmos_loader_mode: Literal["hdf5", "galsim", "synthetic"] = "hdf5"
    theta_e_range: tuple[float, float] = (0.5, 3.0)
    control_type: Literal["paired", "unpaired"] = "unpaired"
    control_fraction: float = 0.5
    bands: list[str] = field(default_factory=lambda: list(BANDS))
    stamp_size: int = 64
    pixel_scale_arcsec: float = 0.262
    oversample: int = 4
    add_arc_poisson_noise: bool = True
    # the arc's shot noise: 'correlated' gives it the coadd's own pixel correlation, estimated from
    # the cutout's sky pixels (dhs_spark.sims.noise); 'white' independent pixels
    arc_noise_model: Literal["white", "correlated"] = "correlated"
    null_injection_fraction: float = 0.05  # fraction of injection rows made with zero source flux (label 0): the null gate's input
    null_injections_in_training: bool = False  # False: null injections are held out of training (evaluation and the null gate only)
    n_replicates: int = 1
    split_fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.7, "val": 0.15, "test": 0.15})
    healpix_nside: int = 128
    psf_wings: PsfWingsConfig = field(default_factory=PsfWingsConfig)
    # psf_model 'pixel' through the coadd-PSF service (phase 4c): the Legacy Survey viewer's base
    # URL (e.g. https://www.legacysurvey.org/viewer), one request per brick; a brick whose coadd
    # PSF fails gets psf_fallback_model with its psfsize, flagged in the stamp's truth record.
    coadd_psf_url: Optional[str] = None
    psf_fallback_model: Literal["gaussian", "moffat"] = "gaussian"
    psf_cache_dir: Optional[str] = None  # local directory caching coadd-psf answers on each node; None: no disk cache
    coadd_psf_timeout_s: float = 30.0
    coadd_psf_max_retries: int = 4
    coadd_psf_backoff_s: float = 1.0


@dataclass
class InjectionPriors:
    """Priors of injected lenses and sources (DESIGN.md §3 defaults).

    Ranges are uniform [lo, hi]. ``beta_frac_sq_range``: beta/theta_E = sqrt(U(lo, hi)), so
    most injections are arcs. Colours are observed AB colours, Gaussian (mean, sigma).
    Shear components are N(0, ``shear_sigma``). Position angles are uniform in [0, pi).
    """

    source_r_mag_range: tuple[float, float] = (23.0, 26.0)
    beta_frac_sq_range: tuple[float, float] = (0.01, 0.16)
    source_r_eff_arcsec_range: tuple[float, float] = (0.15, 0.5)
    source_sersic_n_range: tuple[float, float] = (0.5, 2.0)
    source_q_range: tuple[float, float] = (0.5, 1.0)
    color_g_r_mean: float = 1.15
    color_g_r_sigma: float = 0.30
    color_r_z_mean: float = 0.85
    color_r_z_sigma: float = 0.20
    lens_q_range: tuple[float, float] = (0.5, 1.0)
    shear_sigma: float = 0.05


@dataclass
class PopulationConfig:
    """Host-conditioned lens population (``dhs_spark.sims.population``; sources are separate).

    ``mode``: 'host_conditioned' (lens from the host: z_l, sigma from luminosity, z_s, theta_E,
    shape from the Tractor shape) or 'uniform' (``InjectionPriors`` and ``data.theta_e_range``,
    for completeness grids). ``cosmology``: an ``astropy.cosmology.realizations`` name. Sources of
    every default are in the population module's docstrings: HB09 <log10 sigma | M_r> coefficients
    (Hyde & Bernardi 2009 via Collett 2015), passive fading 2.5 x 0.69 mag per unit z (Treu et al.
    2006), 0.05 dex scatter (SLACS, Auger et al. 2009, measured), source z lognormal (SLACS/S4TM/
    BELLS fit), lens q and angle (Koopmans et al. 2006), fallback z_l range (DESI LRG 0.4-1.1).
    ``theta_e_range_arcsec``: the draw is conditioned on it (``theta_e_tries`` tries per host;
    a host none of whose tries lands in it is left out of the manifest, controls included).
    4" keeps the arcs (~theta_E from the centre) well inside a 64-px (16.8") stamp. The lower
    bound 1.0" is a selection, not physics: arcs inside a DR10 seeing disc (FWHM 1.0-1.5") sit
    on the LRG's own light (half-light radii ~1") and are not what DR10 searches find; Collett
    (2015)'s resolvability theta_E^2 > r_s^2 + (s/2)^2 gives 0.6-0.75" for s = 1.2-1.5", and
    1.0" puts the median theta_E of the sweep LRGs at ~1.1" (tests/sims/test_population.py),
    inside the 1.0-1.8" of real candidates. 0.3" (about a pixel) reaches the whole physical range
    (use it with ``selection: none`` for completeness studies).
    ``host_weighting``: 'cross_section' tilts each host's sigma draw by sigma^4 (the theta_E^2
    cross-section given the host's luminosity); 'none' draws sigma from the plain relation.

    Source redshift: lognormal, median ``z_source_median`` 1.8 and width 0.3 in ln z (10-90%:
    1.2-2.6): lenses found in imaging have sources at z_s ~ 1-3 (SL2S, Sonnenfeld et al. 2013,
    ApJ 777, 97). The spectroscopic samples (SLACS/S4TM/BELLS: 0.670, 0.421, fitted in
    ``dhs_spark.sims.population.SPECTROSCOPIC_Z_SOURCE``) favour z_s < 1.5 by their selection.

    Detectability (``selection``, :mod:`dhs_spark.sims.lens_system`): 'detectable' redraws a
    row's source (up to ``detectable_tries`` times) until its expected arc SNR (the brick's PSF
    and depth) reaches ``detectable_min_arc_snr`` and its magnification
    ``detectable_min_magnification`` (Collett 2015, ApJ 811, 20: mu >= 3 and an SNR cut, 20 on
    his definition). On this project's matched-filter ``arc_snr_sum`` the cut is 60: measured on
    the demo's stamps, 20 left the injections' arc visibility (dhs_spark.anchors' estimator) at a
    median of 5.8 with 43% below 5, 60 gives 11.6 with 21% below 5, against 21.1 for the real
    DR10 candidates (found by eye, so selected bright). 'none' keeps the first draw (the full
    faint range, for completeness studies). Sources: COSMOS
    library metadata, or ``parametric_catalog_path`` (a GalSim COSMOS ``*_fits.fits``; None: the
    bundled 100-galaxy example) for Sersic sources. ``lens_redshift_column``: a parent-sample
    column holding the lens redshift (spectroscopic or photometric), used before the photo-z.
    """

    mode: Literal["host_conditioned", "uniform"] = "host_conditioned"
    cosmology: str = "Planck18"
    hb09_log_sigma_coeffs: tuple[float, float, float] = (-2.97, -0.37, -0.006)
    luminosity_evolution_mag_per_z: float = 1.725
    sigma_scatter_dex: float = 0.05
    z_source_median: float = 1.8
    z_source_sigma_ln: float = 0.3
    z_source_min_margin: float = 0.1
    z_source_max: float = 5.0  # the source spectra's range (dhs_spark.sims.sed.Z_MAX)
    z_lens_fallback_range: tuple[float, float] = (0.4, 1.1)
    theta_e_range_arcsec: tuple[float, float] = (1.0, 4.0)
    theta_e_tries: int = 64
    lens_q_mass_over_light_mean: float = 0.99
    lens_q_mass_over_light_sigma: float = 0.11
    lens_pa_scatter_deg: float = 10.0
    lens_q_mean: float = 0.78
    lens_q_sigma: float = 0.12
    lens_q_min: float = 0.2
    host_weighting: Literal["none", "cross_section"] = "cross_section"
    shear_sigma: float = 0.05
    selection: Literal["detectable", "none"] = "detectable"
    detectable_min_arc_snr: float = 60.0
    detectable_min_magnification: float = 3.0
    detectable_tries: int = 16
    parametric_catalog_path: Optional[str] = None
    lens_redshift_column: Optional[str] = None


@dataclass
class ModelConfig:
    """CNN: 'resnet_small' (CPU tests) or 'resnet18' (GPU). ``width`` = first-stage channels."""

    architecture: Literal["resnet_small", "resnet18"] = "resnet_small"
    width: int = 16
    blocks_per_stage: list[int] = field(default_factory=lambda: [1, 1, 1])
    in_channels: int = 3
    dropout: float = 0.0


@dataclass
class TrainingConfig:
    """Optimisation and preprocessing of the trainer (``trainer/``)."""

    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = 1
    loss: Literal["bce", "focal"] = "bce"
    focal_gamma: float = 2.0
    early_stopping_patience: int = 5
    early_stopping_metric: str = "val_auroc"
    num_workers: int = 0
    amp: bool = True
    clip_sigma: float = 20.0
    subtract_radial_profile: bool = False
    augment: bool = True
    device: str = "auto"


@dataclass
class HardNegativeConfig:
    """Real hard negatives (seed stage 3). Weights multiply the sample loss.

    Two ways in, which can be combined:

    - Position lookup (``enabled``, ``hard_neg_path``, ``hard_neg_weight``, ``match_radius_arcsec``):
      a label-0 stamp within ``match_radius_arcsec`` of a lookup entry (``dhs hardneg collect``:
      model false positives, rings, mergers) gets weight ``lookup weight * hard_neg_weight``
      (:mod:`trainer.hardneg_join`). ``hard_neg_path``: the lookup file
      (``hard_negative_lookup.parquet``; the legacy ``hard_neg_lookup.parquet`` is also found) or
      its directory.
    - Hard-negative stamps: label-0 rows of the stamp set that carry a ``hard_neg_source`` tag
      (ring, merger, model_fp, ...) and a ``hard_neg_weight`` (:mod:`trainer.data`), used
      whenever the stamp set has these columns. ``sources``: the tags trained on (None: every
      tag; an entry matches a tag exactly or its part before ``:``, so ``lookalike`` takes
      ``lookalike:ring_collisional``; rows of other tags are left out of training, kept in
      validation/test). ``weight``
      multiplies each row's ``hard_neg_weight`` (a null ``hard_neg_weight`` counts as 1, logged).
      ``max_fraction``: at most this fraction of a training epoch's stamps are such rows (a
      seeded subsample, redrawn each epoch; 1 = no cap). A stamp both tagged and matched by the
      lookup takes the larger of the two weights. Stamp sets without the columns train as before.

    The rest configures ``dhs hardneg collect`` (thresholds, radii, per-source weights).
    """

    enabled: bool = False
    hard_neg_path: Optional[str] = None
    hard_neg_weight: float = 5.0
    weight: float = 1.0
    max_fraction: float = 1.0
    sources: Optional[list[str]] = None
    min_score_threshold: float = 0.8
    top_k_per_source: int = 5000
    exclusion_radius_arcsec: float = 5.0
    dedup_radius_arcsec: float = 2.0
    match_radius_arcsec: float = 1.0
    weight_model_fp: float = 3.0
    weight_ring: float = 2.0
    weight_merger: float = 1.5


@dataclass
class EvaluationConfig:
    """Anchor gate thresholds (seed: recovery 0.70, contamination 0.15, separation 0.4,
    AUROC 0.8), the score threshold they use, and the shortcut-gate AUC ceiling."""

    score_threshold: float = 0.5
    anchor_min_recovery: float = 0.70
    anchor_max_contamination: float = 0.15
    anchor_min_separation: float = 0.4
    anchor_min_auroc: float = 0.8
    core_auc_max: float = 0.70
    fpr_targets: list[float] = field(default_factory=lambda: [1e-2, 1e-3, 1e-4])
    n_bootstrap: int = 1000
    null_shift_max: float = 0.05  # trainer gates: |score shift| allowed for a null (invisible) injection
    arc_suppressed_shift_max: float = 0.10  # trainer gates: arc-masked positives vs masked controls, mean score
    gate_max_stamps: int = 2000  # trainer gates: stamps drawn per split for the model-level gates
    # 4d host-only gate: out-of-fold AUC of (stamp - arc) of injections vs controls; 0.5 = no shortcut
    host_only_auc_max: float = 0.55
    max_reject_fraction: float = 0.05  # 4d: rejected / manifest rows above which the stage fails
    # gates judged on an effect (host-only AUC, null shift, arc-suppressed shift, ring excess) fail only
    # when the effect exceeds its tolerance AND its two-sided Mann-Whitney p-value is below gate_alpha
    gate_alpha: float = 0.01
    ring_excess_max: float = 0.10  # trainer gates: ringed-control rate above threshold minus SNR-matched recall


@dataclass
class ExperimentConfig:
    """One experiment: what data, which model, how trained and judged, and where it goes."""

    experiment_name: str = "experiment"
    experiment_id: str = ""
    generation: str = ""
    description: str = ""
    output_dir: Optional[str] = None
    created_at: str = ""
    git_commit: Optional[str] = None
    git_branch: Optional[str] = None
    git_dirty: Optional[bool] = None
    seeds: SeedConfig = field(default_factory=SeedConfig)
    data: DataVariantConfig = field(default_factory=DataVariantConfig)
    priors: InjectionPriors = field(default_factory=InjectionPriors)
    population: PopulationConfig = field(default_factory=PopulationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hard_negatives: HardNegativeConfig = field(default_factory=HardNegativeConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict:
        return to_plain(self)

    def to_yaml(self, path: str | os.PathLike) -> None:
        to_yaml(self, path)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ExperimentConfig:
        return from_yaml(path)


def _range_ok(errors, path, rng, file, positive=False, unit_interval=False):
    if rng is None or not isinstance(rng, tuple) or len(rng) != 2:
        return
    lo, hi = rng
    if not all(isinstance(v, (int, float)) for v in rng):
        return
    if not lo < hi:
        errors.append(ConfigError(path, "must be increasing [low, high]", list(rng), file))
    if positive and lo <= 0:
        errors.append(ConfigError(path, "must be positive", list(rng), file))
    if unit_interval and not (0 <= lo and hi <= 1):
        errors.append(ConfigError(path, "must lie in [0, 1]", list(rng), file))


def _fraction_ok(errors, path, value, file):
    if isinstance(value, (int, float)) and not 0.0 <= value <= 1.0:
        errors.append(ConfigError(path, "must lie in [0, 1]", value, file))


def validate(cfg: ExperimentConfig, file: str | None = None) -> list[ConfigError]:
    """Cross-field and range rules; returns every problem (an empty list when valid)."""
    errors: list[ConfigError] = []
    d, p, h, e = cfg.data, cfg.priors, cfg.hard_negatives, cfg.evaluation
    if not cfg.output_dir:
        errors.append(ConfigError("output_dir", "must be set", cfg.output_dir, file))
    if d.psf_model == "moffat" and d.moffat_beta is None:
        errors.append(ConfigError("data.moffat_beta", "must be set when data.psf_model is 'moffat'", None, file))
    if d.moffat_beta is not None and isinstance(d.moffat_beta, float) and d.moffat_beta <= 1.0:
        errors.append(ConfigError("data.moffat_beta", "must be > 1 (a Moffat with beta <= 1 has infinite flux)", d.moffat_beta, file))
    if d.coadd_psf_url is not None and not (isinstance(d.coadd_psf_url, str) and d.coadd_psf_url.startswith(("http://", "https://"))):
        errors.append(ConfigError("data.coadd_psf_url", "must be an http:// or https:// URL (the viewer root)", d.coadd_psf_url, file))
    if d.psf_model == "pixel" and d.psf_fallback_model == "moffat" and d.moffat_beta is None:
        errors.append(ConfigError("data.moffat_beta", "must be set when data.psf_fallback_model is 'moffat'", None, file))
    if isinstance(d.coadd_psf_timeout_s, float) and d.coadd_psf_timeout_s <= 0:
        errors.append(ConfigError("data.coadd_psf_timeout_s", "must be positive", d.coadd_psf_timeout_s, file))
    if isinstance(d.coadd_psf_max_retries, int) and d.coadd_psf_max_retries < 0:
        errors.append(ConfigError("data.coadd_psf_max_retries", "must be >= 0", d.coadd_psf_max_retries, file))
    if isinstance(d.coadd_psf_backoff_s, float) and d.coadd_psf_backoff_s < 0:
        errors.append(ConfigError("data.coadd_psf_backoff_s", "must be >= 0", d.coadd_psf_backoff_s, file))
    if d.source_mode == "cosmos" and not d.cosmos_library_path and d.cosmos_loader_mode != "synthetic":
        errors.append(ConfigError("data.cosmos_library_path", "must be set when data.source_mode is 'cosmos'", None, file))
    if h.enabled and not h.hard_neg_path:
        errors.append(ConfigError("hard_negatives.hard_neg_path", "must be set when hard_negatives.enabled is true", None, file))
    _range_ok(errors, "data.theta_e_range", d.theta_e_range, file, positive=True)
    w = d.psf_wings
    if isinstance(w.blend_radii_arcsec, tuple) and all(isinstance(v, float) for v in w.blend_radii_arcsec):
        if not 0 < w.blend_radii_arcsec[0] < w.blend_radii_arcsec[1] <= w.blend_radii_arcsec[2] < w.blend_radii_arcsec[3]:
            errors.append(ConfigError("data.psf_wings.blend_radii_arcsec", "must be 0 < R1 < R2 <= R3 < R4", list(w.blend_radii_arcsec), file))
    _range_ok(errors, "data.psf_wings.inner_fit_range_arcsec", w.inner_fit_range_arcsec, file)
    for name in ("power_law_amplitude_g", "power_law_amplitude_r", "z_moffat_weight"):
        v = getattr(w, name)
        if isinstance(v, float) and v < 0:
            errors.append(ConfigError(f"data.psf_wings.{name}", "must be >= 0", v, file))
    if isinstance(w.z_moffat_alpha_arcsec, float) and w.z_moffat_alpha_arcsec <= 0:
        errors.append(ConfigError("data.psf_wings.z_moffat_alpha_arcsec", "must be positive", w.z_moffat_alpha_arcsec, file))
    if isinstance(w.z_moffat_beta, float) and w.z_moffat_beta <= 1.0:
        errors.append(ConfigError("data.psf_wings.z_moffat_beta", "must be > 1 (finite flux)", w.z_moffat_beta, file))
    if isinstance(d.stamp_size, int) and (d.stamp_size < 32 or d.stamp_size % 2):
        errors.append(ConfigError("data.stamp_size", "must be even and >= 32", d.stamp_size, file))
    if isinstance(d.oversample, int) and d.oversample < 1:
        errors.append(ConfigError("data.oversample", "must be >= 1", d.oversample, file))
    if isinstance(d.pixel_scale_arcsec, float) and d.pixel_scale_arcsec <= 0:
        errors.append(ConfigError("data.pixel_scale_arcsec", "must be positive", d.pixel_scale_arcsec, file))
    if isinstance(d.bands, list):
        if not d.bands or any(b not in BANDS for b in d.bands) or d.bands != [b for b in BANDS if b in d.bands]:
            errors.append(ConfigError("data.bands", "must be a non-empty subset of g, r, z in that order", d.bands, file))
    _fraction_ok(errors, "data.control_fraction", d.control_fraction, file)
    _fraction_ok(errors, "data.null_injection_fraction", d.null_injection_fraction, file)
    if isinstance(d.split_fractions, dict):
        for name, frac in d.split_fractions.items():
            _fraction_ok(errors, f"data.split_fractions.{name}", frac, file)
        total = sum(v for v in d.split_fractions.values() if isinstance(v, (int, float)))
        if abs(total - 1.0) > 1e-6:
            errors.append(ConfigError("data.split_fractions", "must sum to 1", d.split_fractions, file))
    if isinstance(d.healpix_nside, int) and (d.healpix_nside < 1 or d.healpix_nside & (d.healpix_nside - 1)):
        errors.append(ConfigError("data.healpix_nside", "must be a power of 2", d.healpix_nside, file))
    if isinstance(d.n_replicates, int) and d.n_replicates < 1:
        errors.append(ConfigError("data.n_replicates", "must be >= 1", d.n_replicates, file))
    for name in ("source_r_mag_range", "source_r_eff_arcsec_range", "source_sersic_n_range"):
        _range_ok(errors, f"priors.{name}", getattr(p, name), file, positive=True)
    _range_ok(errors, "priors.beta_frac_sq_range", p.beta_frac_sq_range, file, unit_interval=True)
    for name in ("source_q_range", "lens_q_range"):
        rng = getattr(p, name)
        _range_ok(errors, f"priors.{name}", rng, file, positive=True)
        if isinstance(rng, tuple) and len(rng) == 2 and isinstance(rng[1], float) and rng[1] > 1:
            errors.append(ConfigError(f"priors.{name}", "axis ratios must be <= 1", list(rng), file))
    for name in ("color_g_r_sigma", "color_r_z_sigma", "shear_sigma"):
        v = getattr(p, name)
        if isinstance(v, float) and v < 0:
            errors.append(ConfigError(f"priors.{name}", "must be >= 0", v, file))
    pop = cfg.population
    if isinstance(pop.cosmology, str):
        from astropy.cosmology import realizations

        if pop.cosmology not in realizations.available:
            errors.append(ConfigError("population.cosmology", f"must be one of {', '.join(realizations.available)}", pop.cosmology, file))
    for name in ("theta_e_range_arcsec", "z_lens_fallback_range"):
        _range_ok(errors, f"population.{name}", getattr(pop, name), file, positive=True)
    for name in ("sigma_scatter_dex", "z_source_sigma_ln", "lens_q_mass_over_light_sigma", "lens_pa_scatter_deg", "lens_q_sigma", "shear_sigma", "z_source_min_margin"):
        v = getattr(pop, name)
        if isinstance(v, float) and v < 0:
            errors.append(ConfigError(f"population.{name}", "must be >= 0", v, file))
    for name in ("z_source_median", "z_source_max", "lens_q_mass_over_light_mean", "lens_q_mean"):
        v = getattr(pop, name)
        if isinstance(v, float) and v <= 0:
            errors.append(ConfigError(f"population.{name}", "must be positive", v, file))
    if isinstance(pop.lens_q_min, float) and not 0 < pop.lens_q_min <= 1:
        errors.append(ConfigError("population.lens_q_min", "must lie in (0, 1]", pop.lens_q_min, file))
    for name in ("theta_e_tries", "detectable_tries"):
        v = getattr(pop, name)
        if isinstance(v, int) and v < 1:
            errors.append(ConfigError(f"population.{name}", "must be >= 1", v, file))
    for name in ("detectable_min_arc_snr", "detectable_min_magnification"):
        v = getattr(pop, name)
        if isinstance(v, float) and v < 0:
            errors.append(ConfigError(f"population.{name}", "must be >= 0", v, file))
    if pop.mode == "host_conditioned" and d.source_mode == "cosmos" and d.cosmos_loader_mode == "synthetic":
        errors.append(ConfigError("population.mode", "'host_conditioned' needs real sources (magnitudes, redshifts): data.cosmos_loader_mode "
                                  "'synthetic' has none; use population.mode 'uniform'", pop.mode, file))  # fmt: skip
    if isinstance(pop.z_source_max, float) and pop.z_source_max > 5.0:
        errors.append(ConfigError("population.z_source_max", "must be <= 5 (the source spectra's range, dhs_spark.sims.sed.Z_MAX)", pop.z_source_max, file))
    for name in ("score_threshold", "anchor_min_recovery", "anchor_max_contamination", "anchor_min_auroc", "core_auc_max", "host_only_auc_max",
                 "max_reject_fraction", "ring_excess_max"):
        _fraction_ok(errors, f"evaluation.{name}", getattr(e, name), file)
    if isinstance(e.host_only_auc_max, float) and e.host_only_auc_max < 0.5:
        errors.append(ConfigError("evaluation.host_only_auc_max", "must be >= 0.5 (chance)", e.host_only_auc_max, file))
    if isinstance(e.gate_alpha, float) and not 0.0 < e.gate_alpha < 1.0:
        errors.append(ConfigError("evaluation.gate_alpha", "must lie in (0, 1)", e.gate_alpha, file))
    for name in ("null_shift_max", "arc_suppressed_shift_max"):
        if isinstance(getattr(e, name), float) and getattr(e, name) < 0:
            errors.append(ConfigError(f"evaluation.{name}", "must be >= 0", getattr(e, name), file))
    if isinstance(e.fpr_targets, list):
        for i, f in enumerate(e.fpr_targets):
            if isinstance(f, float) and not 0 < f < 1:
                errors.append(ConfigError(f"evaluation.fpr_targets[{i}]", "must lie in (0, 1)", f, file))
    _fraction_ok(errors, "hard_negatives.min_score_threshold", h.min_score_threshold, file)
    _fraction_ok(errors, "hard_negatives.max_fraction", h.max_fraction, file)
    for name in ("weight", "hard_neg_weight"):
        v = getattr(h, name)
        if isinstance(v, float) and not (v >= 0 and v != float("inf")):
            errors.append(ConfigError(f"hard_negatives.{name}", "must be a finite number >= 0", v, file))
    if isinstance(h.sources, list) and len(set(h.sources)) != len(h.sources):
        errors.append(ConfigError("hard_negatives.sources", "lists a tag twice", h.sources, file))
    for name in ("exclusion_radius_arcsec", "dedup_radius_arcsec", "match_radius_arcsec"):
        v = getattr(h, name)
        if isinstance(v, float) and v <= 0:
            errors.append(ConfigError(f"hard_negatives.{name}", "must be positive", v, file))
    t = cfg.training
    for name in ("epochs", "batch_size", "early_stopping_patience"):
        v = getattr(t, name)
        if isinstance(v, int) and v < 1:
            errors.append(ConfigError(f"training.{name}", "must be >= 1", v, file))
    if isinstance(t.clip_sigma, float) and t.clip_sigma <= 0:
        errors.append(ConfigError("training.clip_sigma", "must be positive", t.clip_sigma, file))
    return errors


def from_dict(data: dict, file: str | None = None) -> ExperimentConfig:
    """Build and validate; raise :class:`ConfigErrors` listing every problem."""
    errors: list[ConfigError] = []
    if not isinstance(data, dict):
        raise ConfigErrors([ConfigError("<root>", "the file must hold a YAML mapping", type(data).__name__, file)])
    cfg = build(ExperimentConfig, data, "", errors, file)
    if cfg is not None and not errors:
        errors.extend(validate(cfg, file))
    if errors:
        raise ConfigErrors(errors)
    return cfg


def from_yaml(path: str | os.PathLike) -> ExperimentConfig:
    """Load a config with ``yaml.safe_load``; YAML syntax errors name the file and line."""
    file = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigErrors([ConfigError("<file>", f"cannot read: {exc.strerror}", None, file)]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigErrors([ConfigError(where, f"YAML syntax error: {problem}", None, file)]) from None
    return from_dict(data if data is not None else {}, file)


def to_yaml(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Write ``cfg`` as YAML (plain types only, so ``safe_load`` reads it back)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def git_info(repo_dir: str | os.PathLike | None = None) -> dict:
    """``git_commit``, ``git_branch``, ``git_dirty`` of the checkout holding this package
    (None each when git or the repository is unavailable, e.g. an installed wheel on EMR)."""
    cwd = str(repo_dir or Path(__file__).resolve().parents[2])

    def run(*args):
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = run("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_branch": None, "git_dirty": None}
    status = run("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_branch": run("rev-parse", "--abbrev-ref", "HEAD"), "git_dirty": bool(status)}


def new_experiment_id(experiment_name: str, now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSffffff_<name>_<random hex>``: unique and sorts by creation time."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S%f')}_{experiment_name}_{secrets.token_hex(3)}"


def create_experiment_config(
    experiment_name: str,
    generation: str,
    data_variant: DataVariantConfig | str,
    output_base_dir: str,
    **overrides,
) -> ExperimentConfig:
    """A new experiment with a unique, time-sorted id, git state captured now.

    ``data_variant`` is a :class:`DataVariantConfig` or the name/path of a YAML file in
    ``configs/`` (its ``data`` section is used). ``overrides`` set top-level sections or fields,
    e.g. ``training=TrainingConfig(epochs=3)``.
    """
    if isinstance(data_variant, str):
        data_variant = load_variant(data_variant)
    now = _dt.datetime.now(_dt.timezone.utc)
    exp_id = new_experiment_id(experiment_name, now)
    cfg = ExperimentConfig(
        experiment_name=experiment_name,
        experiment_id=exp_id,
        generation=generation,
        output_dir=str(Path(output_base_dir) / exp_id),
        created_at=now.isoformat(),
        data=data_variant,
        **git_info(),
    )
    cfg = dataclasses.replace(cfg, **overrides)
    errors = validate(cfg)
    if errors:
        raise ConfigErrors(errors)
    return cfg


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def load_variant(name_or_path: str) -> DataVariantConfig:
    """The ``data`` section of a variant YAML: a path, or a name in the repo's ``configs/``."""
    path = Path(name_or_path)
    if not path.exists():
        path = CONFIG_DIR / "data_variants" / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigErrors([ConfigError("data_variant", f"no file {name_or_path!r} and no {path}", name_or_path, None)])
    return from_yaml(path).data
