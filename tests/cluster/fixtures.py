"""Session-scoped pytest fixtures that run a real SLURM 22.05 cluster.

``slurm_cluster``
    One node (``localhost``, 4 CPUs oversubscribed on the real cores) on
    127.0.0.1 with accounting (MariaDB + slurmdbd), so ``sacct`` works and
    submitit sees job states.  Started by ``slurm_local.sh``.
``slurm_multinode``
    Two nodes, ``node1`` and ``node2``, each slurmd in its own network
    namespace, slurmctld in a third; no accounting.  Client commands must run
    in the controller's namespace, which ``.run`` does for you.  Started by
    ``slurm_netns.sh``.

Both yield a :class:`SlurmCluster` and are torn down (``stop --purge``: jobs
cancelled, daemons stopped, namespaces and state deleted) at the end of the
session.  A cluster already running in the same directory (a crashed session,
or one started by hand) is reused, and stopped at the end all the same.

When a cluster cannot be started (not root, apt-get impossible, no cgroup fs,
port taken, ...) the fixture skips with one line saying why, unless
``IMGTRAIN_REQUIRE_SLURM=1``, which turns that into an error.  Set
``IMGTRAIN_SLURM_KEEP=1`` to leave the clusters running after the session
(for debugging; stop them with ``tests/cluster/slurm_local.sh stop --purge``).

Hook them in from ``tests/conftest.py`` with either::

    pytest_plugins = ["tests.cluster.fixtures"]
    # or
    from tests.cluster.fixtures import slurm_cluster, slurm_multinode  # noqa: F401

Not made for pytest-xdist: every worker would share (and stop) one cluster.
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import pytest

HERE = Path(__file__).resolve().parent
LOCAL_SCRIPT = HERE / "slurm_local.sh"
NETNS_SCRIPT = HERE / "slurm_netns.sh"

REQUIRE_ENV = "IMGTRAIN_REQUIRE_SLURM"
KEEP_ENV = "IMGTRAIN_SLURM_KEEP"
UNAVAILABLE_RC = 3  # the scripts' "a prerequisite is missing" exit status

#: states after which a job never changes again
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
})

# Start needs an apt-get install the first time (~15-60 s); stays under
# pytest-timeout's 600 s so a stuck install says so itself.
START_TIMEOUT_S = 540
STOP_TIMEOUT_S = 120


class SlurmCommandError(RuntimeError):
    """A client command (sbatch, squeue, ...) exited non-zero."""

    def __init__(self, argv: Sequence[str], proc: subprocess.CompletedProcess):
        self.argv, self.proc = list(argv), proc
        super().__init__(f"{' '.join(map(str, argv))} exited {proc.returncode}\n"
                         f"stdout: {proc.stdout}\nstderr: {proc.stderr}")


def base_client_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` without the variables of any SLURM job we might run inside
    (e.g. CI in a real allocation): an inherited SLURM_JOB_ID would make srun
    try to start a step in that job."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not k.startswith("SLURM_")}


class SlurmCluster:
    """A running test cluster and helpers to use it.

    Attributes:
        dir: its private directory (config, state, logs under ``log/``).
        conf: path of its slurm.conf.
        partition: the partition to submit to (``debug``).
        nodes: node names (``["localhost"]`` or ``["node1", "node2"]``).
        accounting: whether ``sacct`` works.
        netns: path of the controller's network namespace (multinode), or None.
        env: the variables a client needs (SLURM_CONF, PATH with /usr/sbin);
            merge them into ``os.environ`` (see :meth:`client_env`).
    """

    def __init__(self, *, script: Path, dir: Path, partition: str, nodes: list[str],
                 accounting: bool, netns: str | None = None):
        self.script = script
        self.dir = Path(dir)
        self.conf = self.dir / "etc" / "slurm.conf"
        self.partition = partition
        self.nodes = nodes
        self.accounting = accounting
        self.netns = netns
        path = os.environ.get("PATH", "/usr/bin:/bin")
        self.env: dict[str, str] = {"SLURM_CONF": str(self.conf), "PATH": f"/usr/sbin:/sbin:{path}"}

    def __repr__(self) -> str:
        return f"SlurmCluster(dir={str(self.dir)!r}, nodes={self.nodes}, netns={self.netns!r})"

    # ----------------------------------------------------------- commands
    def client_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The full environment for a client command: os.environ without
        inherited SLURM_* variables, plus :attr:`env` and ``extra``."""
        env = base_client_env()
        env.update(self.env)
        env.update(extra or {})
        return env

    def argv(self, cmd: str | Sequence[str | os.PathLike]) -> list[str]:
        """``cmd`` as an argv, a string being run by ``bash -c``; in the
        multinode cluster prefixed to run in the controller's namespace
        (``nsenter --net=``, not ``ip netns exec``, which remounts /sys)."""
        argv = ["bash", "-c", cmd] if isinstance(cmd, str) else [os.fspath(a) for a in cmd]
        if self.netns:
            argv = ["nsenter", f"--net={self.netns}", *argv]
        return argv

    def run(self, cmd: str | Sequence[str | os.PathLike], *, check: bool = True,
            timeout: float = 60, env: Mapping[str, str] | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run a client command (``["srun", "-n2", "hostname"]`` or a shell
        string) against this cluster; returns the CompletedProcess with text
        stdout/stderr.  ``check`` raises :class:`SlurmCommandError` on a
        non-zero exit; ``env`` adds variables; other kwargs go to
        :func:`subprocess.run` (cwd, input, ...)."""
        argv = self.argv(cmd)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        proc = subprocess.run(argv, env=self.client_env(env), timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise SlurmCommandError(argv, proc)
        return proc

    def sbatch(self, *args: str | os.PathLike, wrap: str | None = None,
               script: str | os.PathLike | None = None, **kwargs) -> int:
        """Submit a job to :attr:`partition`; returns its id.  ``args`` are
        sbatch options, then ``wrap`` (a command) or ``script`` (a file)."""
        argv: list[str | os.PathLike] = ["sbatch", "--parsable", f"--partition={self.partition}", *args]
        if wrap is not None:
            argv += ["--wrap", wrap]
        if script is not None:
            argv.append(script)
        out = self.run(argv, **kwargs).stdout.strip()
        return int(out.split(";")[0])

    # ------------------------------------------------------------- state
    def squeue_states(self, job_id: int | str) -> dict[str, str]:
        """``{job or array task id: state}`` from slurmctld's memory (jobs stay
        there MinJobAge=300 s after they end); {} if it does not know the job."""
        proc = self.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%i %T"], check=False)
        if proc.returncode != 0:
            return {}
        return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())

    def sacct_states(self, job_id: int | str) -> dict[str, str]:
        """``{job or array task id: state}`` from the accounting database
        (``CANCELLED by 0`` is reported as ``CANCELLED``); {} without accounting."""
        if not self.accounting:
            return {}
        proc = self.run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "JobID,State"], check=False)
        if proc.returncode != 0:
            return {}
        states = {}
        for line in proc.stdout.splitlines():
            if "|" in line:
                jid, state = line.split("|", 1)
                states[jid] = state.split()[0] if state.split() else state
        return states

    def job_states(self, job_id: int | str, source: str = "auto") -> dict[str, str]:
        """States of a job (one entry per array task).  source: ``squeue``,
        ``sacct`` or ``auto`` (squeue, then sacct for jobs it forgot)."""
        if source == "sacct":
            return self.sacct_states(job_id)
        states = self.squeue_states(job_id)
        if not states and source == "auto":
            states = self.sacct_states(job_id)
        return states

    def wait_job(self, job_id: int | str, states: Iterable[str] = TERMINAL_STATES,
                 timeout: float = 60, poll: float = 0.3, source: str = "auto") -> str:
        """Poll until every record of the job (every array task) is in
        ``states`` (default: a terminal state) and return that state; array
        tasks in different states give them joined by "," (sorted).  Raises
        TimeoutError with the last states seen.  ``source="sacct"`` waits until
        the accounting database says so."""
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        seen: dict[str, str] = {}
        while True:
            seen = self.job_states(job_id, source=source)
            # sacct lags behind: an array shows up as one record first, its
            # tasks later; wait until it has every task slurmctld knows of
            complete = source != "sacct" or {
                task for task in self.squeue_states(job_id) if "[" not in task} <= set(seen)
            if seen and complete and all(s in wanted for s in seen.values()):
                return ",".join(sorted(set(seen.values())))
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {sorted(wanted)} after {timeout}s "
                                   f"(last seen: {seen or 'unknown'}; logs in {self.dir / 'log'})")
            time.sleep(poll)

    # ----------------------------------------------------- in-process use
    def activate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point this process's environment at the cluster, for code that
        calls sbatch itself (submitit): sets :attr:`env` and removes inherited
        SLURM_* job variables.  Single-node cluster only: this process is not
        inside the multinode cluster's network namespace."""
        if self.netns:
            raise RuntimeError("activate() works for slurm_cluster only; use .run() for the multinode cluster")
        for key in list(os.environ):
            if key.startswith("SLURM_"):
                monkeypatch.delenv(key)
        for key, value in self.env.items():
            monkeypatch.setenv(key, value)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of every daemon log, to print when a test fails."""
        out = []
        for log in sorted((self.dir / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {log} <==\n" + "\n".join(text))
        return "\n".join(out)


# ------------------------------------------------------------ start / stop
def _script(script: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True,
                          timeout=timeout, env=base_client_env(), stdin=subprocess.DEVNULL)


def _cannot_start(why: str, details: str = "") -> None:
    """Skip (one line) or, with IMGTRAIN_REQUIRE_SLURM=1, fail."""
    line = " ".join(why.split())
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"SLURM test cluster required ({REQUIRE_ENV}=1) but {line}\n{details}", pytrace=False)
    pytest.skip(f"SLURM test cluster unavailable: {line}")


def _start(script: Path) -> None:
    """Start the cluster of ``script`` (idempotent), or skip/fail saying why.
    A failed start is cleaned up (stop --purge) so that nothing is left behind."""
    if os.name != "posix" or not Path("/bin/bash").exists():
        _cannot_start("needs Linux with bash")
    if os.geteuid() != 0:
        _cannot_start(f"{script.name} needs root (apt-get, daemons, namespaces)")
    try:
        proc = _script(script, "start", timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _cleanup_failed_start(script)
        _cannot_start(f"{script.name} start took more than {START_TIMEOUT_S}s")
    if proc.returncode == 0:
        return
    _cleanup_failed_start(script)
    if proc.returncode == UNAVAILABLE_RC:
        reason = next((line.split("unavailable:", 1)[1] for line in proc.stderr.splitlines()
                       if "unavailable:" in line), proc.stderr.strip()[-300:])
        _cannot_start(reason.strip(), proc.stderr)
    last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    _cannot_start(f"{script.name} start failed (exit {proc.returncode}): {last}"
                  f" (rerun with {KEEP_ENV}=1 to keep its logs)", proc.stderr)


def _cleanup_failed_start(script: Path) -> None:
    if os.environ.get(KEEP_ENV) != "1":
        _script(script, "stop", "--purge", timeout=STOP_TIMEOUT_S)


def _stop(script: Path) -> None:
    if os.environ.get(KEEP_ENV) == "1":
        return
    proc = _script(script, "stop", "--purge", timeout=STOP_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} stop --purge exited {proc.returncode}:\n{proc.stderr}")


def _local_cluster() -> SlurmCluster:
    return SlurmCluster(
        script=LOCAL_SCRIPT,
        dir=Path(os.environ.get("IMGTRAIN_SLURM_DIR", "/tmp/imgtrain-slurm")),
        partition=os.environ.get("IMGTRAIN_SLURM_PARTITION", "debug"),
        nodes=["localhost"],
        accounting=os.environ.get("IMGTRAIN_SLURM_ACCOUNTING", "1") == "1",
    )


def _multinode_cluster() -> SlurmCluster:
    prefix = os.environ.get("IMGTRAIN_SLURM_MN_NS_PREFIX", "imgtrain-slurm")
    n = int(os.environ.get("IMGTRAIN_SLURM_MN_NODES", "2"))
    return SlurmCluster(
        script=NETNS_SCRIPT,
        dir=Path(os.environ.get("IMGTRAIN_SLURM_MN_DIR", "/tmp/imgtrain-slurm-mn")),
        partition=os.environ.get("IMGTRAIN_SLURM_PARTITION", "debug"),
        nodes=[f"node{i}" for i in range(1, n + 1)],
        accounting=False,
        netns=f"/run/netns/{prefix}-ctl",
    )


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A one-node SLURM cluster with accounting, for the whole session."""
    cluster = _local_cluster()
    _start(LOCAL_SCRIPT)
    try:
        yield cluster
    finally:
        _stop(LOCAL_SCRIPT)


@pytest.fixture(scope="session")
def slurm_multinode() -> Iterator[SlurmCluster]:
    """A two-node (node1, node2) SLURM cluster in network namespaces, for the
    whole session.  ``.run`` executes clients in the controller's namespace."""
    cluster = _multinode_cluster()
    _start(NETNS_SCRIPT)
    try:
        yield cluster
    finally:
        _stop(NETNS_SCRIPT)


__all__ = ["SlurmCluster", "SlurmCommandError", "TERMINAL_STATES", "slurm_cluster", "slurm_multinode"]
