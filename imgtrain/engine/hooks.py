"""Seams for tests and tools: callables the engine calls at fixed points. Production runs pass none.

Tests inject them through tests/hooked_train.py (which builds them from the environment variables the
tests set); nothing under imgtrain/ reads a test variable.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass
class Hooks:
    # before a training micro-batch's forward: (rank, epoch, micro-batch number in the run = optimizer steps
    # done x trainer.grad_accum + position within the step, the batch dict)
    on_batch: Optional[Callable[[int, int, int, dict], None]] = None
    # after an optimizer step and its log line: (rank, optimizer steps done)
    on_step: Optional[Callable[[int, int], None]] = None
    # a checkpoint is written under its temporary name and not yet published: (that temporary path)
    on_checkpoint_temp: Optional[Callable[[Path], None]] = None
