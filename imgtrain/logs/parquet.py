"""Parquet metric logs and run summaries (DESIGN §3).

Rank 0 buffers rows in plain lists (cheap enough for every step) and writes them as a new part file
`metrics/part-a{attempt:03d}-{seq:06d}.parquet` on each flush; a part is never rewritten. A resumed
run replays some steps under a higher attempt number, so readers keep, for each
(run_id, split, metric, step), the row of the highest attempt.

When a run ends, `compact_metrics` merges its parts into one `compact-a{attempt}-{seq}.parquet`
(deduplicated, sorted, written atomically under a new name) and then removes them: a tree of
finished runs is then one file per run, and read_metrics takes such a file's rows as they are.
While a run goes on, its writer does the same with its own files every ROLL_PARTS parts, so a
running or interrupted run holds a few files rather than one per checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgtrain.logs.atomic import atomic_write_bytes, fsync_dir, is_temp_name
from imgtrain.logs.runinfo import iter_run_dirs

SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("sweep", pa.string(), nullable=True),
        pa.field("attempt", pa.int32(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("step", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("time", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)

METRICS_DIR = "metrics"
SUMMARY_FILE = "summary.parquet"
SUMMARY_JSON = "summary.json"  # summary.parquet's row again, tied to it by size and mtime (read_summary_row)
_PART_RE = re.compile(r"^part-a(\d+)-(\d+)\.parquet$")
_COMPACT_RE = re.compile(r"^compact-a(\d+)-(\d+)\.parquet$")
# key-value metadata of a compacted file: its rows are deduplicated and sorted (read as they are)
_CLEAN_KEY, _CLEAN_VALUE = b"imgtrain.metrics", b"compacted: deduplicated, sorted by run_id, split, metric, step"
_DEDUP_KEYS = ("run_id", "split", "metric", "step", "attempt")
# a writer merges its files into one every ROLL_PARTS parts: a running run of 100 checkpoints holds at
# most 16 files, not 100 (each costs a reader ~0.4 ms however small), for ~10 ms of merging per roll
ROLL_PARTS = 16


class UnreadablePartWarning(UserWarning):
    """A Parquet file (torn by a crash, truncated, corrupt) was skipped by a reader."""


def part_name(attempt: int, seq: int) -> str:
    return f"part-a{attempt:03d}-{seq:06d}.parquet"


def _parquet_bytes(table: pa.Table, metadata: Optional[dict] = None) -> pa.Buffer:
    """A metrics table as Parquet, without the serialized Arrow schema pyarrow adds by default: every
    SCHEMA type has its Parquet equivalent (UTC timestamps, required fields), so readers get the same
    types, and parsing that copy was a fifth of the cost of reading a small file."""
    buf = pa.BufferOutputStream()
    with pq.ParquetWriter(buf, table.schema.remove_metadata(), store_schema=False) as w:
        w.write_table(table.replace_schema_metadata(None))
        if metadata:
            w.add_key_value_metadata(metadata)
    return buf.getvalue()


def compact_name(attempt: int, seq: int) -> str:
    return f"compact-a{attempt:03d}-{seq:06d}.parquet"


def _next_seq(metrics_dir: Path, attempt: int) -> int:
    seqs = [int(m[2]) for m in map(_PART_RE.match, os.listdir(metrics_dir)) if m and int(m[1]) == attempt]
    return max(seqs, default=-1) + 1


# --------------------------------------------------------------------------- writer

class MetricWriter:
    """Buffers metric rows of one run attempt and writes them as immutable Parquet parts.

    `flush_rows` / `flush_seconds` add automatic flushes (checked on each log call); the engine also
    flushes explicitly at every checkpoint so logged metrics are on disk before `last.pt` is. Every
    `roll_parts` parts (None: never) the files this writer wrote are merged into one, as
    compact_metrics does at the end of a run (a failed merge warns and changes nothing).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        run_id: str,
        sweep: Optional[str] = None,
        attempt: int = 0,
        *,
        flush_rows: Optional[int] = None,
        flush_seconds: Optional[float] = None,
        roll_parts: Optional[int] = ROLL_PARTS,
    ):
        self.dir = Path(run_dir) / METRICS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id, self.sweep, self.attempt = run_id, sweep, int(attempt)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._auto = flush_rows is not None or flush_seconds is not None
        self._seq = _next_seq(self.dir, self.attempt)  # a re-created writer must not clobber earlier parts
        self.parts: list[Path] = []  # parts written by this writer, in order (rolled ones since removed)
        self.roll_parts = roll_parts
        self._since_roll = 0
        self._reset()

    def _reset(self) -> None:
        self._epoch: list[int] = []
        self._step: list[int] = []
        self._split: list[str] = []
        self._metric: list[str] = []
        self._value: list[float] = []
        self._time: list[int] = []  # ms since the epoch, UTC
        self._last_flush = time.monotonic()

    def __len__(self) -> int:
        return len(self._value)

    def log(self, split: str, metric: str, value: float, *, epoch: int, step: int) -> None:
        self._epoch.append(epoch)
        self._step.append(step)
        self._split.append(split)
        self._metric.append(metric)
        self._value.append(float(value))  # fail here, at the caller, on a non-number
        self._time.append(time.time_ns() // 1_000_000)
        if self._auto:
            self._maybe_flush()

    def log_many(self, split: str, values: Mapping[str, float], *, epoch: int, step: int) -> None:
        now = time.time_ns() // 1_000_000
        for metric, value in values.items():
            self._epoch.append(epoch)
            self._step.append(step)
            self._split.append(split)
            self._metric.append(metric)
            self._value.append(float(value))
            self._time.append(now)
        if self._auto:
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        if (self.flush_rows is not None and len(self._value) >= self.flush_rows) or (
            self.flush_seconds is not None and time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def table(self) -> pa.Table:
        """The buffered rows as a table with SCHEMA (nothing is written)."""
        n = len(self._value)
        sweep = pa.nulls(n, pa.string()) if self.sweep is None else pa.array([self.sweep] * n, pa.string())
        return pa.Table.from_arrays(
            [
                pa.array([self.run_id] * n, pa.string()),
                sweep,
                pa.array(np.full(n, self.attempt, np.int32)),
                pa.array(self._epoch, pa.int32()),
                pa.array(self._step, pa.int64()),
                pa.array(self._split, pa.string()),
                pa.array(self._metric, pa.string()),
                pa.array(self._value, pa.float64()),
                pa.array(self._time, pa.timestamp("ms", tz="UTC")),
            ],
            schema=SCHEMA,
        )

    def flush(self) -> Optional[Path]:
        """Write buffered rows as a new part file; returns the file that holds them (the part, or the
        merged file when this flush rolled), or None if nothing was buffered.

        On an error the rows stay buffered, so a later flush can retry.
        """
        if not self._value:
            self._last_flush = time.monotonic()
            return None
        data = _parquet_bytes(self.table())
        path = self.dir / part_name(self.attempt, self._seq)
        while path.exists():  # another writer of this attempt got there first: never overwrite
            self._seq += 1
            path = self.dir / part_name(self.attempt, self._seq)
        atomic_write_bytes(path, data)
        self._seq += 1
        self.parts.append(path)
        self._reset()
        self._since_roll += 1
        if self.roll_parts and self._since_roll >= self.roll_parts:
            try:
                path = self._roll()
            except Exception as e:  # the part is written; merging is an optimisation
                warnings.warn(f"metric parts in {self.dir} not merged: {type(e).__name__}: {e}", RuntimeWarning,
                              stacklevel=2)
        return path

    def _roll(self) -> Path:
        """Merge every file of this attempt (its merged files, then its parts: read order, which puts
        a later row after an earlier one, also those of an earlier writer of the attempt) into a new
        one. Other attempts' files are left alone: the attempt number decides between their rows."""
        self._since_roll = 0  # a failed roll is tried again only after as many parts more
        mine = [p for p in _closed_files(self.dir.parent)
                if (m := _PART_RE.match(p.name) or _COMPACT_RE.match(p.name)) and int(m[1]) == self.attempt]
        results = _read_parallel(mine, _read_schema(SCHEMA.names))
        # a file gone since it was listed (the run compacted meanwhile) has its rows in what replaced it
        files = [(p, r) for p, r in zip(mine, results) if not isinstance(r, FileNotFoundError)]
        for _, r in files:
            if isinstance(r, Exception):
                raise r
        return _replace_with_merged(self.dir, files)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reader

def _as_set(value: str | Iterable[str] | None) -> Optional[list[str]]:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _closed_files(run: Path) -> list[Path]:
    """A run's closed metric files (parts and compacted files) in read order: sorted by name."""
    try:
        names = os.listdir(run / METRICS_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [run / METRICS_DIR / n for n in sorted(names) if n.endswith(".parquet") and not is_temp_name(n)]


def metric_files(root: str | os.PathLike, run_ids: Optional[Sequence[str]] = None) -> list[Path]:
    """Every closed metric file under `root` (a run dir, a `runs/` dir, or a root holding `runs/`)."""
    return [f for run in iter_run_dirs(root, run_ids) for f in _closed_files(run)]


_STRING_COLS = [f.name for f in SCHEMA if f.type == pa.string()]
_DICT = pa.dictionary(pa.int32(), pa.string())


def _read_schema(columns: Sequence[str]) -> pa.Schema:
    """SCHEMA's `columns`, strings dictionary-encoded as Parquet stores them: reading them so skips
    materialising and re-hashing a million repeated strings."""
    return pa.schema([SCHEMA.field(c).with_type(_DICT) if c in _STRING_COLS else SCHEMA.field(c) for c in columns])


def _read_one(path: Path, schema: pa.Schema) -> tuple[pa.Table, bool]:
    """(rows with `schema`, whether the file says its rows are deduplicated and sorted: a compacted file)."""
    # Whole small file into memory first: one read() beats a seek per column page.
    with open(path, "rb") as f:
        data = f.read()
    strings = [c for c in schema.names if c in _STRING_COLS]
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings)
    except KeyError:  # a string column is missing; find out which, then open again
        names = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=[c for c in strings if c in names])
    file_schema = pf.schema_arrow
    clean = (file_schema.metadata or {}).get(_CLEAN_KEY) == _CLEAN_VALUE
    present = [c for c in schema.names if c in file_schema.names]
    missing = [c for c in schema.names if c not in present]
    required = [c for c in missing if not schema.field(c).nullable]
    if required:
        raise ValueError(f"missing columns {required}")
    table = pf.read_row_groups(range(pf.num_row_groups), columns=present, use_threads=False)
    for c in missing:  # a nullable column (sweep) a foreign writer left out
        table = table.append_column(c, pa.nulls(table.num_rows, schema.field(c).type))
    table = table.select(schema.names).replace_schema_metadata(None)
    return (table if table.schema.equals(schema) else table.cast(schema)), clean


def _read_parallel(paths: list[Path], schema: pa.Schema) -> list:
    """_read_one of each path, in parallel (Parquet decoding releases the GIL); an exception in place
    of the result of a file that could not be read."""

    def one(path):
        try:
            return _read_one(path, schema)
        except Exception as e:  # torn/truncated/corrupt/foreign: ArrowInvalid, OSError, ...
            return e

    workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 16))
    if workers <= 1:
        return [one(p) for p in paths]
    # a few long tasks, not one per file: a pool task costs about what reading a small part does
    size = -(-len(paths) // (workers * 4))
    with ThreadPoolExecutor(workers) as ex:
        chunks = ex.map(lambda i: [one(p) for p in paths[i:i + size]], range(0, len(paths), size))
        return [r for chunk in chunks for r in chunk]


def _read_runs(runs: Sequence[Path], schema: pa.Schema, *, stacklevel: int = 3) -> list[list[tuple[Path, tuple]]]:
    """Per run dir, [(file, (table, clean))] of its readable metric files in read order. Unreadable
    files warn (UnreadablePartWarning, naming the file) and are left out. A run one of whose files
    vanished between listing and reading (a compaction replaced them) is listed and read again."""
    files = {run: _closed_files(run) for run in runs}
    done: dict[Path, list[tuple[Path, Any]]] = {}
    todo = list(runs)
    for pass_ in range(3):
        paths = [f for run in todo for f in files[run]]
        results = dict(zip(paths, _read_parallel(paths, schema)))
        again = []
        for run in todo:
            got = [(f, results[f]) for f in files[run]]
            if pass_ < 2 and any(isinstance(r, FileNotFoundError) for _, r in got):
                files[run] = _closed_files(run)
                again.append(run)
            else:
                done[run] = got
        if not again:
            break
        todo = again
    out = []
    for run in runs:
        ok = []
        for path, res in done[run]:
            if isinstance(res, Exception):
                msg = f"skipping unreadable metrics part {path}: {type(res).__name__}: {res}"
                warnings.warn(msg, UnreadablePartWarning, stacklevel=stacklevel)
            else:
                ok.append((path, res))
        out.append(ok)
    return out


def _sorted_codes(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Integer codes whose order is the string order of `col` (nulls last), and their count."""
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    enc = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    dictionary = enc.dictionary
    rank = np.empty(len(dictionary) + 1, np.int64)
    rank[np.asarray(pc.sort_indices(dictionary))] = np.arange(len(dictionary))
    rank[-1] = len(dictionary)  # nulls sort last
    idx = pc.fill_null(enc.indices, len(dictionary)).to_numpy()
    return rank[idx], len(dictionary) + 1


def dedup_order(table: pa.Table) -> np.ndarray:
    """Indices of the rows to keep, in (run_id, split, metric, step) order: per key, the row of the
    highest attempt, and of those the later one."""
    n = table.num_rows
    if n == 0:
        return np.zeros(0, np.int64)
    coded = [_sorted_codes(table[name]) for name in ("run_id", "split", "metric")]
    if np.prod([float(k) for _, k in coded]) < 2**62:
        group = np.zeros(n, np.int64)  # fold the three string keys into one int key
        for codes, k in coded:
            group = group * k + codes
        keys = [group]
    else:  # cannot overflow in practice, but stay correct
        keys = [codes for codes, _ in coded]
    step = table["step"].to_numpy()
    attempt = table["attempt"].to_numpy()
    # lexsort (last key primary) is stable: rows equal on every key keep read order, so the last
    # of them is the later row
    order = np.lexsort((attempt, step, *reversed(keys)))
    s = step[order]
    last = np.ones(n, bool)
    last[:-1] = s[1:] != s[:-1]
    for k in keys:
        ks = k[order]
        last[:-1] |= ks[1:] != ks[:-1]
    return order[last]


def run_offsets(table: pa.Table) -> dict[Optional[str], tuple[int, int]]:
    """run_id -> (start, length) of its contiguous rows in a table sorted by run_id (read_metrics')."""
    if table.num_rows == 0:
        return {}
    col = table["run_id"].combine_chunks()
    enc = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    ends = np.r_[starts[1:], len(codes)]
    names = enc.dictionary.to_pylist()
    return {(names[codes[s]] if codes[s] >= 0 else None): (int(s), int(e - s)) for s, e in zip(starts, ends)}


def _single_run_id(table: pa.Table) -> tuple[bool, Optional[str]]:
    """(True, id) when every row has the same non-null run_id, from the dictionaries alone."""
    chunks = table["run_id"].chunks
    values = {v for c in chunks for v in c.dictionary.to_pylist()}
    if len(values) != 1 or any(c.null_count for c in chunks):
        return False, None
    return True, values.pop()


def _run_ids(table: pa.Table) -> set:
    """The run ids a table may hold (its dictionaries: a superset), None for null."""
    out = {v for c in table["run_id"].chunks for v in c.dictionary.to_pylist()}
    return out | ({None} if table["run_id"].null_count else set())


def _merge(runs: Sequence[Sequence[tuple[pa.Table, bool]]], schema: pa.Schema) -> pa.Table:
    """The runs' rows deduplicated and sorted by (run_id, split, metric, step), string columns
    dictionary-encoded. A run whose only file is a compacted one (deduplicated and sorted when it
    was written, one run id) is taken as it is; every other row goes through dedup_order."""
    clean: dict[Optional[str], list[pa.Table]] = {}
    dirty: list[pa.Table] = []
    for files in runs:
        single, rid = _single_run_id(files[0][0]) if len(files) == 1 and files[0][1] else (False, None)
        if single:
            clean.setdefault(rid, []).append(files[0][0])
        else:
            dirty += [t for t, _ in files]
    # a run id met twice (a copied run dir, a foreign part naming another run) needs the full rule
    mixed = set().union(*map(_run_ids, dirty)) if dirty else set()
    for rid in [r for r, ts in clean.items() if len(ts) > 1 or r in mixed]:
        dirty += clean.pop(rid)
    pieces = [(rid, ts[0]) for rid, ts in clean.items()]
    dirty = [t for t in dirty if t.num_rows]
    if dirty:
        table = pa.concat_tables(dirty).unify_dictionaries().combine_chunks()
        table = table.take(dedup_order(table))
        pieces += [(rid, table.slice(s, n)) for rid, (s, n) in run_offsets(table).items()]
    if not pieces:
        return schema.empty_table()
    pieces.sort(key=lambda p: (p[0] is None, p[0] or ""))  # sort_indices' string order, nulls last
    return pa.concat_tables([t for _, t in pieces]).unify_dictionaries().combine_chunks()


def read_metrics(
    root: str | os.PathLike,
    *,
    run_id: str | Iterable[str] | None = None,
    sweep: str | Iterable[str] | None = None,
    columns: Optional[Sequence[str]] = None,
    dictionary: bool = False,
) -> pa.Table:
    """All metric rows under `root` (a run dir, a `runs/` dir, or a root holding `runs/`),
    deduplicated (highest attempt wins), sorted by run_id, split, metric, step.
    `run_id`/`sweep` take one name or several; `columns` picks output columns (default SCHEMA's);
    `dictionary=True` keeps the string columns dictionary-encoded (cheaper for big trees).

    Temporary files are never read; an unreadable part warns (UnreadablePartWarning, naming the
    file) and is skipped.
    """
    out_cols = list(columns) if columns is not None else SCHEMA.names
    unknown = [c for c in out_cols if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown metric columns {unknown}; columns are {SCHEMA.names}")
    out_schema = _read_schema(out_cols) if dictionary else pa.schema([SCHEMA.field(c) for c in out_cols])
    run_ids, sweeps = _as_set(run_id), _as_set(sweep)
    need = set(out_cols) | set(_DEDUP_KEYS) | ({"sweep"} if sweeps is not None else set())
    schema = _read_schema([c for c in SCHEMA.names if c in need])  # only the columns asked for are decoded

    # runs live in runs/<run_id>, so a run filter also narrows the directories listed
    runs = _read_runs(iter_run_dirs(root, run_ids), schema)
    table = _merge([[res for _, res in files] for files in runs if files], schema)
    mask = None
    for name, wanted in (("run_id", run_ids), ("sweep", sweeps)):
        if wanted is not None:
            m = _is_in(table[name], wanted)
            mask = m if mask is None else mask & m
    if mask is not None and not mask.all():  # runs/<id> listed only those runs: usually nothing to drop
        table = table.filter(pa.array(mask))
    return table.select(out_cols).cast(out_schema)


def _is_in(col: pa.ChunkedArray, values: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows of a dictionary column (one chunk) whose value is in `values`:
    asked of the dictionary, then looked up by code, instead of hashing millions of strings."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    hit = pc.is_in(arr.dictionary, value_set=pa.array(values, pa.string())).to_numpy(zero_copy_only=False)
    codes = pc.fill_null(arr.indices, len(hit)).to_numpy(zero_copy_only=False)
    return np.append(hit, False)[codes]  # a null is in no set


# --------------------------------------------------------------------------- compaction

def compact_metrics(run_dir: str | os.PathLike, *, strict: bool = True) -> Optional[Path]:
    """Merge a finished run's metric files into one `compact-aNNN-NNNNNN.parquet` (its rows
    deduplicated and sorted as read_metrics returns them, marked so in the file's metadata), then
    remove the files merged. Returns the new file, or None when there was nothing to merge.

    A long run leaves a part per checkpoint; one file per finished run is what makes reading a tree
    of runs fast (read_metrics takes a compacted run's rows as they are). The new file is written
    atomically under a new name before anything is removed, and the old files are removed in read
    order: a crash in between leaves the compacted file beside a suffix of the old ones, which hold
    no row it does not (the winners of DESIGN §3's rule are the same), so readers see the same rows,
    and compacting again finishes the job. Unreadable files are left where they are (and warn).
    `strict=False` (the end of a run): an error warns and leaves things as they are instead of raising.
    """
    if not strict:
        try:
            return compact_metrics(run_dir)
        except Exception as e:  # an optimisation only: the parts are the data, a DONE run stays DONE
            warnings.warn(f"metrics of {run_dir} not compacted: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
            return None
    rdir = Path(run_dir)
    files = _read_runs([rdir], _read_schema(SCHEMA.names))[0]
    if not files or (len(files) == 1 and files[0][1][1]):
        return None  # nothing, or one compacted file already
    return _replace_with_merged(rdir / METRICS_DIR, files)


def _replace_with_merged(mdir: Path, files: Sequence[tuple[Path, tuple[pa.Table, bool]]]) -> Path:
    """Write the rows of `files` (read in read order), deduplicated and sorted, to a new compacted
    file in `mdir` (atomically, under a name not in use), then remove `files` in read order."""
    table = _merge([[res for _, res in files]], _read_schema(SCHEMA.names)).cast(SCHEMA)
    attempt = int(pc.max(table["attempt"]).as_py() or 0) if table.num_rows else 0
    seqs = [int(m[2]) for m in map(_COMPACT_RE.match, os.listdir(mdir)) if m and int(m[1]) == attempt]
    path = mdir / compact_name(attempt, max(seqs, default=-1) + 1)
    atomic_write_bytes(path, _parquet_bytes(table, {_CLEAN_KEY: _CLEAN_VALUE}))
    for old, _ in files:
        old.unlink(missing_ok=True)
    fsync_dir(mdir)
    return path


# --------------------------------------------------------------------------- summaries

SUMMARY_TYPES = {
    "run_id": pa.string(),
    "sweep": pa.string(),
    "status": pa.string(),
    "monitor": pa.string(),  # split/metric, e.g. val/acc1
    "best": pa.float64(),  # best value of the monitored metric
    "best_epoch": pa.int64(),
    "epochs": pa.int64(),  # epochs done
    "steps": pa.int64(),  # optimizer steps done
    "wall_s": pa.float64(),
    "gpu_hours": pa.float64(),
    "img_per_s": pa.float64(),
}


def _plain(value: Any) -> Any:
    """A value Parquet stores in any reader's terms: numpy scalars unwrapped, containers as JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def summary_row(row: Mapping[str, Any], config: Any = None) -> dict[str, Any]:
    """The summary's columns: `row` plus the config flattened into `cfg.<dotted.key>` columns."""
    out = {k: _plain(v) for k, v in row.items()}
    if config is not None:
        from imgtrain.config import flatten

        out.update({f"cfg.{k}": _plain(v) for k, v in flatten(config).items()})
    if not out.get("run_id"):
        raise ValueError("a summary needs a run_id")
    return out


def write_summary(run_dir: str | os.PathLike, row: Mapping[str, Any], config: Any = None) -> Path:
    """Atomically write `<run_dir>/summary.parquet`: one row of `row` (SUMMARY_TYPES for the known
    columns, any extra keys inferred) plus `config` (a Config or a nested/flat dict) as `cfg.*` columns.
    Lists and dicts are stored as JSON strings so summaries of different configs concatenate."""
    values = summary_row(row, config)
    arrays, fields = [], []
    for k, v in values.items():
        typ = SUMMARY_TYPES.get(k)
        arr = pa.array([v], typ) if typ is not None else pa.array([v])
        arrays.append(arr)
        fields.append(pa.field(k, arr.type))
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    side = Path(run_dir) / SUMMARY_JSON
    side.unlink(missing_ok=True)  # never a JSON copy of an older summary beside a newer one, crash or not
    path = atomic_write_bytes(Path(run_dir) / SUMMARY_FILE, buf.getvalue())
    (row_back,) = table.to_pylist()
    if all(v is None or isinstance(v, (bool, int, float, str)) for v in row_back.values()):  # JSON gives them back
        st = path.stat()
        atomic_write_bytes(side, json.dumps({"of": [st.st_size, st.st_mtime_ns], "row": row_back}).encode())
    return path


def read_summary_row(run_dir: str | os.PathLike) -> dict[str, Any]:
    """summary.parquet's row as a dict. From summary.json, its copy, when that was written for this
    very file (same size and mtime): a one-row Parquet file of a hundred cfg.* columns takes about
    4 ms to read (1,000 runs: 4 s), the JSON a few hundredths of that. FileNotFoundError without a summary."""
    rdir = Path(run_dir)
    st = (rdir / SUMMARY_FILE).stat()
    try:
        side = json.loads((rdir / SUMMARY_JSON).read_bytes())
        if side["of"] == [st.st_size, st.st_mtime_ns] and isinstance(side["row"], dict):
            return side["row"]
    except (OSError, ValueError, KeyError, TypeError):  # none, torn, foreign: the Parquet file says
        pass
    with open(rdir / SUMMARY_FILE, "rb") as f:
        rows = pq.ParquetFile(pa.BufferReader(f.read())).read(use_threads=False).to_pylist()
    if len(rows) != 1:
        raise ValueError(f"{len(rows)} rows, expected 1")
    return rows[0]


def _common_type(types: list[pa.DataType]) -> pa.DataType:
    kinds = {t for t in types if not pa.types.is_null(t)}
    if not kinds:
        return pa.null()
    if len(kinds) == 1:
        return kinds.pop()
    if all(pa.types.is_integer(t) for t in kinds):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in kinds):
        return pa.float64()
    return pa.string()  # mixed kinds (a key whose type changed between versions): text keeps every value


def _to_string(col: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        return pc.cast(col, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.chunked_array([pa.array([None if v is None else str(v) for v in col.to_pylist()], pa.string())])


def unify_tables(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables whose columns differ: missing columns become nulls, ints widen to floats
    when mixed, and otherwise conflicting types fall back to strings."""
    names: dict[str, list[pa.DataType]] = {}
    for t in tables:
        for f in t.schema:
            names.setdefault(f.name, []).append(f.type)
    target = {n: _common_type(ts) for n, ts in names.items()}
    out = []
    for t in tables:
        cols = []
        for name, typ in target.items():
            if name not in t.column_names:
                cols.append(pa.chunked_array([pa.nulls(t.num_rows, typ)]))
            elif t[name].type != typ:
                cols.append(_to_string(t[name]) if typ == pa.string() else pc.cast(t[name], typ))
            else:
                cols.append(t[name])
        out.append(pa.Table.from_arrays(cols, names=list(target)))
    return pa.concat_tables(out)


def read_summaries(root: str | os.PathLike) -> pa.Table:
    """Every run's summary under `root` as one table, sorted by run_id; the known columns first,
    then the others (cfg.* included) in first-seen order. Unreadable summaries warn and are skipped."""
    paths = [r / SUMMARY_FILE for r in iter_run_dirs(root) if (r / SUMMARY_FILE).is_file()]

    def one(path):
        try:
            with open(path, "rb") as f:
                return pq.ParquetFile(pa.BufferReader(f.read())).read(use_threads=False)
        except Exception as e:
            return e

    tables = []
    for path, res in zip(paths, map(one, paths)):
        if isinstance(res, Exception):
            warnings.warn(f"skipping unreadable summary {path}: {type(res).__name__}: {res}", UnreadablePartWarning, stacklevel=2)
        else:
            tables.append(res)
    base = pa.schema([pa.field(k, t) for k, t in SUMMARY_TYPES.items()])
    table = unify_tables([base.empty_table(), *tables])
    return table.take(pc.sort_indices(table, [("run_id", "ascending")]))
