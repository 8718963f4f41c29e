"""The deduplicating reader of metric logs (DESIGN §3): read_metrics and what it is made of.

A resumed run replays some steps under a higher attempt number, so readers keep, for each
(run_id, split, metric, step), the row of the highest attempt (dedup_order). A compacted file's rows
were deduplicated and sorted when it was written: a run whose only file is one is taken as it is.
"""
from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgtrain.logs.metric_schema import (_CLEAN_KEY, _CLEAN_VALUE, _STRING_COLS, SCHEMA, UnreadablePartWarning,
                                         _closed_files, _read_schema)
from imgtrain.logs.runinfo import iter_run_dirs

_DEDUP_KEYS = ("run_id", "split", "metric", "step", "attempt")


def _as_set(value: str | Iterable[str] | None) -> Optional[list[str]]:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


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
