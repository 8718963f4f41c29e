"""A run, in one place (DESIGN §2): its id and directory, its status and markers, the lifecycle of one
attempt, its summary row, the metric it is judged by, and the exit code that asks for a requeue.

    rid, rdir = run_id(cfg), run_dir(cfg)              # <root>/runs/<output.run or name-confighash8>
    read_status(rdir)                                   # NEW | INCOMPLETE | DONE | FAILED | PRUNED
    with attempt(rdir, run_id=rid, config_hash=h) as a: # run.json entry; FAILED + compaction on an exception
        ...; a.done(summary(run_id=rid, ...), config=cfg)   # summary.parquet, DONE; compaction at exit
    monitor_of(cfg)                                     # Monitor("val/acc1", "max")

The engine, the SLURM launcher, sweeps, analysis and the non-torch trainers (bow, dcgan, svm) all use
this module. It imports no torch (nor anything that does): the launcher decides "DONE, nothing to do"
and a sweep shows its status in a fraction of a second, and neither may disagree with the engine.
Plain functions over files; only rank 0 calls the writing ones.
"""
from __future__ import annotations

import contextlib
import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from imgtrain.config import config_hash
from imgtrain.logs.atomic import atomic_write_text, fsync_dir, is_temp_name
from shards.dirlock import Locked, acquire as acquire_lock  # noqa: F401 (callers catch runs.Locked)
from imgtrain.logs.compaction import compact_metrics
from imgtrain.logs.summary import write_summary
from imgtrain.logs.runinfo import RUN_JSON, end_attempt, now_iso, read_run, resolve_root, start_attempt

# EX_TEMPFAIL: stopped cleanly on a signal after writing last.pt. The batch script (slurm/launch.sh via
# imgtrain.launch), the sweep job and the local executor read it as "requeue me, I will resume".
REQUEUE_EXIT_CODE = 75

# --------------------------------------------------------------------------- status
# A run's status, from its directory. The markers are files named like the status they set.
NEW = "NEW"  # no run.json yet: never started
INCOMPLETE = "INCOMPLETE"  # run.json without a marker: running, waiting for a requeue, or dead (only the
#                            scheduler can tell which)
DONE = "DONE"  # marker: finished (summary.parquet written first)
FAILED = "FAILED"  # marker holding the reason (and traceback)
PRUNED = "PRUNED"  # marker a sweep's successive halving writes (JSON with its reason) into a run it stopped
STATUSES = (NEW, INCOMPLETE, DONE, FAILED, PRUNED)
# how an attempt ended, in run.json's attempts[].status (besides DONE and FAILED)
STOPPED = "STOPPED"  # by SIGUSR1/SIGTERM (or a halving rung) after writing last.pt: exit REQUEUE_EXIT_CODE
RUNNING = "running"  # written by start_attempt, until the attempt ends

RUNS = "runs"
# the run directory's owner while an attempt runs (imgtrain/logs/lock.py): host, pid, SLURM job, heartbeat
LOCK = "LOCK"


# --------------------------------------------------------------------------- id and directory

def run_id(cfg) -> str:
    """output.run, else <config name>-<first 8 hex of the config hash>. The hash leaves out the keys that
    do not change results, so a requeued or re-submitted run finds its own directory and resumes."""
    return cfg.output.run or f"{cfg.name}-{config_hash(cfg)[:8]}"


def run_path(root: str | os.PathLike, rid: str) -> Path:
    """<root>/runs/<rid>. A run id names one directory: a '/' or a temporary name would hide the run
    from every listing (iter_run_dirs), so it is refused here rather than found missing later."""
    if not rid or rid in (".", "..") or "/" in rid or os.sep in rid or is_temp_name(rid):
        raise ValueError(f"invalid run id {rid!r}: it names a directory under runs/")
    return Path(root) / RUNS / rid


def run_dir(cfg) -> Path:
    """The run directory of a config: output.root (else $IMGTRAIN_ROOT, else .) / runs / run_id(cfg)."""
    return run_path(resolve_root(cfg.output.root), run_id(cfg))


def sweep_run_id(sweep: str, cell: str) -> str:
    """A sweep cell's run id, <sweep>-<cell hash>; the sweep sets it as output.run, so run_id(cfg) of
    the cell's config gives it back."""
    return f"{sweep}-{cell}"


# --------------------------------------------------------------------------- markers

def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def mark_done(rdir: str | os.PathLike) -> None:
    rdir = Path(rdir)
    _remove(rdir / FAILED)
    atomic_write_text(rdir / DONE, now_iso() + "\n")


def mark_failed(rdir: str | os.PathLike, reason: str) -> None:
    rdir = Path(rdir)
    _remove(rdir / DONE)
    atomic_write_text(rdir / FAILED, f"{reason.rstrip()}\n")


def mark_pruned(rdir: str | os.PathLike, marker: Mapping[str, Any]) -> None:
    """The halving's verdict (JSON: reason, metric, value, rung, ...). The run has stopped for good, so
    its metric parts become one file, as at DONE. An existing marker is kept (the first rung decided)."""
    rdir = Path(rdir)
    if read_pruned(rdir) is None:
        atomic_write_text(rdir / PRUNED, json.dumps(dict(marker), indent=1) + "\n")
        compact_metrics(rdir, strict=False)


def clear_markers(rdir: str | os.PathLike) -> None:
    """Forget DONE/FAILED, e.g. before running a failed run again (PRUNED is the sweep's to keep)."""
    for name in (DONE, FAILED):
        _remove(Path(rdir) / name)


def clear_pruned(rdir: str | os.PathLike) -> None:
    """Take back a sweep's PRUNED verdict (an ASHA rung reopened: the cell is paused again, not stopped)."""
    _remove(Path(rdir) / PRUNED)


def _names(rdir: Path) -> set[str]:
    return {n for n in (PRUNED, DONE, FAILED, RUN_JSON) if (rdir / n).is_file()}


def read_status(rdir: str | os.PathLike, names: Optional[set[str]] = None) -> str:
    """The run's own state, what the engine and the launcher act on: DONE (nothing to train), FAILED,
    INCOMPLETE or NEW. A sweep's PRUNED does not change it (see run_status). `names`, the directory's
    listing when the caller has it, saves the stat calls (an analysis of 10,000 runs)."""
    names = _names(Path(rdir)) if names is None else names
    if DONE in names:
        return DONE
    if FAILED in names:
        return FAILED
    return INCOMPLETE if RUN_JSON in names else NEW


def run_status(rdir: str | os.PathLike, names: Optional[set[str]] = None) -> str:
    """What sweep status and analysis show: PRUNED when the sweep's halving stopped the run (it writes
    the marker after the run stopped, even into one that early-stopped to DONE: the last word), else
    read_status."""
    names = _names(Path(rdir)) if names is None else names
    return PRUNED if PRUNED in names else read_status(rdir, names)


def failure_reason(rdir: str | os.PathLike) -> Optional[str]:
    try:
        return (Path(rdir) / FAILED).read_text().strip()
    except FileNotFoundError:
        return None


def read_pruned(rdir: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The PRUNED marker as a dict (a plain-text one as {"reason": text}); None without one."""
    try:
        text = (Path(rdir) / PRUNED).read_text()
    except FileNotFoundError:
        return None
    try:
        out = json.loads(text)
    except json.JSONDecodeError:
        return {"reason": text.strip()}
    return out if isinstance(out, dict) else {"reason": text.strip()}


# --------------------------------------------------------------------------- summary row

def summary(*, run_id: str, sweep: Optional[str], monitor: Optional[str], best: Optional[float],
            best_epoch: int, epochs: int, steps: int, wall_s: float, gpu_hours: float = 0.0,
            img_per_s: Optional[float] = 0.0, status: str = DONE, **extra: Any) -> dict[str, Any]:
    """summary.parquet's row (DESIGN §3) in its column order; `extra` (test/acc1, fit_s, ...) follows.
    The column order is part of the file: every writer gets it from here. write_summary adds cfg.*."""
    return {"run_id": run_id, "sweep": sweep, "status": status, "monitor": monitor, "best": best,
            "best_epoch": best_epoch, "epochs": epochs, "steps": steps, "wall_s": wall_s, "gpu_hours": gpu_hours,
            "img_per_s": img_per_s, **extra}


def finish(rdir: str | os.PathLike, row: Mapping[str, Any], config: Any = None) -> None:
    """summary.parquet, then DONE: a DONE run always has its summary."""
    write_summary(rdir, row, config=config)
    mark_done(rdir)


# --------------------------------------------------------------------------- attempt lifecycle

def failure_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def record_failure(rdir: str | os.PathLike, number: int, exc: BaseException) -> str:
    """End attempt `number` as FAILED, write the FAILED marker with the traceback and compact the metric
    parts (call inside `except`, after the metric writer is closed). A KeyboardInterrupt ends the attempt
    but leaves no marker: nothing is wrong with the run. Returns the one-line reason."""
    reason = failure_text(exc)
    end_attempt(rdir, number, status=FAILED, exit_code=1, reason=reason)
    if not isinstance(exc, KeyboardInterrupt):
        mark_failed(rdir, reason + "\n\n" + traceback.format_exc())
        # the run has ended: its parts become one file, as at DONE (a retry's parts go beside it)
        compact_metrics(rdir, strict=False)
    return reason


@dataclass
class Attempt:
    """One start of a run, as `attempt()` yields it. Say how it ended with done() / stopped() / end();
    the context manager writes it to run.json when the block exits."""
    run_dir: Path
    number: Optional[int]  # 0 for the first start, +1 per resume; None where nothing is written (not rank 0)
    write: bool = True
    status: Optional[str] = None
    exit_code: Optional[int] = None
    reason: Optional[str] = None  # why it ended (a stop signal, the exception's one-line text)

    def end(self, status: str, exit_code: int, reason: Optional[str] = None) -> None:
        self.status, self.exit_code, self.reason = status, exit_code, reason

    def done(self, row: Optional[Mapping[str, Any]] = None, config: Any = None) -> None:
        """Finished: the summary row (if given here) and DONE are written now, run.json and compaction
        at the end of the block."""
        if row is not None and self.write:
            finish(self.run_dir, row, config)
        self.end(DONE, 0)

    def stopped(self, reason: Optional[str] = None) -> None:
        """Stopped by a signal after last.pt was written: resumable, exit REQUEUE_EXIT_CODE."""
        self.end(STOPPED, REQUEUE_EXIT_CODE, reason)


@contextlib.contextmanager
def attempt(rdir: str | os.PathLike, *, run_id: str, sweep: Optional[str] = None, cell: Optional[str] = None,
            config_hash: Optional[str] = None, world_size: int = 1, hosts: Optional[list[str]] = None,
            config_yaml: Optional[str] = None, write: bool = True) -> Iterator[Attempt]:
    """Start an attempt (config.yaml when given, run.json's new entry), yield it, and end it:
    - the block returns: run.json gets the attempt's end (status, exit code, reason; a block that
      said nothing ended DONE); a DONE run's metric parts become one file (trees of runs read fast);
    - the block raises: record_failure (attempt FAILED, FAILED marker with the traceback, compaction),
      and the exception goes on. Close metric writers inside the block, so their rows are in the parts.
    `write=False` (ranks other than 0) writes nothing; the caller shares the number (a broadcast)."""
    rdir = Path(rdir)
    number = None
    lock = None
    if write:
        rdir.mkdir(parents=True, exist_ok=True)
        # the run's owner first: a second process on the same run stops here, before it writes anything
        lock = acquire_lock(rdir / LOCK, what=f"run {run_id}")
    try:
        if write:
            if config_yaml is not None:
                atomic_write_text(rdir / "config.yaml", config_yaml)
            number = start_attempt(rdir, run_id=run_id, sweep=sweep, cell=cell, config_hash=config_hash,
                                   world_size=world_size, hosts=hosts)
        a = Attempt(rdir, number, write)
        try:
            yield a
        except BaseException as e:
            if write and a.number is not None:
                a.reason = record_failure(rdir, a.number, e)
            else:
                a.reason = failure_text(e)
            a.status, a.exit_code = FAILED, 1
            raise
        if a.status is None:
            a.end(DONE, 0)
        if write:
            end_attempt(rdir, a.number, status=a.status, exit_code=a.exit_code, reason=a.reason)
            if a.status == DONE:
                compact_metrics(rdir, strict=False)
    finally:
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------- progress

def record_checkpoint(rdir: str | os.PathLike, step: int) -> None:
    """run.json's `checkpoint_step`: the step of the newest checkpoint written (rank 0, after it is in
    place). A run with progress whose checkpoints are all gone is then refused, not silently started over.
    Nothing without run.json (a Trainer outside runs.attempt, e.g. a benchmark)."""
    info = read_run(rdir)
    if info is None or info.get("checkpoint_step") == step:
        return
    attempts = info.pop("attempts", [])
    info["checkpoint_step"] = step
    info["attempts"] = attempts  # attempts stay last in the file
    atomic_write_text(Path(rdir) / RUN_JSON, json.dumps(info, indent=2) + "\n")


def checkpoint_step(rdir: str | os.PathLike) -> int:
    """The step of the newest checkpoint any attempt wrote (run.json), 0 when none did."""
    return int((read_run(rdir) or {}).get("checkpoint_step") or 0)


# --------------------------------------------------------------------------- monitored metric

# Directions of the metrics the tasks log. A metric outside these (and not a *loss) has no direction
# the code could guess right: the trainer refuses it (set trainer.monitor_mode), and so does everything
# that ranks runs, so a sweep or a leaderboard never orders runs the other way round from the trainer.
MAXIMISED = frozenset({"acc", "acc1", "acc5", "acc_class", "precision", "recall", "f1", "srcc", "lcc", "img_per_s"})
MINIMISED = frozenset({"loss", "emd", "mse", "mae"})
SPLITS = ("train", "val", "test")
# trainer.monitor=auto: the task's validation metric; without a validation split, the train loss
DEFAULT_MONITOR = {"classification": "val/acc1", "score_distribution": "val/emd"}
NO_VAL_MONITOR = "train/epoch_loss"


def metric_mode(name: str) -> str:
    """'max' or 'min' for a metric name, with or without a split prefix ('val/acc1', 'acc_class/3');
    ValueError for a metric of unknown direction."""
    parts = name.split("/")
    if parts[0] in SPLITS and len(parts) > 1:
        parts = parts[1:]
    if parts[0] in MAXIMISED:
        return "max"
    if parts[0] in MINIMISED or parts[0].endswith("loss"):  # epoch_loss, epoch_g_loss and friends
        return "min"
    raise ValueError(f"no known direction for metric '{name}' (maximised: {', '.join(sorted(MAXIMISED))}; "
                     f"minimised: {', '.join(sorted(MINIMISED))}); set trainer.monitor_mode")


@dataclass(frozen=True)
class Monitor:
    metric: str  # split/name, e.g. val/acc1
    mode: str  # max | min

    def improved(self, value: float, best: Optional[float], min_delta: float = 0.0) -> bool:
        """Strictly better than `best` by more than min_delta (a tie keeps the earlier epoch)."""
        if best is None:
            return True
        return value > best + min_delta if self.mode == "max" else value < best - min_delta


def monitor(metric: Optional[str] = "auto", mode: Optional[str] = "auto", *, task: Optional[str] = None,
            has_val: bool = True, strict: bool = True) -> Monitor:
    """The trainer's rule: trainer.monitor=auto is the task's validation metric (train/epoch_loss without
    a validation split); trainer.monitor_mode=auto is the metric's direction (ValueError if unknown).
    `strict=False` is for readers of existing runs (sweep status, analysis): a run whose metric has no
    known direction was refused by the trainer before its first step, so it has no value to order, and
    'max' stands in rather than failing the whole table."""
    if not metric or metric == "auto":
        metric = DEFAULT_MONITOR.get(task or "classification", DEFAULT_MONITOR["classification"]) \
            if has_val else NO_VAL_MONITOR
    if not mode or mode == "auto":
        try:
            mode = metric_mode(metric)
        except ValueError:
            if strict:
                raise
            mode = "max"
    return Monitor(metric, mode)


def monitor_of(cfg, has_val: Optional[bool] = None, strict: bool = True) -> Monitor:
    """monitor() for a Config. `has_val`: whether the validation split exists (the trainer knows from the
    data set); by default, whether data.val_split is set."""
    has_val = bool(cfg.data.val_split) if has_val is None else has_val
    return monitor(cfg.trainer.monitor, cfg.trainer.monitor_mode, task=cfg.task.name, has_val=has_val,
                   strict=strict)
