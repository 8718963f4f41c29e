"""From nested dicts to a validated Config: each value checked against its field's type and closed choices,
required values present, checks across keys and ranges; from_dict() and load(), the entry points."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Optional

from imgtrain.config.keys import _fields, flatten
from imgtrain.config.schema import CHOICES, REQUIRED, Config, ConfigError, _unknown
from imgtrain.config.sources import _load_file, parse_override, set_dotted


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value, tp, key: str, where: str):
    """Check `value` against the annotation `tp`; ints widen to floats. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1 and value is not None:  # Optional[T]: report T's own error (names the item)
            try:
                return _coerce(value, real[0], key, where)
            except ConfigError as e:
                raise ConfigError(str(e).replace(f"expected {_type_name(real[0])}", f"expected {_type_name(tp)}", 1)
                                  if str(e).startswith(f"{key}:") else str(e)) from None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            _, vt = typing.get_args(tp)
            return {str(k): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    elif tp is Any:
        return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__}) [{where}]")


def _build(cls, data: dict, origins: dict[str, str], prefix: str = ""):
    schema = _fields(cls)
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        where = origins.get(key, "?")
        if k not in schema:
            raise _unknown(key, schema, where)
        tp, _ = schema[k]
        if dataclasses.is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: expected a mapping of {key}.* keys, got {v!r} [{where}]")
            kwargs[k] = _build(tp, v, origins, key + ".")
        else:
            kwargs[k] = _coerce(v, tp, key, where)
            choices = CHOICES.get(key)
            if choices is not None and kwargs[k] not in choices:
                raise ConfigError(f"{key}: {kwargs[k]!r} is not one of {', '.join(map(str, choices))} [{where}]")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a section's own check (e.g. optim.name against timm): add where the key was set
        msg = str(e)
        named = re.match(r"([A-Za-z_][\w.]*)\s*[:=]", msg)
        if named and named.group(1) in origins and not msg.endswith("]"):
            raise ConfigError(f"{msg} [{origins[named.group(1)]}]") from None
        raise


def _missing(obj, prefix="") -> list[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += _missing(v, f"{prefix}{f.name}.")
        elif v == REQUIRED:
            out.append(f"{prefix}{f.name}")
    return out


def from_dict(data: dict, origins: Optional[dict[str, str]] = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build and validate a Config from nested dicts plus `key=value` overrides."""
    data = json.loads(json.dumps(data))  # private deep copy
    origins = dict(origins or {})
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
        origins[key] = f"override '{text}'"
    cfg = _build(Config, data, origins)
    missing = _missing(cfg)
    if missing:
        key = missing[0]
        where = origins.get(key, "no file sets it")
        raise ConfigError(f"missing required value '{key}' [{where}]; set it in the config or with {key}=...")
    _check_ranges(cfg, origins)
    if cfg.data.decode_on == "device" and not (cfg.data.plain_crop() and cfg.data.in_chans == 3):
        raise ConfigError(f"data.decode_on=device [{origins.get('data.decode_on', '?')}] decodes RGB JPEGs for the "
                          "plain random-resized-crop + flip: it cannot run with data.simple_augment, auto_augment, "
                          "color_jitter, vflip, an interpolation other than bilinear/bicubic, or in_chans=1; "
                          "set data.decode_on=workers")
    if cfg.data.global_batch is not None and cfg.trainer.grad_accum != 1:
        raise ConfigError(f"trainer.grad_accum={cfg.trainer.grad_accum} [{origins.get('trainer.grad_accum', '?')}] "
                          f"and data.global_batch={cfg.data.global_batch} [{origins.get('data.global_batch', '?')}]: "
                          "with a global batch the accumulation is derived from it, the world size and "
                          "data.batch_size (the largest micro-batch); leave trainer.grad_accum at 1")
    if cfg.data.cutout and not cfg.data.simple_augment:
        raise ConfigError(f"data.cutout={cfg.data.cutout} [{origins.get('data.cutout', '?')}] works with "
                          "data.simple_augment=true (pad-and-crop + flip); with timm's augmentation use random "
                          "erasing (data.re_prob)")
    if cfg.data.cutout < 0:
        raise ConfigError(f"data.cutout: a square side in pixels >= 0, got {cfg.data.cutout} "
                          f"[{origins.get('data.cutout', '?')}]")
    if cfg.data.selects_on_test() and not cfg.data.select_on_test:
        where = ", ".join(f"data.{k}={getattr(cfg.data, k) or 'null'} [{origins.get(f'data.{k}', 'default')}]"
                          for k in ("val_split", "test_split"))
        raise ConfigError(f"data.val_split is the test split ({where}): the model would be selected on the test "
                          "split, so its test result is not held out; set "
                          "data.select_on_test=true to do this on purpose (it is then recorded in run.json), or "
                          "validate on another split")
    return cfg


# values a run cannot use: caught before anything is written or submitted, instead of a ZeroDivisionError,
# timm's bare AssertionError or a NaN loss minutes into a job. (key, lowest allowed, its meaning)
_AT_LEAST = [
    ("data.batch_size", 1, "samples per rank"), ("data.eval_batch_size", 1, "samples per rank"),
    ("data.global_batch", 1, "samples per optimizer step"),
    ("data.img_size", 1, "pixels"), ("data.in_chans", 1, "channels"), ("data.num_workers", 0, "processes"),
    ("data.shuffle_buffer", 1, "samples"), ("trainer.epochs", 1, "epochs"), ("trainer.max_steps", 1, "steps"),
    ("trainer.grad_accum", 1, "micro-batches per step"), ("trainer.eval_every_epochs", 1, "epochs"),
    ("trainer.patience", 1, "evaluations"), ("trainer.ckpt_every_steps", 1, "steps"),
    ("trainer.log_every_steps", 1, "steps"), ("trainer.max_attempts", 1, "attempts"),
    ("trainer.stop_after_epochs", 1, "epochs"), ("data.cache_max_gb", 0, "GiB"), ("optim.lr", 0, "learning rate"),
    ("optim.weight_decay", 0, "weight decay"), ("data.max_bad_fraction", 0, "fraction"),
    ("trainer.max_nonfinite_steps", 0, "skipped steps"),
]


def _check_ranges(cfg: Config, origins: dict[str, str]) -> None:
    flat = flatten(cfg)
    for key, value in flat.items():  # NaN and infinity in any float: `optim.lr=.nan` trained to a NaN loss, DONE
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number [{origins.get(key, 'default')}]")
    for key, low, unit in _AT_LEAST:
        value = flat.get(key)
        if value is not None and not isinstance(value, bool) and value < low:
            raise ConfigError(f"{key}: {value} {unit}; it must be at least {low} [{origins.get(key, 'default')}]")
    if cfg.data.max_bad_fraction > 1:
        raise ConfigError(f"data.max_bad_fraction: {cfg.data.max_bad_fraction} is a fraction in [0, 1] "
                          f"[{origins.get('data.max_bad_fraction', 'default')}]")


def load(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (following `extends`), apply overrides, validate."""
    data, origins = _load_file(Path(path)) if path is not None else ({}, {})
    if path is not None and "name" not in data:
        data["name"] = Path(path).stem
    return from_dict(data, origins, overrides)
