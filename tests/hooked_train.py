#!/usr/bin/env python
"""jobs/train.py with the tests' seams (imgtrain.engine.hooks.Hooks), built from environment variables.

conftest.train_cmd runs this instead of jobs/train.py; without any of the variables below it is
jobs/train.py. The variables are read here only (imgtrain itself reads none of them):

  IMGTRAIN_TEST_SIGNAL_AT_STEP=N    rank 0 sends itself SIGUSR1 after optimizer step N
  IMGTRAIN_TEST_SIGNAL_AT_MICRO=M   ... before micro-batch M of the run (steps done x grad_accum + position)
  IMGTRAIN_TEST_TRACE_SAMPLES=PATH  each rank appends "epoch index index ..." per micro-batch to PATH.rankR
  IMGTRAIN_TEST_PAUSE_IN_SAVE=FLAG  at checkpoint write number IMGTRAIN_TEST_PAUSE_AT_SAVE (default 1), once
                                    the temporary file is complete: write its name to FLAG and wait (120 s at
                                    most) until the test deletes FLAG (or kills the process)
"""
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imgtrain.engine.hooks import Hooks  # noqa: E402  (no torch)
from imgtrain.engine.signals import catch_early  # noqa: E402


def pause_in_save(flag: str, at_save: int):
    """on_checkpoint_temp: pause at the at_save-th checkpoint write of this process."""
    saves = 0

    def hook(tmp: Path) -> None:
        nonlocal saves
        saves += 1
        if saves != at_save:
            return
        Path(flag).write_text(str(tmp))
        deadline = time.time() + 120
        while Path(flag).exists() and time.time() < deadline:
            time.sleep(0.05)
    return hook


def hooks_from_env(env=os.environ) -> Hooks:
    stop_at_step = int(env.get("IMGTRAIN_TEST_SIGNAL_AT_STEP", "-1"))
    stop_at_micro = int(env.get("IMGTRAIN_TEST_SIGNAL_AT_MICRO", "-1"))
    trace = env.get("IMGTRAIN_TEST_TRACE_SAMPLES")
    flag = env.get("IMGTRAIN_TEST_PAUSE_IN_SAVE")

    def on_batch(rank: int, epoch: int, micro: int, batch: dict) -> None:
        if trace:  # which samples this rank trained on
            with open(f"{trace}.rank{rank}", "a") as f:
                f.write(f"{epoch} {' '.join(map(str, batch['index'].tolist()))}\n")
        if micro == stop_at_micro and rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)

    def on_step(rank: int, step: int) -> None:
        if step == stop_at_step and rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)

    return Hooks(on_batch=on_batch if trace or stop_at_micro >= 0 else None,
                 on_step=on_step if stop_at_step >= 0 else None,
                 on_checkpoint_temp=pause_in_save(flag, int(env.get("IMGTRAIN_TEST_PAUSE_AT_SAVE", "1")))
                 if flag else None)


if __name__ == "__main__":
    catch_early()  # as jobs/train.py: before the heavy imports
    from imgtrain.engine.cli import main
    sys.exit(main(hooks=hooks_from_env()))
