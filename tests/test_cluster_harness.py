"""The SLURM test harness (tests/cluster/) runs a real cluster: these tests
prove that sbatch, srun, arrays, requeue, signals, sacct, submitit and two
"hosts" all work on it, and lint the repository's shell scripts."""
import operator
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Registers the session fixtures slurm_cluster and slurm_multinode (harmless if
# tests/conftest.py registers them too).
pytest_plugins = ["tests.cluster.fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def wait_for_text(path: Path, pattern: str, timeout: float = 30) -> str:
    """Poll a job's output file until ``pattern`` (a regex) appears in it."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} not in {path} after {timeout}s; it holds: {text!r}")


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/bash\n" + body)
    return path


# ------------------------------------------------------------ one node
@pytest.mark.slow
def test_sbatch_wrap_completes_in_sacct(slurm_cluster, tmp_path):
    out = tmp_path / "out-%j.txt"
    job = slurm_cluster.sbatch(f"--output={out}", wrap='echo "hello from $SLURM_JOB_ID"')
    assert slurm_cluster.wait_job(job, source="sacct", timeout=30) == "COMPLETED"
    assert (tmp_path / f"out-{job}.txt").read_text() == f"hello from {job}\n"


@pytest.mark.slow
def test_srun_two_tasks(slurm_cluster):
    proc = slurm_cluster.run(["srun", f"--partition={slurm_cluster.partition}", "-n2",
                              "bash", "-c", 'echo "task $SLURM_PROCID of $SLURM_NTASKS"'])
    assert sorted(proc.stdout.splitlines()) == ["task 0 of 2", "task 1 of 2"]


@pytest.mark.slow
def test_array_runs_all_tasks(slurm_cluster, tmp_path):
    job = slurm_cluster.sbatch("--array=0-3", f"--output={tmp_path}/a-%A_%a.txt",
                               wrap='echo "index $SLURM_ARRAY_TASK_ID"')
    assert slurm_cluster.wait_job(job, timeout=40) == "COMPLETED"
    assert slurm_cluster.wait_job(job, source="sacct", timeout=20) == "COMPLETED"
    assert len(slurm_cluster.sacct_states(job)) == 4
    outputs = sorted((tmp_path / f"a-{job}_{i}.txt").read_text() for i in range(4))
    assert outputs == [f"index {i}\n" for i in range(4)]


@pytest.mark.slow
def test_requeue_of_running_job_runs_it_again(slurm_cluster, tmp_path):
    out = tmp_path / "requeue.txt"
    script = write_script(tmp_path / "requeue.sh", """
echo "run restart=${SLURM_RESTART_COUNT:-0}"
# the requeue kills sleep, possibly before the shell itself: stop here then
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then sleep 300 || exit 1; fi
echo "done restart=${SLURM_RESTART_COUNT:-0}"
""")
    err = tmp_path / "requeue.err"
    job = slurm_cluster.sbatch("--requeue", "--open-mode=append", f"--output={out}", f"--error={err}",
                               script=script)
    wait_for_text(out, r"run restart=0")
    requeued_at = time.monotonic()
    slurm_cluster.run(["scontrol", "requeue", str(job)])
    text = wait_for_text(out, r"done restart=1", timeout=25)
    elapsed = time.monotonic() - requeued_at
    assert slurm_cluster.wait_job(job, timeout=10) == "COMPLETED"
    assert text.splitlines() == ["run restart=0", "run restart=1", "done restart=1"], text
    assert "DUE TO JOB REQUEUE" in err.read_text()
    assert elapsed < 20, f"the requeued job took {elapsed:.1f}s to run again (cred_expire/sched_interval?)"


@pytest.mark.slow
def test_scancel_signal_reaches_batch_trap(slurm_cluster, tmp_path):
    out = tmp_path / "signal.txt"
    script = write_script(tmp_path / "signal.sh", """
trap 'echo "got USR1"; kill "$child"; exit 0' USR1
sleep 300 & child=$!
echo ready
wait "$child"
echo "no signal"
""")
    job = slurm_cluster.sbatch(f"--output={out}", script=script)
    wait_for_text(out, "ready")
    slurm_cluster.run(["scancel", "--signal=USR1", "--batch", str(job)])
    assert slurm_cluster.wait_job(job, timeout=20) == "COMPLETED"
    assert out.read_text().splitlines() == ["ready", "got USR1"]


def submitit_executor(cluster, folder):
    submitit = pytest.importorskip("submitit")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(slurm_partition=cluster.partition, timeout_min=5, cpus_per_task=1)
    return executor


def call_with_deadline(fn, timeout):
    """fn() in a daemon thread: returns its result or re-raises its exception;
    fails the test if it has not returned after ``timeout`` s (a hang)."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{fn} still running after {timeout}s (hangs)")
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.slow
def test_submitit_job_returns_result(slurm_cluster, tmp_path, monkeypatch):
    slurm_cluster.activate(monkeypatch)
    # a fresh folder per test: job ids restart at 1 on a fresh cluster, and a
    # reused folder would hand back a stale result.pkl
    executor = submitit_executor(slurm_cluster, tmp_path / "submitit")
    job = executor.submit(operator.mul, 6, 7)
    assert call_with_deadline(job.result, 60) == 42
    # accounting: submitit sees the real state instead of UNKNOWN
    deadline = time.monotonic() + 30
    while job.state != "COMPLETED" and time.monotonic() < deadline:
        time.sleep(1)
    assert job.state == "COMPLETED"


@pytest.mark.slow
def test_cancelled_submitit_job_raises(slurm_cluster, tmp_path, monkeypatch):
    submitit = pytest.importorskip("submitit")
    slurm_cluster.activate(monkeypatch)
    executor = submitit_executor(slurm_cluster, tmp_path / "submitit")
    job = executor.submit(time.sleep, 300)
    slurm_cluster.wait_job(job.job_id, states={"RUNNING"}, timeout=30)
    job.cancel(check=True)
    with pytest.raises(submitit.core.utils.UncompletedJobError, match="CANCELLED"):
        call_with_deadline(job.result, 60)


# ------------------------------------------------------------ two nodes
@pytest.mark.slow
def test_multinode_srun_spans_both_nodes(slurm_multinode):
    proc = slurm_multinode.run(["srun", f"--partition={slurm_multinode.partition}",
                                "-N2", "-n2", "hostname"])
    assert sorted(proc.stdout.split()) == ["node1", "node2"]


RENDEZVOUS = r"""
import os, socket, time
rank, host = int(os.environ["SLURM_PROCID"]), socket.gethostname()
if rank == 0:
    server = socket.create_server(("0.0.0.0", 29500))
    conn, (addr, _) = server.accept()
    print(f"rank0 on {host} got '{conn.recv(100).decode()}' from {addr}", flush=True)
else:
    for _ in range(100):  # until rank 0 listens
        try:
            conn = socket.create_connection(("node1", 29500), timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    conn.sendall(f"hello from {host}".encode())
    print(f"rank1 on {host} sent", flush=True)
"""


@pytest.mark.slow
def test_multinode_tcp_rendezvous(slurm_multinode, tmp_path):
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS)
    out = tmp_path / "rendezvous.txt"
    script = write_script(tmp_path / "rendezvous.sh",
                          f"srun {sys.executable} {tmp_path / 'rendezvous.py'}\n")
    job = slurm_multinode.sbatch("-N2", "--ntasks-per-node=1", f"--output={out}", script=script)
    assert slurm_multinode.wait_job(job, timeout=40) == "COMPLETED", out.read_text()
    lines = sorted(out.read_text().splitlines())
    assert len(lines) == 2 and lines[1] == "rank1 on node2 sent", lines
    assert re.fullmatch(r"rank0 on node1 got 'hello from node2' from 10\.77\.\d+\.12", lines[0]), lines


# ------------------------------------------------------------ shell lint
def shell_scripts():
    return sorted(p for d in ("tests/cluster", "slurm") for pattern in ("*.sh", "*.sbatch")
                  for p in (ROOT / d).rglob(pattern))


def ensure_shellcheck():
    if shutil.which("shellcheck"):
        return shutil.which("shellcheck")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("shellcheck is not installed and cannot be (apt-get needs root)")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "-o", "DPkg::Lock::Timeout=300",
                           "--no-install-recommends", "shellcheck"], capture_output=True, text=True,
                          env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), timeout=300)
    if proc.returncode != 0 or not shutil.which("shellcheck"):
        pytest.skip(f"shellcheck could not be installed with apt-get (exit {proc.returncode})")
    return shutil.which("shellcheck")


def test_shell_scripts_parse_and_pass_shellcheck():
    scripts = shell_scripts()
    assert ROOT / "tests/cluster/slurm_local.sh" in scripts
    for script in scripts:
        proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
        assert proc.returncode == 0, f"bash -n {script}:\n{proc.stderr}"
    shellcheck = ensure_shellcheck()
    proc = subprocess.run([shellcheck, "-x", *scripts], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
