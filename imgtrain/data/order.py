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
