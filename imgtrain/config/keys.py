"""The schema's dotted key names (`optim.lr`): the fields of a section, which keys are free-form dicts
(model.kwargs, dist.deepspeed), a config flattened to {key: value}, and the check that a key exists."""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any

from imgtrain.config.dump import to_dict
from imgtrain.config.schema import Config, _unknown


@functools.lru_cache(maxsize=None)  # type hints are slow to resolve and flatten() asks at every nested dict
def _fields(cls) -> dict[str, tuple[Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f) for f in dataclasses.fields(cls)}


def _is_free_dict(dotted: str) -> bool:
    """Keys of dict-typed fields (model.kwargs, dist.deepspeed) are free-form."""
    section, _, name = dotted.partition(".")
    if "." in name or not name:
        return False
    sec = _fields(Config).get(section)
    if sec is None or not dataclasses.is_dataclass(sec[0]):
        return False
    f = _fields(sec[0]).get(name)
    return f is not None and typing.get_origin(f[0]) is dict


def flatten(cfg: Config | dict, prefix: str = "") -> dict[str, Any]:
    """{'optim.lr': 0.001, ...}: for summaries (`cfg.<key>` columns) and sweep tables."""
    d = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not _is_free_dict(f"{prefix}{k}"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def known_keys() -> list[str]:
    return list(flatten(Config()).keys())


def check_key(key: str, where: str = "?") -> None:
    """Raise ConfigError unless `key` is a config key (free-form dict keys included)."""
    keys = known_keys()
    if key in keys:
        return
    for k in keys:
        if _is_free_dict(k) and key.startswith(k + "."):
            return
    section = key.split(".")[0]
    sec = _fields(Config).get(section)
    if sec is None or "." not in key:
        raise _unknown(key, _fields(Config), where)
    raise _unknown(key, _fields(sec[0]), where)
