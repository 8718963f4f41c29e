"""Atomic checkpoints (DESIGN §4): temp file + fsync + rename; last/best/top-k; fallback on load.

`last.pt` is replaced in two renames (old last -> last.prev.pt, temp -> last.pt), so whatever moment a
kill lands, one whole checkpoint remains. Loading tries last, then prev, and says why it skipped one;
`resume_newest` is that rule for every strategy (DeepSpeed's tags too).
"""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from imgtrain.logs.atomic import fsync_dir, temp_path

LAST, PREV, BEST = "last.pt", "last.prev.pt", "best.pt"


class RunError(RuntimeError):
    """A run cannot go on for a reason its message states in full (changed data, a diverged loss, ...): the
    command line prints the message without a traceback (the FAILED file keeps it) and exits 1."""


class CheckpointError(RunError):
    pass


def atomic_save(obj, path: Path, on_temp: Optional[Callable[[Path], None]] = None) -> None:
    """`on_temp(temp path)` is called once the temporary file is complete, before the rename (a test seam)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if on_temp is not None:
            on_temp(tmp)
        os.replace(tmp, path)
    except BaseException:  # a full disk (ENOSPC, EFBIG), a signal: no half-written file is left behind
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class Unusable(Exception):
    """A checkpoint candidate that cannot be resumed from; the message says why."""


def resume_newest(directory: Path, names: Iterable[str], load: Callable[[str], Optional[dict]],
                  kind: str = "checkpoint") -> Optional[dict]:
    """The state of the first of `names` (newest first) that `load(name)` returns; `load` returns None for
    one that is not there and raises Unusable for one that is there but cannot be used. None only when no
    candidate is there at all: a present but unusable set is an error (a run never silently starts from
    scratch over existing progress), and each skipped one is a warning."""
    problems = []
    for name in names:
        try:
            state = load(name)
        except Unusable as e:
            problems.append(f"{name}: {e}")
            continue
        if state is None:
            continue
        for p in problems:
            warnings.warn(f"skipped {kind} {directory}/{p}; resuming from {name}")
        return state
    if problems:
        raise CheckpointError(f"no usable {kind} in {directory}, refusing to start over existing progress:\n  "
                              + "\n  ".join(problems)
                              + "\nmove the directory away (or set output.run=NEW_ID) to start a fresh run")
    return None


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": _np_state_to_torch(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    np.random.set_state(_np_state_from_torch(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _np_state_to_torch(s):  # weights_only loading accepts tensors, not numpy arrays
    return [s[0], torch.from_numpy(s[1].astype(np.int64)), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_torch(s):
    return (s[0], s[1].numpy().astype(np.uint32), s[2], s[3], s[4])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class Checkpointer:
    def __init__(self, directory: Path, keep_top_k: int = 0, mode: str = "max",
                 on_temp: Optional[Callable[[Path], None]] = None):
        self.dir = Path(directory)
        self.keep_top_k, self.mode, self.on_temp = keep_top_k, mode, on_temp

    def save_last(self, state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{LAST}.new"
        atomic_save(state, tmp, self.on_temp)
        if (self.dir / LAST).exists():
            os.replace(self.dir / LAST, self.dir / PREV)
        os.replace(tmp, self.dir / LAST)
        fsync_dir(self.dir)
        return self.dir / LAST

    def save_best(self, state: dict) -> Path:
        atomic_save(state, self.dir / BEST, self.on_temp)
        return self.dir / BEST

    def save_top_k(self, state: dict, epoch: int, value: float) -> None:
        if self.keep_top_k <= 0:
            return
        atomic_save(state, self.dir / f"top-e{epoch:04d}-{value:.6g}.pt", self.on_temp)
        entries = []
        for p in self.dir.glob("top-e*.pt"):
            try:
                entries.append((float(p.stem.split("-", 2)[2]), p))
            except ValueError:
                continue
        entries.sort(key=lambda e: e[0], reverse=self.mode == "max")
        for _, p in entries[self.keep_top_k:]:
            p.unlink(missing_ok=True)

    def has_any(self) -> bool:
        return any((self.dir / n).exists() for n in (LAST, PREV, f".{LAST}.new"))

    def load_resume(self, config_hash: str, check_model) -> Optional[dict]:
        """The newest checkpoint that loads and matches; None only when no checkpoint was ever written.

        `check_model(state)` raises on a model mismatch. A present but unusable set of checkpoints is an
        error: a run never silently starts from scratch over existing progress.
        """
        def load(name: str) -> Optional[dict]:
            path = self.dir / name
            if not path.exists():
                return None
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # truncated or not a checkpoint at all
                raise Unusable(f"unreadable ({type(e).__name__}: {str(e)[:200]})") from None
            if state.get("config_hash") != config_hash:
                raise Unusable(f"config hash {state.get('config_hash')} != this run's {config_hash}")
            try:
                check_model(state)
            except Exception as e:
                raise Unusable(f"does not fit the model ({str(e)[:300]})") from None
            return state

        return resume_newest(self.dir, (LAST, f".{LAST}.new", PREV), load)
