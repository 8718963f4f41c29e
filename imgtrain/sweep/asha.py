"""Asynchronous successive halving (`schedule: asha`, `rungs: [1, 3, 9]`, `eta: 3`): submit the workers and
return; nothing stays in the foreground.

    python jobs/sweep.py GRID.yaml [key=value ...]                     one SLURM job array of W workers
    python jobs/sweep.py GRID.yaml --executor local --parallel W       W detached local worker processes
    python jobs/sweep.py status NAME                                   each rung: results, promotions, pruning

Every cell is configured for the whole budget (trainer.epochs = the last rung: the same learning-rate
schedule and config hash at every rung, so the run id never changes), as with `schedule: halving`. The W
workers (W = resources.array_parallelism / --array-parallelism, else one per cell; locally --parallel) share
the ledger `<root>/sweeps/<name>/asha.json` and each follows ASHA's rules on its own (asha_rules.py: promote
from the highest rung whose top 1/eta holds a paused cell, else start the next cell; a cell outside the top
1/eta of a rung no cell can still reach is PRUNED); asha_worker.py is the loop, asha_ledger.py the
transaction under an NFS-safe lock.

Submitting again is idempotent: it records nothing twice, frees the claims of workers that are gone (killed,
cancelled, never requeued) so their cells resume from last.pt, and starts only as many workers as are
missing (none while W are alive, none when the sweep is finished). `--retry-failed` puts failed cells back
at the rung they failed on.

Cells run one process each (nodes 1, one task): a worker trains its cells in its own process, one after the
other. DDP cells need a coordinator per cell that the ASHA workers do not have yet; such a sweep is refused.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Optional

from imgtrain.sweep import asha_rules as R
from imgtrain.sweep.asha_ledger import Ledger
from imgtrain.sweep.asha_worker import dead_workers, sync_pruned_markers
from imgtrain.sweep.executors import Options, PreflightError, executor_parameters, preflight, save_info, say
from imgtrain.sweep.records import SLURM_ACTIVE, SlurmQuery, SweepDir, job_name, now_iso, proc_alive, proc_start
from imgtrain.sweep.spec import REPO, SpecError, Sweep
from shards.dirlock import Locked


def _check(sweep: Sweep, opts: Options) -> None:
    from imgtrain.sweep.halving import require_hook
    require_hook()
    for c in sweep.cells:
        res = {**c.resources, **{k: v for k, v in opts.resources.items() if v is not None}}
        gpus = res.get("gpus_per_node") or 0
        if (res.get("nodes") or 1) > 1 or (res.get("tasks_per_node") or (gpus if gpus > 1 else 1)) > 1:
            raise SpecError(f"sweep {sweep.name}: schedule: asha runs each cell in one process (nodes 1, one task "
                            f"per node); cell {c.id} asks for nodes {res.get('nodes')}, gpus_per_node {gpus}, "
                            f"tasks_per_node {res.get('tasks_per_node')}")


def _workers_wanted(sweep: Sweep, opts: Options) -> int:
    if opts.executor == "local":
        return max(1, opts.parallel)
    par = opts.resources.get("array_parallelism") or sweep.resources.get("array_parallelism")
    return max(1, min(len(sweep.cells), int(par) if par else len(sweep.cells)))


def _live_workers(records: SweepDir, slurm: SlurmQuery) -> list[str]:
    """Workers of earlier submissions still queued or running (SLURM array tasks, local processes)."""
    live = []
    for s in records.submissions():
        if s.get("schedule") != "asha":
            continue
        if s.get("executor") == "slurm":
            states = slurm.states(s.get("job_ids", []), job_name(records.name))
            live += [k for k, v in states.items() if v in SLURM_ACTIVE]
        else:
            live += [f"pid {w['pid']}" for w in s.get("workers", [])
                     if proc_alive(w["pid"], w.get("pid_start"), w.get("host"))]
    return live


def _grid(sweep: Sweep) -> dict[str, str]:
    """Cell id -> config hash, in grid order (what the ledger keeps of a submission's grid)."""
    return {c.id: c.config_hash for c in sweep.cells}


def _check_ledger(sweep: Sweep, data: Optional[dict], path) -> None:
    """A sweep submitted again must keep its schedule (checked before anything is written)."""
    from imgtrain.sweep.halving import halving_metric
    if data is None:
        return
    h = sweep.halving
    metric, mode = halving_metric(sweep)
    if (data["rungs"], data["eta"], data["metric"], data["mode"]) != (h.rungs, h.eta, metric, mode):
        raise SpecError(f"sweep {sweep.name}: its ledger {path} has rungs {data['rungs']}, eta {data['eta']:g}, "
                        f"{data['metric']} ({data['mode']}); the sweep file now gives {h.rungs}, {h.eta:g}, "
                        f"{metric} ({mode}): use a new sweep name")
    left_out = [cid for cid in data["cells"] if cid not in sweep.by_id()]
    if left_out:
        raise SpecError(f"sweep {sweep.name}: cell(s) {', '.join(left_out[:8])} have started and are not in the "
                        f"grid any more ({path} holds their records, and ASHA may still promote them): give the "
                        "grid all its started cells, or use a new sweep name")
    changed = R.changed_cells(data, _grid(sweep))
    if changed:
        raise SpecError(f"sweep {sweep.name}: cell(s) {', '.join(changed[:8])} now give another config than they "
                        f"were submitted with (the base config or shared overrides changed): their records in "
                        f"{path} would mix two experiments; use a new sweep name")


def _prepare_ledger(sweep: Sweep, records: SweepDir, retry_failed: bool) -> dict:
    from imgtrain.sweep.halving import halving_metric
    h = sweep.halving
    metric, mode = halving_metric(sweep)
    ledger = Ledger(records.path)
    # who is gone is asked outside the lock (squeue may take seconds): a claim made meanwhile counts as alive
    dead = dead_workers(ledger.read())
    with ledger.transaction(
            create=lambda: R.new_ledger(sweep.name, h.rungs, h.eta, metric, mode, [])) as data:
        _check_ledger(sweep, data, ledger.path)
        R.merge_grid(data, _grid(sweep))  # changes were refused by _check_ledger
        freed = R.release_dead(data, lambda key: key not in dead)
        if freed:
            say(f"freed the cells of workers that are gone: {', '.join(freed)} (they resume from last.pt)")
        if retry_failed:
            again = R.retry_failed(data)
            if again:
                say(f"--retry-failed: {', '.join(again)} go back to the rung they failed on")
    return data


def _work_left(data: dict) -> int:
    """Jobs a new worker could take now (more may follow as results arrive)."""
    free = sum(c["state"] == R.TRAINING and c["worker"] is None for c in data["cells"].values())
    return len(R.unstarted(data)) + free + sum(len(R.promotable(data, k)) for k in range(len(data["rungs"]) - 1))


def submit(sweep: Sweep, opts: Options) -> int:
    """Start the missing workers and return (0), or say the sweep is finished."""
    _check(sweep, opts)
    records = SweepDir(sweep.root, sweep.name).ensure()
    slurm = SlurmQuery()
    with records.lock():
        before = Ledger(records.path).read()
        _check_ledger(sweep, before, records.path / "asha.json")
        if opts.preflight:  # before anything is written: a sweep that cannot run leaves no records
            cells = (before or {"cells": {}})["cells"]
            todo = [c for c in sweep.cells if cells.get(c.id, {}).get("state") in (None, R.TRAINING, R.PAUSED)]
            problems = preflight(todo) if todo else []
            if problems:
                raise PreflightError("preflight failed, nothing submitted:\n  " + "\n  ".join(problems[:20]))
        save_info(records, sweep)
        data = _prepare_ledger(sweep, records, opts.retry_failed)
        sync_pruned_markers(sweep, Ledger(records.path))
        if R.finished(data):
            say("ASHA is finished: every cell is done, pruned or failed (jobs/sweep.py status shows each rung)")
            return 0
        live = _live_workers(records, slurm)
        work = _work_left(data)
        n = min(_workers_wanted(sweep, opts) - len(live), max(work, 0))
        if n <= 0:
            say(f"{len(live)} worker(s) alive ({', '.join(live[:8])}) and {work} job(s) free now: nothing to start")
            return 0
        if opts.executor == "slurm":
            record = _submit_slurm(sweep, opts, records, n)
            say(f"submitted {n} ASHA worker(s) as SLURM job array {record['job_ids'][0]}; they share "
                f"{records.path / 'asha.json'} and finish the sweep on their own; logs in {record['folder']}")
        else:
            record = _start_local(sweep, records, n)
            say(f"started {n} ASHA worker process(es) (pids {', '.join(str(w['pid']) for w in record['workers'])}), "
                f"detached; logs in {records.path / 'logs'}")
    say(f"follow with: python jobs/sweep.py status {sweep.name} --root {sweep.root}")
    return 0


def _submit_slurm(sweep: Sweep, opts: Options, records: SweepDir, n: int) -> dict[str, Any]:
    import submitit
    from imgtrain.sweep.asha_worker import AshaWorker
    number = len(records.submissions())
    folder = records.submitit_folder(number)
    res = {**sweep.resources, **{k: v for k, v in opts.resources.items() if v is not None}}
    res.pop("array_parallelism", None)  # the array is the workers: all of them run at once
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(**executor_parameters(res, sweep.name))
    jobs = ex.map_array(AshaWorker(int(res.get("max_requeues", 20))), [str(records.path)] * n)
    array = str(jobs[0].job_id).split("_")[0]
    return records.add_submission({"executor": "slurm", "schedule": "asha", "job_ids": [array], "arrays": {array: n},
                                   "workers": [str(j.job_id) for j in jobs], "folder": str(folder)})


def _start_local(sweep: Sweep, records: SweepDir, n: int) -> dict[str, Any]:
    logs = records.path / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    workers = []
    number = len(records.submissions())
    for i in range(n):
        log = open(logs / f"asha-worker-{number}-{i}.log", "ab")
        # its own session, no parent-death signal: the workers outlive this command (nothing in the foreground)
        # --local: its key is its own process, even inside a SLURM allocation (where SLURM_JOB_ID is shared)
        p = subprocess.Popen([sys.executable, "-m", "imgtrain.sweep.asha_worker", "--local", str(records.path)],
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                             start_new_session=True, cwd=str(REPO))
        log.close()
        workers.append({"pid": p.pid, "pid_start": proc_start(p.pid), "host": os.uname().nodename,
                        "log": str(logs / f"asha-worker-{number}-{i}.log")})
    return records.add_submission({"executor": "local", "schedule": "asha", "time": now_iso(), "workers": workers})


def print_rungs(sweep: Sweep, out=None) -> None:
    """`jobs/sweep.py status`: each rung's recorded results (best first), promotions and pruning."""
    out = out or sys.stdout
    data = Ledger(sweep.dir).read()
    if data is None:
        print("ASHA: nothing recorded yet (not submitted)", file=out)
        return
    try:  # a worker killed after its decision left them to whoever comes next
        sync_pruned_markers(sweep, Ledger(sweep.dir), timeout_s=10.0)
    except (OSError, Locked) as e:
        print(f"(PRUNED markers not brought up to date now: {e})", file=out)
    rungs, metric = data["rungs"], data["metric"]
    print(f"ASHA by {metric} ({data['mode']}), eta {data['eta']:g}: "
          f"{'finished' if R.finished(data) else 'in progress'}; {len(R.unstarted(data))} cell(s) not started",
          file=out)
    for k, epoch in enumerate(rungs):
        res = data["results"].get(str(k), {})
        promoted = data["promoted"].get(str(k), [])
        last = k == len(rungs) - 1
        top = R.top_count(data, k)
        training = [cid for cid, c in data["cells"].items() if c["state"] == R.TRAINING and c["rung"] == k]
        head = (f"rung {k + 1}/{len(rungs)} (epoch {epoch}): {len(res)} result(s)" +
                ("" if last else f", top {top} go on, promoted {len(promoted)}" +
                 (" (each promoted while in the top of the results recorded then)" if len(promoted) > top else "")) +
                (f", {'closed' if R.rung_closed(data, k) else 'open'}" if not last else "") +
                (f"; training now: {', '.join(training)}" if training else ""))
        print(head, file=out)
        when = {e["cell"]: e for e in data["events"] if e["event"] == "promote" and e["rung"] == k + 1}
        for i, cid in enumerate(R.ranked(data, k)):
            c = data["cells"].get(cid, {})
            v = res[cid]["value"]
            if cid in promoted:
                e = when.get(cid)  # ASHA never takes a promotion back: say when it was earned
                word = ("promoted" if i < top or e is None else
                        f"promoted (rank {e['rank']} of {e['of']} then)")
            elif last or c.get("state") == R.DONE:
                word = "done"
            else:
                word = {R.PAUSED: "paused", R.PRUNED: "pruned", R.FAILED: "failed"}.get(c.get("state"), c.get("state"))
            print(f"  {i + 1:>3}. {cid}  {'-' if v is None else f'{v:.4f}'}  {word}", file=out)


__all__ = ["submit", "print_rungs"]
