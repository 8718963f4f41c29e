"""Where each cell of a sweep stands, read from its run directory (DONE / FAILED / PRUNED markers,
run.json, Parquet) plus the sweep's submission records (is a job still working on it?). SLURM's own
state is shown as extra information only.

Cell states:
    new      no run directory yet, nothing submitted
    pending  a submitted job (SLURM array task, local queue) has not started it yet
    running  a job is working on it
    stopped  started, not finished, and no job is working on it (preempted and not requeued, killed,
             cancelled, or paused at a halving rung): submitting the sweep again resumes it from last.pt
    done     DONE marker
    failed   FAILED marker (the reason is in it); submitted again only with --retry-failed
    pruned   PRUNED marker: stopped by successive halving or ASHA (the reason is in it)
    changed  the run directory holds another config hash than the sweep gives this cell now (the base
             config or shared overrides changed): never submitted; use a new sweep name
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain import runs
from imgtrain.runs import DONE, FAILED, INCOMPLETE, NEW, PRUNED, read_pruned
from imgtrain.sweep.records import SLURM_ACTIVE, SlurmQuery, SweepDir
from imgtrain.sweep.spec import Cell, Sweep

STATES = ("new", "pending", "running", "stopped", "done", "failed", "pruned", "changed")


def monitor_of(cfg) -> tuple[str, str]:
    """(split/metric, max|min) the trainer monitors for this config (imgtrain.runs' rule)."""
    m = runs.monitor_of(cfg, strict=False)
    return m.metric, m.mode


@dataclass
class CellState:
    cell: Cell
    state: str
    run_dir: Path
    job: Optional[str] = None  # "<array>_<task>" or "pid N" of the job working on it
    slurm_state: Optional[str] = None
    monitor: Optional[str] = None
    best: Optional[float] = None
    best_epoch: Optional[int] = None  # 1-based
    epochs: Optional[int] = None  # epochs done
    attempts: int = 0
    reason: Optional[str] = None  # FAILED / PRUNED / changed
    extra: dict[str, Any] = field(default_factory=dict)


def cell_states(sweep: Sweep, *, slurm: Optional[SlurmQuery] = None, metrics: bool = False,
                records: Optional[SweepDir] = None) -> list[CellState]:
    from imgtrain.logs.runinfo import read_run
    records = records or SweepDir(sweep.root, sweep.name)
    slurm = slurm or SlurmQuery()
    active = records.active(slurm) if (records.path / "submissions.json").exists() else {}
    out = []
    for cell in sweep.cells:
        rdir = sweep.run_dir(cell)
        status = runs.run_status(rdir)
        st = CellState(cell, "new", rdir)
        info = None
        if status != NEW:
            try:
                info = read_run(rdir)
            except ValueError:
                info = None
        if info:
            st.attempts = len(info.get("attempts", []))
        changed = info is not None and info.get("config_hash") not in (None, cell.config_hash)
        act = active.get(cell.id)
        if act and status not in (DONE, PRUNED):
            st.state, st.job, st.slurm_state = act["state"], act["job"], act.get("slurm_state")
        elif changed:
            st.state = "changed"
            st.reason = f"run dir holds config hash {info.get('config_hash')}, the sweep gives {cell.config_hash}"
        elif status == PRUNED:
            st.state, st.reason = "pruned", (read_pruned(rdir) or {}).get("reason")
        elif status == DONE:
            st.state = "done"
        elif status == FAILED:
            st.state = "failed"
            reason = runs.failure_reason(rdir) or ""
            st.reason = reason.splitlines()[0] if reason else None
        elif status == INCOMPLETE:
            st.state = "stopped"
        out.append(st)
    if metrics:
        fill_metrics(sweep, out)
    return out


def fill_metrics(sweep: Sweep, states: list[CellState]) -> None:
    """Best monitored metric of each cell: summary.parquet when the run is DONE, else its Parquet logs."""
    import pyarrow.compute as pc
    from imgtrain.logs import read_metrics, read_summary_row

    need = []
    for st in states:
        st.monitor, mode = monitor_of(st.cell.config)
        st.extra["mode"] = mode
        summ = st.run_dir / "summary.parquet"
        if summ.is_file():
            try:
                row = read_summary_row(st.run_dir)  # its JSON copy: a 1,000-cell status reads 1,000 summaries
                st.monitor = row["monitor"] or st.monitor
                st.best = row["best"]
                st.best_epoch = None if row["best_epoch"] is None or row["best_epoch"] < 0 else row["best_epoch"] + 1
                st.epochs = row["epochs"]
                continue
            except Exception:
                pass
        if (st.run_dir / "metrics").is_dir():
            need.append(st)
    if not need:
        return
    table = read_metrics(sweep.root, run_id=[st.cell.run_id for st in need],
                         columns=["run_id", "split", "metric", "epoch", "value"])
    rows: dict[str, dict[str, list]] = {}
    for r in table.filter(pc.or_(pc.equal(table["split"], "val"),
                                 pc.and_(pc.equal(table["split"], "train"),
                                         pc.equal(table["metric"], "epoch_loss")))).to_pylist():
        rows.setdefault(r["run_id"], {}).setdefault(f"{r['split']}/{r['metric']}", []).append(r)
    for st in need:
        mine = rows.get(st.cell.run_id, {})
        epochs = mine.get("train/epoch_loss", [])
        st.epochs = max((r["epoch"] for r in epochs), default=-1) + 1
        vals = [r for r in mine.get(st.monitor, []) if r["value"] is not None and math.isfinite(r["value"])]
        if vals:
            pick = max if st.extra["mode"] == "max" else min
            best = pick(vals, key=lambda r: r["value"])
            st.best, st.best_epoch = best["value"], best["epoch"] + 1


def counts(states: Sequence[CellState]) -> dict[str, int]:
    out = {s: 0 for s in STATES}
    for st in states:
        out[st.state] += 1
    return out


def format_counts(c: dict[str, int]) -> str:
    shown = [s for s in STATES if s != "changed" or c[s]]
    return "  ".join(f"{s} {c[s]}" for s in shown) + f"  (total {sum(c.values())})"


def _fmt(v: Optional[float]) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def _table(headers: list[str], rows: list[list[str]], out) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    print(line(headers), file=out)
    for r in rows:
        print(line(r), file=out)


def print_cells(sweep: Sweep, states: list[CellState], *, out=None, dry_run: bool = False,
                show_metric: bool = True, limit: Optional[int] = None) -> None:
    out = out or sys.stdout
    headers = ["cell", "run id", "status", "config hash"]
    if show_metric:
        headers += ["epochs", "best", "job"]
    headers.append("overrides")
    rows = []
    shown = states if limit is None else states[:limit]
    for st in shown:
        r = [st.cell.id, st.cell.run_id, st.state, st.cell.config_hash]
        if show_metric:
            metric = _fmt(st.best) if st.best is None else f"{_fmt(st.best)}@{st.best_epoch}"
            job = st.job or "-"
            if st.slurm_state:
                job += f" ({st.slurm_state})"
            r += ["-" if st.epochs is None else str(st.epochs), metric, job]
        r.append(sweep.describe(st.cell))
        rows.append(r)
    _table(headers, rows, out)
    if limit is not None and len(states) > limit:
        print(f"... {len(states) - limit} more cells", file=out)


def header(sweep: Sweep) -> str:
    n = len(sweep.cells)
    parts = [f"sweep {sweep.name}: {n} cell{'' if n == 1 else 's'}", f"base {_rel(sweep.config_path)}",
             f"root {sweep.root}"]
    if sweep.halving:
        h = sweep.halving
        parts.append(f"asynchronous successive halving (ASHA) rungs {h.rungs} eta {h.eta:g}" if h.asha else
                     f"successive halving rungs {h.rungs} keep {h.keep:g}")
    return " | ".join(parts)


def _rel(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def print_status(sweep: Sweep, *, out=None, slurm: Optional[SlurmQuery] = None) -> list[CellState]:
    out = out or sys.stdout
    slurm = slurm or SlurmQuery()
    states = cell_states(sweep, slurm=slurm, metrics=True)
    print(header(sweep), file=out)
    monitors = {st.monitor for st in states if st.monitor}
    if monitors:
        print(f"monitor: {', '.join(sorted(monitors))} (best value@epoch, from the run directories)", file=out)
    print_cells(sweep, states, out=out)
    for st in states:
        if st.state in ("failed", "pruned", "changed") and st.reason:
            print(f"  {st.cell.id} {st.state}: {st.reason}", file=out)
    print(format_counts(counts(states)), file=out)
    if sweep.halving and sweep.halving.asha:
        from imgtrain.sweep.asha import print_rungs
        print_rungs(sweep, out=out)
    if slurm.error:
        print(f"(SLURM state unavailable: {slurm.error})", file=out)
    return states


def cancel(sweep: Sweep, *, out=None, slurm: Optional[SlurmQuery] = None) -> int:
    """scancel the SLURM arrays / tasks still queued or running, SIGTERM local runs; returns how many
    cells were affected."""
    import signal as _signal
    from imgtrain.sweep.records import proc_alive
    out = out or sys.stdout
    slurm = slurm or SlurmQuery()
    records = SweepDir(sweep.root, sweep.name)
    with records.lock():
        active = records.active(slurm)
        subs = records.submissions()
        tasks = [a["job"] for a in active.values() if not a["job"].startswith("pid ")]
        # whole arrays: every array belongs to one submission of this sweep, and only its live tasks are affected
        jobs = sorted({t.split("_")[0] for t in tasks}, key=lambda j: (len(j), j))
        if jobs:
            slurm.cancel(jobs)
        pids = []
        for s in subs:
            if s.get("executor") in ("local", "debug"):
                for c in s.get("cells", {}).values():
                    if c.get("pid") and not c.get("end") and proc_alive(c["pid"], c.get("pid_start"), s.get("host")):
                        pids.append(c["pid"])  # SIGTERM: the run writes last.pt and exits 75
                if proc_alive(s.get("pid"), s.get("pid_start"), s.get("host")):
                    pids.append(s["pid"])  # the sweep process forwards it and starts nothing more
        for s in subs:  # ASHA workers, busy or not: the array (or process) itself
            if s.get("schedule") != "asha":
                continue
            if s.get("executor") == "slurm":
                live = slurm.states(s.get("job_ids", []), None)
                extra = sorted({k.split("_")[0] for k, v in live.items() if v in SLURM_ACTIVE} - set(jobs))
                if extra:
                    slurm.cancel(extra)
                    jobs += extra
            else:
                pids += [w["pid"] for w in s.get("workers", [])
                         if proc_alive(w["pid"], w.get("pid_start"), w.get("host")) and w["pid"] not in pids]
        for pid in pids:
            try:
                os.kill(pid, _signal.SIGTERM)
            except ProcessLookupError:
                pass
        for s in subs:
            if any(a.get("submission") == s.get("n") for a in active.values()):
                s["cancelled"] = s.get("cancelled") or []
                s["cancelled"] += [cid for cid, a in active.items() if a.get("submission") == s.get("n")]
        records.save_submissions(subs)
    if slurm.error and jobs:
        print(f"scancel failed: {slurm.error}", file=out)
    n = len(active)
    print(f"cancelled {n} cell(s): " + (", ".join(f"SLURM array {j} ({sum(t.split('_')[0] == j for t in tasks)} "
                                                 "live tasks)" for j in jobs) if jobs else "no SLURM jobs") +
          (f"; SIGTERM to pids {', '.join(map(str, pids))}" if pids else ""), file=out)
    return n
