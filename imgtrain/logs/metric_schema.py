"""The metric log's format (DESIGN §3): SCHEMA, the files under `<run>/metrics`, how they are written.

Rank 0 writes a run's rows as part files `metrics/part-a{attempt:03d}-{seq:06d}.parquet` (metric_writer.py);
compaction merges them into `compact-a{attempt}-{seq}.parquet` files marked as deduplicated and sorted
(compaction.py); readers list the closed files of a run in read order, by name (metric_reader.py).
This module holds what they share: the schema, the file names, the Parquet encoding and the listing.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from imgtrain.logs.atomic import is_temp_name
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
_PART_RE = re.compile(r"^part-a(\d+)-(\d+)\.parquet$")
_COMPACT_RE = re.compile(r"^compact-a(\d+)-(\d+)\.parquet$")
# key-value metadata of a compacted file: its rows are deduplicated and sorted (read as they are)
_CLEAN_KEY, _CLEAN_VALUE = b"imgtrain.metrics", b"compacted: deduplicated, sorted by run_id, split, metric, step"


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
