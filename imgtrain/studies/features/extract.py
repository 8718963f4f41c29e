"""Features of a named layer for every sample of a split: the layer table, extraction into Parquet/.npy
shards (DDP: each rank its shards) and reading them back.
"""
from __future__ import annotations

import difflib
import io
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn as nn

from imgtrain.data import Normalizer, make_loader
from imgtrain.engine import dist
from imgtrain.engine.dist import DistEnv
from imgtrain.evaluation.load import EvalError, LoadedModel
from imgtrain.evaluation.metrics import sample_keys
from imgtrain.logs import atomic_write_bytes, atomic_write_text

FORMAT = "imgtrain-features/1"
PRE_LOGITS = "pre_logits"
POOLS = ("auto", "avg", "max", "cls", "flatten")
_SHARD_RE = re.compile(r"^(features|labels|keys|index)-\d{5}\.(npy|parquet)$")


# ============================================================================ layers

def _first_tensor(x):
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    if isinstance(x, dict):
        for item in x.values():
            t = _first_tensor(item)
            if t is not None:
                return t
    return None


def layer_table(model: nn.Module, in_chans: int, img_size: int) -> list[tuple[str, str, Optional[tuple]]]:
    """(module name, type, output shape without the batch) of every named module, from one forward pass
    of a zero image, plus timm's pre_logits when the model has forward_head."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name:
            def hook(_m, _i, out, name=name):
                t = _first_tensor(out)
                if t is not None:
                    shapes.setdefault(name, tuple(t.shape[1:]))
            hooks.append(mod.register_forward_hook(hook))
    device = next(model.parameters()).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    try:
        with torch.no_grad():
            model(x)
            pre = model.forward_head(model.forward_features(x), pre_logits=True) \
                if hasattr(model, "forward_head") else None
    finally:
        for h in hooks:
            h.remove()
    rows = [(n, type(m).__name__, shapes.get(n)) for n, m in model.named_modules() if n]
    if pre is not None:
        rows.append((PRE_LOGITS, "forward_head(pre_logits=True)", tuple(pre.shape[1:])))
    return rows


class _Captured(Exception):
    """Raised by the hook once the layer's output is captured: the rest of the forward pass is skipped."""


class LayerTap:
    """Output of one named layer (forward hook), or timm's `forward_head(pre_logits=True)` for
    'pre_logits', pooled to [B, D]."""

    def __init__(self, model: nn.Module, layer: str, pool: str = "auto"):
        if pool not in POOLS:
            raise EvalError(f"--pool {pool}: one of {', '.join(POOLS)}")
        self.model, self.layer, self.pool = model, layer, pool
        self.pre_logits = layer == PRE_LOGITS and hasattr(model, "forward_head")
        if not self.pre_logits:
            modules = dict(model.named_modules())
            modules.pop("", None)
            if layer not in modules:
                close = difflib.get_close_matches(layer, list(modules), n=4, cutoff=0.5)
                hint = f"; close matches: {', '.join(close)}" if close else ""
                arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
                raise EvalError(f"no layer '{layer}' in model {arch}{hint} (--list-layers lists all {len(modules)}"
                                f"{', and pre_logits' if hasattr(model, 'forward_head') else ''})")
            self.module = modules[layer]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_logits:
            return self._pool(self.model.forward_head(self.model.forward_features(x), pre_logits=True))
        box = {}

        def hook(_m, _i, out):
            box["out"] = _first_tensor(out)
            raise _Captured

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if box.get("out") is None:
            raise EvalError(f"layer '{self.layer}' produced no tensor (or was not called in the forward pass)")
        return self._pool(box["out"])

    def _pool(self, t: torch.Tensor) -> torch.Tensor:
        """auto: 4-D (N, C, H, W) -> mean over H, W; 3-D tokens (N, T, C) -> mean over tokens; 2-D as is.
        avg/max over all but the first two dims (4-D) or the tokens (3-D); cls: token 0; flatten: all."""
        if t.ndim == 2 or self.pool == "flatten":
            return t.flatten(1)
        if self.pool == "cls":
            if t.ndim != 3:
                raise EvalError(f"--pool cls needs token outputs (N, T, C); layer '{self.layer}' gives "
                                f"{tuple(t.shape)}")
            return t[:, 0]
        dims = (1,) if t.ndim == 3 else tuple(range(2, t.ndim))
        return t.amax(dim=dims) if self.pool == "max" else t.mean(dim=dims)


# ============================================================================ extraction

def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _feature_column(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _write_shard(out: Path, j: int, fmt: str, x: np.ndarray, labels: np.ndarray, keys: list[str],
                 index: np.ndarray) -> dict[str, str]:
    if fmt == "npy":
        files = {"features": f"features-{j:05d}.npy", "labels": f"labels-{j:05d}.npy",
                 "keys": f"keys-{j:05d}.npy", "index": f"index-{j:05d}.npy"}
        atomic_write_bytes(out / files["labels"], _npy_bytes(labels))
        atomic_write_bytes(out / files["keys"], _npy_bytes(np.asarray(keys, dtype=str)))
        atomic_write_bytes(out / files["index"], _npy_bytes(index.astype(np.int64)))
        atomic_write_bytes(out / files["features"], _npy_bytes(x))
        return files
    label = pa.array(labels) if labels.ndim == 1 else _feature_column(labels.astype(np.float32))
    table = pa.table({"key": pa.array(keys, pa.string()), "index": pa.array(index.astype(np.int64)),
                      "label": label, "feature": _feature_column(x)})
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    name = f"features-{j:05d}.parquet"
    atomic_write_bytes(out / name, buf.getvalue())
    return {"features": name}


def _clear(out: Path) -> None:
    """Remove a previous extraction's manifest (first: readers then see no features) and shards."""
    (out / "manifest.json").unlink(missing_ok=True)
    if out.is_dir():
        for p in out.iterdir():
            if _SHARD_RE.match(p.name):
                p.unlink()


def extract(loaded: LoadedModel, split: str, layer: str, env: DistEnv, out: str | Path, *, fmt: str = "parquet",
            pool: str = "auto", batch: Optional[int] = None, shard_size: int = 10000,
            dtype: str = "float32") -> Optional[dict]:
    """Features of `layer` for every sample of `split` into `out`. Collective under DDP; returns the
    manifest on rank 0 (None on the others)."""
    if fmt not in ("parquet", "npy"):
        raise EvalError(f"--format {fmt}: parquet or npy")
    if dtype not in ("float32", "float16"):
        raise EvalError(f"--dtype {dtype}: float32 or float16")
    if shard_size < 1:
        raise EvalError("--shard-size must be >= 1")
    out = Path(out)
    ds = loaded.dataset(split)
    tap = LayerTap(loaded.model, layer, pool)
    cfg, device = loaded.cfg, next(loaded.model.parameters()).device
    batch = batch or cfg.data.eval_batch_size or cfg.data.batch_size
    normalize = Normalizer(ds.mean, ds.std, device)  # the loader hands over uint8 batches, as predict() does
    n = len(ds)
    n_shards = max(1, math.ceil(n / shard_size))
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _clear(out)
    dist.barrier(env)
    t0 = time.time()
    written, bad, dim = [], [], None
    for j in range(env.rank, n_shards, env.world):
        lo, hi = j * shard_size, min(n, (j + 1) * shard_size)
        batches = [[(0, p) for p in range(i, min(hi, i + batch))] for i in range(lo, hi, batch)]
        feats, labels, index = [], [], []
        for b in make_loader(ds, batches, cfg.data.num_workers, pin_memory=device.type == "cuda"):
            bad += b["bad"]
            if len(b["index"]) == 0:
                continue
            x = normalize(b["image"].to(device, non_blocking=True))
            feats.append(tap(x).float().cpu())
            labels.append(b["target"])
            index.append(b["index"])
        if not index:
            continue
        x = torch.cat(feats).numpy().astype(dtype)
        idx = torch.cat(index).numpy()
        dim = x.shape[1]
        files = _write_shard(out, j, fmt, x, torch.cat(labels).numpy(), sample_keys(ds, idx), idx)
        written.append({"shard": j, "files": files, "count": int(len(idx)), "first": int(idx[0]),
                        "last": int(idx[-1])})
    parts = dist.gather_objects(env, (written, bad, dim))
    manifest = None
    if env.is_main:
        shards = sorted((s for p in parts for s in p[0]), key=lambda s: s["shard"])
        dims = {p[2] for p in parts if p[2] is not None}
        if not shards:
            raise EvalError(f"no sample of split '{split}' could be read ({sum(len(p[1]) for p in parts)} bad)")
        src = loaded.source
        manifest = {
            "format": FORMAT, "layer": layer, "pool": pool, "dim": dims.pop(), "dtype": dtype, "file_format": fmt,
            "split": split, "count": sum(s["count"] for s in shards), "split_samples": n,
            "skipped": [r for p in parts for r in p[1]], "task": loaded.info.task,
            "class_names": loaded.info.class_names, "data": str(loaded.info.root),
            "dataset": loaded.info.manifest.get("name"), "model": cfg.model.name,
            "run_dir": str(src.run_dir) if src.run_dir else None,
            "config": str(src.config_file) if src.config_file else None, "checkpoint": str(src.weights),
            "weights": loaded.weights_kind, "img_size": cfg.data.img_size, "mean": list(loaded.mean),
            "std": list(loaded.std), "shard_size": shard_size, "shards": shards, "world_size": env.world,
            "seconds": round(time.time() - t0, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    dist.barrier(env)
    return manifest


# ============================================================================ reading features back

@dataclass
class Features:
    X: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N] class index (classification) or [N, bins] distribution
    keys: np.ndarray  # [N] str
    index: np.ndarray  # [N] sample index in the split
    class_names: list[str]
    manifest: dict
    path: Path


def load_features(path: str | Path) -> Features:
    """Every shard listed in DIR/manifest.json, concatenated in sample order."""
    path = Path(path)
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        why = "does not exist" if not path.exists() else \
            "holds no manifest.json (not a features directory, or an extraction that did not finish)"
        raise EvalError(f"features directory {path} {why}") from None
    except ValueError as e:
        raise EvalError(f"{path}/manifest.json: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
        raise EvalError(f"{path}/manifest.json: format {manifest.get('format')!r}, expected {FORMAT}")
    xs, ys, keys, index = [], [], [], []
    for s in manifest["shards"]:
        f = s["files"]
        if manifest["file_format"] == "npy":
            xs.append(np.load(path / f["features"]))
            ys.append(np.load(path / f["labels"]))
            keys.append(np.load(path / f["keys"]))
            index.append(np.load(path / f["index"]))
        else:
            t = pq.read_table(path / f["features"])
            d = t.schema.field("feature").type.list_size
            xs.append(t["feature"].combine_chunks().flatten().to_numpy().reshape(-1, d))
            lab = t["label"].combine_chunks()
            ys.append(lab.to_numpy() if not pa.types.is_fixed_size_list(lab.type) else
                      lab.flatten().to_numpy().reshape(len(lab), -1))
            keys.append(np.asarray(t["key"].to_pylist(), dtype=str))
            index.append(t["index"].to_numpy())
    return Features(np.concatenate(xs).astype(np.float32, copy=False), np.concatenate(ys), np.concatenate(keys),
                    np.concatenate(index), list(manifest["class_names"]), manifest, path)
