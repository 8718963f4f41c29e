"""An ASHA worker: what each task of an ASHA sweep's job array (or each local worker process) runs.

    loop: in a ledger transaction, take the next job (asha_rules.next_job: its own job after a requeue, a
          promotion from the highest rung, else the next cell that has not started, else leave);
          train that cell up to the rung's epoch (trainer.stop_after_epochs; the last rung trains to the end);
          in a transaction, record its value at the rung (the monitored metric's latest evaluation at or
          before the rung's epoch); write the PRUNED markers of the cells the rules pruned.

There is no controller: every worker decides for itself, under the ledger's lock, from what is recorded, so a
sweep submitted once runs to the end with nobody watching. Signals (SLURM array task): USR1 (the time limit
is near, `scancel --signal=USR1`), submitit's USR2 and TERM stop the cell's trainer at its next step
(last.pt); the task then requeues itself as a plain sweep cell does (job.py: requeue_after_stop) and keeps
its claim in the ledger: the requeued task (the same array element, so the same worker key) finds its
claim and resumes the cell. A worker killed and never requeued leaves a claim that a later worker with
nothing else to do, or the next submission, takes over once SLURM or the process table says it is gone.

    python -m imgtrain.sweep.asha_worker SWEEP_DIR        (the local executor starts this, detached)
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

from submitit.helpers import Checkpointable, DelayedSubmission

from imgtrain import runs
from imgtrain.engine import signals
from imgtrain.sweep import asha_rules as R
from imgtrain.sweep.asha_ledger import Ledger, LockLost
from imgtrain.sweep.records import SLURM_ACTIVE, proc_alive, proc_start
from shards.dirlock import Locked

HOOK = "trainer.stop_after_epochs"


def _say(msg: str) -> None:
    print(f"[asha] {msg}", flush=True)


def worker_key(local: bool = False) -> str:
    """Stable across requeues of one array task (its array id and index); a local worker (`local`, or outside
    SLURM) is its process."""
    env = os.environ
    if not local and env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if not local and env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    return f"local:{socket.gethostname()}:{os.getpid()}:{proc_start(os.getpid())}"


def worker_alive(key: Optional[str]) -> bool:
    """Is the worker holding a claim still there? When that cannot be told (squeue fails), yes."""
    if not key:
        return False
    if key.startswith("local:"):
        _, host, pid, start = key.split(":", 3)
        if host != socket.gethostname():
            return True  # another machine's process: not ours to judge
        return proc_alive(int(pid), None if start == "None" else start, host)
    try:
        out = subprocess.run(["squeue", "-h", "-j", key, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if out.returncode != 0:
        return "Invalid job id" not in out.stderr
    return any(s.strip() in SLURM_ACTIVE for s in out.stdout.splitlines())


def load_sweep(sweep_dir: Path):
    """The sweep as submitted (sweep.json's cells and overrides: a sweep file edited since changes nothing)."""
    from imgtrain.sweep.records import SweepDir
    from imgtrain.sweep.spec import from_record
    info = SweepDir(sweep_dir.parent.parent, sweep_dir.name).info()
    if info is None:
        raise FileNotFoundError(f"no sweep.json in {sweep_dir}: submit the sweep first")
    return from_record(info)


def value_at(sweep, cell, metric: str, epochs: int) -> Optional[float]:
    from imgtrain.sweep.halving import values_at
    return values_at(sweep, [cell], metric, epochs)[cell.id]


def sync_pruned_markers(sweep, ledger: Ledger, timeout_s: float = 600.0) -> None:
    """Each run directory's PRUNED marker as the ledger says: written for the cells it pruned, removed from
    those a reopened rung paused again (idempotent: a worker killed after its decision leaves them to the next
    worker, submission or status). Under the ledger's lock: a snapshot read before a resubmission reopened a
    rung would mark a cell that is training again."""
    with ledger.transaction(timeout_s=timeout_s, write=False) as data:
        _sync_markers(sweep, data)


def _sync_markers(sweep, ledger: dict) -> None:
    by_id = sweep.by_id()
    for cid, c in ledger["cells"].items():
        if cid not in by_id:
            continue
        rdir = sweep.run_dir(by_id[cid])
        if not rdir.is_dir():
            continue
        marked = runs.read_pruned(rdir)
        if c["state"] == R.PRUNED and marked is None:
            runs.mark_pruned(rdir, R.prune_marker(ledger, cid))
        elif c["state"] != R.PRUNED and marked is not None and marked.get("schedule") == "asha":
            runs.clear_pruned(rdir)


def train_to_rung(sweep, cell, k: int, rungs: list[int]) -> tuple[str, int]:
    """Train the cell to rung k. Returns (DONE | "paused" | "stopped", epochs done): paused when the trainer
    reached the rung (trainer.stop_after_epochs), stopped when a signal stopped it (last.pt; resume it)."""
    from imgtrain import config as C
    from imgtrain.engine.trainer import train
    from imgtrain.sweep.job import epochs_done
    last = k == len(rungs) - 1
    # the last rung trains to trainer.epochs, even if the base config sets a pause of its own
    extra = [f"{HOOK}=null"] if last else [f"{HOOK}={rungs[k]}"]
    rdir = sweep.run_dir(cell)
    if runs.read_status(rdir) == runs.FAILED:
        runs.clear_markers(rdir)  # a failed cell is only here again when a submission asked (--retry-failed)
    if rdir.is_dir() and runs.read_pruned(rdir) is not None:
        runs.clear_pruned(rdir)  # claimed, so not pruned (its rung reopened); a marker left is out of date
    result = train(C.load(sweep.config_path, list(cell.overrides) + extra))
    done = epochs_done(rdir)
    if result.status == runs.DONE:
        return runs.DONE, done
    if result.stopped_by == "pause" and not last:
        return "paused", done
    return "stopped", done  # a signal, even one seen at the rung's last step: the requeued job resumes it


def dead_workers(data: Optional[dict], but: Optional[str] = None) -> set[str]:
    """The workers holding claims in `data` (other than `but`) that are gone. `data` is a ledger read without
    the lock, because squeue can take seconds; a claim made after that read counts as alive."""
    keys = {c["worker"] for c in (data or {"cells": {}})["cells"].values()
            if c["state"] == R.TRAINING and c["worker"] not in (None, but)}
    return {k for k in keys if not worker_alive(k)}


def _commit(ledger: Ledger, change: Callable[[dict], Any], before_commit=None, tries: int = 5):
    """`change(data)` in a ledger transaction, tried again when the lock could not be had or was lost (a
    decision made and not written never counts; the rules make a second try decide the same)."""
    for i in range(tries):
        try:
            with ledger.transaction(before_commit=before_commit) as data:
                out = change(data)
            return out, data
        except (Locked, LockLost) as e:
            if i == tries - 1:
                raise
            _say(f"ledger busy ({e}); trying again")
            time.sleep(random.uniform(1, 5))


def run_worker(sweep_dir: str | Path, *, worker: Optional[str] = None,
               stopping: Callable[[], bool] = lambda: signals.early_signal() is not None,
               before_commit: Optional[Callable[[dict], None]] = None) -> tuple[str, Optional[Path], int]:
    """Work until nothing is left ("idle") or a stop signal ("stopped", with the run directory of the cell it
    was training, or None between cells, and that run's attempts before this start)."""
    from imgtrain.logs.runinfo import read_run
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    ledger = Ledger(sweep_dir)
    worker = worker or worker_key()
    signals.catch_early(keep=True)  # a signal between cells, or one a trainer saw after its last step, stays
    while True:
        if stopping():
            return "stopped", None, 0
        snapshot = ledger.read()  # next_job asks who is gone only when no cell is left to start
        dead = set() if snapshot is None or R.unstarted(snapshot) else dead_workers(snapshot, worker)
        (job, rungs, metric), data = _commit(
            ledger, lambda d: (R.next_job(d, worker, alive=lambda key: key not in dead), d["rungs"], d["metric"]),
            before_commit)
        if job is None:
            sync_pruned_markers(sweep, ledger)
            _say(f"worker {worker}: nothing left to do")
            return "idle", None, 0
        cid, k = job
        if cid not in sweep.by_id():  # a submission since this worker started added cells
            sweep = load_sweep(sweep_dir)
        cell = sweep.by_id()[cid]
        rdir = sweep.run_dir(cell)
        attempts_before = len((read_run(rdir) or {}).get("attempts", [])) if rdir.is_dir() else 0
        _say(f"worker {worker}: cell {cid} to rung {k + 1}/{len(rungs)} (epoch {rungs[k]}): {sweep.describe(cell)}")
        try:
            outcome, epochs = train_to_rung(sweep, cell, k, rungs)
        except runs.Locked as e:  # its run is trained by a worker that was thought gone: not a failure
            _commit(ledger, lambda d: R.give_back(d, cid, worker, str(e)))
            _say(f"worker {worker}: cell {cid} is busy elsewhere ({e}); claim given back")
            time.sleep(random.uniform(5, 15))
            continue
        except Exception as e:  # noqa: BLE001 (any failure of one cell: recorded, the worker goes on)
            traceback.print_exc()
            _commit(ledger, lambda d: R.record_failure(d, cid, f"{type(e).__name__}: {e}", worker=worker))
            _say(f"worker {worker}: cell {cid} FAILED ({type(e).__name__}: {e})")
            continue
        if outcome == "stopped":
            _say(f"worker {worker}: cell {cid} stopped by a signal at epoch {epochs}; the claim stays for the requeue")
            return "stopped", rdir, attempts_before
        value = value_at(sweep, cell, metric, epochs if outcome == runs.DONE else rungs[k])
        new, data = _commit(ledger, lambda d: R.record_result(d, cid, k, value, finished=outcome == runs.DONE,
                                                              worker=worker), before_commit)
        sync_pruned_markers(sweep, ledger)
        vtxt = "no value" if value is None else f"{value:.4f}"
        _say(f"worker {worker}: cell {cid} {'DONE' if outcome == runs.DONE else 'paused'} at epoch {epochs}, "
             f"{metric} {vtxt}" + ("" if new else " (not recorded: already recorded, or the claim was taken over)"))


class AshaWorker(Checkpointable):
    """The submitit callable of an ASHA array: `AshaWorker()(sweep_dir)`. Pure arguments: a requeued or
    resubmitted task starts it again and finds its claim in the ledger."""

    def __init__(self, max_requeues: int = 20):
        self.max_requeues = max_requeues

    def __repr__(self) -> str:
        return f"AshaWorker(max_requeues={self.max_requeues})"

    def checkpoint(self, sweep_dir: str) -> DelayedSubmission:
        return DelayedSubmission(AshaWorker(self.max_requeues), sweep_dir)

    def __call__(self, sweep_dir: str) -> dict:
        from imgtrain.sweep.job import requeue_after_stop
        signals.catch_early(keep=True)
        # submitit's USR2 handler would requeue before the trainer saved: a USR2 is a USR1 to us
        signal.signal(signal.SIGUSR2, lambda signum, frame: signal.raise_signal(signal.SIGUSR1))
        state, rdir, attempts_before = run_worker(sweep_dir)
        if state == "idle":
            return {"status": "idle", "worker": worker_key()}
        return requeue_after_stop(rdir, attempts_before, self.max_requeues)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m imgtrain.sweep.asha_worker",
                                description="Run one ASHA worker of a submitted sweep until nothing is left "
                                            "(jobs/sweep.py --executor local starts these).")
    p.add_argument("sweep_dir", help="<root>/sweeps/<name>")
    p.add_argument("--local", action="store_true",
                   help="key this worker's claims by its own process, not by the SLURM job it may run inside")
    args = p.parse_args(argv)
    signals.catch_early(keep=True)
    state, _, _ = run_worker(args.sweep_dir, worker=worker_key(local=args.local))
    return 0 if state == "idle" else runs.REQUEUE_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
