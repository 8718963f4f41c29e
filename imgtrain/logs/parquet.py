"""Parquet metric logs and run summaries (DESIGN §3).

Rank 0 buffers rows in plain lists (cheap enough for every step) and writes them as a new part file
`metrics/part-a{attempt:03d}-{seq:06d}.parquet` on each flush; a part is never rewritten. A resumed
run replays some steps under a higher attempt number, so readers keep, for each
(run_id, split, metric, step), the row of the highest attempt.
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

from imgtrain.logs.atomic import atomic_write_bytes, is_temp_name
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
_PART_RE = re.compile(r"^part-a(\d+)-(\d+)\.parquet$")
_DEDUP_KEYS = ("run_id", "split", "metric", "step", "attempt")


class UnreadablePartWarning(UserWarning):
    """A Parquet file (torn by a crash, truncated, corrupt) was skipped by a reader."""


def part_name(attempt: int, seq: int) -> str:
    return f"part-a{attempt:03d}-{seq:06d}.parquet"


def _next_seq(metrics_dir: Path, attempt: int) -> int:
    seqs = [int(m[2]) for m in map(_PART_RE.match, os.listdir(metrics_dir)) if m and int(m[1]) == attempt]
    return max(seqs, default=-1) + 1


# --------------------------------------------------------------------------- writer

class MetricWriter:
    """Buffers metric rows of one run attempt and writes them as immutable Parquet parts.

    `flush_rows` / `flush_seconds` add automatic flushes (checked on each log call); the engine also
    flushes explicitly at every checkpoint so logged metrics are on disk before `last.pt` is.
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
    ):
        self.dir = Path(run_dir) / METRICS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_id, self.sweep, self.attempt = run_id, sweep, int(attempt)
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._auto = flush_rows is not None or flush_seconds is not None
        self._seq = _next_seq(self.dir, self.attempt)  # a re-created writer must not clobber earlier parts
        self.parts: list[Path] = []  # written by this writer, in order
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
        """Write buffered rows as a new part file; returns its path, or None if nothing was buffered.

        On an error the rows stay buffered, so a later flush can retry.
        """
        if not self._value:
            self._last_flush = time.monotonic()
            return None
        buf = pa.BufferOutputStream()
        pq.write_table(self.table(), buf)
        path = self.dir / part_name(self.attempt, self._seq)
        while path.exists():  # another writer of this attempt got there first: never overwrite
            self._seq += 1
            path = self.dir / part_name(self.attempt, self._seq)
        atomic_write_bytes(path, buf.getvalue())
        self._seq += 1
        self.parts.append(path)
        self._reset()
        return path

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


def metric_files(root: str | os.PathLike, run_ids: Optional[Sequence[str]] = None) -> list[Path]:
    """Every closed part file under `root` (a run dir, a `runs/` dir, or a root holding `runs/`)."""
    out = []
    for run in iter_run_dirs(root, run_ids):
        try:
            names = os.listdir(run / METRICS_DIR)
        except (FileNotFoundError, NotADirectoryError):
            continue
        out += [run / METRICS_DIR / n for n in sorted(names) if n.endswith(".parquet") and not is_temp_name(n)]
    return out


_STRING_COLS = [f.name for f in SCHEMA if f.type == pa.string()]
_DICT = pa.dictionary(pa.int32(), pa.string())


def _read_schema(columns: list[str]) -> pa.Schema:
    """SCHEMA's `columns`, strings dictionary-encoded as Parquet stores them: reading them so skips
    materialising and re-hashing a million repeated strings."""
    return pa.schema([SCHEMA.field(c).with_type(_DICT) if c in _STRING_COLS else SCHEMA.field(c) for c in columns])


def _read_one(path: Path, schema: pa.Schema) -> pa.Table:
    # Whole small file into memory first: one read() beats a seek per column page.
    with open(path, "rb") as f:
        data = f.read()
    strings = [c for c in schema.names if c in _STRING_COLS]
    try:
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=strings)
    except KeyError:  # a string column is missing; find out which, then open again
        names = pq.ParquetFile(pa.BufferReader(data)).schema_arrow.names
        pf = pq.ParquetFile(pa.BufferReader(data), read_dictionary=[c for c in strings if c in names])
    present = [c for c in schema.names if c in pf.schema_arrow.names]
    missing = [c for c in schema.names if c not in present]
    required = [c for c in missing if not schema.field(c).nullable]
    if required:
        raise ValueError(f"missing columns {required}")
    table = pf.read_row_groups(range(pf.num_row_groups), columns=present, use_threads=False)
    for c in missing:  # a nullable column (sweep) a foreign writer left out
        table = table.append_column(c, pa.nulls(table.num_rows, schema.field(c).type))
    table = table.select(schema.names)
    return table if table.schema.equals(schema) else table.cast(schema)


def _read_many(paths: list[Path], schema: pa.Schema) -> list[pa.Table]:
    """Read parts in parallel (Parquet decoding releases the GIL); unreadable ones warn and drop."""

    def one(path):
        try:
            return _read_one(path, schema)
        except Exception as e:  # torn/truncated/corrupt/foreign: ArrowInvalid, OSError, ...
            return e

    workers = min(8, os.cpu_count() or 1, max(1, len(paths) // 16))
    if workers > 1:
        with ThreadPoolExecutor(workers) as ex:
            results = list(ex.map(one, paths))
    else:
        results = [one(p) for p in paths]
    tables = []
    for path, res in zip(paths, results):
        if isinstance(res, Exception):
            msg = f"skipping unreadable metrics part {path}: {type(res).__name__}: {res}"
            warnings.warn(msg, UnreadablePartWarning, stacklevel=3)
        else:
            tables.append(res)
    return tables


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


def read_metrics(
    root: str | os.PathLike,
    *,
    run_id: str | Iterable[str] | None = None,
    sweep: str | Iterable[str] | None = None,
    columns: Optional[Sequence[str]] = None,
) -> pa.Table:
    """All metric rows under `root` (a run dir, a `runs/` dir, or a root holding `runs/`),
    deduplicated (highest attempt wins), sorted by run_id, split, metric, step.
    `run_id`/`sweep` take one name or several; `columns` picks output columns (default SCHEMA's).

    Temporary files are never read; an unreadable part warns (UnreadablePartWarning, naming the
    file) and is skipped.
    """
    out_cols = list(columns) if columns is not None else SCHEMA.names
    unknown = [c for c in out_cols if c not in SCHEMA.names]
    if unknown:
        raise ValueError(f"unknown metric columns {unknown}; columns are {SCHEMA.names}")
    out_schema = pa.schema([SCHEMA.field(c) for c in out_cols])
    run_ids, sweeps = _as_set(run_id), _as_set(sweep)
    need = set(out_cols) | set(_DEDUP_KEYS) | ({"sweep"} if sweeps is not None else set())

    # runs live in runs/<run_id>, so a run filter also narrows the directories listed
    tables = _read_many(metric_files(root, run_ids), _read_schema([c for c in SCHEMA.names if c in need]))
    if not tables:
        return out_schema.empty_table()
    # one dictionary per string column across all parts: cheap, the dictionaries are tiny
    table = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
    mask = None
    if run_ids is not None:
        mask = pc.is_in(table["run_id"], pa.array(run_ids, pa.string()))
    if sweeps is not None:
        m = pc.is_in(table["sweep"], pa.array(sweeps, pa.string()))
        mask = m if mask is None else pc.and_(mask, m)
    if mask is not None:
        table = table.filter(mask)
    return table.take(dedup_order(table)).select(out_cols).cast(out_schema)


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
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_arrays(arrays, schema=pa.schema(fields)), buf)
    return atomic_write_bytes(Path(run_dir) / SUMMARY_FILE, buf.getvalue())


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
