"""The DCGAN job's settings (GanParams), its run's config.yaml, and the config hash that resume checks."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class GanParams:
    data: Optional[str] = None  # shard data set
    mnist_dir: Optional[str] = None  # IDX files
    split: str = "train"
    max_images: Optional[int] = None
    epochs: int = 5
    batch_size: int = 64
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    d_norm: str = "none"
    d_extra_conv: int = 0
    lr: float = 2e-4
    beta1: float = 0.5
    img_size: int = 28
    n_samples: int = 64
    seed: int = 0
    device: str = "auto"
    root: Optional[str] = None
    run: Optional[str] = None


def config_of(p: GanParams, data_name: str, n_images: int) -> dict:
    source = "mnist_idx" if p.mnist_dir else "shards"
    return {
        "name": p.run or f"dcgan-{data_name}",
        "job": "dcgan",
        "data": {"source": source, "path": str(Path(p.mnist_dir or p.data).resolve()), "name": data_name,
                 "split": p.split, "max_images": p.max_images, "images": n_images, "img_size": p.img_size,
                 "batch_size": p.batch_size},
        "model": {"name": "dcgan", "nz": p.nz, "ngf": p.ngf, "ndf": p.ndf, "d_norm": p.d_norm, "nc": 1,
                  # only when set: earlier runs keep their config hash (and run id)
                  **({"d_extra_conv": p.d_extra_conv} if p.d_extra_conv else {})},
        "optim": {"name": "adam", "lr": p.lr, "betas": [p.beta1, 0.999]},
        "trainer": {"epochs": p.epochs, "seed": p.seed, "n_samples": p.n_samples,
                    "monitor": "train/epoch_g_loss"},
        "output": {"root": str(p.root), "run": p.run},
    }


def config_hash(cfg: dict) -> str:
    """What changes results: not paths, the run name or the number of epochs (so a run can be extended)."""
    kept = {k: v for k, v in cfg.items() if k not in ("output", "name")}
    kept["data"] = {k: v for k, v in cfg["data"].items() if k != "path"}
    kept["trainer"] = {k: v for k, v in cfg["trainer"].items() if k != "epochs"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]
