"""Typed run configuration: YAML files (with `extends`) plus `a.b.c=value` overrides.

Every key lives in a dataclass (schema.py), so a misspelt key, a wrong type or a missing required value
is an error naming the key and where it came from (file:line or the override) before anything runs.
The resolved config dumps to YAML, loads back identically, and has a stable hash.

The package: schema.py (the dataclasses, CHOICES, ConfigError), sources.py (YAML files with line numbers,
`extends`, overrides), validate.py (types, required values, ranges; from_dict and load), keys.py (dotted
key names, flatten), dump.py (to_dict, to_yaml, config_hash). Callers use this module's names:
`from imgtrain import config as C; C.load(...)`.
"""
import dataclasses  # noqa: F401  (callers reach it as C.dataclasses)

from imgtrain.config.dump import _hashable, config_hash, to_dict, to_yaml
from imgtrain.config.keys import _fields, check_key, flatten, known_keys
from imgtrain.config.schema import (
    CHOICES, REQUIRED, Config, ConfigError, DataConfig, DistConfig, ModelConfig, OptimConfig, OutputConfig,
    SchedConfig, TaskConfig, TrainerConfig,
)
from imgtrain.config.sources import DuplicateKey, _Loader, parse_override, parse_value, set_dotted
from imgtrain.config.validate import from_dict, load

__all__ = [
    "CHOICES", "REQUIRED", "Config", "ConfigError", "DataConfig", "DistConfig", "DuplicateKey", "ModelConfig",
    "OptimConfig", "OutputConfig", "SchedConfig", "TaskConfig", "TrainerConfig", "check_key", "config_hash",
    "flatten", "from_dict", "known_keys", "load", "parse_override", "parse_value", "set_dotted", "to_dict",
    "to_yaml", "_Loader", "_fields", "_hashable",
]
