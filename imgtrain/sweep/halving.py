"""Successive halving (`schedule: halving`, `rungs: [1, 2, 4]`, `keep: 0.5`).

Every cell is configured for the whole budget (trainer.epochs = the last rung, so the learning-rate
schedule and the config hash are the same at every rung and the run id never changes). A rung is one
submission of the cells still in the race with `trainer.stop_after_epochs=<rung>`: the trainer stops
cleanly after that epoch (last.pt written, exit 75) and the cell is paused. When every cell has reached
the rung, they are ranked by the monitored metric at the rung (the latest evaluation at or before it);
the best ceil(keep x n) go on, from their checkpoints, to the next rung, and the others get a `PRUNED`
marker in their run directory (and their metric parts are compacted into one file, as a DONE run's are):

    {"reason": "val/acc1 0.4134 at epoch 1 is below the keep threshold 0.5140 (rank 3 of 4, keep 2)",
     "metric": "val/acc1", "mode": "max", "value": 0.4134, "rung": 1, "threshold": 0.514,
     "rank": 3, "of": 4, "kept": 2, "time": "..."}

The last rung runs without a stop, so the survivors finish (DONE). The controller is this process: it
waits for each rung (SLURM: polls the array) and is idempotent: run the same command again after an
interruption and it continues where the run directories say it is. A cell pruned stays pruned; a
failed cell leaves the race (unless --retry-failed runs it again). Decisions are logged in
`<root>/sweeps/<name>/halving.json`.

Needs the engine's `trainer.stop_after_epochs` (volatile: not in the config hash).
"""
from __future__ import annotations

import math
from typing import Any, Optional

from imgtrain import config as C
from imgtrain.runs import mark_pruned, metric_mode, read_pruned
from imgtrain.sweep.executors import Options, launch, say, wait_slurm
from imgtrain.sweep.records import SweepDir, now_iso
from imgtrain.sweep.spec import Cell, SpecError, Sweep
from imgtrain.sweep.status import cell_states, counts, format_counts, monitor_of

HOOK = "trainer.stop_after_epochs"


def engine_supports_halving() -> bool:
    try:
        C.check_key(HOOK)
        return True
    except C.ConfigError:
        return False


def require_hook() -> None:
    if not engine_supports_halving():
        raise SpecError(f"schedule: halving needs the engine hook '{HOOK}' (stop cleanly after N epochs, not "
                        "part of the config hash), which this version of imgtrain.config does not have")


def halving_metric(sweep: Sweep) -> tuple[str, str]:
    h = sweep.halving
    pairs = {monitor_of(c.config) for c in sweep.cells}
    if h.metric:
        if h.mode:
            return h.metric, h.mode
        try:
            return h.metric, metric_mode(h.metric)
        except ValueError:
            raise SpecError(f"sweep {sweep.name}: no known direction for metric '{h.metric}'; set mode: max or "
                            "min in the sweep file") from None
    if len(pairs) != 1:
        raise SpecError(f"sweep {sweep.name}: cells monitor different metrics {sorted(pairs)}; set metric: in the "
                        "sweep file")
    metric, mode = pairs.pop()
    return metric, h.mode or mode


def values_at(sweep: Sweep, cells: list[Cell], metric: str, rung: int) -> dict[str, Optional[float]]:
    """{cell id: value of `metric` at the latest evaluation with epoch <= rung - 1} (None: no value)."""
    import pyarrow.compute as pc
    from imgtrain.logs import read_metrics
    split, name = metric.split("/", 1)
    t = read_metrics(sweep.root, run_id=[c.run_id for c in cells], columns=["run_id", "split", "metric", "epoch",
                                                                              "value"])
    t = t.filter(pc.and_(pc.and_(pc.equal(t["split"], split), pc.equal(t["metric"], name)),
                         pc.less_equal(t["epoch"], rung - 1)))
    latest: dict[str, tuple[int, float]] = {}
    for r in t.to_pylist():
        if r["run_id"] not in latest or r["epoch"] >= latest[r["run_id"]][0]:
            latest[r["run_id"]] = (r["epoch"], r["value"])
    out = {}
    for c in cells:
        v = latest.get(c.run_id, (None, None))[1]
        out[c.id] = v if v is not None and math.isfinite(v) else None
    return out


def rank(values: dict[str, Optional[float]], mode: str) -> list[str]:
    """Cell ids best first; cells without a value last; ties broken by cell id."""
    def key(cid):
        v = values[cid]
        if v is None:
            return (1, 0.0, cid)
        return (0, -v if mode == "max" else v, cid)
    return sorted(values, key=key)


def decide(sweep: Sweep, rung: int, entered: list[Cell], metric: str, mode: str) -> dict[str, Any]:
    """Rank the cells that entered this rung; returns {"kept": [...], "pruned": {cid: marker}, ...}."""
    vals = values_at(sweep, entered, metric, rung)
    order = rank(vals, mode)
    k = sweep.halving.keep_count(len(order))
    kept = order[:k]
    threshold = vals[kept[-1]] if kept else None
    pruned = {}
    for i, cid in enumerate(order):
        if i < k:
            continue
        v = vals[cid]
        vtxt = "no value" if v is None else f"{v:.4f}"
        ttxt = "n/a" if threshold is None else f"{threshold:.4f}"
        word = "below" if mode == "max" else "above"
        pruned[cid] = {
            "reason": f"{metric} {vtxt} at epoch {rung} is {word} the keep threshold {ttxt} "
                      f"(rank {i + 1} of {len(order)}, keep {k})",
            "metric": metric, "mode": mode, "value": v, "rung": rung, "threshold": threshold,
            "rank": i + 1, "of": len(order), "kept": k, "time": now_iso()}
    return {"rung": rung, "metric": metric, "mode": mode, "values": vals, "order": order, "kept": kept,
            "pruned": pruned, "threshold": threshold, "keep": k}


def run(sweep: Sweep, opts: Options) -> int:
    """Drive the sweep through its rungs. Returns 0 when the last rung is done, 1 when it cannot go on now."""
    require_hook()
    h = sweep.halving
    metric, mode = halving_metric(sweep)
    records = SweepDir(sweep.root, sweep.name).ensure()
    log = records.halving()
    log.update(rungs_spec=h.rungs, keep=h.keep, metric=metric, mode=mode)
    say(f"successive halving: rungs {h.rungs} (epochs), keep {h.keep:g} per rung, by {metric} ({mode})")
    for ri, rung in enumerate(h.rungs):
        final = ri == len(h.rungs) - 1
        states = cell_states(sweep, metrics=True)
        pruned_before = {st.cell.id for st in states
                         if st.state == "pruned" and (read_pruned(st.run_dir) or {}).get("rung", 0) < rung}
        entered = [st for st in states if st.cell.id not in pruned_before]
        behind = [st for st in entered if st.state not in ("done", "pruned") and (st.epochs or 0) < rung]
        if behind:
            extra = [] if final else [f"{HOOK}={rung}"]
            say(f"rung {ri + 1}/{len(h.rungs)}: training {len(behind)} cell(s) to epoch {rung}")
            launch(sweep, opts, extra=extra, only={st.cell.id for st in behind}, rung=rung, quiet=True)
            if opts.executor == "slurm":
                wait_slurm(sweep, {st.cell.id for st in behind}, records, opts.poll_s)
            states = cell_states(sweep, metrics=True)
            entered = [st for st in states if st.cell.id not in pruned_before]
        failed = [st for st in entered if st.state == "failed"]
        short = [st for st in entered if st.state not in ("done", "failed", "pruned") and (st.epochs or 0) < rung]
        if short:
            say(f"rung {ri + 1}: {len(short)} cell(s) have not reached epoch {rung} "
                f"({', '.join(f'{st.cell.id} {st.state}' for st in short[:10])}); run the same command again to "
                "continue")
            return 1
        if final:
            break
        racing = [st.cell for st in entered if st.state != "failed"]
        d = decide(sweep, rung, racing, metric, mode)
        for cid, marker in d["pruned"].items():
            mark_pruned(sweep.run_dir(sweep.by_id()[cid]), marker)  # + compaction: stopped for good
        log.setdefault("rungs", {})[str(rung)] = {
            "time": now_iso(), "entered": [c.id for c in racing], "failed": [st.cell.id for st in failed],
            "values": d["values"], "kept": d["kept"], "pruned": list(d["pruned"]), "threshold": d["threshold"]}
        records.save_halving(log)
        say(f"rung {ri + 1}/{len(h.rungs)} (epoch {rung}): kept {len(d['kept'])} of {len(racing)} by {metric} "
            f"(threshold {d['threshold'] if d['threshold'] is None else round(d['threshold'], 4)}); pruned " +
            (", ".join(d["pruned"]) or "none"))
    states = cell_states(sweep)
    say("successive halving finished: " + format_counts(counts(states)))
    return 0
