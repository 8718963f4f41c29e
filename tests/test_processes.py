"""Processes end when they should (issue 20): a local sweep stops on Ctrl-C/SIGTERM with cells still queued, a
second signal kills its cells; children die with a parent killed with -9 (sweep cells, pack workers)."""
import os
import signal
import subprocess
import time

import psutil
import pytest
import yaml

from conftest import PY, ROOT
from imgtrain.logs import read_run

CFG = ROOT / "tests/configs/tiny_digits.yaml"


def _spec(tmp_path, data, epochs=5000):  # long: every test stops or kills the cell
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({"name": "sig", "config": str(CFG), "grid": {"optim.lr": [0.01, 0.02, 0.03]},
                                    "overrides": {"data.path": str(data), "trainer.epochs": epochs,
                                                  "data.batch_size": 64}}))
    return path


def _start_sweep(tmp_path, data):
    out = open(tmp_path / "sweep.out", "w")
    proc = subprocess.Popen([PY, ROOT / "jobs/sweep.py", _spec(tmp_path, data), "--executor", "local",
                             "--parallel", "1", "--no-preflight", "--root", tmp_path / "root"],
                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    return proc


def _cell_process(proc, timeout=120):
    """The running cell's training process (a child of the driver), once it has trained a step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        cells = [c for c in psutil.Process(proc.pid).children() if "jobs/train.py" in " ".join(c.cmdline())]
        if cells:
            return cells[0]
        assert proc.poll() is None, "the sweep driver exited before starting a cell"
        time.sleep(0.2)
    raise AssertionError("no cell started")


def _wait_for_progress(root, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(root.glob("runs/*/checkpoints")) or any(root.glob("runs/*/metrics*")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no run under {root} made progress")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_local_sweep_stops_on_a_signal_with_cells_queued(digits_shards, tmp_path, sig):
    proc = _start_sweep(tmp_path, digits_shards)
    cell = _cell_process(proc)
    _wait_for_progress(tmp_path / "root")
    time.sleep(2)  # past the trainer's start-up: it has a signal handler now
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=120)  # before: waited forever on the two queued cells
    out = (tmp_path / "sweep.out").read_text()
    assert "2 queued cell(s) are not started" in out and f"stopped by {sig.name}" in out, out
    assert not cell.is_running()
    runs = [d for d in (tmp_path / "root/runs").iterdir()]
    assert len(runs) == 1  # the queued cells never started
    assert read_run(runs[0])["attempts"][-1]["status"] == "STOPPED", out  # the cell stopped cleanly
    assert rc in (0, 1, 75), out


@pytest.mark.slow
def test_a_second_signal_kills_the_running_cells(digits_shards, tmp_path):
    proc = _start_sweep(tmp_path, digits_shards)
    cell = _cell_process(proc)
    _wait_for_progress(tmp_path / "root")
    time.sleep(2)  # the trainer handles SIGTERM now (before, SIGTERM would simply end it)
    cell.suspend()  # a cell that cannot act on the first signal (stuck in I/O, say)
    os.kill(proc.pid, signal.SIGINT)
    time.sleep(1)
    assert proc.poll() is None  # still waiting for the cell to stop cleanly
    os.kill(proc.pid, signal.SIGINT)
    proc.wait(timeout=60)
    out = (tmp_path / "sweep.out").read_text()
    assert "SIGINT again: killing 1 running cell(s)" in out, out
    psutil.wait_procs([cell], timeout=30)
    assert not cell.is_running()


@pytest.mark.slow
def test_a_sweep_driver_killed_with_9_takes_its_cells_along(digits_shards, tmp_path):
    proc = _start_sweep(tmp_path, digits_shards)
    cell = _cell_process(proc)
    _wait_for_progress(tmp_path / "root")
    time.sleep(2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs([cell], timeout=60)  # before: it trained on to the end
    assert not alive
    runs = [d for d in (tmp_path / "root/runs").iterdir()]
    assert read_run(runs[0])["attempts"][-1]["status"] == "STOPPED"  # SIGTERM: it saved and stopped


@pytest.mark.slow
def test_pack_workers_die_with_a_parent_killed_with_9(tmp_path):
    proc = subprocess.Popen([PY, "-m", "shards", "pack", "digits", "-", tmp_path / "out", "--upscale", "192",
                             "--shard-size", "10", "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 60
    workers = []
    while time.time() < deadline and len(workers) < 2:
        workers = psutil.Process(proc.pid).children()
        time.sleep(0.1)
    assert len(workers) == 2, "the pool did not start"
    assert proc.poll() is None, "the pack finished before it could be killed: give it more work"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=20)  # before: they finished every shard, then waited forever
    assert not alive
    assert not list((tmp_path / "out").glob("*.tar")) or all(
        not p.name.startswith(".") for p in (tmp_path / "out").glob("*.tar"))


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["none", "memory"])
def test_a_failure_mid_epoch_with_loader_workers_exits(digits_shards, tmp_path, cache):
    """Too many bad samples stop the run; with loader workers the process used to print the error, write FAILED
    and then wait forever on its workers (they ignore SIGTERM so SLURM's signal cannot kill them mid-save)."""
    import shutil
    data = tmp_path / "data"
    shutil.copytree(digits_shards, data)
    shard = data / "train-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped byte: the shard's tail is unreadable
    shard.write_bytes(bytes(raw))
    t0 = time.time()
    proc = subprocess.run([PY, ROOT / "jobs/train.py", "--config", CFG, f"data.path={data}", "trainer.epochs=1",
                           f"output.root={tmp_path}", "output.run=r", "data.num_workers=2", f"data.cache={cache}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmp_path / "scratch")})
    assert proc.returncode == 1 and time.time() - t0 < 100, proc.stderr[-2000:]
    assert "exceed data.max_bad_fraction" in (tmp_path / "runs/r/FAILED").read_text()


@pytest.mark.slow
def test_two_processes_on_one_run_the_second_stops_naming_the_first(digits_shards, tmp_path):
    """Before: both trained to the end, run.json recorded one attempt and their metric rows mixed."""
    cmd = [PY, ROOT / "jobs/train.py", "--config", CFG, f"data.path={digits_shards}", "trainer.epochs=200",
           f"output.root={tmp_path}", "output.run=r"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "runs/r/LOCK").exists() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second started: make it longer"
    first.send_signal(signal.SIGTERM)  # then the first stops cleanly: its own attempt, nobody else's rows
    out, err = first.communicate(timeout=120)
    assert first.returncode == 75, err[-2000:]
    assert second.returncode == 1 and "run r is in use by another process" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    from imgtrain.logs import read_run
    assert [a["status"] for a in read_run(tmp_path / "runs/r")["attempts"]] == ["STOPPED"]
    assert not (tmp_path / "runs/r/FAILED").exists() and not (tmp_path / "runs/r/LOCK").exists()


@pytest.mark.multiproc
@pytest.mark.slow
def test_ranks_die_with_a_torchrun_launcher_killed_with_9_and_the_run_resumes(digits_shards, tmp_path):
    """Before: the ranks trained on without their agent (and would now hold the run's lock)."""
    args = ["--config", CFG, f"data.path={digits_shards}", "trainer.epochs=200", f"output.root={tmp_path}",
            "output.run=r", "data.batch_size=8", "trainer.ckpt_every_steps=20"]
    launcher = subprocess.Popen([PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                 ROOT / "jobs/train.py", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while not (tmp_path / "runs/r/checkpoints/last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "runs/r/checkpoints/last.pt").exists()
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True) if "jobs/train.py" in
             " ".join(p.cmdline())]
    assert len(ranks) == 2
    os.kill(launcher.pid, signal.SIGKILL)
    launcher.wait()
    gone, alive = psutil.wait_procs(ranks, timeout=30)
    assert not alive
    # the next start takes the dead rank 0's lock over and resumes
    proc = subprocess.run([PY, ROOT / "jobs/train.py", *args, "trainer.stop_after_epochs=1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr[-2000:]  # stopped after its first epoch, as asked
    assert "taking over the lock of run r" in proc.stdout and "resumed r" in proc.stdout, proc.stdout[-2000:]
