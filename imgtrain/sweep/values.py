"""Cell values: as command-line text that config.parse_value reads back identically, hashed into a cell's
stable id, and read from or set on a Config (a copy: sections are replaced, never mutated)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

import yaml

from imgtrain import config as C

_FORMATTED: dict[tuple[str, str], str] = {}


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./\-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def format_value(value: Any) -> str:
    """`value` as command-line text that config.parse_value reads back identically (YAML flow)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    token = (type(value).__name__, json.dumps(value, sort_keys=True, default=str))
    text = _FORMATTED.get(token)
    if text is None:
        text = _FORMATTED[token] = _format_value(value)
    return text


def _format_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    try:
        back = C.parse_value(text)
    except yaml.YAMLError:
        back = object()
    if back == value and type(back) is type(value):
        return text
    return json.dumps(value)


def override_text(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"


def cell_hash(values: dict[str, Any], length: int = 8) -> str:
    """Stable id of a cell: sha256 of its values, keys sorted (file order does not matter)."""
    blob = json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _get(cfg: C.Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def _with(cfg: C.Config, values: dict[str, Any]) -> C.Config:
    """A copy of `cfg` with typed values set (sections copied, never mutated in place)."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) == 1:
            top[key] = value
        else:
            sections.setdefault(parts[0], {})[".".join(parts[1:])] = value
    for sec, items in sections.items():
        obj = getattr(cfg, sec)
        direct, nested = {}, {}
        for k, v in items.items():
            name, _, rest = k.partition(".")
            if rest:  # a key inside a free-form dict (model.kwargs.foo)
                nested.setdefault(name, {})[rest] = v
            else:
                direct[name] = v
        for name, sub in nested.items():
            d = dict(direct.get(name, getattr(obj, name)))
            for k, v in sub.items():
                _set_path(d, k.split("."), v)
            direct[name] = d
        top[sec] = dataclasses.replace(obj, **direct)
    return dataclasses.replace(cfg, **top)


def _set_path(d: dict, parts: list[str], value) -> None:
    for p in parts[:-1]:
        d[p] = dict(d.get(p) or {})
        d = d[p]
    d[parts[-1]] = value
