"""Shared fixtures: the digits shard data set (packed once per session) and a training-run helper."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the real SLURM test clusters (one node with accounting, two nodes in network namespaces), started once
pytest_plugins = ["tests.cluster.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def run_cmd(cmd, *, env=None, timeout=600, check=True, cwd=ROOT):
    """Run a command with the project's Python; the output is kept for the assertion message."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::ResourceWarning", **(env or {}))
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
                             f"\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory) -> Path:
    """scikit-learn's real digits, upscaled to 16 px, as a shard data set (train/val/test)."""
    out = tmp_path_factory.mktemp("digits") / "digits16"
    run_cmd([PY, "-m", "shards", "pack", "digits", "-", out, "--upscale", "16", "--shard-size", "300"])
    return out


def train_cmd(config, *overrides, nproc=1):
    if nproc == 1:
        return [PY, ROOT / "jobs/train.py", "--config", config, *overrides]
    return [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            ROOT / "jobs/train.py", "--config", config, *overrides]


def pack_in_process(kind: str, src, out: Path, *options: str) -> Path:
    """`python -m shards pack KIND SRC OUT [options]` in this process (no interpreter start per data set)."""
    from shards.cli import main
    assert main(["pack", kind, str(src), str(out), *map(str, options)]) == 0
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that train tiny models in this process: on 2 shared cores, 2 torch threads ran tens of times
    slower than 1 (OpenMP oversubscription; the subprocess tests set OMP_NUM_THREADS=1 for the same reason)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
