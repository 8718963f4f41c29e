"""Shared fixtures: the digits shard data set (packed once per session) and a training-run helper."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# the real SLURM test clusters (one node with accounting, two nodes in network namespaces), started once
pytest_plugins = ["tests.cluster.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


# ------------------------------------------------------------------ test tiers (issue 19)
# `make test` runs everything; `make test-fast` leaves out the markers below (and `slow`). They are set here
# where a rule can tell, so that a new test is classified without anyone remembering:
#   cluster    uses the slurm_cluster or slurm_multinode fixture, directly or through another fixture
#   harness    a cluster test in a module that checks the harness (tests/cluster/) itself, not imgtrain
#   multiproc  parametrized with nproc > 1; elsewhere a decorator, which run_cmd/train_cmd enforce: a test
#              that starts torchrun with more than one process without the marker fails saying so
CLUSTER_FIXTURES = frozenset({"slurm_cluster", "slurm_multinode"})
HARNESS_MODULES = frozenset({"test_cluster_harness.py"})
# set for each test before its fixtures (an environment variable: test_analysis imports this file a second
# time as tests.conftest, with globals of its own)
MULTIPROC_ENV = "IMGTRAIN_TEST_MULTIPROC_MARKED"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
            if item.path.name in HARNESS_MODULES:
                item.add_marker(pytest.mark.harness)
        nproc = getattr(getattr(item, "callspec", None), "params", {}).get("nproc")
        if isinstance(nproc, int) and nproc > 1:
            item.add_marker(pytest.mark.multiproc)


@pytest.hookimpl(tryfirst=True)  # before the item's fixtures are set up
def pytest_runtest_setup(item):
    os.environ[MULTIPROC_ENV] = "1" if item.get_closest_marker("multiproc") else "0"


def check_multiproc_marker(cmd) -> None:
    """Fail a test that launches torchrun with several processes unless it is marked multiproc."""
    args = [str(c) for c in cmd]
    if os.environ.get(MULTIPROC_ENV) != "0" or not any(a == "torch.distributed.run" or a.endswith("torchrun")
                                                       for a in args):
        return
    nproc = next((int(m.group(1)) for a in args if (m := re.fullmatch(r"--nproc[_-]per[_-]node=(\d+)", a))), 1)
    if nproc > 1:
        pytest.fail(f"{os.environ.get('PYTEST_CURRENT_TEST', 'this test').split(' ')[0]} starts torchrun with "
                    f"{nproc} processes but is not marked: add @pytest.mark.multiproc (make test-fast leaves "
                    "those out)", pytrace=False)


def run_cmd(cmd, *, env=None, timeout=600, check=True, cwd=ROOT):
    """Run a command with the project's Python; the output is kept for the assertion message."""
    check_multiproc_marker(cmd)
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::ResourceWarning", **(env or {}))
    full_env.pop(MULTIPROC_ENV, None)
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
    """jobs/train.py's command line, through tests/hooked_train.py: the IMGTRAIN_TEST_* variables a test sets
    become the engine's hooks (imgtrain.engine.hooks)."""
    if nproc == 1:
        return [PY, ROOT / "tests/hooked_train.py", "--config", config, *overrides]
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           ROOT / "tests/hooked_train.py", "--config", config, *overrides]
    check_multiproc_marker(cmd)
    return cmd


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
