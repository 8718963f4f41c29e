"""Submitting cells: decide what to run (idempotent), then run it with one of three executors.

- `slurm`: one submitit job array per distinct resource set (usually one), `map_array(CellJob(),
  configs, overrides)`; `--array-parallelism`; `--signal=USR1@<signal_delay_s>` and `--requeue`
  (see job.py for preemption). Multi-GPU cells run one submitit task per GPU (`tasks_per_node`
  defaults to `gpus_per_node`), and the trainer reads rank/world from submitit's
  TorchDistributedEnvironment.
- `local`: `python jobs/train.py --config ... overrides` as subprocesses, N at a time, each writing
  to `<root>/sweeps/<name>/logs/<run id>.log`. SIGINT/SIGTERM to the sweep stops the runs cleanly
  (they write last.pt); running the sweep again resumes them.
- `debug`: in this process, one cell after the other (pdb works).

What is submitted: cells that are new or stopped (resumed from last.pt), and failed cells only with
`--retry-failed`. Done, pruned, pending and running cells (known from the sweep's submission records
and SLURM/process state) and `changed` cells are never submitted.
"""
from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain.sweep.records import SlurmQuery, SweepDir, job_name, now_iso, proc_start
from imgtrain.sweep.spec import REPO, Cell, Sweep
from imgtrain.sweep.status import CellState, cell_states, counts, header
from shards.procs import die_with_parent

TRAIN = REPO / "jobs" / "train.py"
EXECUTORS = ("slurm", "local", "debug")


def say(msg: str) -> None:
    print(f"[sweep] {msg}", flush=True)


@dataclass
class Options:
    executor: str = "slurm"
    parallel: int = 1  # local executor: cells at once
    retry_failed: bool = False
    resources: dict[str, Any] = field(default_factory=dict)  # command-line resources (win over the file's)
    wait: bool = False  # slurm: block until the submitted cells finish
    preflight: bool = True
    poll_s: float = 5.0


@dataclass
class Submitted:
    cells: list[Cell]
    record: Optional[dict[str, Any]] = None
    outcomes: dict[str, str] = field(default_factory=dict)  # local/debug: cell id -> DONE/FAILED/...


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def select(states: Sequence[CellState], retry_failed: bool) -> tuple[list[CellState], str]:
    """The cells to submit and a one-line account of the decision."""
    take = {"new", "stopped"} | ({"failed"} if retry_failed else set())
    chosen = [st for st in states if st.state in take]
    c = counts(states)
    parts = []
    for s, why in (("new", "new"), ("stopped", "to resume"), ("failed", "failed, retried")):
        n = sum(1 for st in chosen if st.state == s)
        if n:
            parts.append(f"{n} {why}")
    skip = [f"{c[s]} {s}" for s in ("done", "running", "pending", "pruned", "changed") if c[s]]
    if c["failed"] and not retry_failed:
        skip.append(f"{c['failed']} failed (--retry-failed to run them again)")
    line = (f"submitting {_plural(len(chosen), 'cell')}" + (f" ({', '.join(parts)})" if parts else "")
            if chosen else "nothing to submit") + (f"; skipping {', '.join(skip)}" if skip else "")
    return chosen, line


def preflight(cells: Sequence[Cell], records: Optional[SweepDir] = None) -> list[str]:
    """What would fail at start-up (data set, model name, weights file, DeepSpeed config), once per
    distinct data set / model / weights file, without importing the engine: see sweep/preflight.py.
    `records` is no longer used (the checks take milliseconds; nothing is cached between submissions)."""
    from imgtrain.sweep.preflight import check_cells
    return check_cells(cells)


def launch(sweep: Sweep, opts: Options, extra: Sequence[str] = (), only: Optional[set[str]] = None,
           rung: Optional[int] = None, quiet: bool = False) -> Submitted:
    """Submit what needs submitting (all of it under the sweep's lock). `extra`: overrides for this
    submission only (halving's trainer.stop_after_epochs); `only`: restrict to these cell ids."""
    if opts.executor not in EXECUTORS:
        raise ValueError(f"unknown executor {opts.executor!r} ({', '.join(EXECUTORS)})")
    records = SweepDir(sweep.root, sweep.name).ensure()
    slurm = SlurmQuery()
    with records.lock():
        states = cell_states(sweep, slurm=slurm, records=records)
        if only is not None:
            states = [st for st in states if st.cell.id in only]
        chosen, line = select(states, opts.retry_failed)
        if not quiet or chosen:
            say(line)
        for st in states:
            if st.state == "changed":
                say(f"warning: cell {st.cell.id} not submitted: {st.reason}")
        if slurm.error and (records.path / "submissions.json").exists():
            say(f"warning: cannot ask SLURM about earlier submissions ({slurm.error})")
        if not chosen:
            return Submitted([])
        cells = [st.cell for st in chosen]
        if opts.preflight:
            problems = preflight(cells, records)
            if problems:
                raise PreflightError("preflight failed, nothing submitted:\n  " + "\n  ".join(problems[:20]) +
                                     (f"\n  ... {len(problems) - 20} more" if len(problems) > 20 else ""))
        if opts.retry_failed:
            from imgtrain.runs import clear_markers
            for st in chosen:
                if st.state == "failed":
                    clear_markers(st.run_dir)
        save_info(records, sweep)
        if opts.executor == "slurm":
            record = submit_slurm(sweep, cells, opts, records, extra, rung)
            say(f"submitted {_plural(len(cells), 'cell')} as SLURM " +
                ", ".join(f"job array {j} ({n} tasks)" if "_" in next(iter(record["tasks"].values())) or n > 1
                          else f"job {j}" for j, n in record["arrays"].items()) +
                f"; logs in {records.submitit_folder(record['n'])}")
            sub = Submitted(cells, record)
        else:
            record = records.add_submission({
                "executor": opts.executor, "host": os.uname().nodename, "pid": os.getpid(),
                "pid_start": proc_start(os.getpid()), "rung": rung,
                "cells": {c.id: {"run_id": c.run_id} for c in cells}})
            sub = Submitted(cells, record)
    if opts.executor == "local":
        sub.outcomes = run_local(sweep, cells, opts.parallel, records, sub.record["n"], extra)
    elif opts.executor == "debug":
        sub.outcomes = run_debug(sweep, cells, records, sub.record["n"], extra)
    elif opts.wait:
        wait_slurm(sweep, {c.id for c in cells}, records, opts.poll_s)
    return sub


class PreflightError(RuntimeError):
    pass


def save_info(records: SweepDir, sweep: Sweep) -> None:
    records.save_info({
        "name": sweep.name, "file": str(Path(sweep.path).resolve()) if sweep.path else None, "config": str(sweep.config_path),
        "root": str(sweep.root), "axes": sweep.axes, "shared_overrides": sweep.shared_overrides,
        "cli_overrides": sweep.cli_overrides,
        "halving": None if not sweep.halving else sweep.halving.record(),
        "updated": now_iso(),
        "cells": [{"id": c.id, "run_id": c.run_id, "config_hash": c.config_hash, "values": c.values,
                   "resources": c.cell_resources, "overrides": c.overrides} for c in sweep.cells]})


# ------------------------------------------------------------------------------------------ SLURM

def _minutes(t: Any) -> int:
    """SLURM time (minutes, "MM", "HH:MM:SS", "D-HH[:MM[:SS]]") in whole minutes."""
    if isinstance(t, int):
        return t
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(t).strip())
    if not m:
        raise ValueError(f"resources.time: cannot read {t!r} (minutes or D-HH:MM:SS)")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if d is not None:  # D-HH[:MM[:SS]]
        return d * 1440 + a * 60 + (b or 0) + (1 if c else 0)
    if b is None:
        return a  # MM
    if c is None:
        return a + (1 if b else 0)  # MM:SS
    return a * 60 + b + (1 if c else 0)  # HH:MM:SS


def executor_parameters(res: dict[str, Any], sweep_name: str) -> dict[str, Any]:
    """submitit AutoExecutor parameters for one resource set."""
    minutes = _minutes(res.get("time", 60))
    delay = int(res.get("signal_delay_s", 120))
    delay = max(1, min(delay, minutes * 60 // 2))  # never at the start of a short job
    gpus = res.get("gpus_per_node")
    tasks = res.get("tasks_per_node") or (gpus if gpus and gpus > 1 else 1)
    params: dict[str, Any] = {"name": job_name(sweep_name), "timeout_min": minutes, "nodes": res.get("nodes", 1),
                              "tasks_per_node": tasks}
    for k in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if res.get(k) is not None:
            params[k] = res[k]
    for k in ("partition", "account", "qos", "constraint", "array_parallelism"):
        if res.get(k) is not None:
            params[f"slurm_{k}"] = res[k]
    additional = {"signal": f"USR1@{delay}", "requeue": True, **(res.get("additional") or {})}
    if not isinstance(res.get("time", 60), int):
        additional.setdefault("time", str(res["time"]))
    params["slurm_additional_parameters"] = additional
    import imgtrain
    src = Path(imgtrain.__file__).resolve().parents[1]
    params["slurm_setup"] = [f"export PYTHONPATH={src}${{PYTHONPATH:+:$PYTHONPATH}}",
                             "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
                             *(res.get("setup") or [])]
    return params


def submit_slurm(sweep: Sweep, cells: Sequence[Cell], opts: Options, records: SweepDir, extra: Sequence[str],
                 rung: Optional[int]) -> dict[str, Any]:
    import submitit
    from imgtrain.sweep.job import CellJob
    n = len(records.submissions())
    folder = records.submitit_folder(n)
    groups: dict[str, list[Cell]] = {}
    resources: dict[str, dict[str, Any]] = {}
    for c in cells:
        res = {**c.resources, **{k: v for k, v in opts.resources.items() if v is not None}}
        key = json.dumps(res, sort_keys=True, default=str)
        groups.setdefault(key, []).append(c)
        resources[key] = res
    tasks: dict[str, str] = {}
    arrays: dict[str, int] = {}
    for i, (key, group) in enumerate(groups.items()):
        res = resources[key]
        ex = submitit.AutoExecutor(folder=folder / f"g{i}" if len(groups) > 1 else folder, cluster="slurm")
        ex.update_parameters(**executor_parameters(res, sweep.name))
        job = CellJob(int(res.get("max_requeues", 20)))
        jobs = ex.map_array(job, [str(sweep.config_path)] * len(group), [c.overrides + list(extra) for c in group])
        for c, j in zip(group, jobs):
            tasks[c.id] = str(j.job_id)
        arrays[str(jobs[0].job_id).split("_")[0]] = len(group)
    return records.add_submission({"executor": "slurm", "job_ids": list(arrays), "arrays": arrays, "tasks": tasks,
                                   "folder": str(folder), "rung": rung, "extra": list(extra)})


def wait_slurm(sweep: Sweep, cell_ids: set[str], records: SweepDir, poll_s: float = 5.0,
               timeout_s: Optional[float] = None) -> None:
    """Block until no job works on any of these cells (requeues included)."""
    slurm = SlurmQuery()
    t0, last = time.time(), ""
    missing = errors = 0
    while True:
        slurm.error = None
        active = {c: a for c, a in records.active(slurm).items() if c in cell_ids}
        if slurm.error:  # squeue failed: nothing is known, keep asking for a while
            errors += 1
            say(f"cannot ask SLURM ({slurm.error}); retrying")
            if errors >= 12:
                raise RuntimeError(f"squeue keeps failing: {slurm.error}")
            time.sleep(poll_s)
            continue
        errors = 0
        if not active:
            # squeue forgets a task for a moment while it is requeued: ask twice before believing it
            missing += 1
            if missing >= 2:
                return
        else:
            missing = 0
        line = f"{len(active)} of {len(cell_ids)} cells queued or running"
        if line != last:
            say(line)
            last = line
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise TimeoutError(f"cells still active after {timeout_s}s: {sorted(active)}")
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------ local

def _outcome(run_dir: Path, rc: Optional[int], extra: Sequence[str]) -> str:
    from imgtrain.runs import DONE, FAILED, REQUEUE_EXIT_CODE, failure_reason, read_status
    status = read_status(run_dir)
    if status == DONE:
        return "DONE"
    if status == FAILED:
        reason = (failure_reason(run_dir) or "").splitlines()
        return "FAILED" + (f": {reason[0]}" if reason else "")
    rung = next((int(o.split("=", 1)[1]) for o in extra if o.startswith("trainer.stop_after_epochs=")), None)
    if rung is not None and rc in (0, REQUEUE_EXIT_CODE):
        from imgtrain.sweep.job import epochs_done
        if epochs_done(run_dir) >= rung:
            return f"PAUSED at epoch {rung}"
    if rc == REQUEUE_EXIT_CODE:
        return "STOPPED (last.pt written; run the sweep again to resume)"
    if rc == 2:
        return "FAILED: config error (see the log)"
    return f"exit {rc}"


def _finished(cid: str, outcome: str, seconds: float) -> str:
    word, _, reason = outcome.partition(": ")
    return f"cell {cid} {word} after {seconds:.1f}s" + (f": {reason}" if reason else "")


def run_local(sweep: Sweep, cells: Sequence[Cell], parallel: int, records: SweepDir, n: int,
              extra: Sequence[str] = ()) -> dict[str, str]:
    parallel = max(1, int(parallel))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // parallel)))
    queue = list(cells)
    running: dict[str, tuple[Cell, subprocess.Popen, float, Any]] = {}
    outcomes: dict[str, str] = {}
    stopping = {"signal": None}

    def on_signal(signum, frame):
        if stopping["signal"] is None:
            stopping["signal"] = signum
            say(f"{signal.Signals(signum).name}: stopping {len(running)} running cell(s) cleanly (they write "
                f"last.pt); {len(queue)} queued cell(s) are not started; a second signal kills them at once")
            for _, p, _, _ in running.values():
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        else:
            say(f"{signal.Signals(signum).name} again: killing {len(running)} running cell(s); "
                "they resume from their last checkpoint")
            for _, p, _, _ in running.values():
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the cell's torchrun ranks and loader workers too
                except (ProcessLookupError, PermissionError):
                    pass

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while running or (queue and stopping["signal"] is None):  # after a signal: only until the running end
            while queue and len(running) < parallel and stopping["signal"] is None:
                cell = queue.pop(0)
                log = records.log_path(cell.run_id)
                log.parent.mkdir(parents=True, exist_ok=True)
                fh = open(log, "ab")
                fh.write(f"\n==== {now_iso()} sweep {sweep.name} cell {cell.id}\n".encode())
                fh.flush()
                argv = [sys.executable, str(TRAIN), "--config", str(sweep.config_path), *cell.overrides, *extra]
                # own session: a terminal's Ctrl-C reaches the driver only, which stops the cells cleanly; the cells
                # get SIGTERM (checkpoint, exit 75) if the driver itself is killed (-9) instead of running on
                p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     preexec_fn=functools.partial(die_with_parent, signal.SIGTERM, os.getpid()))
                running[cell.id] = (cell, p, time.time(), fh)
                records.update_local_cell(n, cell.id, pid=p.pid, pid_start=proc_start(p.pid), start=now_iso())
                say(f"cell {cell.id} started (pid {p.pid}): {sweep.describe(cell)}; log {log}")
            for cid, (cell, p, t0, fh) in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                fh.close()
                del running[cid]
                out = _outcome(sweep.run_dir(cell), rc, extra)
                outcomes[cid] = out
                records.update_local_cell(n, cid, end=now_iso(), exit=rc, outcome=out)
                say(_finished(cid, out, time.time() - t0))
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopping["signal"] is not None:
        say(f"stopped by {signal.Signals(stopping['signal']).name}; run the same command again to resume")
    return outcomes


def run_debug(sweep: Sweep, cells: Sequence[Cell], records: SweepDir, n: int,
              extra: Sequence[str] = ()) -> dict[str, str]:
    import traceback
    from imgtrain import config as C
    from imgtrain.engine.trainer import train
    outcomes = {}
    for cell in cells:
        say(f"cell {cell.id} (in this process): {sweep.describe(cell)}")
        records.update_local_cell(n, cell.id, start=now_iso())
        t0, rc = time.time(), None
        try:
            rc = train(C.load(sweep.config_path, list(cell.overrides) + list(extra))).exit_code
        except KeyboardInterrupt:
            raise
        except Exception:
            traceback.print_exc()
            rc = 1
        out = _outcome(sweep.run_dir(cell), rc, extra)
        outcomes[cell.id] = out
        records.update_local_cell(n, cell.id, end=now_iso(), exit=rc, outcome=out)
        say(_finished(cell.id, out, time.time() - t0))
    return outcomes


__all__ = ["Options", "launch", "select", "preflight", "submit_slurm", "run_local", "run_debug", "wait_slurm",
           "executor_parameters", "PreflightError", "header"]
