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
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable, Optional

from submitit.helpers import Checkpointable, DelayedSubmission

from imgtrain import runs
from imgtrain.engine import signals
from imgtrain.sweep import asha_rules as R
from imgtrain.sweep.asha_ledger import Ledger
from imgtrain.sweep.records import SLURM_ACTIVE, proc_alive, proc_start

HOOK = "trainer.stop_after_epochs"


def _say(msg: str) -> None:
    print(f"[asha] {msg}", flush=True)


def worker_key() -> str:
    """Stable across requeues of one array task (its array id and index); a local worker is its process."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
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


def mark_pruned_runs(sweep, ledger: dict) -> None:
    """The PRUNED marker of every cell the ledger pruned (idempotent: a killed worker's are written by the next)."""
    by_id = sweep.by_id()
    for cid, c in ledger["cells"].items():
        if c["state"] == R.PRUNED and cid in by_id:
            rdir = sweep.run_dir(by_id[cid])
            if rdir.is_dir() and runs.run_status(rdir) != runs.PRUNED:
                runs.mark_pruned(rdir, R.prune_marker(ledger, cid))


def train_to_rung(sweep, cell, k: int, rungs: list[int]) -> tuple[str, int]:
    """Train the cell to rung k. Returns (DONE | "paused" | "stopped" | FAILED, epochs done)."""
    from imgtrain import config as C
    from imgtrain.engine.trainer import train
    from imgtrain.sweep.job import epochs_done
    extra = [] if k == len(rungs) - 1 else [f"{HOOK}={rungs[k]}"]
    rdir = sweep.run_dir(cell)
    if runs.read_status(rdir) == runs.FAILED:
        runs.clear_markers(rdir)  # a failed cell is only here again when a submission asked (--retry-failed)
    result = train(C.load(sweep.config_path, list(cell.overrides) + extra))
    done = epochs_done(rdir)
    if result.status == runs.DONE:
        return runs.DONE, done
    if done >= rungs[k]:
        return "paused", done
    return "stopped", done


def run_worker(sweep_dir: str | Path, *, worker: Optional[str] = None,
               stopping: Callable[[], bool] = lambda: signals.early_signal() is not None,
               before_commit: Optional[Callable[[dict], None]] = None) -> tuple[str, Optional[Path], int]:
    """Work until nothing is left ("idle") or a stop signal ("stopped", with the run directory of the cell it
    was training, or None between cells, and that run's attempts before this start)."""
    sweep_dir = Path(sweep_dir)
    sweep = load_sweep(sweep_dir)
    by_id = sweep.by_id()
    ledger = Ledger(sweep_dir)
    worker = worker or worker_key()
    rungs = sweep.halving.rungs
    while True:
        signals.catch_early()  # a stop between cells: leave before taking a job; during one: the trainer's
        if stopping():
            return "stopped", None, 0
        with ledger.transaction(before_commit=before_commit) as data:
            job = R.next_job(data, worker, alive=worker_alive)
            metric = data["metric"]
        if job is None:
            mark_pruned_runs(sweep, data)
            _say(f"worker {worker}: nothing left to do")
            return "idle", None, 0
        cid, k = job
        cell = by_id[cid]
        rdir = sweep.run_dir(cell)
        from imgtrain.logs.runinfo import read_run
        attempts_before = len((read_run(rdir) or {}).get("attempts", [])) if rdir.is_dir() else 0
        _say(f"worker {worker}: cell {cid} to rung {k + 1}/{len(rungs)} (epoch {rungs[k]}): {sweep.describe(cell)}")
        try:
            outcome, epochs = train_to_rung(sweep, cell, k, rungs)
        except Exception as e:  # noqa: BLE001 (any failure of one cell: recorded, the worker goes on)
            traceback.print_exc()
            with ledger.transaction() as data:
                R.record_failure(data, cid, f"{type(e).__name__}: {e}", worker=worker)
            _say(f"worker {worker}: cell {cid} FAILED ({type(e).__name__}: {e})")
            continue
        if outcome == "stopped":
            _say(f"worker {worker}: cell {cid} stopped by a signal at epoch {epochs}; the claim stays for the requeue")
            return "stopped", rdir, attempts_before
        value = value_at(sweep, cell, metric, epochs if outcome == runs.DONE else rungs[k])
        with ledger.transaction(before_commit=before_commit) as data:
            new = R.record_result(data, cid, k, value, finished=outcome == runs.DONE, worker=worker)
        mark_pruned_runs(sweep, data)
        vtxt = "no value" if value is None else f"{value:.4f}"
        _say(f"worker {worker}: cell {cid} {'DONE' if outcome == runs.DONE else 'paused'} at epoch {epochs}, "
             f"{metric} {vtxt}" + ("" if new else " (already recorded: nothing decided twice)"))


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
        signals.catch_early()
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
    args = p.parse_args(argv)
    signals.catch_early()
    state, _, _ = run_worker(args.sweep_dir)
    return 0 if state == "idle" else runs.REQUEUE_EXIT_CODE


if __name__ == "__main__":
    sys.exit(main())
