"""Run directories -> RunSet: status, config, summary and metric rows of every run, with the private
read cache (<out>/.cache) that serves unchanged runs without reading them again (DESIGN §2, §3).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from imgtrain.logs import SCHEMA, UnreadablePartWarning, atomic_write_bytes, iter_run_dirs, read_metrics
from imgtrain.logs.atomic import is_temp_name
from imgtrain.logs.metric_reader import run_offsets as _run_offsets
from imgtrain.logs.summary import _plain, read_summary_row
from imgtrain.logs.runinfo import is_run_dir
from imgtrain.runs import FAILED, PRUNED
from imgtrain.runs import run_status as _run_status

_CACHE_VERSION = 4  # 4: world sizes of the attempts
# the columns the analysis uses (sweep, attempt and time are not read: less to decode); read_metrics
# gives all of them. The strings stay dictionary-encoded, as Parquet stores them: filtering 3 million
# rows by split and metric then compares a handful of dictionary entries instead of every row
METRIC_COLUMNS = ("run_id", "epoch", "step", "split", "metric", "value")
_STRINGS = [f.name for f in SCHEMA if f.type == pa.string() and f.name in METRIC_COLUMNS]
METRICS_SCHEMA = pa.schema([SCHEMA.field(c).with_type(pa.dictionary(pa.int32(), pa.string())) if c in _STRINGS
                            else SCHEMA.field(c) for c in METRIC_COLUMNS])


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
    world_sizes: tuple = ()  # each attempt's world size, from run.json (where a resume changed it)

    def world_text(self) -> Optional[str]:
        """'2 -> 1 -> 2' when the run's world size changed between attempts, else None."""
        changes = [w for i, w in enumerate(self.world_sizes) if i == 0 or w != self.world_sizes[i - 1]]
        return " -> ".join(map(str, changes)) if len(changes) > 1 else None


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


def _read_run_json(run: Path) -> tuple[Optional[str], list[int]]:
    """(sweep, each attempt's world size) from run.json."""
    try:
        info = json.loads((run / "run.json").read_text())
        return info.get("sweep"), [int(a.get("world_size") or 0) for a in info.get("attempts", [])]
    except (OSError, ValueError, AttributeError, TypeError):
        return None, []


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
        if old.get("run_key") == e["run_key"]:
            e["sweep"], e["world_sizes"] = old["sweep"], old.get("world_sizes", [])
        else:
            e["sweep"], e["world_sizes"] = _read_run_json(d)
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
    return e, RunInfo(d.name, d, status, reason, e["sweep"], e["summary"], e["config"], "test_results.json" in names,
                      tuple(e.get("world_sizes", ())))


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
