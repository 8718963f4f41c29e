"""The writer of a run's metric parts (DESIGN §3).

Rank 0 buffers rows in plain lists (cheap enough for every step) and writes them as a new part file
`metrics/part-a{attempt:03d}-{seq:06d}.parquet` on each flush; a part is never rewritten. While a run
goes on, its writer merges its own files every ROLL_PARTS parts (as compact_metrics does at the end of
a run), so a running or interrupted run holds a few files rather than one per checkpoint.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pyarrow as pa

from imgtrain.logs.atomic import atomic_write_bytes
from imgtrain.logs.compaction import _replace_with_merged
from imgtrain.logs.metric_reader import _read_parallel
from imgtrain.logs.metric_schema import (_COMPACT_RE, _PART_RE, METRICS_DIR, SCHEMA, _closed_files, _parquet_bytes,
                                         _read_schema, part_name)

# a writer merges its files into one every ROLL_PARTS parts: a running run of 100 checkpoints holds at
# most 16 files, not 100 (each costs a reader ~0.4 ms however small), for ~10 ms of merging per roll
ROLL_PARTS = 16


def _next_seq(metrics_dir: Path, attempt: int) -> int:
    seqs = [int(m[2]) for m in map(_PART_RE.match, os.listdir(metrics_dir)) if m and int(m[1]) == attempt]
    return max(seqs, default=-1) + 1


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
