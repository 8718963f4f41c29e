"""A resolved Config as a dict or YAML (which loads back identically), and its stable hash."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import yaml

from imgtrain.config.schema import Config


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def _hashable(obj) -> dict:
    out = {}
    for f in dataclasses.fields(obj):
        if f.metadata.get("volatile"):
            continue
        v = getattr(obj, f.name)
        if f.metadata.get("hash_if_set") and v == (f.default if f.default_factory is dataclasses.MISSING
                                                   else f.default_factory()):
            continue
        out[f.name] = _hashable(v) if dataclasses.is_dataclass(v) else v
    return out


def config_hash(cfg: Config, length: int = 12) -> str:
    """Hash of everything that can change results, data.path and model.pretrained_path included; the
    `_volatile` fields (output.*, workers, logging and checkpoint cadence, ...) are left out."""
    blob = json.dumps(_hashable(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
