#!/usr/bin/env python
"""`python -m shards` with the tests' seam into the shard writer, built from an environment variable.

    IMGTRAIN_TEST_STALL_SHARD=train-000003.tar   stall (one hour: the test kills or stops the process) half-way
                                                 through that shard, once its first half is in the temporary file;
                                                 only in the first attempt of a SLURM job (SLURM_RESTART_COUNT
                                                 unset or 0), so a requeued pack finishes

Without the variable it is `python -m shards`. Tests run it directly, and through slurm/launch.sh --pack with
IMGTRAIN_PACK_ENTRY=tests/hooked_pack.py. shards itself reads no such variable.
"""
import os
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shards.cli import main  # noqa: E402

STALL_ENV = "IMGTRAIN_TEST_STALL_SHARD"


def stall_half_way(shard: str, spec, i: int) -> None:
    """before_sample: a module-level function (bound with partial), so the pack's worker pool can pickle it."""
    if spec.file == shard and i == len(spec.samples) // 2:
        time.sleep(3600)  # the test kills or stops us here


if __name__ == "__main__":
    shard = os.environ.get(STALL_ENV)
    first_attempt = os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0")
    sys.exit(main(sys.argv[1:], before_sample=partial(stall_half_way, shard) if shard and first_attempt else None))
