"""Run directories, Parquet metric logs and progress output (DESIGN §2, §3)."""
from imgtrain.logs.atomic import atomic_write_bytes, atomic_write_text, fsync_dir
from imgtrain.logs.parquet import (
    SCHEMA,
    SUMMARY_TYPES,
    MetricWriter,
    UnreadablePartWarning,
    compact_metrics,
    metric_files,
    read_metrics,
    read_summaries,
    read_summary_row,
    unify_tables,
    write_summary,
)
from imgtrain.logs.progress import Progress
from imgtrain.logs.runinfo import (
    DONE,
    FAILED,
    INCOMPLETE,
    NEW,
    clear_markers,
    end_attempt,
    failure_reason,
    git_sha,
    iter_run_dirs,
    mark_done,
    mark_failed,
    record_failure,
    package_versions,
    read_run,
    read_status,
    resolve_root,
    run_dir,
    slurm_info,
    start_attempt,
)

__all__ = [
    "SCHEMA", "SUMMARY_TYPES", "MetricWriter", "UnreadablePartWarning", "compact_metrics", "metric_files",
    "read_metrics", "read_summaries", "read_summary_row", "unify_tables", "write_summary", "Progress",
    "atomic_write_bytes", "atomic_write_text", "fsync_dir", "DONE", "FAILED", "INCOMPLETE", "NEW", "clear_markers",
    "end_attempt", "failure_reason", "git_sha", "iter_run_dirs", "mark_done", "mark_failed", "record_failure",
    "package_versions", "read_run", "read_status", "resolve_root", "run_dir", "slurm_info", "start_attempt",
]
