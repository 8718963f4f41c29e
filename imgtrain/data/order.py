"""The sample order of an epoch, addressable by position, so that a run can resume mid-epoch exactly.

An epoch is one stream over the whole split: shards in an order drawn from (seed, epoch), then the
samples shuffled inside consecutive windows of `buffer` samples (what a WebDataset shuffle buffer does,
but reproducible and seekable). Global batch i is stream[i*G:(i+1)*G] with G = batch x world size, and
rank r takes its slice r of it: the same samples per step whatever the world size, which makes DDP
equal to one process with the same global batch, and lets a run resume at a sample position with
another world size without skipping or repeating a sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def epoch_order(counts: list[int], *, seed: int, epoch: int, buffer: int, shuffle: bool = True) -> np.ndarray:
    """Global sample indices (into the split's samples in manifest order) in this epoch's order."""
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    if not shuffle:
        return np.arange(int(sum(counts)), dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    shard_order = rng.permutation(len(counts))
    stream = np.concatenate([np.arange(starts[s], starts[s] + counts[s], dtype=np.int64) for s in shard_order]
                            or [np.zeros(0, np.int64)])
    if buffer > 1 and len(stream):
        window = np.arange(len(stream)) // buffer
        stream = stream[np.lexsort((rng.random(len(stream)), window))]
    return stream


def split_global_batch(global_batch: int, world: int, max_micro: int) -> tuple[int, int]:
    """(per-rank micro-batch, accumulation steps) that make `global_batch` samples per optimizer step on `world`
    ranks with micro-batches of at most `max_micro`: the fewest accumulation steps that divide the rank's share
    evenly (equal micro-batches, so the mean of their mean losses is the mean over the global batch)."""
    if global_batch % world:
        raise ValueError(f"data.global_batch={global_batch} is not divisible by the world size {world}: every rank "
                         f"must run the same number of samples per step (use {world} ranks that divide it, or a "
                         f"global batch that is a multiple of {world})")
    share = global_batch // world
    accum = next(a for a in range(-(-share // max_micro), share + 1) if share % a == 0)
    return share // accum, accum


def micro_batches(cfg, world: int) -> tuple[int, int]:
    """(per-rank micro-batch, accumulation steps) of a run on `world` ranks: from data.global_batch when set
    (the same global batches on any world size that divides it), else data.batch_size and trainer.grad_accum."""
    if cfg.data.global_batch is None:
        return cfg.data.batch_size, cfg.trainer.grad_accum
    return split_global_batch(cfg.data.global_batch, world, cfg.data.batch_size)


@dataclass(frozen=True)
class TrainPlan:
    """Which samples each rank gets in an epoch, from a global sample position on."""
    total: int  # samples in the split
    batch: int  # per rank
    world: int
    start: int = 0  # samples of this epoch already consumed (by all ranks together)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    @property
    def steps(self) -> int:
        """Batches every rank runs from `start` to the end of the epoch (equal on all ranks)."""
        return max(0, (self.total - self.start) // self.global_batch)

    @property
    def dropped(self) -> int:
        """Samples left at the end of the epoch that do not fill a global batch."""
        return max(0, self.total - self.start) - self.steps * self.global_batch

    def rank_positions(self, rank: int, step: int) -> range:
        """Stream positions of `rank`'s batch at `step` (counted from `start`)."""
        lo = self.start + step * self.global_batch + rank * self.batch
        return range(lo, lo + self.batch)


def eval_positions(total: int, rank: int, world: int) -> range:
    """Each sample exactly once across ranks (contiguous blocks; the last ranks may get one fewer)."""
    per, extra = divmod(total, world)
    lo = rank * per + min(rank, extra)
    return range(lo, lo + per + (1 if rank < extra else 0))
