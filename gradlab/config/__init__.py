"""Configs: YAML → a validated, immutable `Config`, with every problem named by its key path.

The first stage of the data flow; it imports nothing else of gradlab and no torch, so
`gradlab validate` is instant. `schema` holds the sections and vocabularies, `checks` the
cross-section rules, `load` the YAML door and `messages` the error text.
"""

from gradlab.config.load import (
    apply_overrides,
    config_from_dict,
    config_hash,
    default_name,
    load_config,
    resolved,
    total_steps,
)
from gradlab.config.messages import ConfigError
from gradlab.config.schema import (
    AddingData,
    BiasInitConfig,
    ClipConfig,
    Config,
    CopyData,
    DataConfig,
    DigitsSequenceData,
    InitConfig,
    ModelConfig,
    PretrainConfig,
    ProbeConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "AddingData", "BiasInitConfig", "ClipConfig", "Config", "ConfigError", "CopyData",
    "DataConfig", "DigitsSequenceData", "InitConfig", "ModelConfig", "PretrainConfig",
    "ProbeConfig", "ScheduleConfig", "TrainConfig", "apply_overrides", "config_from_dict",
    "config_hash", "default_name", "load_config", "resolved", "total_steps",
]
