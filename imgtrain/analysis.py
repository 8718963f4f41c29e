"""Runs -> tables and figures (DESIGN §2, §3). Importable from notebooks; jobs/analyze.py wraps it.

    runs = load_runs(root, sweep="s1")       # every run dir: status, config, summary, metric rows
    board = leaderboard(runs)                # pyarrow Table, one row per run, best first
    fig = plot_heatmap(board, "optim.name", "model.activation")
    result = analyze(root, sweep="s1")       # everything, written under <root>/analysis/s1/

Metric rows come from `imgtrain.logs.read_metrics` (highest attempt wins per step), only the columns
the analysis uses. A finished run's parts are compacted into one file when it ends (a running run's
every 16 parts), so a cold read is about one file per run; `load_runs` also keeps what it read in a
cache directory (analyze() uses
<out>/.cache): metric files are never rewritten once closed (a compaction writes a new name), so a
run whose file list, summary and config are unchanged is served from the cache and only changed runs
are read again.
Plain functions over pyarrow tables; matplotlib through its Agg canvas (no pyplot state), no pandas.
"""
from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgtrain.logs import SCHEMA, UnreadablePartWarning, atomic_write_bytes, iter_run_dirs, read_metrics
from imgtrain.logs.atomic import is_temp_name
from imgtrain.logs.parquet import _plain, read_summary_row
from imgtrain.logs.parquet import run_offsets as _run_offsets
from imgtrain.logs.runinfo import is_run_dir
from imgtrain.runs import DONE, FAILED, INCOMPLETE, NEW, PRUNED, SPLITS, metric_mode
from imgtrain.runs import run_status as _run_status
from imgtrain.runs import monitor as _monitor

_COUNTS = {"samples", "skipped", "dropped"}  # logged alongside metrics but not metrics to rank by
_CACHE_VERSION = 3
# the columns the analysis uses (sweep, attempt and time are not read: less to decode); read_metrics
# gives all of them. The strings stay dictionary-encoded, as Parquet stores them: filtering 3 million
# rows by split and metric then compares a handful of dictionary entries instead of every row
METRIC_COLUMNS = ("run_id", "epoch", "step", "split", "metric", "value")
_STRINGS = [f.name for f in SCHEMA if f.type == pa.string() and f.name in METRIC_COLUMNS]
METRICS_SCHEMA = pa.schema([SCHEMA.field(c).with_type(pa.dictionary(pa.int32(), pa.string())) if c in _STRINGS
                            else SCHEMA.field(c) for c in METRIC_COLUMNS])
DEFAULT_PLOT_TOP = 20


class AnalysisWarning(UserWarning):
    """Something in the runs looks off (e.g. summary.parquet disagrees with the Parquet metrics)."""


# ============================================================================ loading

@dataclass
class RunInfo:
    run_id: str
    path: Path
    status: str  # DONE, FAILED, PRUNED, INCOMPLETE (running, waiting for a requeue, or dead), NEW
    reason: Optional[str]  # first line of FAILED / PRUNED
    sweep: Optional[str]
    summary: Optional[dict]  # summary.parquet's row less its cfg.* columns; None until the run has finished
    config: dict  # cfg.<dotted.key> -> value, from the summary or else config.yaml
    has_test_results: bool


@dataclass
class RunSet:
    """The runs of one analysis and their metric rows: read_metrics' table (deduplicated, sorted by
    run_id, split, metric, step) narrowed to METRIC_COLUMNS, strings dictionary-encoded (METRICS_SCHEMA)."""
    root: Path
    runs: list[RunInfo]
    metrics: pa.Table
    offsets: dict[str, tuple[int, int]]  # run_id -> (first row, row count) in `metrics`
    warnings: list[str] = field(default_factory=list)
    cache_hits: int = 0

    def rows(self, run_id: str) -> pa.Table:
        start, n = self.offsets.get(run_id, (0, 0))
        return self.metrics.slice(start, n)

    def by_id(self) -> dict[str, RunInfo]:
        return {r.run_id: r for r in self.runs}


def _stat_key(path: Path) -> Optional[list[int]]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _parts(run: Path) -> list[list]:
    """[name, size, mtime] of each closed metric file: a closed file is never rewritten, so this
    identifies its content (mtime too: a name a compaction freed could be used again)."""
    try:
        with os.scandir(run / "metrics") as it:
            return sorted([e.name, (st := e.stat()).st_size, st.st_mtime_ns] for e in it
                          if e.name.endswith(".parquet") and not is_temp_name(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _marker_reason(path: Path) -> Optional[str]:
    """The reason a FAILED / PRUNED marker holds: its "reason" when it is JSON (the sweep's successive
    halving writes {"reason": ..., ...}), else its first line."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    try:
        reason = json.loads(text).get("reason")
    except (ValueError, AttributeError):
        reason = None
    reason = str(reason) if reason is not None else (text.splitlines()[0] if text else None)
    return reason[:200] if reason else None


def run_status(run: Path, names: Optional[set[str]] = None) -> tuple[str, Optional[str]]:
    """(status, reason): imgtrain.runs.run_status (PRUNED, DONE, FAILED, INCOMPLETE, NEW) from one
    directory listing instead of four stats, with the reason a FAILED / PRUNED marker holds."""
    names = set(os.listdir(run)) if names is None else names
    status = _run_status(run, names)
    return status, (_marker_reason(run / status) if status in (FAILED, PRUNED) else None)


def _read_summary(path: Path) -> dict:
    return read_summary_row(path.parent)  # its JSON copy when there is a valid one: 50x faster


def _read_config(path: Path, run_id: str) -> dict:
    """The cfg.* columns exactly as a summary spells them (summary_row's), from config.yaml."""
    import yaml

    from imgtrain import config as C

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(), Loader=loader) or {}
    return {"run_id": run_id, **{f"cfg.{k}": _plain(v) for k, v in C.flatten(data).items()}}


def _read_meta(run: Path, names: set[str]) -> tuple[Optional[list], Optional[dict], dict, list[str]]:
    """(key, summary less cfg.*, cfg.* config, warnings) from summary.parquet, else from config.yaml
    (then no summary)."""
    notes = []
    for name, reader in (("summary.parquet", _read_summary), ("config.yaml", _read_config)):
        if name not in names:
            continue
        try:
            row = reader(run / name) if name == "summary.parquet" else reader(run / name, run.name)
        except Exception as e:  # torn, foreign or half-written: report it, use what else there is
            notes.append(f"skipping unreadable {run / name}: {type(e).__name__}: {e}")
            continue
        config: dict[str, Any] = {}
        summary: Optional[dict[str, Any]] = {} if name == "summary.parquet" else None
        for k, v in row.items():  # one pass over a hundred keys, a thousand runs
            if k.startswith("cfg."):
                config[k] = v
            elif summary is not None:
                summary[k] = v
        return [name, *(_stat_key(run / name) or [])], summary, config, notes
    return None, None, {}, notes


def _read_sweep(run: Path) -> Optional[str]:
    try:
        return json.loads((run / "run.json").read_text()).get("sweep")
    except (OSError, ValueError, AttributeError):
        return None


class _Cache:
    """<dir>/index.json (per run: part list, summary/config key and row, offsets) + <dir>/metrics.parquet."""

    def __init__(self, directory: Optional[Path]):
        self.dir = directory
        self.runs: dict[str, dict] = {}
        self._table: Optional[pa.Table] = None
        self.rows = 0
        if directory is None:
            return
        try:
            index = json.loads((directory / "index.json").read_text())
        except (OSError, ValueError):
            return
        if index.get("version") == _CACHE_VERSION:
            self.runs, self.rows = index.get("runs", {}), index.get("metrics_rows", 0)

    def table(self) -> Optional[pa.Table]:
        if self._table is None and self.dir is not None:
            try:
                t = pq.read_table(self.dir / "metrics.parquet", read_dictionary=_STRINGS)
                # index and table are written one after the other: a pair from two writers is dropped;
                # one chunk with one dictionary per column, as a fresh read gives (_run_offsets needs it)
                self._table = t.cast(METRICS_SCHEMA).combine_chunks() if t.num_rows == self.rows else None
            except Exception:
                self._table = None
        return self._table

    def save(self, runs: dict[str, dict], table: pa.Table) -> None:
        if self.dir is None:
            return
        buf = pa.BufferOutputStream()
        # a private file rewritten whenever a run changes: fast to write and read beats small
        pq.write_table(table, buf, use_dictionary=_STRINGS, write_statistics=False, compression="lz4")
        atomic_write_bytes(self.dir / "metrics.parquet", buf.getvalue())
        index = {"version": _CACHE_VERSION, "metrics_rows": table.num_rows, "runs": runs}
        atomic_write_bytes(self.dir / "index.json", json.dumps(index, default=str).encode())


def load_runs(root: str | os.PathLike, sweep: Optional[str] = None, *,
              cache_dir: str | os.PathLike | None = None) -> RunSet:
    """Every run under `root` (a root holding runs/, a runs/ dir, or one run dir), or only those of
    `sweep`, with their metric rows. Unreadable parts/summaries warn (UnreadablePartWarning) and are
    skipped; those warnings are also kept in `.warnings`. With `cache_dir`, unchanged runs come from
    the cache there and the cache is brought up to date."""
    with _gc_paused():
        return _load_runs(Path(root), sweep, cache_dir)


@contextlib.contextmanager
def _gc_paused():
    """Python's cycle collector off for a while: loading a thousand runs makes a few hundred thousand
    objects (a dict per summary row, tables per file), none in a cycle, and the collector's passes
    over them were a fifth of a cold load. Reference counting still frees everything."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load_runs(root: Path, sweep: Optional[str], cache_dir: str | os.PathLike | None) -> RunSet:
    dirs = [d for d in iter_run_dirs(root) if is_run_dir(d)]  # FileNotFoundError for a missing root
    cache = _Cache(Path(cache_dir) if cache_dir is not None else None)
    entries: dict[str, dict] = {}
    runs: list[RunInfo] = []
    for d in dirs:
        entries[d.name], info = _scan_run(d, cache.runs.get(d.name, {}), sweep)
        if info is not None:
            runs.append(info)
    hits = [r.run_id for r in runs if "offset" in entries[r.run_id]]
    cached = cache.table() if hits else None
    if hits and cached is None:  # cache file gone or out of step with its index: read those runs too
        for rid in hits:
            del entries[rid]["offset"]
        hits = []
    misses = [r.run_id for r in runs if "offset" not in entries[r.run_id]]
    fresh, fresh_offsets = _read_fresh(root, misses, entries)
    for rid in hits:  # say again what reading a cached run said the first time
        for msg in entries[rid]["metrics_warnings"]:
            warnings.warn(msg, UnreadablePartWarning, stacklevel=3)
    notes = [m for r in runs for key in ("meta_warnings", "metrics_warnings") for m in entries[r.run_id][key]]
    for msg in (m for r in runs for m in entries[r.run_id]["meta_warnings"]):
        warnings.warn(msg, UnreadablePartWarning, stacklevel=3)

    # the runs' rows in run order: cached slices and freshly read ones
    pieces, offsets, start = [], {}, 0
    changed = bool(misses) or set(cache.runs) != set(entries) or any(
        cache.runs[k].get(f) != entries[k].get(f) for k in entries for f in ("run_key", "meta_key"))
    for r in runs:
        e = entries[r.run_id]
        src, (off, n) = (fresh, fresh_offsets.get(r.run_id, (0, 0))) if r.run_id in misses else \
            (cached, (e["offset"], e["rows"]))
        changed |= off != start or src is not cached
        if n:
            pieces.append(src.slice(off, n))
        offsets[r.run_id] = (start, n)
        e["offset"], e["rows"] = start, n
        start += n
    if cached is not None and not changed and start == cached.num_rows:
        metrics = cached  # nothing changed: the cached table is the answer as it is
    else:
        changed = True
        # combine_chunks also unifies the pieces' dictionaries, which _run_offsets relies on
        metrics = pa.concat_tables(pieces).combine_chunks() if pieces else METRICS_SCHEMA.empty_table()
    if changed:
        _save_cache(cache, entries, metrics)
    return RunSet(root, runs, metrics, offsets, notes, cache_hits=len(hits))


def _scan_run(d: Path, old: dict, sweep: Optional[str]) -> tuple[dict, Optional[RunInfo]]:
    """One run directory: its cache entry (reusing `old` where the files are unchanged; an entry with
    an "offset" has its metric rows in the cache) and its RunInfo, None when not in `sweep`."""
    names = set(os.listdir(d))
    e: dict[str, Any] = {"run_key": _stat_key(d / "run.json") if "run.json" in names else None}
    if e["run_key"] is not None:
        e["sweep"] = old["sweep"] if old.get("run_key") == e["run_key"] else _read_sweep(d)
        if sweep is not None and e["sweep"] != sweep:
            return e, None  # not in this sweep: remember run.json's key, read nothing else
    meta_name = "summary.parquet" if "summary.parquet" in names else "config.yaml" if "config.yaml" in names else None
    meta_key = [meta_name, *(_stat_key(d / meta_name) or [])] if meta_name else None
    if meta_key is not None and old.get("meta_key") == meta_key:
        e.update({k: old[k] for k in ("meta_key", "summary", "config", "meta_warnings")})
    else:
        e["meta_key"], e["summary"], e["config"], e["meta_warnings"] = _read_meta(d, names)
    if e["run_key"] is None:  # no run.json (a foreign or hand-made run): the summary or config says
        e["sweep"] = (e["summary"] or {}).get("sweep") or e["config"].get("cfg.output.sweep")
        if sweep is not None and e["sweep"] != sweep:
            return e, None
    e["parts"] = _parts(d)
    if old.get("parts") == e["parts"] and "offset" in old:
        e.update({k: old[k] for k in ("offset", "rows", "metrics_warnings")})
    status, reason = run_status(d, names)
    return e, RunInfo(d.name, d, status, reason, e["sweep"], e["summary"], e["config"], "test_results.json" in names)


def _read_fresh(root: Path, run_ids: list[str], entries: dict) -> tuple[pa.Table, dict]:
    """read_metrics for `run_ids`; each warning it gives is kept with the run whose part it names."""
    if not run_ids:
        return METRICS_SCHEMA.empty_table(), {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnreadablePartWarning)
        table = read_metrics(root, run_id=run_ids, columns=METRIC_COLUMNS, dictionary=True)
    for rid in run_ids:
        entries[rid]["metrics_warnings"] = []
    for w in caught:
        msg = str(w.message)
        rid = next((r for r in run_ids if f"{os.sep}{r}{os.sep}metrics{os.sep}" in msg), None)
        if rid is None or not issubclass(w.category, UnreadablePartWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        else:
            entries[rid]["metrics_warnings"].append(msg)
            warnings.warn(msg, UnreadablePartWarning, stacklevel=4)
    return table, _run_offsets(table)


def _save_cache(cache: _Cache, entries: dict, metrics: pa.Table) -> None:
    if cache.dir is None:
        return
    try:
        cache.dir.mkdir(parents=True, exist_ok=True)
        cache.save(entries, metrics)
    except OSError as e:  # a read-only output tree still gets its analysis, just slower next time
        warnings.warn(f"could not write the analysis cache in {cache.dir}: {e}", AnalysisWarning, stacklevel=4)


# ============================================================================ leaderboard

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
    monitor, best, best_epoch (0-based, as the Parquet `epoch` column and summary.parquet count),
    epochs, the varied config keys, test/<metric> (last test values), wall_s, img_per_s, note (why a
    run FAILED or was PRUNED).

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
               "monitor": monitors[r.run_id][0], "best": value, "best_epoch": epoch,
               "epochs": s.get("epochs", None if seen is None else seen + 1),
               "wall_s": s.get("wall_s"), "img_per_s": s.get("img_per_s"), "note": r.reason}
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
            warnings.warn(f"{r.run_id}: summary.parquet says best {s['monitor']} {s['best']} at epoch "
                          f"{s.get('best_epoch')}, its Parquet metrics give {value} at epoch {epoch} "
                          "(trainer.min_delta > 0, or lost metric parts?)", AnalysisWarning, stacklevel=3)


def board_varied(board: pa.Table) -> list[str]:
    """The varied config keys a leaderboard was built with (its columns named by dotted key)."""
    meta = board.schema.metadata or {}
    return json.loads(meta.get(b"varied", b"[]"))


def board_mode(board: pa.Table, monitor: str) -> str:
    meta = board.schema.metadata or {}
    return json.loads(meta.get(b"modes", b"{}")).get(monitor) or _mode_of(monitor)


# ============================================================================ text output

def _cell(v: Any, column: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if column == "wall_s":
            return f"{v:.1f}"
        if column == "img_per_s":
            return f"{v:.0f}"
        if column == "best" or column.startswith("test/"):
            return f"{v:.4f}"
        return f"{v:g}"
    return str(v)


def write_csv(board: pa.Table, path: str | os.PathLike) -> Path:
    """The leaderboard as CSV; floats keep full precision (repr), nulls are empty fields."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(board.column_names)
    for row in zip(*[board[c].to_pylist() for c in board.column_names]):
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue().encode())


def to_markdown(board: pa.Table, limit: Optional[int] = None, columns: Optional[Sequence[str]] = None) -> str:
    """The leaderboard (first `limit` rows) as a GitHub Markdown table."""
    columns = list(columns or board.column_names)
    if limit is not None:
        board = board.slice(0, limit)
    data = [board[c].to_pylist() for c in columns]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |",
             "|" + "|".join("---:" if pa.types.is_integer(board[c].type) or pa.types.is_floating(board[c].type)
                            else "---" for c in columns) + "|"]
    for row in zip(*data):
        lines.append("| " + " | ".join(esc(_cell(v, c)) for v, c in zip(row, columns)) + " |")
    return "\n".join(lines) + "\n"


def _short_labels(keys: Sequence[str]) -> dict[str, str]:
    """'optim.lr' -> 'lr', 'optim.name' -> 'optim', where that is unambiguous among `keys`."""
    parts = [k.split(".") for k in keys]
    short = [p[-2] if p[-1] == "name" and len(p) > 1 else p[-1] for p in parts]
    return {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}


def cell_label(board: pa.Table, index: int, keys: Optional[Sequence[str]] = None) -> str:
    """'lr=0.05 depth=2' for one leaderboard row: its varied hyperparameters (else its run id)."""
    keys = board_varied(board) if keys is None else keys
    short = _short_labels(keys)
    parts = [f"{short[k]}={_cell(board[k][index].as_py())}" for k in keys]
    return " ".join(parts) or board["run_id"][index].as_py()


# ============================================================================ figures

def _figure(width: float, height: float):
    """A Figure on the Agg canvas, without pyplot: nothing global changes, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str | os.PathLike, dpi: int = 100) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight")  # keeps legends placed outside the axes
    return out


def metric_series(table: pa.Table, run_id: str, split: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, epoch, value) of one metric of one run, in step order."""
    mask = pc.and_(pc.and_(pc.equal(table["run_id"], run_id), pc.equal(table["split"], split)),
                   pc.equal(table["metric"], metric))
    t = table.filter(mask).sort_by("step")
    return (t["step"].to_numpy(), t["epoch"].to_numpy(), t["value"].to_numpy())


def _split_metric(metric: str, default_split: str = "val") -> tuple[str, str]:
    split, _, name = metric.partition("/")
    return (split, name) if split in SPLITS and name else (default_split, metric)


def learning_curves_figure(table: pa.Table, run_id: str, metric: str = "acc1", title: Optional[str] = None):
    """Train loss per step with val loss per evaluation (left); the monitored `metric` per epoch
    (right; 'acc1', 'val/acc1' or 'train/epoch_loss'). Returns the Figure."""
    fig = _figure(10, 4)
    ax_loss, ax_metric = fig.subplots(1, 2)
    step, _, loss = metric_series(table, run_id, "train", "loss")
    ax_loss.plot(step, loss, label="train loss", alpha=0.7)
    vstep, _, vloss = metric_series(table, run_id, "val", "loss")
    if len(vstep):
        ax_loss.plot(vstep, vloss, "o-", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    split, name = _split_metric(metric)
    _, mepoch, mval = metric_series(table, run_id, split, name)
    if len(mepoch):
        ax_metric.plot(mepoch + 1, mval, "o-", label=f"{split} {name}")
        ax_metric.legend()
    ax_metric.set_xlabel("epoch")
    ax_metric.xaxis.get_major_locator().set_params(integer=True)
    ax_metric.set_ylabel(name)
    fig.suptitle(title or run_id)
    fig.tight_layout()
    return fig


def plot_learning_curves(table: pa.Table, run_id: str, out: str | Path, metric: str = "acc1") -> Path:
    """Train loss per step and val loss/`metric` per epoch for one run, as a PNG."""
    return _save(learning_curves_figure(table, run_id, metric), out)


def plot_sweep_curves(runs: RunSet, board: pa.Table, out: str | os.PathLike | None = None, *,
                      top: Optional[int] = DEFAULT_PLOT_TOP, name: Optional[str] = None):
    """One line per run (the leaderboard's first `top` rows), labelled by its varied hyperparameters:
    train loss per step (left) and the monitored metric per epoch (right); `name` (the sweep) heads
    the title. Returns the Figure."""
    n = board.num_rows if top is None else min(top, board.num_rows)
    monitor = board["monitor"][0].as_py() if board.num_rows else "val/acc1"
    split, metric = _split_metric(monitor)
    fig = _figure(13, 4.8)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for i in range(n):
        rid = board["run_id"][i].as_py()
        t = runs.rows(rid)
        label = cell_label(board, i)
        step, _, loss = metric_series(t, rid, "train", "loss")
        (line,) = ax_loss.plot(step, loss, lw=1, alpha=0.8)
        _, epoch, val = metric_series(t, rid, split, metric)
        ax_metric.plot(epoch + 1, val, "o-" if len(val) < 30 else "-", ms=3, lw=1.2, color=line.get_color(),
                       label=label)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    ax_metric.set_xlabel("epoch")
    ax_metric.xaxis.get_major_locator().set_params(integer=True)
    ax_metric.set_ylabel(f"{split} {metric}")
    if n:
        ax_metric.legend(fontsize=7 if n > 8 else 8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    shown = f"top {n} of {board.num_rows} runs" if n < board.num_rows else f"{n} runs"
    fig.suptitle(f"{name + ': ' if name else ''}{split} {metric} per epoch ({shown})")
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


def _sort_key(v: Any):
    if v is None:
        return (2, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v)
    return (1, str(v))


def heatmap_table(board: pa.Table, key_x: str, key_y: str, value: str = "best", agg: str = "mean"):
    """(xs, ys, grid[len(ys), len(xs)], counts) of `value` aggregated (mean/max/min) over the runs of
    each (key_x, key_y) combination; combinations without a finite value are NaN."""
    missing = [k for k in (key_x, key_y) if k not in board.column_names]
    if missing:
        varied = ", ".join(board_varied(board)) or "none"
        raise KeyError(f"{', '.join(missing)} not varied in these runs (varied: {varied})")
    xv, yv, vals = (board[c].to_pylist() for c in (key_x, key_y, value))
    xs, ys = sorted(set(xv), key=_sort_key), sorted(set(yv), key=_sort_key)
    cells: dict[tuple[int, int], list[float]] = {}
    for x, y, v in zip(xv, yv, vals):
        if v is not None and math.isfinite(v):
            cells.setdefault((ys.index(y), xs.index(x)), []).append(v)
    grid = np.full((len(ys), len(xs)), np.nan)
    counts = np.zeros((len(ys), len(xs)), int)
    fn = {"mean": np.mean, "max": np.max, "min": np.min}[agg]
    for (i, j), v in cells.items():
        grid[i, j], counts[i, j] = fn(v), len(v)
    return xs, ys, grid, counts


def plot_heatmap(board: pa.Table, key_x: str, key_y: str, out: str | os.PathLike | None = None, *,
                 value: str = "best", agg: str = "mean", title: Optional[str] = None,
                 over: Optional[Sequence[str]] = None):
    """Heat map of the best monitored metric over two config keys, aggregated (`agg`, default mean)
    over the other keys (`over`, named in the title; default the board's other varied keys); cells
    annotated with the value (and run count when above 1), combinations without runs left blank.
    Runs of every status count, unfinished ones with their best so far. Axes: x = key_x, y = key_y,
    tick labels = their values. Returns the Figure."""
    xs, ys, grid, counts = heatmap_table(board, key_x, key_y, value, agg)
    monitor = board["monitor"][0].as_py() if board.num_rows else value
    mode = board_mode(board, monitor)
    fig = _figure(max(5.0, 1.1 * len(xs) + 2.5), max(3.5, 0.6 * len(ys) + 2))
    ax = fig.subplots()
    import matplotlib

    # combinations nobody ran stay blank
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xs)), [_cell(x) if x is not None else "None" for x in xs],
                  rotation=30 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [_cell(y) if y is not None else "None" for y in ys])
    ax.set_xlabel(key_x)
    ax.set_ylabel(key_y)
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                text = f"{grid[i, j]:.3f}" + (f"\nn={counts[i, j]}" if counts[i, j] > 1 else "")
                light = (grid[i, j] < mid) == (mode == "max")  # dark end of viridis: white text
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    label = "best" if value == "best" else value
    fig.colorbar(im, ax=ax, label=f"{label} {monitor}")
    others = [k for k in board_varied(board) if k not in (key_x, key_y)] if over is None else list(over)
    over = f" over {', '.join(others)}" if others else ""
    ax.set_title(title or f"{agg} of best {monitor}{over}", fontsize=10)
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


def plot_confusion_matrix(results: dict | str | os.PathLike, out: str | os.PathLike | None = None, *,
                          normalize: bool = False, title: Optional[str] = None):
    """A run's test confusion matrix (test_results.json or its dict): rows true classes, columns
    predictions, class names on both axes; `normalize` divides each row by its count. Returns the Figure."""
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    cm = np.asarray(results["confusion_matrix"], dtype=float)
    names = results.get("class_names") or [str(i) for i in range(len(cm))]
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    size = min(14.0, max(5.0, 0.45 * n + 2))
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    step = max(1, n // 40)  # keep tick labels readable for 100+ classes
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        top = cm.max() or 1
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center", va="center",
                            fontsize=7, color="white" if cm[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class" if normalize else "samples")
    ax.set_title(title or f"confusion matrix ({results.get('split', 'test')}"
                 f"{', row-normalised' if normalize else ''})", fontsize=10)
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


# ============================================================================ the whole analysis

@dataclass
class Analysis:
    root: Path
    out: Path
    sweep: Optional[str]
    runs: RunSet
    board: pa.Table
    varied: list[str]
    files: dict[str, Path]  # what was written: leaderboard_csv, leaderboard_md, report, ...
    images: list[Path]
    heatmaps: dict[str, tuple[str, str]]  # group -> (key_x, key_y) drawn
    notes: list[str]  # what was skipped and why
    warnings: list[str]
    timings: dict[str, float]

    @property
    def status_counts(self) -> dict[str, int]:
        """Runs per status: DONE, PRUNED, INCOMPLETE, FAILED, NEW (those present, in this order)."""
        statuses = self.board["status"].to_pylist()
        order = [DONE, PRUNED, INCOMPLETE, FAILED, NEW]
        return {s: statuses.count(s) for s in order + sorted(set(statuses) - set(order)) if s in statuses}

    @property
    def metric_rows(self) -> int:
        return self.runs.metrics.num_rows


def default_out(root: str | os.PathLike, sweep: Optional[str] = None) -> Path:
    base = Path(root) / "analysis"
    return base / sweep if sweep else base


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name) or "_"


def _groups(board: pa.Table) -> dict[str, list[int]]:
    """Board rows per sweep, in board order; runs without a sweep form the group 'runs'."""
    out: dict[str, list[int]] = {}
    for i, s in enumerate(board["sweep"].to_pylist()):
        out.setdefault(s or "runs", []).append(i)
    return out


def analyze(root: str | os.PathLike, sweep: Optional[str] = None, out: str | os.PathLike | None = None, *,
            heatmap: Optional[tuple[str, str]] = None, metric: Optional[str] = None,
            plot_top: Optional[int] = DEFAULT_PLOT_TOP, plots: bool = True, normalize_cm: bool = False,
            agg: str = "mean", cache: bool = True, report_rows: int = 50) -> Analysis:
    """Leaderboard (CSV + Markdown), learning curves (per run for the top `plot_top` runs, None = all;
    one overlay per sweep), a heat map per sweep over `heatmap` keys (default: its first two varied
    keys), the best run's confusion matrix, and report.md linking them, all under `out` (default
    <root>/analysis[/<sweep>]). `plots=False` writes only the tables and the report."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    root = Path(root)
    out = Path(out) if out is not None else default_out(root, sweep)
    if heatmap is not None:  # the cfg.* column spelling works too
        heatmap = tuple(k[4:] if k.startswith("cfg.") else k for k in heatmap)
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught, _gc_paused():
            warnings.simplefilter("always")
            runs = load_runs(root, sweep, cache_dir=out / ".cache" if cache else None)
            timings["read"] = time.perf_counter() - t0
            board = _rank(runs, root, sweep, metric, heatmap)
            timings["leaderboard"] = time.perf_counter() - t0 - timings["read"]
    finally:  # outside the catching context, so the warnings reach the caller's filters
        notes_w = _replay(caught)
    varied = board_varied(board)
    files = {"leaderboard_csv": write_csv(board, out / "leaderboard.csv")}
    files["leaderboard_md"] = atomic_write_bytes(out / "leaderboard.md", to_markdown(board).encode())
    t1 = time.perf_counter()
    sections: list[str] = []
    images: list[Path] = []
    heatmaps: dict[str, tuple[str, str]] = {}
    notes: list[str] = []
    if plots:
        sections, images, heatmaps, notes = _draw_sweeps(runs, board, out, heatmap, plot_top, agg)
        more, run_images, run_notes = _draw_runs(runs, board, out, plot_top)
        cm_section, cm_path, cm_notes = _draw_confusion(runs, board, out, normalize_cm)
        sections += more + cm_section
        images += run_images + ([cm_path] if cm_path else [])
        notes += run_notes + cm_notes
        if cm_path:
            files["confusion_matrix"] = cm_path
    else:
        notes.append("figures not drawn (--no-plots)")
    timings["plots"] = time.perf_counter() - t1
    result = Analysis(root, out, sweep, runs, board, varied, files, images, heatmaps, notes, notes_w, timings)
    files["report"] = write_report(result, sections, report_rows)
    timings["total"] = time.perf_counter() - t0
    return result


def _rank(runs: RunSet, root: Path, sweep: Optional[str], metric: Optional[str], heatmap) -> pa.Table:
    """The leaderboard, after the checks that make a usage error (LookupError) of an empty selection,
    an unknown --metric or a heat-map key that does not vary."""
    if not runs.runs:
        where = f"of sweep {sweep!r} " if sweep else ""
        raise LookupError(f"no runs {where}under {root}" + _sweeps_hint(root, sweep))
    if metric is not None:
        _check_metric(runs, metric)
    board = leaderboard(runs, metric)
    if heatmap is not None:  # a misspelt key fails before anything is drawn
        heatmap_table(board, *heatmap)
    return board


def _check_metric(runs: RunSet, metric: str) -> None:
    """A --metric no run logged is a typo: say which split/metric pairs exist."""
    split, _, name = metric.partition("/")
    if split in SPLITS and name and _select(runs.metrics, split, name, columns=["run_id"]).num_rows:
        return
    pairs = pc.unique(pc.binary_join_element_wise(  # the error path only: 3 million joins are fine
        runs.metrics["split"].cast(pa.string()), runs.metrics["metric"].cast(pa.string()), "/")).to_pylist()
    logged = sorted(p for p in pairs if p.count("/") == 1)  # per-class metrics left out
    raise LookupError(f"no run logged {metric!r} (split/metric; logged: {', '.join(logged)})")


def _replay(caught: list) -> list[str]:
    """Warn again, once each, what loading said; the report lists the ones about the runs."""
    seen, about_runs = set(), []
    for w in caught:
        msg = str(w.message)
        if msg in seen:
            continue
        seen.add(msg)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if issubclass(w.category, (UnreadablePartWarning, AnalysisWarning)):
            about_runs.append(msg)
    return about_runs


def _sweeps_hint(root: Path, sweep: Optional[str]) -> str:
    """' (sweeps there: a, b)' from the runs' run.json files, for a --sweep that matched nothing."""
    if sweep is None:
        return ""
    names = sorted({s for d in iter_run_dirs(root) if (s := _read_sweep(d))})
    return f" (sweeps there: {', '.join(names)})" if names else " (no sweeps there)"


def _rel(path: Path, out: Path) -> str:
    return quote(path.relative_to(out).as_posix())


def _draw_sweeps(runs: RunSet, board: pa.Table, out: Path, heatmap, plot_top, agg) -> tuple[list, list, dict, list]:
    """Per sweep: the overlaid curves and the heat map. (report sections, images, heat-map keys, notes)"""
    groups = _groups(board)
    info = runs.by_id()
    curve_md, heat_md, images, heatmaps, notes = [], [], [], {}, []
    for name, rows in groups.items():
        sub = board.take(rows)
        suffix = f"_{_safe(name)}" if len(groups) > 1 else ""
        if plot_top != 0:
            p = out / f"curves{suffix}.png"
            plot_sweep_curves(runs, sub, p, top=plot_top, name=name)
            images.append(p)
            curve_md.append(f"![{name} learning curves]({_rel(p, out)})")
        varied = varied_keys([info[r].config for r in sub["run_id"].to_pylist()])
        keys = heatmap or tuple(varied[:2])
        if len(keys) < 2:
            notes.append(f"{name}: no heat map (needs two varied keys; varied: {', '.join(varied) or 'none'})")
            continue
        p = out / f"heatmap{suffix}.png"
        plot_heatmap(sub, keys[0], keys[1], p, agg=agg, over=[k for k in varied if k not in keys])
        images.append(p)
        heatmaps[name] = keys
        heat_md.append(f"![{name} heat map: {keys[0]} x {keys[1]}]({_rel(p, out)})")
    sections = []
    if curve_md:
        sections.append("## Learning curves\n\n" + "\n\n".join(curve_md))
    if heat_md:
        sections.append(f"## Heat map ({agg} of best over the other varied keys)\n\n" + "\n\n".join(heat_md))
    return sections, images, heatmaps, notes


def _draw_runs(runs: RunSet, board: pa.Table, out: Path, plot_top) -> tuple[list[str], list, list]:
    """Per-run curves for the best runs only: a 1,000-cell sweep would otherwise spend minutes here."""
    n = board.num_rows if plot_top is None else min(plot_top, board.num_rows)
    images, md = [], []
    for i in range(n):
        rid, monitor = board["run_id"][i].as_py(), board["monitor"][i].as_py()
        p = out / "curves" / f"{_safe(rid)}.png"
        _save(learning_curves_figure(runs.rows(rid), rid, monitor, title=f"#{i + 1} {rid}: {cell_label(board, i)}"), p)
        images.append(p)
        md.append(f"![{rid}]({_rel(p, out)})")
    notes = [f"per-run learning curves for the top {n} of {board.num_rows} runs (--plot-top)"] \
        if n < board.num_rows else []
    return ([f"## Per-run learning curves (top {n})\n\n" + "\n".join(md)] if md else []), images, notes


def _draw_confusion(runs: RunSet, board: pa.Table, out: Path, normalize: bool) -> tuple[list, Optional[Path], list]:
    found = _best_confusion(runs, board)
    if found is None:
        return [], None, ["no confusion matrix (no ranked run has one in test_results.json)"]
    rid, results = found
    split = results.get("split", "test")
    p = out / "confusion_matrix.png"
    norm = ", row-normalised" if normalize else ""
    plot_confusion_matrix(results, p, normalize=normalize, title=f"{rid}: {split} confusion matrix{norm}")
    section = f"## Confusion matrix of the best run ({rid}, {split} split)\n\n![confusion matrix]({_rel(p, out)})"
    return [section], p, []


def _best_confusion(runs: RunSet, board: pa.Table) -> Optional[tuple[str, dict]]:
    info = runs.by_id()
    for rid in board["run_id"].to_pylist():
        if not info[rid].has_test_results:
            continue
        try:
            results = json.loads((info[rid].path / "test_results.json").read_text())
        except (OSError, ValueError):
            continue
        if results.get("confusion_matrix"):
            return rid, results
    return None


def write_report(result: Analysis, sections: Sequence[str] = (), rows: int = 50) -> Path:
    """report.md: what was analysed, the leaderboard inline (first `rows` rows), links to the tables
    and the figures (relative links, so the folder can be moved or published as is)."""
    board, out = result.board, result.out
    title = f"sweep {result.sweep}" if result.sweep else f"{result.root}"
    counts = ", ".join(f"{n} {s}" for s, n in result.status_counts.items())
    modes = {m: board_mode(board, m) for m in dict.fromkeys(board["monitor"].to_pylist())}
    lines = [f"# Analysis of {title}", "",
             f"Root `{result.root}`; {board.num_rows} runs ({counts}); generated "
             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} by `jobs/analyze.py`.", "",
             "Ranked by " + ", ".join(f"`{m}` ({'higher' if d == 'max' else 'lower'} is better)"
                                      for m, d in modes.items())
             + "; `best` is recomputed from each run's Parquet metrics (best so far for runs that have not "
               "finished), `best_epoch` counts from 0 as the Parquet `epoch` column does.",
             f"Varied keys: {', '.join(f'`{k}`' for k in result.varied) or 'none'}.", "",
             "## Leaderboard", "",
             f"Full table: [leaderboard.csv]({_rel(result.files['leaderboard_csv'], out)}), "
             f"[leaderboard.md]({_rel(result.files['leaderboard_md'], out)})"
             + (f"; the first {rows} of {board.num_rows} runs below." if board.num_rows > rows else "."), "",
             to_markdown(board, limit=rows)]
    for s in sections:
        lines += [s, ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if result.warnings:
        lines += ["## Warnings", ""] + [f"- {w}" for w in result.warnings] + [""]
    return atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
