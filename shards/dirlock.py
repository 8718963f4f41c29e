"""The owner of a directory on a shared filesystem: one lock file, created atomically, refreshed by a heartbeat.

Two processes training the same run at once (a job started twice, a sweep cell and a hand-started run, a
requeued job whose first copy still runs) would write the same checkpoints and metric rows. The first takes
the lock; the second stops before it writes anything, naming the holder (host, pid, SLURM job).

Why a file created with O_EXCL and not fcntl/flock: O_EXCL creation is atomic on NFSv3+ and Lustre/GPFS, while
POSIX locks depend on a lock daemon some cluster mounts lack, and vanish silently when it restarts. A holder
that was killed leaves its file behind, so a lock is *stale*, and is taken over, when
- its holder ran on this host and that process is gone (pid and start time), or
- its holder was a step of this very SLURM job (a requeued job restarts after every process of the previous
  run of the job was killed), or
- SLURM says the holder's job is no longer running, or
- its heartbeat (the file's mtime, touched every `heartbeat_s`) is older than `stale_after_s`: a holder on
  another node that can no longer be asked.
Takeovers are serialised by a guard file `<lock>.takeover` (O_EXCL; one left by a killed process is removed
after TAKEOVER_STALE_S): under it the taker checks that the lock file is still the one it judged (inode and
holder token) and renames it aside; the new holder is then whoever creates the lock file first. Without the
guard, a process that judged the dead holder but renamed a moment later would move aside the live lock that
another had just created.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


class Locked(RuntimeError):
    """Another live process holds the lock."""


def _proc_start(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): a pid reused by another
    process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive_here(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    start = _proc_start(pid)
    return start is not None and (holder.get("pid_start") in (None, start))


def _slurm_job_running(job: str) -> Optional[bool]:
    """True/False from squeue; None when SLURM cannot be asked (no squeue, no controller)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return False if "Invalid job id" in out.stderr else None
    return out.stdout.strip() not in ("", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "PREEMPTED",
                                      "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job']}" if holder.get("slurm_job") else ""
    return f"host {holder.get('host')}, pid {holder.get('pid')}{job}, since {holder.get('since')}"


def why_stale(holder: dict, age_s: float, stale_after_s: float) -> Optional[str]:
    """Why a lock held by `holder` (its file untouched for `age_s`) may be taken over, or None."""
    if holder.get("host") == socket.gethostname():
        return None if _alive_here(holder) else "its process is gone"
    mine = os.environ.get("SLURM_JOB_ID")
    if mine and holder.get("slurm_job") == mine:
        return "it was an earlier start of this SLURM job"
    if holder.get("slurm_job") and _slurm_job_running(holder["slurm_job"]) is False:
        return f"SLURM job {holder['slurm_job']} is no longer running"
    if age_s > stale_after_s:
        return f"no heartbeat for {age_s:.0f} s"
    return None


TAKEOVER_STALE_S = 10.0  # a takeover lasts milliseconds; a guard file this old was left by a killed process


def _take_over(path: Path, judged: os.stat_result, other: dict) -> bool:
    """Remove the stale lock file `path` (`judged`: its stat, `other`: its holder, when we judged it); True when
    removed. Takeovers are serialised by `<lock>.takeover` (O_EXCL): without it, a process that judged the dead
    holder but renamed a moment later would move aside the live lock another process had just created in its
    place. Under the guard the file is checked again (inode, holder token) before it is renamed."""
    guard = path.with_name(path.name + ".takeover")
    try:
        os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > TAKEOVER_STALE_S:
                guard.unlink()
        except FileNotFoundError:
            pass
        time.sleep(random.uniform(0.005, 0.05))
        return False
    try:
        if not _same_file(path, judged, other):
            return False  # released or taken over since we judged it: judge again
        aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if not _same_file(aside, judged, other):
            # only possible if a holder judged stale by its age woke, released, and a new holder created its
            # file in the microseconds between the check and the rename: put that live lock back
            try:
                os.link(aside, path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True
    finally:
        guard.unlink(missing_ok=True)


def _same_file(file: Path, judged: os.stat_result, other: dict) -> bool:
    """Is `file` (the lock, or where it was renamed to) the one we judged? (same inode; same holder token when
    it had one)"""
    try:
        st = file.stat()
        if (st.st_ino, st.st_dev) != (judged.st_ino, judged.st_dev):
            return False
        if other.get("token"):
            return json.loads(file.read_text()).get("token") == other["token"]
        return True
    except (OSError, ValueError):
        return False


@dataclass
class DirLock:
    path: Path
    holder: dict
    heartbeat_s: float = 30.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: Optional[threading.Thread] = None

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # the next beat tries again; a lost lock file is found by whoever checks it

    def held(self) -> bool:
        """Does the lock file still name this holder? Checked just before a write that the lock guards: a holder
        whose heartbeat stalled past `stale_after_s` (a frozen node) may have been taken over."""
        try:
            return json.loads(self.path.read_text()).get("token") == self.holder["token"]
        except (OSError, ValueError):
            return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(path: str | os.PathLike, *, what: str = "this directory", heartbeat_s: float = 30.0,
            stale_after_s: float = 300.0, log: Callable[[str], None] = print) -> DirLock:
    """Take the lock file `path` or raise Locked naming its holder. See the module docstring for staleness."""
    path = Path(path)
    holder = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
              "slurm_job": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "token": uuid.uuid4().hex}
    changes, deadline = 0, time.monotonic() + TAKEOVER_STALE_S + 30
    while changes < 5:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                judged = path.stat()
                other = json.loads(path.read_text())
                age = time.time() - judged.st_mtime
            except FileNotFoundError:
                continue  # released or taken over meanwhile: try again
            except (OSError, ValueError):
                # being written this instant (a holder creates, then writes), or damaged: judge by age alone
                try:
                    judged = path.stat()
                except FileNotFoundError:
                    continue
                other, age = {}, time.time() - judged.st_mtime
                if age < 10:
                    time.sleep(0.5)
                    continue
            why = why_stale(other, age, stale_after_s) if other else "its lock file is unreadable"
            if why is None:
                raise Locked(f"{what} is in use by another process ({describe(other)}); it holds {path}. "
                             "Wait for it to end, or stop it; if it is dead on a node that cannot be asked, "
                             f"its lock counts as stale {stale_after_s:.0f} s after its last heartbeat")
            if _take_over(path, judged, other):
                changes += 1
                log(f"taking over the lock of {what} from {describe(other) if other else 'nobody'}: {why}")
            elif time.monotonic() > deadline:
                break
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(holder, f)
            f.flush()
            os.fsync(f.fileno())
        lock = DirLock(path, holder, heartbeat_s)
        lock._thread = threading.Thread(target=lock._beat, name="imgtrain-lock-heartbeat", daemon=True)
        lock._thread.start()
        return lock
    raise Locked(f"could not take {path}: it changed hands {changes} times, or another process's takeover of it "
                 f"({path.name}.takeover) did not end")
