"""Configuration: the schema (:mod:`settings.schema`), loading with one-line errors
(:mod:`settings.loading`) and the README's generated reference (:mod:`settings.reference`, run as
``python -m settings.reference``; not imported here so that running it stays clean)."""
from settings.loading import (check_tree, from_dict, load_config, merge, parse_override, read_config_file,
                            save_config, to_dict)
from settings.schema import (BEST_METRICS, CONFIG_DIR, DEMO_CONFIG, MODEL_METRICS, TEXT_METRICS, ArchConfig,
                           BenchmarkConfig, Config, DataConfig, DistillConfig, ExtraModel, LossSpec, ModelConfig, PseudoLabelConfig,
                           OptimConfig, SyntheticConfig, TokenizerConfig, TokenizerTrainConfig, TrainingConfig, doc)

__all__ = ["BEST_METRICS", "CONFIG_DIR", "DEMO_CONFIG", "MODEL_METRICS", "TEXT_METRICS", "ArchConfig", "BenchmarkConfig",
           "Config", "DataConfig", "DistillConfig", "ExtraModel", "LossSpec", "ModelConfig", "OptimConfig", "PseudoLabelConfig",
           "SyntheticConfig", "TokenizerConfig", "TokenizerTrainConfig", "TrainingConfig", "check_tree", "doc",
           "from_dict", "load_config", "merge", "parse_override", "read_config_file", "save_config",
           "to_dict"]
