"""RunSet -> leaderboard: each run's monitored metric, its best value recomputed from the Parquet rows,
the varied config keys, the last test values; one row per run, best first.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgtrain.analysis.load import AnalysisWarning, RunInfo, RunSet
from imgtrain.logs.metric_reader import run_offsets as _run_offsets
from imgtrain.runs import metric_mode
from imgtrain.runs import monitor as _monitor

_COUNTS = {"samples", "skipped", "dropped"}  # logged alongside metrics but not metrics to rank by


def monitor_of(run: RunInfo, has_val: bool = True) -> tuple[str, str]:
    """(split/metric, 'max'|'min') the run is judged by: the summary's monitor, else the trainer's rule
    (imgtrain.runs.monitor) applied to its config."""
    cfg = run.config
    metric = (run.summary or {}).get("monitor") or cfg.get("cfg.trainer.monitor")
    m = _monitor(metric, cfg.get("cfg.trainer.monitor_mode"), task=cfg.get("cfg.task.name"), has_val=has_val,
                 strict=False)
    return m.metric, m.mode


def _mode_of(metric: str) -> str:
    """metric_mode for a metric asked for by name (--metric): an unknown direction is a LookupError,
    which the command line reports as a usage error."""
    try:
        return metric_mode(metric)
    except ValueError as e:
        raise LookupError(str(e).replace("set trainer.monitor_mode", "rank by a metric of known direction")) \
            from None


def _equal(col: pa.ChunkedArray | pa.Array, value: str) -> np.ndarray:
    """Boolean mask of col == value; a dictionary column is compared by its codes."""
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
    if not pa.types.is_dictionary(col.type):
        return pc.fill_null(pc.equal(col, value), False).to_numpy(zero_copy_only=False)
    codes = [i for i, v in enumerate(col.dictionary.to_pylist()) if v == value]
    indices = col.indices.to_numpy(zero_copy_only=False)
    return indices == codes[0] if len(codes) == 1 else np.isin(indices, codes)


def _select(table: pa.Table, split: str, metric: Optional[str] = None,
            columns: Sequence[str] = ("run_id", "metric", "epoch", "step", "value")) -> pa.Table:
    """The rows of one split (and metric), narrowed to `columns` before filtering (cheaper)."""
    mask = _equal(table["split"], split)
    if metric is not None:
        mask &= _equal(table["metric"], metric)
    return table.select(list(columns)).filter(pa.array(mask))


def best_values(runs: RunSet, monitors: dict[str, tuple[str, str]]) -> dict[str, tuple[float, int]]:
    """run_id -> (best value, its epoch) of each run's (split/metric, mode) over its Parquet rows;
    the earliest epoch wins a tie, as the trainer's strict-improvement rule does. Non-finite values
    are ignored (the trainer ignores them too). Runs without a value are left out."""
    out = {}
    by_monitor: dict[tuple[str, str], list[str]] = {}
    for rid, mon in monitors.items():
        by_monitor.setdefault(mon, []).append(rid)
    for (monitor, mode), rids in by_monitor.items():
        split, _, metric = monitor.partition("/")
        t = _select(runs.metrics, split, metric)
        if len(rids) < len(runs.offsets):
            t = t.filter(pc.is_in(t["run_id"], pa.array(rids, pa.string())))
        values, epochs = t["value"].to_numpy(), t["epoch"].to_numpy()
        for rid, (s, n) in _run_offsets(t).items():
            v = values[s:s + n]
            ok = np.isfinite(v)
            if not ok.any():
                continue
            v = np.where(ok, v, -np.inf if mode == "max" else np.inf)
            i = int(np.argmax(v) if mode == "max" else np.argmin(v))
            out[rid] = (float(v[i]), int(epochs[s + i]))
    return out


def _last_values(runs: RunSet, split: str) -> dict[str, dict[str, float]]:
    """run_id -> {metric: value at the highest step} for `split`, skipping counts and per-class rows."""
    t = _select(runs.metrics, split)
    out: dict[str, dict[str, float]] = {}
    for rid, metric, value in zip(t["run_id"].to_pylist(), t["metric"].to_pylist(), t["value"].to_pylist()):
        if "/" not in metric and metric not in _COUNTS:
            out.setdefault(rid, {})[metric] = value  # rows are in step order: the last one stays
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


def varied_keys(configs: Sequence[dict], ignore: Sequence[str] = ("output.",)) -> list[str]:
    """Config keys (without the cfg. prefix) whose values differ across `configs` (dicts of cfg.*
    keys), in config order. A key missing from some configs counts as differing. output.* keys
    (run id, cell, paths) always differ and are not hyperparameters."""
    keys: dict[str, None] = {}
    for c in configs:
        keys.update(dict.fromkeys(c))
    candidates = _differing(configs, keys)
    out = []
    for k in keys:
        name = k[4:]
        if k not in candidates or not k.startswith("cfg.") or any(name.startswith(p) for p in ignore):
            continue
        if len({_hashable(c.get(k)) for c in configs}) > 1:  # NaN == NaN here, unlike in `candidates`
            out.append(name)
    return out


def _differing(configs: Sequence[dict], keys: Iterable[str]) -> set[str]:
    """Keys whose value is not the same in every config (a superset: NaN differs from itself). A set
    difference of dict items per config instead of one lookup per key and config: 1,000 configs of
    ~100 keys each differ in a handful."""
    first = configs[0].items() if configs else {}.items()
    try:
        out: set[str] = set()
        for c in configs[1:]:
            out.update(k for k, _ in c.items() ^ first)
        return out
    except TypeError:  # an unhashable value (a foreign summary): compare every key
        return set(keys)


def _column(values: list) -> pa.Array:
    """An Arrow column for mixed Python values: numbers stay numbers, anything else mixed becomes text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def leaderboard(runs: RunSet, metric: Optional[str] = None) -> pa.Table:
    """One row per run, best first (a tie: the earlier best epoch first): rank, run_id, sweep, status,
    monitor, best, best_epoch (counted from 1, as the logs, plots and `sweep status` show epochs; the
    Parquet `epoch` column and summary.parquet's best_epoch count from 0), epochs, the varied config
    keys, test/<metric> (last test values), wall_s, img_per_s, note (why a run FAILED or was PRUNED).

    `best` is recomputed from the Parquet rows of the run's monitored metric (or `metric`, a
    split/name, for every run), so runs without a summary (running, failed, pruned) show their best
    so far. Where a summary exists its `best`/`best_epoch` must agree; if not, AnalysisWarning."""
    val_runs = set(_select_ids(runs, "val"))
    monitors = {}
    for r in runs.runs:
        monitors[r.run_id] = monitor_of(r, r.run_id in val_runs or r.summary is not None)
        if metric is not None and metric != monitors[r.run_id][0]:
            monitors[r.run_id] = (metric, _mode_of(metric))
    best = best_values(runs, monitors)
    _check_summaries(runs, monitors, best)
    test = _last_values(runs, "test")
    epoch_rows = _select(runs.metrics, "train", "epoch_loss")
    last_epoch = epoch_rows["epoch"].to_numpy()
    epochs_seen = {rid: int(last_epoch[s + n - 1]) for rid, (s, n) in _run_offsets(epoch_rows).items()}
    varied = varied_keys([r.config for r in runs.runs])
    test_names = list(dict.fromkeys(m for r in runs.runs for m in _test_names(r, test)))

    order_of_monitor = {m: i for i, m in enumerate(_by_count(m for m, _ in monitors.values()))}

    def rank_key(r: RunInfo):  # best value first; a tie goes to the run that got there in fewer epochs
        monitor, mode = monitors[r.run_id]
        value, epoch = best.get(r.run_id, (math.nan, 0))
        missing = not math.isfinite(value)
        score = 0.0 if missing else (-value if mode == "max" else value)
        return order_of_monitor[monitor], missing, score, epoch, r.run_id

    ranked = sorted(runs.runs, key=rank_key)
    cols: dict[str, list] = {name: [] for name in ("rank", "run_id", "sweep", "status", "monitor", "best",
                                                   "best_epoch", "epochs")}
    cols.update({k: [] for k in varied})
    cols.update({f"test/{m}": [] for m in test_names})
    cols.update({"wall_s": [], "img_per_s": [], "note": []})
    for i, r in enumerate(ranked, 1):
        s = r.summary or {}
        value, epoch = best.get(r.run_id, (None, None))
        seen = epochs_seen.get(r.run_id)
        row = {"rank": i, "run_id": r.run_id, "sweep": r.sweep, "status": r.status,
               "monitor": monitors[r.run_id][0], "best": value, "best_epoch": None if epoch is None else epoch + 1,
               "epochs": s.get("epochs", None if seen is None else seen + 1),
               "wall_s": s.get("wall_s"), "img_per_s": s.get("img_per_s"),
               "note": "; ".join(n for n in (r.reason, r.world_text() and f"world size {r.world_text()}") if n) or None}
        row.update({k: r.config.get(f"cfg.{k}") for k in varied})
        tv = {**{k[5:]: v for k, v in s.items() if k.startswith("test/")}, **test.get(r.run_id, {})}
        row.update({f"test/{m}": tv.get(m) for m in test_names})
        for k in cols:
            cols[k].append(row[k])
    types = {"rank": pa.int64(), "best": pa.float64(), "best_epoch": pa.int64(), "epochs": pa.int64(),
             "wall_s": pa.float64(), "img_per_s": pa.float64(), **{f"test/{m}": pa.float64() for m in test_names}}
    arrays = [pa.array(v, types[k]) if k in types else
              (pa.array(v, pa.string()) if k in ("run_id", "sweep", "status", "monitor", "note") else _column(v))
              for k, v in cols.items()]
    meta = {"varied": json.dumps(varied), "modes": json.dumps(dict(sorted(set(monitors.values()))))}
    return pa.Table.from_arrays(arrays, names=list(cols)).replace_schema_metadata(meta)


def _select_ids(runs: RunSet, split: str) -> list[str]:
    return list(_run_offsets(_select(runs.metrics, split, columns=["run_id"])))


def _test_names(run: RunInfo, test: dict) -> list[str]:
    """The summary's test/* names first (the task's order), then any only the Parquet rows have."""
    names = [k[5:] for k in (run.summary or {}) if k.startswith("test/") and "/" not in k[5:]
             and k[5:] not in _COUNTS]
    return names + list(test.get(run.run_id, {}))


def _by_count(items: Iterable[str]) -> list[str]:
    counts: dict[str, int] = {}
    for x in items:
        counts[x] = counts.get(x, 0) + 1
    return sorted(counts, key=lambda x: -counts[x])


def _check_summaries(runs: RunSet, monitors: dict, best: dict) -> None:
    for r in runs.runs:
        s = r.summary
        if not s or s.get("best") is None or s.get("monitor") != monitors[r.run_id][0] or r.run_id not in best:
            continue
        value, epoch = best[r.run_id]
        if not math.isclose(value, s["best"], rel_tol=1e-9, abs_tol=1e-12) or epoch != s.get("best_epoch"):
            said = s.get("best_epoch")  # epochs from 1 here too, as in every message a user reads
            warnings.warn(f"{r.run_id}: summary.parquet says best {s['monitor']} {s['best']} at epoch "
                          f"{None if said is None else said + 1}, its Parquet metrics give {value} at epoch "
                          f"{epoch + 1} "
                          "(trainer.min_delta > 0, or lost metric parts?)", AnalysisWarning, stacklevel=3)


def board_varied(board: pa.Table) -> list[str]:
    """The varied config keys a leaderboard was built with (its columns named by dotted key)."""
    meta = board.schema.metadata or {}
    return json.loads(meta.get(b"varied", b"[]"))


def board_mode(board: pa.Table, monitor: str) -> str:
    meta = board.schema.metadata or {}
    return json.loads(meta.get(b"modes", b"{}")).get(monitor) or _mode_of(monitor)
