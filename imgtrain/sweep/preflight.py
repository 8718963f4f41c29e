"""The sweep's preflight: what would stop a cell at start-up, found before anything is submitted.

The same checks as the trainer's `preflight` (jobs/train.py --dry-run), made from files instead of
the engine, whose import (torch, timm, torchvision, scikit-learn) costs 5-8 s while the checks
themselves cost milliseconds:
- data set: manifest.json readable and valid (shards.manifest, no torch), of the config's task,
  holding the train split;
- model name: a local model or a timm architecture, looked up in an index of the
  `@register_model` functions in imgtrain/models/*.py and timm/models/*.py (read as text, about 50 ms
  for timm's 1,400 names). A name the index lacks is asked of the real registries
  (imgtrain.models.registry.check_name, which imports timm), so a name registered some other way (a
  deprecated timm alias) still passes and a typo gets check_name's error with its close matches;
- weights file: `model.pretrained_path` is a readable file;
- DeepSpeed: the config the engine would hand to DeepSpeed (engine.deepspeed_strategy.ds_config,
  which imports torch: only sweeps with DeepSpeed cells pay it).
Each distinct data set, model name and weights file is checked once per call.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path
from typing import Optional, Sequence

from imgtrain import config as C

_REGISTERED = re.compile(rb"^@register_model[ \t]*\r?\n(?:@.*\r?\n)*def[ \t]+(\w+)", re.M)
_LOCAL_MODELS = Path(__file__).resolve().parents[1] / "models"


def _registered_in(directory: Optional[Path]) -> frozenset[str]:
    """Names of the functions decorated with @register_model in directory/*.py (empty if none)."""
    names: set[str] = set()
    try:
        entries = sorted(os.listdir(directory)) if directory is not None else []
    except OSError:
        return frozenset()
    for name in entries:
        if name.endswith(".py"):
            try:
                with open(directory / name, "rb") as f:
                    names.update(m.decode() for m in _REGISTERED.findall(f.read()))
            except OSError:
                continue
    return frozenset(names)


@functools.lru_cache(maxsize=1)
def local_model_names() -> frozenset[str]:
    return _registered_in(_LOCAL_MODELS)


@functools.lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """timm's architecture names, from its sources; found without importing timm (find_spec does not)."""
    try:
        spec = importlib.util.find_spec("timm")
    except (ImportError, ValueError):
        spec = None
    where = list(spec.submodule_search_locations or []) if spec is not None else []
    return _registered_in(Path(where[0]) / "models") if where else frozenset()


def model_problem(name: str) -> Optional[str]:
    """None when `name` is a local model or a timm architecture (a `.pretrained_tag` is allowed, as
    timm.is_model allows it), else the registry's error."""
    if name in local_model_names() or name.split(".", 1)[0] in timm_model_names():
        return None
    from imgtrain.models.registry import check_name  # the authority; imports timm (seconds)

    try:
        check_name(name)
    except C.ConfigError as e:
        return str(e)
    return None


def data_problems(path: str, task: str, train_split: Optional[str]) -> list[str]:
    """What imgtrain.data.dataset_info and the trainer's preflight would say about this data set."""
    from shards.manifest import load_manifest
    from shards.remote import fetch_manifest, is_remote

    root = Path(path)
    try:  # a URL's manifest only: its shards are copied to each node's scratch when a cell starts
        manifest = fetch_manifest(path) if is_remote(path) else load_manifest(root)
    except Exception as e:  # ManifestError (missing, unreadable, invalid), OSError, RemoteError
        return [f"data.path: {e}"]
    if manifest["task"] != task:
        return [f"data.path: {path}/manifest.json holds a '{manifest['task']}' data set but task.name is '{task}'"]
    if train_split and train_split not in manifest["splits"]:
        return [f"data.train_split: {path}/manifest.json has no split '{train_split}'"]
    return []


def weights_problem(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return (f"model.pretrained_path: {path} is not a file (weights come only from a local file; nothing is "
                "downloaded)")
    if not os.access(path, os.R_OK):
        return f"model.pretrained_path: {path} is not readable"
    return None


def deepspeed_problem(cfg: C.Config) -> Optional[str]:
    from imgtrain.engine.deepspeed_strategy import ds_config  # imports torch; DeepSpeed cells only

    try:
        ds_config(cfg, world=1)
    except C.ConfigError as e:
        return str(e)
    return None


def check_config(cfg: C.Config, memo: Optional[dict] = None) -> list[str]:
    """Problems with one resolved config (empty when it would start); `memo` shares results between
    calls so that each distinct data set / model name / weights file is checked once."""
    memo = {} if memo is None else memo

    def once(key, fn, *args):
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]

    d = cfg.data
    problems = list(once(("data", os.path.abspath(d.path), cfg.task.name, d.train_split), data_problems,
                         d.path, cfg.task.name, d.train_split))
    for p in (once(("model", cfg.model.name), model_problem, cfg.model.name),
              cfg.model.pretrained_path and once(("weights", os.path.abspath(cfg.model.pretrained_path)),
                                                 weights_problem, cfg.model.pretrained_path),
              deepspeed_problem(cfg) if cfg.dist.strategy == "deepspeed" else None):
        if p:
            problems.append(p)
    return problems


def check_cells(cells: Sequence) -> list[str]:
    """Every problem of every cell, each prefixed with the cell it is about."""
    memo: dict = {}
    return [f"cell {cell.id} ({cell.describe()}): {p}" for cell in cells for p in check_config(cell.config, memo)]


__all__ = ["check_cells", "check_config", "model_problem", "data_problems", "weights_problem", "deepspeed_problem",
           "local_model_names", "timm_model_names"]
