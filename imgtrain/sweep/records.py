"""The sweep's own folder, `<root>/sweeps/<name>/`: what was submitted where, so that a cell that is
queued or running is never submitted twice, and so that `status` and `cancel` find the jobs.

    sweep.json         name, sweep file, base config, root, axes; the cell table of the latest submission
    submissions.json   one record per submission: executor, SLURM array job id and task -> cell, or the
                       local sweep process and its children (pid + start time, so a reused pid is not
                       mistaken for ours), rung (successive halving)
    halving.json       rung decisions (halving.py)
    asha.json          the ASHA ledger: results per rung, promotions, pruning, claims (asha_rules.py), and
    asha.lock          its lock (asha_ledger.py)
    submitit/<n>/      submitit's pickles and logs of submission n (a fresh folder each time: SLURM job
                       ids restart at 1 on a fresh cluster, and submitit would read a stale result)
    logs/<run_id>.log  output of a cell run by the local executor
    lock               flock held while deciding what to submit and while records change

The run directories stay the truth about progress (DONE / FAILED / PRUNED markers, checkpoints,
Parquet); these records only say which jobs may still be working on a cell.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from imgtrain.logs.atomic import atomic_write_text

SLURM_ACTIVE_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT"}
SLURM_ACTIVE_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "STOPPED",
                        "RESV_DEL_HOLD", "SPECIAL_EXIT"}
SLURM_ACTIVE = SLURM_ACTIVE_RUNNING | SLURM_ACTIVE_PENDING


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def proc_start(pid: int) -> Optional[str]:
    """The kernel's start time of a process (clock ticks since boot), or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return stat.rsplit(")", 1)[1].split()[19]
    except IndexError:
        return None


def proc_alive(pid: Optional[int], start: Optional[str], host: Optional[str]) -> bool:
    """Is this exact process (pid and start time, on this host) still running?"""
    if not pid or host != socket.gethostname():
        return False
    now = proc_start(int(pid))
    if now is None:
        return False
    try:  # a zombie (exited, not reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return start is None or now == start


def job_name(sweep: str) -> str:
    return f"sweep_{sweep}"


class SweepDir:
    def __init__(self, root: Path, name: str):
        self.root, self.name = Path(root), name
        self.path = self.root / "sweeps" / name

    # ------------------------------------------------------------------ files
    def ensure(self) -> "SweepDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    @contextlib.contextmanager
    def lock(self):
        self.ensure()
        with open(self.path / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self, name: str, default):
        try:
            return json.loads((self.path / name).read_text())
        except FileNotFoundError:
            return default
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.path / name} is not valid JSON ({e})") from None

    def _write(self, name: str, data) -> None:
        self.ensure()
        atomic_write_text(self.path / name, json.dumps(data, indent=1, default=str) + "\n")

    def submissions(self) -> list[dict[str, Any]]:
        return self._read("submissions.json", {"submissions": []}).get("submissions", [])

    def save_submissions(self, subs: list[dict[str, Any]]) -> None:
        self._write("submissions.json", {"sweep": self.name, "submissions": subs})

    def add_submission(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append a record (call under lock()); returns it with its number."""
        subs = self.submissions()
        record = {"n": len(subs), "time": now_iso(), **record}
        subs.append(record)
        self.save_submissions(subs)
        return record

    def update_submission(self, n: int, **fields) -> None:
        with self.lock():
            subs = self.submissions()
            for s in subs:
                if s.get("n") == n:
                    s.update(fields)
            self.save_submissions(subs)

    def update_local_cell(self, n: int, cell: str, **fields) -> None:
        with self.lock():
            subs = self.submissions()
            for s in subs:
                if s.get("n") == n:
                    s.setdefault("cells", {}).setdefault(cell, {}).update(fields)
            self.save_submissions(subs)

    def info(self) -> Optional[dict[str, Any]]:
        return self._read("sweep.json", None)

    def save_info(self, info: dict[str, Any]) -> None:
        self._write("sweep.json", info)

    def halving(self) -> dict[str, Any]:
        return self._read("halving.json", {"rungs": {}})

    def save_halving(self, data: dict[str, Any]) -> None:
        self._write("halving.json", data)

    def submitit_folder(self, n: int) -> Path:
        return self.path / "submitit" / f"{n:04d}"

    def log_path(self, run_id: str) -> Path:
        return self.path / "logs" / f"{run_id}.log"

    # ------------------------------------------------------------------ what is still working on a cell
    def active(self, slurm: Optional["SlurmQuery"] = None) -> dict[str, dict[str, Any]]:
        """{cell id: {"state": "running"|"pending", "job": "<array>_<task>" or "pid N", "slurm_state": ...}}
        for every cell some submission is still working on (newest submission wins)."""
        subs = self.submissions()
        out: dict[str, dict[str, Any]] = {}
        slurm = slurm or SlurmQuery()
        arrays = [s for s in subs if s.get("executor") == "slurm"]
        states = slurm.states([str(j) for s in arrays for j in s.get("job_ids", [])], job_name(self.name)) \
            if arrays else {}
        for s in subs:
            if s.get("schedule") == "asha":
                continue  # its workers take cells as they go: the ledger says which (below)
            if s.get("executor") == "slurm":
                for cell, jid in s.get("tasks", {}).items():
                    st = states.get(jid)
                    if st in SLURM_ACTIVE:
                        out[cell] = {"state": "running" if st in SLURM_ACTIVE_RUNNING else "pending", "job": jid,
                                     "slurm_state": st, "submission": s["n"]}
            elif s.get("executor") in ("local", "debug"):
                parent = proc_alive(s.get("pid"), s.get("pid_start"), s.get("host"))
                for cell, c in s.get("cells", {}).items():
                    if c.get("end"):
                        continue
                    # a child outlives a sweep process killed with -9 (its own session): still ours
                    child = bool(c.get("pid")) and proc_alive(c.get("pid"), c.get("pid_start"), s.get("host"))
                    if not (parent or child):
                        continue
                    running = child or (s.get("executor") == "debug" and bool(c.get("start")))
                    out[cell] = {"state": "running" if running else "pending",
                                 "job": f"pid {c.get('pid') or s.get('pid')}", "submission": s["n"]}
        asha = [s for s in subs if s.get("schedule") == "asha"]
        if asha:
            out.update(self._asha_active(states, asha[-1]["n"]))
        return out

    def _asha_active(self, states: dict[str, str], submission: int) -> dict[str, dict[str, Any]]:
        """Cells an ASHA worker holds in the ledger (asha.json), while that worker is alive."""
        from imgtrain.sweep.asha_ledger import Ledger
        ledger = Ledger(self.path).read() or {"cells": {}}
        out: dict[str, dict[str, Any]] = {}
        for cid, c in ledger["cells"].items():
            worker = c.get("worker")
            if c.get("state") != "training" or not worker:
                continue
            if worker.startswith("local:"):
                _, host, pid, start = worker.split(":", 3)
                st, alive = None, proc_alive(int(pid), None if start == "None" else start, host)
                job = f"pid {pid}"
            else:
                st = states.get(worker)
                alive, job = st in SLURM_ACTIVE, worker
            if alive:
                out[cid] = {"state": "pending" if st in SLURM_ACTIVE_PENDING else "running", "job": job,
                            "slurm_state": st, "submission": submission}
        return out


class SlurmQuery:
    """squeue (and sacct for jobs squeue has forgotten) for the records' job ids. Never raises: a host
    without SLURM gives {} and `error` says why."""

    def __init__(self):
        self.error: Optional[str] = None

    def _run(self, argv: list[str], timeout: float = 30) -> Optional[str]:
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.error = f"{argv[0]}: {e}"
            return None
        if proc.returncode != 0:
            self.error = f"{' '.join(argv[:2])}: {proc.stderr.strip() or proc.stdout.strip()}"
            return None
        return proc.stdout

    def states(self, job_ids: Iterable[str], name: Optional[str] = None) -> dict[str, str]:
        """{'<array>_<task>' or '<job>': state} from squeue, one line per array task (-r). Jobs whose
        name differs from `name` are left out (job ids restart at 1 on a fresh cluster)."""
        ids = sorted({str(j).split("_")[0] for j in job_ids if j})
        if not ids:
            return {}
        out = self._run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%j"])
        states: dict[str, str] = {}
        for line in (out or "").splitlines():
            parts = line.strip().split("|", 2)
            if len(parts) == 3 and (name is None or parts[2] == name):
                states[parts[0]] = parts[1]
        return states

    def accounting(self, job_ids: Iterable[str], name: Optional[str] = None) -> dict[str, str]:
        """{'<array>_<task>': state} from sacct (finished jobs too); {} without accounting."""
        ids = sorted({str(j).split("_")[0] for j in job_ids if j})
        if not ids:
            return {}
        out = self._run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State,JobName"])
        states: dict[str, str] = {}
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3 and (name is None or parts[2] == name):
                states[parts[0]] = parts[1].split()[0] if parts[1].split() else parts[1]
        return states

    def cancel(self, job_ids: Iterable[str]) -> Optional[str]:
        ids = sorted({str(j) for j in job_ids if j})
        if not ids:
            return ""
        return self._run(["scancel", *ids])
