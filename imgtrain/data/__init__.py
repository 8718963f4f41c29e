"""Data pipeline: shard data set (DESIGN §1) -> per-rank batches in a resumable order.

Importing this package imports no torch: `DatasetInfo`, `dataset_info`, `data_root` and `cache_root` read
files only (shards.manifest, shards.remote), and the other names below are imported from their modules on
first use (`__getattr__`): loader.py, transforms.py, device_decode.py and memory.py import torch (and
timm, torchvision); order.py, tarindex.py and decode.py do not.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from imgtrain.lazy import lazy_exports
from shards.manifest import load_manifest
from shards.remote import is_remote, stage

if TYPE_CHECKING:
    from imgtrain.config import Config

    from .device_decode import images_on_device
    from .loader import EvalBatches, ShardSplit, make_loader, train_batches
    from .order import TrainPlan, epoch_order, eval_positions
    from .transforms import Normalizer, build_mixup, resolve_norm


@dataclass
class DatasetInfo:
    root: Path
    manifest: dict
    task: str
    class_names: list[str]
    num_outputs: int  # classes, or score bins
    class_counts: Optional[list[int]]  # train split, for balanced class weights


def cache_root() -> Path:
    """Node-local scratch for this node's copies (memory caches, staged remote data sets): the one place
    that knows where it is."""
    base = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / "imgtrain-cache"


def data_root(cfg: Config, log=print) -> Path:
    """The data set's folder: data.path, or for a URL (https://..., pipe:...) its copy in node-local scratch,
    made or completed now (shards/remote.py)."""
    if is_remote(cfg.data.path):
        return stage(cfg.data.path, cache_root() / "shards", log=lambda m: log(f"[imgtrain] {m}"))
    return Path(cfg.data.path)


def dataset_info(cfg: Config) -> DatasetInfo:
    root = data_root(cfg)
    manifest = load_manifest(root)
    if manifest["task"] != cfg.task.name:
        raise ValueError(f"{root}/manifest.json holds a '{manifest['task']}' data set but task.name is "
                         f"'{cfg.task.name}'")
    if manifest["task"] == "classification":
        names = list(manifest["classes"])
        counts = manifest["splits"].get(cfg.data.train_split, {}).get("class_counts")
    else:
        names, counts = [str(b) for b in manifest["bins"]], None
    return DatasetInfo(root, manifest, manifest["task"], names, len(names), counts)


def build_split(cfg: Config, info: DatasetInfo, split: str, task, *, train: bool, mean, std) -> ShardSplit:
    from .device_decode import require_jpeg_decoder
    from .loader import ShardSplit
    from .transforms import build_transform, decode_size

    defer_jpegs = train and cfg.data.decode_on == "device"  # the config checked that the transform allows it
    if defer_jpegs:
        require_jpeg_decoder()
    return ShardSplit(info.root, info.manifest, split, build_transform(cfg.data, train, mean, std),
                      task.target_from_sample, seed=cfg.trainer.seed, in_chans=cfg.data.in_chans,
                      task=info.task, mean=mean, std=std,
                      draft=decode_size(cfg.data, train) if cfg.data.jpeg_draft else None, defer_jpegs=defer_jpegs)


# exported name -> the submodule that defines it, imported when the name is first used (PEP 562)
_LAZY = {
    "build_mixup": "transforms", "resolve_norm": "transforms", "Normalizer": "transforms",
    "ShardSplit": "loader", "make_loader": "loader", "train_batches": "loader", "EvalBatches": "loader",
    "images_on_device": "device_decode",
    "TrainPlan": "order", "epoch_order": "order", "eval_positions": "order",
}
_SUBMODULES = frozenset({"decode", "device_decode", "loader", "memory", "order", "tarindex", "transforms"})

__all__ = ["DatasetInfo", "dataset_info", "data_root", "build_split", "build_mixup", "resolve_norm", "ShardSplit", "Normalizer",
           "make_loader", "train_batches", "images_on_device", "EvalBatches", "TrainPlan", "epoch_order", "eval_positions"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, _SUBMODULES)
