"""The state of one run and what it returns: `TrainState` (saved in every checkpoint, DESIGN §4), the
log window's sums as checkpoints hold them, `RunResult` (trainer.run's answer) and seeding.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""
    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps done
    consumed: int = 0  # samples of the current epoch consumed by all ranks together
    best: Optional[float] = None
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations without improvement (early stopping)
    wall_s: float = 0.0  # training time over all attempts
    images: int = 0  # training images seen over all attempts
    skipped: int = 0  # undecodable training samples over all attempts
    epoch_loss_sum: float = 0.0  # this epoch's logged train losses, so a mid-epoch resume reports the same mean
    epoch_loss_n: int = 0
    # classification: this epoch's correct top-1 predictions on the training batches as they were trained
    # (training-mode outputs, all ranks) and the samples they were counted over -> train/acc1
    epoch_correct: float = 0.0
    epoch_samples: float = 0.0
    nonfinite: int = 0  # optimizer steps skipped for a non-finite loss (trainer.max_nonfinite_steps)


def _window_state(window: Optional[dict]) -> Optional[dict]:
    """A log window's running sums for a checkpoint (device tensors as CPU tensors, exact); None: no window."""
    if window is None:
        return None
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in window.items() if k != "t"}


def _window_from_state(saved: Optional[dict], device: torch.device) -> Optional[dict]:
    if saved is None:
        return None
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in saved.items()}


def regroup_windows(saved: list, accum_before: int, accum_now: int, rank: int) -> Optional[dict]:
    """This rank's share of the log windows saved by another world size: the same mean loss over the same
    steps (every new rank holds it; the log line averages over ranks), the summed counts on rank 0 only."""
    saved = [w for w in saved if w]
    if not saved or not any(float(w["n"]) for w in saved):
        return None
    losses = [float(w["loss"]) / float(w["n"]) for w in saved if float(w["n"])]
    steps = float(saved[0]["n"]) / accum_before
    n = steps * accum_now
    total = {k: sum(float(w[k]) for w in saved) for k in ("images", "bad", "correct")}
    return {"loss": sum(losses) / len(losses) * n, "n": n,
            **{k: (int(v) if k != "correct" else v) if rank == 0 else 0 for k, v in total.items()}}


@dataclass
class RunResult:
    run_dir: Path
    status: str  # runs.DONE | runs.STOPPED (exit REQUEUE_EXIT_CODE)
    exit_code: int
    metrics: dict = field(default_factory=dict)
    stopped_by: str = ""  # STOPPED: "signal" (requeue me) or "pause" (trainer.stop_after_epochs reached)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
