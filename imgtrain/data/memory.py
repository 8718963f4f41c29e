"""data.cache=memory (issue 18): small-image splits decoded once into one memory-mapped uint8 array.

Each split a run uses is decoded once, by the per-sample path (ShardSplit) with a transform that only resizes to
data.img_size, into an N x H x W x C uint8 .npy file in node-local scratch ($SLURM_TMPDIR, else $TMPDIR, else
/tmp, under imgtrain-cache/<hash of the manifest's shard checksums>/). Every process of a node memory-maps the same
file (the page cache holds one copy); the first process to take the file lock writes it (temporary file +
os.replace), the others wait and then read it. A sidecar JSON holds the key (checksums, split, size, channels,
transform), the labels, the undecodable samples and a CRC of the pixels: a file from another data set, a short or
damaged one is rebuilt, never used.

Training batches keep the shard path's order exactly (order.py's epoch_order and TrainPlan positions), are gathered
by index from the array and augmented per batch on the training device: reflect pad + random crop
(data.simple_augment) and horizontal flip (data.hflip), each sample's draws a function of (seed, epoch, sample
index) only, so sample-exact resume and DDP == one process hold as on the shard path. Evaluation batches come from
the same arrays, unaugmented, in the evaluation order.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from imgtrain.data import cache_root  # torch-free, beside data_root (remote data sets staged there)
from imgtrain.data.loader import EvalBatches, Sample, ShardSplit, _ignore_stop_signals, _mix, reap_workers_at_exit
from imgtrain.data.order import TrainPlan, epoch_order, eval_positions
from imgtrain.data.transforms import build_transform, cutout_fill, decode_size

FORMAT = "imgtrain-memory-cache/1"
_SALT = 0xA5E7_0C1A_B47C_4ED1  # the batch augmentation's draws are not those of the per-sample path's _seeded
_CUTOUT_SALT = 0x3C6E_F372_FE94_F82B  # cutout's centres: another hash than the crop offsets' and the flip's


# ------------------------------------------------------------------------------------------ where, and which key

def manifest_hash(manifest: dict) -> str:
    """Hash of every split's shard files, counts and checksums: a changed data set gets another folder."""
    rows = sorted((split, s["file"], int(s["count"]), s.get("sha256") or s.get("checksum") or "")
                  for split, info in manifest["splits"].items() for s in info["shards"])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def unsupported_augmentation(cfg) -> Optional[str]:
    """Why the batch path cannot reproduce this training augmentation (None: it can). Under data.simple_augment
    the per-sample path applies only resize, pad-and-crop and flip (plus rotate/shear), as this path does."""
    d = cfg.data
    if d.rotate or d.shear:
        return f"data.rotate={d.rotate}/data.shear={d.shear} (affine warps are per-sample only)"
    if d.simple_augment:
        return None
    for key, bad in (("auto_augment", d.auto_augment), ("color_jitter", d.color_jitter), ("vflip", d.vflip > 0)):
        if bad:
            return f"data.{key}={getattr(d, key)} is per-sample only"
    if list(d.scale) != [1.0, 1.0]:
        return f"data.scale={list(d.scale)} (random-resized-crop; the batch path does scale [1, 1] only)"
    if d.interpolation == "random":
        return "data.interpolation=random is per-sample only"
    return None


def cache_transform(cfg, *, train: bool, mean, std):
    """(transform, descriptor) of what the array holds: images resized (and centre-cropped) to data.img_size.
    The training split is stored whole (crop_pct 1, the deterministic part of the training transform); evaluation
    splits exactly as the per-sample evaluation transform makes them."""
    d = cfg.data
    dc = dataclasses.replace(d, crop_pct=1.0) if train and not d.simple_augment else d
    dc = dataclasses.replace(dc, rotate=0.0, shear=0.0)
    desc = {"role": "train" if train else "eval", "simple_augment": d.simple_augment, "crop_pct": dc.crop_pct,
            "interpolation": d.interpolation, "jpeg_draft": d.jpeg_draft}
    return build_transform(dc, False, mean, std), desc, (decode_size(dc, False) if d.jpeg_draft else None)


# ------------------------------------------------------------------------------------------ the cache file

def _raw_label(cls, meta):  # the per-sample path's label, kept raw: targets are made by the task at load
    return (cls, meta)


def _keep(items):
    return items


def _crc(arr: np.ndarray) -> int:
    flat = arr.reshape(-1)
    crc, step = 0, 1 << 24
    for i in range(0, len(flat), step):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(flat[i:i + step])), crc)
    return crc


def _expected_bytes(path: Path) -> Optional[int]:
    """Header + data size the .npy header announces (None: no readable header)."""
    try:
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            return f.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize
    except Exception:
        return None


def _file_stats(files) -> list:
    """[name, size, mtime_ns] of each shard file (None for a missing one: the build then names it)."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append([Path(f).name, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([Path(f).name, None, None])
    return out


def _check(path: Path, side: Path, key: dict) -> Optional[str]:
    """Why the cache file cannot be used (None: it can)."""
    if not path.exists() or not side.exists():
        return "not built yet"
    try:
        meta = json.loads(side.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable sidecar {side} ({e})"
    if meta.get("key") != key:
        return f"{path} was built for another data set or transform"
    size = path.stat().st_size
    if _expected_bytes(path) != size or size != meta.get("bytes"):
        return f"{path} is damaged ({size} bytes, expected {meta.get('bytes')})"
    arr = np.load(path, mmap_mode="r")
    if list(arr.shape) != meta["shape"] or arr.dtype != np.uint8:
        return f"{path} holds {arr.dtype} {list(arr.shape)}, expected uint8 {meta['shape']}"
    if _crc(arr) != meta["crc32"]:
        return f"{path} is damaged (checksum)"
    return None


def _build(ds: ShardSplit, path: Path, side: Path, key: dict, shape: tuple, num_workers: int) -> None:
    n = len(ds)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *shape))
    cls, meta, bad = [None] * n, [None] * n, {}
    batch = 256
    ds.reader  # indexed once, before the workers start
    if num_workers > 0:
        reap_workers_at_exit()
    loader = DataLoader(ds, batch_sampler=EvalBatches(n, 0, 1, batch), num_workers=num_workers, collate_fn=_keep,
                        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None)
    state = torch.get_rng_state()  # creating a loader draws a seed: the caller's RNG is left as it was
    for k, items in enumerate(loader):
        for i, item in enumerate(items, start=k * batch):
            if isinstance(item, Sample):
                img = item.image.numpy() if isinstance(item.image, torch.Tensor) else np.asarray(item.image)
                if img.shape != (shape[2], shape[0], shape[1]):
                    raise ValueError(f"data.cache=memory: sample {i} of split '{ds.split}' came out {img.shape}, "
                                     f"not {(shape[2], shape[0], shape[1])}")
                arr[i] = img.transpose(1, 2, 0)
                cls[i], meta[i] = item.target
            else:
                bad[i] = item[1]
    torch.set_rng_state(state)
    arr.flush()
    info = {"format": FORMAT, "key": key, "shape": [n, *shape], "bytes": tmp.stat().st_size, "crc32": _crc(arr),
            "cls": cls, "meta": meta if any(meta) else None, "bad": {str(i): r for i, r in bad.items()}}
    del arr
    side.unlink(missing_ok=True)  # no sidecar vouches for a file while it is replaced
    os.replace(tmp, path)
    side_tmp = side.with_name(f"{side.name}.tmp{os.getpid()}")
    side_tmp.write_text(json.dumps(info))
    os.replace(side_tmp, side)


def open_cache(cfg, info, split: str, *, train: bool, mean, std, log: Callable[[str], None] = print,
               root: Optional[Path] = None, base: Optional[ShardSplit] = None) -> tuple[np.ndarray, dict, ShardSplit]:
    """(the split's N x H x W x C uint8 array, memory-mapped read-only; its sidecar; the ShardSplit it came from),
    building the file first when it is missing, stale or damaged. `base`: the run's ShardSplit of this split, whose
    shard index is reused (indexing the tar files again cost ~0.2 s per 1,000 samples)."""
    transform, desc, draft = cache_transform(cfg, train=train, mean=mean, std=std)
    d = cfg.data
    if base is not None:
        ds = copy.copy(base)
        ds.transform, ds.target_fn, ds.draft, ds.defer_jpegs = transform, _raw_label, draft, False
        ds.random_transform = False
        ds.decode_to_array = getattr(transform, "takes_array", False)
        ds.mean, ds.std = tuple(mean), tuple(std)
    else:
        ds = ShardSplit(info.root, info.manifest, split, transform, _raw_label, seed=cfg.trainer.seed,
                        in_chans=d.in_chans, task=info.task, mean=mean, std=std, draft=draft)
        ds.random_transform = False
    mhash = manifest_hash(info.manifest)
    key = {"format": FORMAT, "manifest": mhash, "split": split, "img_size": d.img_size, "in_chans": d.in_chans,
           "transform": desc, "files": _file_stats([Path(ds.root) / f for f in ds.shard_files])}
    # the files' sizes and mtimes are in the name too: a shard damaged or replaced on disk under an unchanged
    # manifest (or a copy of the data set whose files differ) gets its own array instead of reusing another's
    tag = hashlib.sha256(json.dumps([desc, key["files"]], sort_keys=True).encode()).hexdigest()[:8]
    folder = (root or cache_root()) / mhash
    path = folder / f"{split}-{d.img_size}-c{d.in_chans}-{tag}.npy"
    side = path.with_suffix(".json")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / f"{path.stem}.lock", "a")
    except OSError as e:
        raise RuntimeError(f"data.cache=memory needs a writable node-local folder: {folder} ({e}); set $SLURM_TMPDIR "
                           "or $TMPDIR to scratch space with room, or set data.cache=none") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first process of the node builds; the others wait, then read
        why = _check(path, side, key)
        if why is not None:
            log(f"data.cache=memory: decoding split '{split}' ({len(ds)} samples) into {path} ({why})")
            shape = (d.img_size, d.img_size, d.in_chans)
            try:
                _build(ds, path, side, key, shape, d.num_workers)
            except OSError as e:
                raise RuntimeError(f"data.cache=memory could not write {path} ({e}); set $SLURM_TMPDIR or $TMPDIR to "
                                   "scratch space with room, or set data.cache=none") from None
            why = _check(path, side, key)
            if why is not None:
                raise RuntimeError(f"data.cache=memory: {path} is unusable right after it was written ({why})")
        meta = json.loads(side.read_text())
        fcntl.flock(lock, fcntl.LOCK_UN)
    return np.load(path, mmap_mode="r"), meta, ds


# ------------------------------------------------------------------------------------------ batches

class MemorySplit:
    """One cached split: gathers batches by sample index (image uint8 NCHW, a view of NHWC memory)."""

    def __init__(self, images: np.ndarray, meta: dict, ds: ShardSplit, target_fn, mean, std):
        self.images, self.split, self.counts = images, ds.split, ds.counts
        self.mean, self.std = tuple(mean), tuple(std)
        n = len(images)
        self.bad = {int(i): r for i, r in meta["bad"].items()}
        self.good = np.ones(n, dtype=bool)
        self.good[list(self.bad)] = False
        metas = meta["meta"] or [None] * n
        made = [target_fn(c, m or {}) if ok else None for c, m, ok in zip(meta["cls"], metas, self.good)]
        first = next((t for t in made if t is not None), torch.zeros(()))
        self.targets = torch.stack([t if t is not None else torch.zeros_like(first) for t in made])

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, index: np.ndarray) -> dict:
        """{"image": uint8 NCHW (channels_last memory), "target", "index", "bad"} for these samples, bad ones
        dropped and named."""
        index = np.asarray(index, dtype=np.int64)
        ok = self.good[index]
        bad = [self.bad[int(i)] for i in index[~ok]]  # "split:index: why", as the shard path names them
        index = index[ok]
        images = torch.from_numpy(self.images[index]).permute(0, 3, 1, 2)
        return {"image": images, "target": self.targets[torch.from_numpy(index)],
                "index": torch.from_numpy(index), "bad": bad}

    def eval_batches(self, rank: int, world: int, batch: int):
        """Evaluation batches in the evaluation order (evaluate.predict takes them in place of a loader)."""
        pos = eval_positions(len(self), rank, world)
        for lo in range(pos.start, pos.stop, batch):
            yield self.gather(np.arange(lo, min(lo + batch, pos.stop)))


def sample_hashes(seed: int, epoch: int, index: np.ndarray) -> np.ndarray:
    """64-bit splitmix hash of (seed, epoch, sample index) per sample, vectorised."""
    base = _mix(_mix(_mix((seed ^ _SALT) & ((1 << 64) - 1)) ^ (epoch & ((1 << 64) - 1))))
    x = np.asarray(index, dtype=np.int64).astype(np.uint64) ^ np.uint64(base)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def batch_augment(images: torch.Tensor, index: np.ndarray, *, seed: int, epoch: int, pad: int, hflip: float):
    """Reflect pad `pad` + random crop back to the size, and horizontal flip with probability `hflip`, of a uint8
    NCHW batch (on any device) as one gather; each sample's offsets and flip come from (seed, epoch, its index)."""
    n, c, h, w = images.shape
    if n == 0 or (pad <= 0 and hflip <= 0):
        return images
    hs = sample_hashes(seed, epoch, index)
    span = np.uint64(2 * pad + 1)
    dy = (hs % span).astype(np.int64) - pad
    dx = ((hs >> np.uint64(16)) % span).astype(np.int64) - pad
    flip = ((hs >> np.uint64(40)).astype(np.float64) / float(1 << 24)) < hflip
    dev = images.device

    def reflect(base: np.ndarray, size: int) -> torch.Tensor:
        r = torch.as_tensor(base, device=dev)[:, None] + torch.arange(size, device=dev)[None]
        r = r.abs()
        return torch.where(r > size - 1, 2 * (size - 1) - r, r)

    rows, cols = reflect(dy, h), reflect(dx, w)
    cols = torch.where(torch.as_tensor(flip, device=dev)[:, None], cols.flip(1), cols)
    nhwc = images.permute(0, 2, 3, 1)
    out = nhwc[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]  # N x H x W x C
    return out.permute(0, 3, 1, 2)


def batch_cutout(images: torch.Tensor, index: np.ndarray, *, seed: int, epoch: int, size: int, fill: torch.Tensor):
    """Cutout of a uint8 NCHW batch (on any device): per sample a size x size square centred at a pixel drawn from
    (seed, epoch, its index), clipped at the border, set to `fill` (C values). transforms.Cutout per sample."""
    n, c, h, w = images.shape
    if n == 0 or size <= 0:
        return images
    hs = sample_hashes(seed ^ _CUTOUT_SALT, epoch, index)
    cy = (hs % np.uint64(h)).astype(np.int64)
    cx = ((hs >> np.uint64(32)) % np.uint64(w)).astype(np.int64)
    dev = images.device
    top = torch.as_tensor(cy - size // 2, device=dev)[:, None]
    left = torch.as_tensor(cx - size // 2, device=dev)[:, None]
    rows = torch.arange(h, device=dev)[None]
    cols = torch.arange(w, device=dev)[None]
    in_rows = (rows >= top) & (rows < top + size)  # N x H
    in_cols = (cols >= left) & (cols < left + size)  # N x W
    square = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # N x 1 x H x W
    return torch.where(square, fill.to(dev).view(1, -1, 1, 1), images)


class MemoryFeed:
    """Trainer batch_source: this rank's batches of an epoch from `plan` on, in epoch_order's order, augmented
    per batch on the training device (pad-and-crop, flip, cutout)."""

    def __init__(self, mem: MemorySplit, cfg, env):
        self.mem, self.env = mem, env
        d = cfg.data
        self.seed, self.buffer, self.batch = cfg.trainer.seed, d.shuffle_buffer, d.batch_size
        self.pad = max(1, d.img_size // 8) if d.simple_augment else 0
        self.hflip = d.hflip
        self.cutout, self.fill = d.cutout, cutout_fill(mem.mean)

    def __call__(self, epoch: int, plan: TrainPlan):
        order = epoch_order(self.mem.counts, seed=self.seed, epoch=epoch, buffer=self.buffer)
        dev = self.env.device
        for step in range(plan.steps):
            pos = plan.rank_positions(self.env.rank, step)
            b = self.mem.gather(order[pos.start:pos.stop])
            x = b["image"].to(dev, non_blocking=True)
            b["image"] = batch_augment(x, b["index"].numpy(), seed=self.seed, epoch=epoch, pad=self.pad,
                                       hflip=self.hflip)
            if self.cutout > 0:
                b["image"] = batch_cutout(b["image"], b["index"].numpy(), seed=self.seed, epoch=epoch,
                                          size=self.cutout, fill=self.fill)
            yield b


def use_memory(cfg, info, task, env, train_ds, val_ds, test_ds, mean, std, log: Callable[[str], None] = print):
    """The trainer's hook: (batch_source or None when the augmentation needs the per-sample path, val split,
    test split), the evaluation splits replaced by their cached arrays."""
    def cached(ds, train):
        if ds is None:
            return None
        images, meta, shard = open_cache(cfg, info, ds.split, train=train, mean=mean, std=std, log=log, base=ds)
        return MemorySplit(images, meta, shard, task.target_from_sample, mean, std)

    mode = cfg.data.cache
    why = unsupported_augmentation(cfg)
    if mode == "auto" and why is not None:
        log(f"data.cache=auto: the per-sample path: {why}")
        return None, val_ds, test_ds
    too_big = over_budget(cfg, [d for d in (train_ds, val_ds, test_ds) if d is not None], manifest=info.manifest)
    if too_big is not None:
        log(f"data.cache={mode}: the per-sample path: {too_big}")
        return None, val_ds, test_ds
    feed = None
    if why is not None:
        log(f"data.cache={mode}: training uses the per-sample path: {why}; evaluation uses the cache")
    else:
        feed = MemoryFeed(cached(train_ds, True), cfg, env)
        if mode == "auto":
            log(f"data.cache=auto: splits cached in memory ({cache_root()})")
    return feed, cached(val_ds, False), cached(test_ds, False)


def over_budget(cfg, splits: list, root: Optional[Path] = None, manifest: Optional[dict] = None) -> Optional[str]:
    """Why the splits cannot be cached (over data.cache_max_gb, or more than the scratch folder's free space),
    or None. Each cached image is img_size x img_size x in_chans bytes. With the manifest, arrays already built
    for these splits count as room (a warm cache needs no free space to be used again)."""
    d = cfg.data
    need = sum(len(ds) for ds in splits) * d.img_size * d.img_size * d.in_chans
    gib = 2.0 ** 30
    if need > d.cache_max_gb * gib:
        return (f"the splits need {need / gib:.2f} GiB, over data.cache_max_gb={d.cache_max_gb:g} "
                "(raise it to cache them)")
    folder = root or cache_root()
    probe = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe is not None:
        free = shutil.disk_usage(probe).free
        built = 0
        if manifest is not None:
            folder_of_set = folder / manifest_hash(manifest)
            for ds in splits:
                sizes = [p.stat().st_size for p in folder_of_set.glob(f"{ds.split}-{d.img_size}-c{d.in_chans}-*.npy")]
                built += max(sizes, default=0)
        if (need - built) * 1.05 > free:
            return (f"the splits need {need / gib:.2f} GiB, {probe} has {free / gib:.2f} GiB free (set $SLURM_TMPDIR "
                    "or $TMPDIR to scratch space with room)")
    return None
