"""Run summaries (DESIGN §3): `<run>/summary.parquet`, one row per run (its results and its config as
`cfg.*` columns), the summary.json copy of that row, and read_summaries, which collects a tree's.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imgtrain.logs.atomic import atomic_write_bytes
from imgtrain.logs.metric_schema import UnreadablePartWarning
from imgtrain.logs.runinfo import iter_run_dirs

SUMMARY_FILE = "summary.parquet"
SUMMARY_JSON = "summary.json"  # summary.parquet's row again, tied to it by size and mtime (read_summary_row)

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
