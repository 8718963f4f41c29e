"""Data pipeline: shard data set (DESIGN §1) -> per-rank batches in a resumable order."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from shards.manifest import load_manifest
from shards.remote import is_remote, stage

from imgtrain.config import Config
from imgtrain.data.device_decode import images_on_device, require_jpeg_decoder
from imgtrain.data.loader import EvalBatches, ShardSplit, make_loader, train_batches
from imgtrain.data.order import TrainPlan, epoch_order, eval_positions
from imgtrain.data.transforms import Normalizer, build_mixup, build_transform, decode_size, resolve_norm


@dataclass
class DatasetInfo:
    root: Path
    manifest: dict
    task: str
    class_names: list[str]
    num_outputs: int  # classes, or score bins
    class_counts: Optional[list[int]]  # train split, for balanced class weights


def data_root(cfg: Config, log=print) -> Path:
    """The data set's folder: data.path, or for a URL (https://..., pipe:...) its copy in node-local scratch,
    made or completed now (shards/remote.py)."""
    if is_remote(cfg.data.path):
        from imgtrain.data.memory import cache_root  # the one place that knows where node-local scratch is
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
    defer_jpegs = train and cfg.data.decode_on == "device"  # the config checked that the transform allows it
    if defer_jpegs:
        require_jpeg_decoder()
    return ShardSplit(info.root, info.manifest, split, build_transform(cfg.data, train, mean, std),
                      task.target_from_sample, seed=cfg.trainer.seed, in_chans=cfg.data.in_chans,
                      task=info.task, mean=mean, std=std,
                      draft=decode_size(cfg.data, train) if cfg.data.jpeg_draft else None, defer_jpegs=defer_jpegs)


__all__ = ["DatasetInfo", "dataset_info", "data_root", "build_split", "build_mixup", "resolve_norm", "ShardSplit", "Normalizer",
           "make_loader", "train_batches", "images_on_device", "EvalBatches", "TrainPlan", "epoch_order", "eval_positions"]
