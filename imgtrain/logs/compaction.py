"""Compaction of a run's metric files (DESIGN §3).

When a run ends, `compact_metrics` merges its parts into one `compact-a{attempt}-{seq}.parquet`
(deduplicated, sorted, written atomically under a new name) and then removes them: a tree of
finished runs is then one file per run, and read_metrics takes such a file's rows as they are.
A running writer merges its own files the same way (`_replace_with_merged`, metric_writer.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from imgtrain.logs.atomic import atomic_write_bytes, fsync_dir
from imgtrain.logs.metric_reader import _merge, _read_runs
from imgtrain.logs.metric_schema import (_CLEAN_KEY, _CLEAN_VALUE, _COMPACT_RE, METRICS_DIR, SCHEMA, _parquet_bytes,
                                         _read_schema, compact_name)


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
