"""Where config values come from, with the place each came from (file:line or the override) for error
messages: YAML files read with line numbers (duplicate keys refused, `1e-3` a float), `extends` merged
base first, and `a.b.c=value` overrides typed as YAML would type them."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from imgtrain.config.keys import _is_free_dict
from imgtrain.config.schema import ConfigError


class DuplicateKey(yaml.YAMLError):
    """A mapping names a key twice: YAML keeps the last silently (a second `trainer:` drops the first's keys)."""

    def __init__(self, key, line: int, first: int):
        self.key, self.line, self.first = key, line, first
        super().__init__(f"line {line}: duplicate key '{key}' (first at line {first}); YAML would keep only the "
                         "last one, silently dropping the other")


class _Loader(yaml.SafeLoader):
    """safe_load that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat what it merges
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
            except TypeError:  # an unhashable key: the base constructor says so
                continue
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_value(text: str) -> Any:
    """A command-line value typed as YAML would type it (3e-4 -> float, [a,b] -> list)."""
    if text == "":
        return ""
    return yaml.load(text, Loader=_Loader)


def _key_lines(node, prefix: str, where: str, out: dict[str, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = f"{prefix}{k.value}"
            out[key] = f"{where}:{k.start_mark.line + 1}"
            _key_lines(v, key + ".", where, out)


def _read_yaml(path: Path) -> tuple[dict, dict[str, str]]:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
        node = yaml.compose(text, Loader=_Loader)
    except DuplicateKey as e:
        raise ConfigError(f"{path}:{e.line}: duplicate key '{e.key}' (first at line {e.first}); YAML would keep "
                          "only the last one, silently dropping the other: merge them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping of sections, not {type(data).__name__}")
    origins: dict[str, str] = {}
    _key_lines(node, "", str(path), origins)
    return data, origins


def _merge(dst: dict, src: dict, src_origins: dict[str, str], origins: dict[str, str], prefix="") -> None:
    for k, v in src.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(dst.get(k), dict) and not _is_free_dict(key):
            _merge(dst[k], v, src_origins, origins, key + ".")
        else:
            dst[k] = v
            for o in [o for o in origins if o == key or o.startswith(key + ".")]:
                del origins[o]
        for o, where in src_origins.items():
            if o == key or o.startswith(key + "."):
                origins[o] = where


def _load_file(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself")
    data, origins = _read_yaml(path)
    bases = data.pop("extends", None)
    if bases is None:
        return data, origins
    merged: dict = {}
    merged_origins: dict[str, str] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = (path.parent / base) if not os.path.isabs(base) else Path(base)
        if not base_path.exists():
            raise ConfigError(f"{origins.get('extends', path)}: extends '{base}', which does not exist ({base_path})")
        bdata, borig = _load_file(base_path, seen + (path,))
        _merge(merged, bdata, borig, merged_origins)
    _merge(merged, data, origins, merged_origins)
    return merged, merged_origins


def set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            if nxt is not None and not isinstance(nxt, dict):
                raise ConfigError(f"override {key}: '{'.'.join(parts[: i + 1])}' is not a section")
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[\w\-]+)*", key):
        raise ConfigError(f"override '{text}': expected key=value, e.g. optim.lr=3e-4")
    try:
        return key, parse_value(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.__class__.__name__})") from None
