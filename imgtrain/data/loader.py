"""Shard split -> decoded, augmented batches for one rank, in the position-addressable order.

Each sample's augmentation is seeded from (seed, epoch, sample index), so a sample looks the same
whichever worker or rank decodes it, and a resumed run draws exactly what it would have drawn.
Undecodable samples and samples without a label are dropped from their batch and counted.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from imgtrain.data.decode import decode_image, device_jpeg_frame, draft_factor
from imgtrain.data.device_decode import JpegCrop, pack
from imgtrain.data.order import TrainPlan, epoch_order, eval_positions
from imgtrain.data.tarindex import ShardReader, index_shard

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")


@dataclass
class Sample:
    image: torch.Tensor | JpegCrop  # JpegCrop: left for the training device to decode (device_decode.py)
    target: torch.Tensor
    index: int  # global sample index in the split (manifest order)


class BadSample(Exception):
    pass


class ShardSplit(Dataset):
    """Map-style view of one split; items are (epoch, sample index) pairs from a batch sampler."""

    def __init__(self, root: str | Path, manifest: dict, split: str, transform: Callable,
                 target_fn: Callable[[Optional[int], dict], torch.Tensor], *, seed: int, in_chans: int = 3,
                 task: str = "classification", mean=(0.5,), std=(0.5,), draft: Optional[int] = None,
                 defer_jpegs: bool = False):
        if split not in manifest["splits"]:
            raise ValueError(f"{root}/manifest.json has no split '{split}' (it has: {', '.join(manifest['splits'])})")
        info = manifest["splits"][split]
        self.root, self.split = Path(root), split
        self.shard_files = [s["file"] for s in info["shards"]]
        self.counts = [int(s["count"]) for s in info["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._reader: Optional[ShardReader] = None  # indexed on first use: a warm data.cache never reads a shard
        self.transform, self.target_fn = transform, target_fn
        self.seed, self.mode = seed, ("RGB" if in_chans == 3 else "L")
        self.task = task
        self.mean, self.std = tuple(mean), tuple(std)  # applied per batch on the device (Normalizer)
        self.draft = draft
        self.random_transform = True  # False: a deterministic transform, no per-sample seeding (data.cache's build)
        self.decode_to_array = getattr(transform, "takes_array", False)
        # data.decode_on=device: the fast crop path's JPEGs stay compressed; the transform draws their boxes
        self.defer_jpegs = defer_jpegs and self.decode_to_array and self.mode == "RGB"

    @property
    def reader(self) -> ShardReader:
        if self._reader is None:
            self._reader = ShardReader([index_shard(self.root / f) for f in self.shard_files])
        return self._reader

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        return shard, index - int(self.starts[shard])

    def __getitem__(self, item: tuple[int, int]):
        epoch, index = item
        try:
            return self._load(epoch, index)
        except BadSample as e:
            return ("bad", f"{self.split}:{index}: {e}")

    def _load(self, epoch: int, index: int) -> Sample:
        shard, pos = self.locate(index)
        got = self.reader.read(shard, pos)
        if got is None:
            raise BadSample(f"missing from damaged shard {self.shard_files[shard]}")
        key, members = got
        ext = next((e for e in IMAGE_EXTS if e in members), None)
        if ext is None:
            raise BadSample(f"sample {key} in {self.shard_files[shard]} has no image")
        try:
            meta = json.loads(members["json"]) if "json" in members else {}
            cls = int(members["cls"]) if "cls" in members else None
        except (ValueError, UnicodeDecodeError) as e:
            raise BadSample(f"sample {key} in {self.shard_files[shard]}: bad label ({e})") from None
        if self.task == "classification" and cls is None:
            raise BadSample(f"sample {key} in {self.shard_files[shard]} has no cls label")
        frame = device_jpeg_frame(members[ext]) if self.defer_jpegs else None
        if frame is not None:
            with _seeded(self.seed, epoch, index):
                # drawn on the size the workers would decode at (JPEG draft), then scaled to the full image:
                # the device crops the region the CPU path would, whichever decode_on a resumed run uses
                k = draft_factor(frame.width, frame.height, self.draft)
                top, left, h, w = self.transform.box(-(-frame.width // k), -(-frame.height // k))
                flip = self.transform.hflip > 0 and bool(torch.rand(1) < self.transform.hflip)
            top, left = top * k, left * k
            box = (top, left, min(h * k, frame.height - top), min(w * k, frame.width - left))
            return Sample(JpegCrop(members[ext], box, flip, (frame.width, frame.height)), self.target_fn(cls, meta),
                          index)
        try:
            img = decode_image(members[ext], self.mode, self.draft, self.decode_to_array)
        except Exception as e:  # PIL raises many types for broken files
            raise BadSample(f"sample {key} in {self.shard_files[shard]}: undecodable image ({e})") from None
        if self.random_transform:
            with _seeded(self.seed, epoch, index):
                image = self.transform(img)
        else:
            image = self.transform(img)
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(image)
        return Sample(image, self.target_fn(cls, meta), index)


_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64: a cheap, well-spread 64-bit hash (numpy's SeedSequence costs ~0.5 ms a sample)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class _seeded:
    """Seed python/numpy/torch RNGs for one sample; in the main process, restore them afterwards."""

    def __init__(self, seed: int, epoch: int, index: int):
        self.s = _mix(_mix(_mix(seed & _MASK) ^ (epoch & _MASK)) ^ (index & _MASK))
        self.restore = get_worker_info() is None

    def __enter__(self):
        if self.restore:
            self.saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        random.seed(self.s)
        np.random.seed(self.s >> 32)
        torch.default_generator.manual_seed(self.s)  # CPU transforms only; torch.manual_seed is slow

    def __exit__(self, *exc):
        if self.restore:
            random.setstate(self.saved[0])
            np.random.set_state(self.saved[1])
            torch.default_generator.set_state(self.saved[2])


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack; in a loader worker into shared memory, so the queue passes the batch without a copy."""
    out = None
    if get_worker_info() is not None:
        t = tensors[0]
        storage = t.untyped_storage()._new_shared(len(tensors) * t.numel() * t.element_size(), device=t.device)
        out = t.new(storage).resize_(len(tensors), *t.shape)
    return torch.stack(tensors, out=out)


def _stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    """Images that are CHW views of HWC arrays (the OpenCV crop path) are stacked as HWC, a plain copy,
    and the batch is returned as an NCHW view in channels_last layout; others are stacked as they are."""
    if images[0].dim() == 3 and all(im.permute(1, 2, 0).is_contiguous() and not im.is_contiguous() for im in images):
        return _stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)
    return _stack(images)


def collate(items) -> dict:
    good = [s for s in items if isinstance(s, Sample)]
    bad = [s[1] for s in items if not isinstance(s, Sample)]
    decoded = [s for s in good if not isinstance(s.image, JpegCrop)]
    deferred = [s for s in good if isinstance(s.image, JpegCrop)]
    good = decoded + deferred  # the device appends the deferred images after the decoded ones
    images = _stack_images([s.image for s in decoded]) if decoded else torch.zeros(0)
    targets = torch.stack([s.target for s in good]) if good else torch.zeros(0)
    batch = {"image": images, "target": targets, "index": torch.tensor([s.index for s in good], dtype=torch.long),
             "bad": bad}
    if deferred:
        batch["jpeg"] = pack([s.image for s in deferred])
    return batch


class TrainBatches:
    """Batch sampler over the rest of an epoch for one rank (see order.py)."""

    def __init__(self, order: np.ndarray, plan: TrainPlan, rank: int, epoch: int):
        self.order, self.plan, self.rank, self.epoch = order, plan, rank, epoch

    def __len__(self) -> int:
        return self.plan.steps

    def __iter__(self):
        for step in range(self.plan.steps):
            yield [(self.epoch, int(self.order[p])) for p in self.plan.rank_positions(self.rank, step)]


class EvalBatches:
    def __init__(self, total: int, rank: int, world: int, batch: int):
        self.positions = eval_positions(total, rank, world)
        self.batch = batch

    def __len__(self) -> int:
        return -(-len(self.positions) // self.batch)

    def __iter__(self):
        pos = list(self.positions)
        for i in range(0, len(pos), self.batch):
            yield [(0, p) for p in pos[i:i + self.batch]]


def _ignore_stop_signals(worker_id: int) -> None:
    """SLURM signals every process of a job step: the workers must not die before the trainer saves."""
    import signal
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


_reaper = []


def reap_workers_at_exit() -> None:
    """Kill this process's loader workers when it exits. Workers ignore SIGTERM (above), so multiprocessing's own
    exit handler, which terminates daemonic children with SIGTERM and then joins them, waited forever whenever
    the trainer left with a loader still alive: after any failure mid-epoch, the live iterator is held by the
    traceback. By then every checkpoint is written, so there is nothing left for a worker to do.
    atexit runs handlers last-registered-first: this runs before multiprocessing's."""
    if _reaper:
        return
    import atexit
    import multiprocessing

    def reap():
        import signal
        # torch's SIGCHLD handler reports a killed worker as an error: here that is the intent, not news
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()
    atexit.register(reap)
    _reaper.append(reap)


def make_loader(dataset: ShardSplit, batches, num_workers: int, pin_memory: bool = False) -> DataLoader:
    dataset.reader  # index the shards here, once: the workers inherit the index instead of each building its own
    if num_workers > 0:
        reap_workers_at_exit()
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers > 0 else None,
                      worker_init_fn=_ignore_stop_signals if num_workers > 0 else None)


def train_batches(dataset: ShardSplit, *, seed: int, epoch: int, buffer: int, batch: int, rank: int,
                  world: int, start: int = 0) -> TrainBatches:
    order = epoch_order(dataset.counts, seed=seed, epoch=epoch, buffer=buffer)
    return TrainBatches(order, TrainPlan(len(dataset), batch, world, start), rank, epoch)
