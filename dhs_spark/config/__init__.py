"""Experiment configuration, validation, YAML I/O and seeds."""

from dhs_spark.config.experiment import (
    BANDS,
    DataVariantConfig,
    EvaluationConfig,
    ExperimentConfig,
    HardNegativeConfig,
    InjectionPriors,
    ModelConfig,
    SeedConfig,
    TrainingConfig,
    create_experiment_config,
    from_dict,
    from_yaml,
    load_variant,
    to_yaml,
    validate,
)
from dhs_spark.config.seeds import get_reproducibility_info, rng_from_seed, set_all_seeds, stable_hash64, task_seed

__all__ = [
    "BANDS",
    "DataVariantConfig",
    "EvaluationConfig",
    "ExperimentConfig",
    "HardNegativeConfig",
    "InjectionPriors",
    "ModelConfig",
    "SeedConfig",
    "TrainingConfig",
    "create_experiment_config",
    "from_dict",
    "from_yaml",
    "get_reproducibility_info",
    "load_variant",
    "rng_from_seed",
    "set_all_seeds",
    "stable_hash64",
    "task_seed",
    "to_yaml",
    "validate",
]
