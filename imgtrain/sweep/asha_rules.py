"""ASHA's rules on the sweep's ledger, a plain dict (Li et al., "A System for Massively Parallel Hyperparameter
Tuning", MLSys 2020, Algorithm 2), with no I/O: asha_ledger.py reads and writes the dict under its lock,
asha_worker.py acts on what these functions decide.

A free worker asks `next_job`: the job it held before a requeue, else a job whose worker is gone, else a
promotion (from the highest rung down: a paused cell among the top floor(n/eta) of the n results recorded at
that rung, not promoted yet; the best first), else the next cell of the grid that has not started, else
nothing. A cell's job writes its value at the rung it reached with `record_result` (once: a second record of
the same cell and rung is ignored, so a requeued job never decides twice); the cell then waits there (paused)
until a later result promotes it, or it is pruned when its rung is *closed*: no cell can still add a result
there (every cell started, none training at or below the rung, nothing promotable below it).

Ledger (`<root>/sweeps/<name>/asha.json`):
    rungs, eta, metric, mode        the schedule (epochs per rung; rung k is rungs[k])
    order                           cell ids in grid order (the order new cells start in)
    cells    {id: {"state": training|paused|done|pruned|failed, "rung": k, "worker": key|null}}
             (a cell not in `cells` has not started; `rung` is the rung it trains toward or waits at)
    results  {"k": {id: {"value": v|null, "seq": n}}}    what each cell reached at rung k, in arrival order
    promoted {"k": [id, ...]}                           promoted from rung k to k + 1, in order
    hashes   {id: config hash}                          what each cell was submitted with (a change is refused)
    events   [{"seq", "time", "event", "cell", "rung", ...}]   event: grid (the order of the cells from then on,
             no cell), start, resume, reclaim, release, promote, result, prune, unprune, fail, retry
    seq                             the last event number
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Optional

TRAINING, PAUSED, DONE, PRUNED, FAILED = "training", "paused", "done", "pruned", "failed"


def new_ledger(sweep: str, rungs: list[int], eta: float, metric: str, mode: str, order: list[str]) -> dict:
    ledger = {"version": 1, "sweep": sweep, "rungs": list(rungs), "eta": float(eta), "metric": metric, "mode": mode,
              "order": list(order), "cells": {}, "results": {}, "promoted": {}, "events": [], "seq": 0}
    if order:
        _event(ledger, "grid", None, 0, order=list(order))
    return ledger


def merge_grid(ledger: dict, grid: dict[str, Optional[str]]) -> list[str]:
    """The grid of a submission (cell id -> config hash, in grid order) into the ledger. Cells added since (a
    sweep submitted again with more values) start after the others; cells left out that have not started
    are dropped (those that have keep their records). Returns the cells whose config hash differs from the
    one recorded (the base config or shared overrides changed): the caller refuses, and nothing changes."""
    changed = changed_cells(ledger, grid)
    if changed:
        return changed
    hashes = ledger.setdefault("hashes", {})
    order = ([c for c in ledger["order"] if c in grid or c in ledger["cells"]] +
             [c for c in grid if c not in ledger["order"]])
    if order != ledger["order"]:
        ledger["order"] = order
        _event(ledger, "grid", None, 0, order=list(order))
    hashes.update({c: h for c, h in grid.items() if h is not None})
    close_rungs(ledger)  # new cells reopen rung 1 (its pruned cells are paused again), dropped ones may close it
    return []


def changed_cells(ledger: dict, grid: dict[str, Optional[str]]) -> list[str]:
    """Cells of `grid` (id -> config hash) recorded with another config hash."""
    hashes = ledger.get("hashes", {})
    return [c for c, h in grid.items() if h is not None and hashes.get(c) not in (None, h)]


def retry_failed(ledger: dict) -> list[str]:
    """Failed cells go back to the rung they failed on (a free claim: the next worker resumes them)."""
    again = [cid for cid, c in ledger["cells"].items() if c["state"] == FAILED]
    for cid in again:
        ledger["cells"][cid].update(state=TRAINING, worker=None)
        _event(ledger, "retry", cid, ledger["cells"][cid]["rung"])
    close_rungs(ledger)
    return again


def _event(ledger: dict, event: str, cell: Optional[str], rung: int, **extra: Any) -> dict:
    ledger["seq"] += 1
    e = {"seq": ledger["seq"], "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, "cell": cell,
         "rung": rung, **extra}
    ledger["events"].append(e)
    return e


def ranked(ledger: dict, k: int) -> list[str]:
    """Cells with a result at rung k, best first (no value last; ties: the earlier result first)."""
    res = ledger["results"].get(str(k), {})
    sign = -1.0 if ledger["mode"] == "max" else 1.0

    def key(cid: str):
        v = res[cid]["value"]
        return (1, 0.0, res[cid]["seq"]) if v is None else (0, sign * v, res[cid]["seq"])
    return sorted(res, key=key)


def top_count(ledger: dict, k: int) -> int:
    """floor(n / eta) of the n results at rung k: how many of them go on (ASHA's rule)."""
    n = len(ledger["results"].get(str(k), {}))
    return int(math.floor(n / ledger["eta"] + 1e-9))


def promotable(ledger: dict, k: int) -> list[str]:
    """Paused cells at rung k among its top floor(n/eta), not promoted yet, best first."""
    if k >= len(ledger["rungs"]) - 1:
        return []
    done = set(ledger["promoted"].get(str(k), []))
    cells, res = ledger["cells"], ledger["results"].get(str(k), {})
    return [c for c in ranked(ledger, k)[:top_count(ledger, k)]
            if c not in done and res[c]["value"] is not None  # no value (no evaluation, NaN): never goes on
            and cells.get(c, {}).get("state") == PAUSED and cells[c]["rung"] == k]


def unstarted(ledger: dict) -> list[str]:
    return [c for c in ledger["order"] if c not in ledger["cells"]]


def _claim(ledger: dict, cid: str, rung: int, worker: str) -> None:
    ledger["cells"][cid] = {"state": TRAINING, "rung": rung, "worker": worker}


def next_job(ledger: dict, worker: str, alive: Optional[Callable[[str], bool]] = None) -> Optional[tuple[str, int]]:
    """(cell id, rung index to train it to) for this worker, recorded as its claim; None: nothing to do.
    `alive(worker key)`: asked, only when nothing else is left, whether another worker's claim is still live
    (a job killed and not requeued leaves its claim behind; its cell is then taken over)."""
    cells = ledger["cells"]
    for cid, c in cells.items():  # requeued: the same worker key finds its own claim
        if c["state"] == TRAINING and c["worker"] == worker:
            _event(ledger, "resume", cid, c["rung"], worker=worker)
            return cid, c["rung"]
    for cid, c in cells.items():  # released by a submission that found its worker gone
        if c["state"] == TRAINING and c["worker"] is None:
            _claim(ledger, cid, c["rung"], worker)
            _event(ledger, "reclaim", cid, c["rung"], worker=worker)
            return cid, c["rung"]
    for k in range(len(ledger["rungs"]) - 2, -1, -1):  # ASHA: the highest rung with a promotion first
        cands = promotable(ledger, k)
        if cands:
            cid = cands[0]
            ledger["promoted"].setdefault(str(k), []).append(cid)
            _claim(ledger, cid, k + 1, worker)
            rank = ranked(ledger, k).index(cid) + 1
            _event(ledger, "promote", cid, k + 1, worker=worker, rank=rank,
                   of=len(ledger["results"][str(k)]), top=top_count(ledger, k))
            close_rungs(ledger)  # the last promotion out of a rung may close it
            return cid, k + 1
    fresh = unstarted(ledger)
    if fresh:
        _claim(ledger, fresh[0], 0, worker)
        _event(ledger, "start", fresh[0], 0, worker=worker)
        close_rungs(ledger)
        return fresh[0], 0
    if alive is not None:
        for cid, c in cells.items():
            if c["state"] == TRAINING and c["worker"] != worker and not alive(c["worker"]):
                old = c["worker"]
                _claim(ledger, cid, c["rung"], worker)
                _event(ledger, "reclaim", cid, c["rung"], worker=worker, previous=old)
                return cid, c["rung"]
    return None


def give_back(ledger: dict, cid: str, worker: str, reason: str) -> bool:
    """This worker's claim on the cell becomes free again (its run is busy elsewhere: a claim taken over from
    a worker that was only thought gone). False when it is not this worker's claim."""
    c = ledger["cells"].get(cid, {})
    if c.get("state") != TRAINING or c.get("worker") != worker:
        return False
    c["worker"] = None
    _event(ledger, "release", cid, c["rung"], worker=worker, reason=reason[:500])
    return True


def release_dead(ledger: dict, alive: Callable[[str], bool]) -> list[str]:
    """Claims whose worker is gone become free (a submission does this before it starts new workers)."""
    freed = []
    for cid, c in ledger["cells"].items():
        if c["state"] == TRAINING and c["worker"] is not None and not alive(c["worker"]):
            c["worker"] = None
            freed.append(cid)
    return freed


def record_result(ledger: dict, cid: str, k: int, value: Optional[float], *, finished: bool = False,
                  worker: Optional[str] = None) -> bool:
    """The cell's value at rung k (the monitored metric's latest evaluation at or before the rung's epoch).
    `finished`: the run ended (DONE: the last rung, or stopped early). Returns False, and nothing changes,
    when rung k already holds a result of this cell (a requeued job that finished twice) or the cell is not
    this worker's claim at rung k any more (taken over meanwhile: the new holder records it)."""
    c = ledger["cells"].get(cid, {})
    if c.get("state") != TRAINING or c.get("rung") != k or (worker is not None and c.get("worker") != worker):
        return False
    res = ledger["results"].setdefault(str(k), {})
    if cid in res:
        return False
    if value is not None and not math.isfinite(value):
        value = None
    e = _event(ledger, "result", cid, k, value=value, worker=worker, finished=finished)
    res[cid] = {"value": value, "seq": e["seq"]}
    ledger["cells"][cid] = {"state": DONE if finished else PAUSED, "rung": k, "worker": None}
    close_rungs(ledger)
    return True


def record_failure(ledger: dict, cid: str, reason: str, worker: Optional[str] = None) -> None:
    c = ledger["cells"].setdefault(cid, {"state": FAILED, "rung": 0, "worker": None})
    c.update(state=FAILED, worker=None)
    _event(ledger, "fail", cid, c["rung"], worker=worker, reason=reason[:500])
    close_rungs(ledger)


def rung_closed(ledger: dict, k: int) -> bool:
    """No cell can still add a result at rung k."""
    if unstarted(ledger):
        return False
    if any(c["state"] == TRAINING and c["rung"] <= k for c in ledger["cells"].values()):
        return False
    return not any(promotable(ledger, j) for j in range(k))


def close_rungs(ledger: dict) -> list[str]:
    """Prune the paused cells of every closed rung (below the last) that are outside its top floor(n/eta)
    or have no value. A rung that is open again (cells added to the grid, a failed cell retried) gets its
    pruned cells back as paused (an `unprune` event): pruning is ASHA's pause made final only while no result
    can still arrive. Returns the cells pruned now; each has a `prune` event with its rank."""
    pruned = []
    for k in range(len(ledger["rungs"]) - 1):
        if not rung_closed(ledger, k):
            for cid, c in ledger["cells"].items():
                if c["state"] == PRUNED and c["rung"] == k:
                    c["state"] = PAUSED
                    _event(ledger, "unprune", cid, k)
            continue
        order = ranked(ledger, k)
        top = top_count(ledger, k)
        res = ledger["results"].get(str(k), {})
        threshold = res[order[top - 1]]["value"] if top else None
        for rank, cid in enumerate(order, 1):
            c = ledger["cells"][cid]
            if rank <= top and res[cid]["value"] is not None:
                continue
            if c["state"] == PAUSED and c["rung"] == k:
                c["state"] = PRUNED
                _event(ledger, "prune", cid, k, value=res[cid]["value"], rank=rank, of=len(order), top=top,
                       threshold=threshold)
                pruned.append(cid)
    return pruned


def prune_marker(ledger: dict, cid: str) -> dict:
    """What the run directory's PRUNED marker says (the cell's prune event, in words)."""
    e = next(e for e in reversed(ledger["events"]) if e["event"] == "prune" and e["cell"] == cid)
    k, metric, mode = e["rung"], ledger["metric"], ledger["mode"]
    epoch = ledger["rungs"][k]
    vtxt = "no value" if e["value"] is None else f"{e['value']:.4f}"
    ttxt = "n/a" if e["threshold"] is None else f"{e['threshold']:.4f}"
    return {"reason": f"ASHA: {metric} {vtxt} at epoch {epoch} is rank {e['rank']} of {e['of']} at that rung; "
                      f"only the top {e['top']} (1/eta, eta {ledger['eta']:g}) go on ({mode}; threshold {ttxt})",
            "metric": metric, "mode": mode, "value": e["value"], "rung": epoch, "threshold": e["threshold"],
            "rank": e["rank"], "of": e["of"], "kept": e["top"], "time": e["time"], "schedule": "asha"}


def finished(ledger: dict) -> bool:
    """Every cell started and none is training or promotable: the sweep is over."""
    if unstarted(ledger):
        return False
    if any(c["state"] == TRAINING for c in ledger["cells"].values()):
        return False
    return not any(promotable(ledger, k) for k in range(len(ledger["rungs"]) - 1))
