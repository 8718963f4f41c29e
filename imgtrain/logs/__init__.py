"""Run directories, Parquet metric logs and progress output (DESIGN §2, §3).

The metric log is metric_schema.py (its schema and files), metric_writer.py (parts), compaction.py,
metric_reader.py (read_metrics, deduplicating) and summary.py (summary.parquet).
"""
from imgtrain.logs.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from imgtrain.logs.compaction import compact_metrics
from imgtrain.logs.metric_reader import read_metrics
from imgtrain.logs.metric_schema import SCHEMA, UnreadablePartWarning, metric_files
from imgtrain.logs.metric_writer import MetricWriter
from imgtrain.logs.progress import Progress
from imgtrain.logs.runinfo import (
    end_attempt,
    git_sha,
    iter_run_dirs,
    package_versions,
    read_run,
    resolve_root,
    slurm_info,
    start_attempt,
)
from imgtrain.logs.summary import SUMMARY_TYPES, read_summaries, read_summary_row, unify_tables, write_summary

# The run's status, markers and directory belong to imgtrain.runs (which builds on this package, so it
# cannot be imported here at start-up); these names stay importable from imgtrain.logs for older code.
_FROM_RUNS = {"DONE": "DONE", "FAILED": "FAILED", "INCOMPLETE": "INCOMPLETE", "NEW": "NEW",
              "clear_markers": "clear_markers", "failure_reason": "failure_reason", "mark_done": "mark_done",
              "mark_failed": "mark_failed", "record_failure": "record_failure", "read_status": "read_status",
              "run_dir": "run_path"}


def __getattr__(name: str):
    if name in _FROM_RUNS:
        from imgtrain import runs
        return getattr(runs, _FROM_RUNS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SCHEMA", "SUMMARY_TYPES", "MetricWriter", "UnreadablePartWarning", "compact_metrics", "metric_files",
    "read_metrics", "read_summaries", "read_summary_row", "unify_tables", "write_summary", "Progress",
    "atomic_write_bytes", "atomic_write_text", "fsync_dir", "DONE", "FAILED", "INCOMPLETE", "NEW", "clear_markers",
    "end_attempt", "failure_reason", "git_sha", "iter_run_dirs", "mark_done", "mark_failed", "record_failure",
    "package_versions", "read_run", "read_status", "resolve_root", "run_dir", "slurm_info", "start_attempt",
]
