"""The Python half of the SLURM launcher (`slurm/launch.sh`): check a run before it starts, and decide
what the batch script does after the training step ends (DESIGN §5).

    python -m imgtrain.launch paths  --config FILE [key=value ...]
    python -m imgtrain.launch check  --config FILE [key=value ...] [--job-id ID] [--link-log PATH ...]
                                     [--skip-preflight]
    python -m imgtrain.launch decide --run-dir DIR --job-id ID --attempts-before N --exit RC
                                     [--stop none|requeue|slurm|cancel] [--max-attempts N] [--err-log PATH]
    python -m imgtrain.launch target        (this job's requeue target: JOB or ARRAYJOB_TASK)

`paths` and `check` print `key=value` lines (the launcher reads them); messages go to stderr.
`check` exit status: 0 start training, 2 bad config or data/model/weights problem (never requeue),
10 the run is DONE (nothing to do), 11 the run is FAILED and this job has no attempts left.
`decide` prints one word: done, requeue (stopped by a signal: the batch script requeues its own job),
retry (a failed attempt with attempts left: requeue too), failed (FAILED was written: stop), slurm
(SLURM itself requeues the job: just exit), cancelled (scancel: exit, no requeue); after requeue and
retry, the job or array task to requeue (`requeue 123_4`).

This module is the one requeue supervisor of both kinds of jobs: the batch script of slurm/*.sbatch
asks `decide` and runs the `scontrol requeue` it names (scontrol runs outside the container, where the
batch script is), and a sweep's submitit task (imgtrain/sweep/job.py) calls `decide`, `requeue_target`,
`job_state` and `requeue` here in-process.

Failed attempts are counted per SLURM job in run.json (a requeue keeps the job id; a new sbatch of the
same run starts a fresh budget of `trainer.max_attempts`). Attempts stopped by a signal (preemption,
time limit) are not failures and are not counted.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from imgtrain import config as C
from imgtrain import runs
from imgtrain.logs.runinfo import end_attempt, read_run, resolve_root, start_attempt
from imgtrain.runs import (DONE, FAILED, REQUEUE_EXIT_CODE, STOPPED, clear_markers, failure_reason, mark_failed,
                           read_status)

CHECK_OK, CHECK_BAD_CONFIG, CHECK_DONE, CHECK_FAILED = 0, 2, 10, 11
STOPS = ("none", "requeue", "slurm", "cancel")
TAIL_LINES = 25


def _say(msg: str) -> None:
    print(f"[imgtrain.launch] {msg}", file=sys.stderr, flush=True)


def _kv(**items) -> None:
    for k, v in items.items():
        text = "" if v is None else str(v)
        if "\n" in text:
            raise ValueError(f"{k} holds a newline: {text!r}")
        print(f"{k}={text}")


def _abs(path: Optional[str]) -> Optional[str]:
    return None if path in (None, "") else os.path.abspath(os.path.expanduser(path))


def job_attempts(info: Optional[dict], job_id: Optional[str]) -> list[dict]:
    """The attempts of run.json that ran in SLURM job `job_id` (all of them when job_id is None)."""
    attempts = (info or {}).get("attempts", [])
    if not job_id:
        return list(attempts)
    return [a for a in attempts if str((a.get("slurm") or {}).get("job_id")) == str(job_id)]


def failed_attempts(info: Optional[dict], job_id: Optional[str]) -> int:
    return sum(1 for a in job_attempts(info, job_id) if a.get("status") == FAILED)


def tail(path: Optional[str], lines: int = TAIL_LINES) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# ------------------------------------------------------------------------------------------ paths / check

def cmd_paths(args) -> int:
    """Where the run reads and writes (for the container's --bind); no checks, nothing heavy imported."""
    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return CHECK_BAD_CONFIG
    _kv(name=cfg.name, data_path=_abs(cfg.data.path), output_root=_abs(str(resolve_root(cfg.output.root))),
        pretrained_path=_abs(cfg.model.pretrained_path))
    return CHECK_OK


def _link_logs(rdir: Path, paths: Sequence[str], job_id: Optional[str]) -> None:
    """<run dir>/logs/<file name> -> the job's log files, so a run's logs are found from the run."""
    if not paths:
        return
    logs = rdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for p in paths:
        if not p:
            continue
        link = logs / Path(p).name
        try:
            if link.is_symlink() or link.exists():
                if os.readlink(link) == os.path.abspath(p):
                    continue
                link.unlink()
            link.symlink_to(os.path.abspath(p))
        except OSError as e:
            _say(f"cannot link {p} into {logs}: {e}")


def cmd_check(args) -> int:
    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return CHECK_BAD_CONFIG
    # imgtrain.runs imports no torch: a DONE run is recognised in a fraction of a second
    run_id, rdir = runs.run_id(cfg), runs.run_dir(cfg).resolve()
    info = read_run(rdir)
    status = read_status(rdir)
    attempts = len((info or {}).get("attempts", []))
    failures = failed_attempts(info, args.job_id)
    _kv(run_id=run_id, run_dir=rdir, status=status, attempts=attempts, job_failures=failures,
        max_attempts=cfg.trainer.max_attempts, data_path=_abs(cfg.data.path),
        output_root=_abs(str(resolve_root(cfg.output.root))), pretrained_path=_abs(cfg.model.pretrained_path))
    if status == DONE:
        _say(f"run {run_id} is already DONE ({rdir}); nothing to do")
        return CHECK_DONE
    if status == FAILED and failures >= cfg.trainer.max_attempts:
        _say(f"run {run_id} is FAILED and job {args.job_id} has used its {cfg.trainer.max_attempts} "
             f"attempts (trainer.max_attempts); not starting again. Reason:\n{failure_reason(rdir)}")
        return CHECK_FAILED
    if args.skip_preflight:
        problems = []
    else:
        from imgtrain.engine.cli import preflight  # torch, timm: only now
        problems = preflight(cfg)
    if problems:
        msg = "config check failed:\n  " + "\n  ".join(problems)
        print(msg, file=sys.stderr)
        if attempts:  # a run that trained before and cannot go on: say so in its directory
            mark_failed(rdir, f"check before attempt {attempts} (job {args.job_id}) failed:\n  "
                        + "\n  ".join(problems))
        return CHECK_BAD_CONFIG
    if status == FAILED:
        first = ((failure_reason(rdir) or "").splitlines() or [""])[0]
        _say(f"run {run_id} was FAILED ({first}); "
             f"job {args.job_id} tries again ({failures} of {cfg.trainer.max_attempts} attempts failed so far)")
        clear_markers(rdir)
    _link_logs(rdir, args.link_log, args.job_id)
    return CHECK_OK


# ------------------------------------------------------------------------------------------ decide

# ------------------------------------------------------------------------------------------ SLURM job control
def requeue_target(env: Mapping[str, str] = os.environ) -> Optional[str]:
    """What `scontrol requeue` takes for this job: `<array job>_<task>` for an array task (only that task),
    else the job id; None outside SLURM."""
    if not env.get("SLURM_JOB_ID"):
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def job_state(job: str) -> Optional[str]:
    """JobState of `scontrol show job JOB` (RUNNING, COMPLETING, ...), None when scontrol cannot tell."""
    try:
        out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def stop_of_signal(state: Optional[str]) -> str:
    """The stop kind (STOPS) of a job stopped by a signal whose own job is in `state` now: still RUNNING means
    the signal was a warning (USR1 before the time limit, submitit's USR2) and the job requeues itself;
    otherwise SLURM is ending it (requeue, preemption, cancel, time limit) and decides."""
    return "requeue" if state == "RUNNING" else "slurm"


def requeue(target: str, why: str) -> bool:
    """`scontrol requeue TARGET`; says so in the job log (the line the tests and users look for)."""
    _log(f"requeue {target} (scontrol requeue): {why}")
    try:
        proc = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        _say(f"scontrol requeue {target} failed: {e}")
        return False
    if proc.returncode != 0:
        _say(f"scontrol requeue {target} failed (was the job submitted with --requeue?): {proc.stderr.strip()}")
    return proc.returncode == 0


def _log(msg: str) -> None:
    """A line in the job's stdout log, as slurm/launch.sh writes its own."""
    print(f"[launch {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ after the step
def _this_attempt(info: Optional[dict], before: int) -> Optional[dict]:
    attempts = (info or {}).get("attempts", [])
    return attempts[-1] if len(attempts) > before else None


def decide(run_dir: str | os.PathLike, *, job_id: Optional[str], attempts_before: int, exit_code: int,
           stop: str = "none", max_attempts: int = 5, err_log: Optional[str] = None, world_size: int = 0) -> str:
    """What the batch script does after the training step ended with `exit_code` (see the module doc).
    Records in run.json what the engine could not (a killed step), and writes FAILED at the limit."""
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    rdir = Path(run_dir)
    if read_status(rdir) == DONE:
        return "done"
    info = read_run(rdir)
    attempt = _this_attempt(info, attempts_before)
    where = f"job {job_id} on {socket.gethostname()}"
    if stop != "none" and not (attempt is not None and attempt.get("status") == FAILED):
        if attempt is not None and attempt.get("status") == runs.RUNNING:
            end_attempt(rdir, attempt["attempt"], status=STOPPED, exit_code=exit_code,
                        reason=f"the step ended (exit {exit_code}) after a stop signal, before the trainer "
                               f"recorded its end ({where})")
        return {"requeue": "requeue", "slurm": "slurm", "cancel": "cancelled"}[stop]
    if stop == "none" and attempt is not None and attempt.get("status") == STOPPED:
        return "requeue"  # a worker was signalled directly (scancel --signal without --batch)

    # a real failure of this attempt
    engine_reason = attempt.get("reason") if attempt is not None else None
    err = tail(err_log)
    if exit_code == 0:
        what = "exited 0 but the run is not DONE"
    elif exit_code == REQUEUE_EXIT_CODE:
        what = f"exited {exit_code} without a stop recorded in run.json"
    else:
        what = f"exited with status {exit_code}"
    reason = f"{what} ({where})" + (f": {engine_reason}" if engine_reason else "")
    if attempt is None:  # died before the trainer recorded anything (import error, rendezvous, container)
        saved = os.environ.get("SLURM_JOB_ID")
        if job_id:  # counted for this job even when called outside it (tests, by hand)
            os.environ["SLURM_JOB_ID"] = str(job_id)
        try:
            number = start_attempt(rdir, run_id=(info or {}).get("run_id") or rdir.name,
                                   world_size=world_size, hosts=[socket.gethostname()])
        finally:
            if saved is None:
                os.environ.pop("SLURM_JOB_ID", None)
            else:
                os.environ["SLURM_JOB_ID"] = saved
        end_attempt(rdir, number, status=FAILED, exit_code=exit_code, reason=reason)
    elif attempt.get("status") != FAILED:
        end_attempt(rdir, attempt["attempt"], status=FAILED, exit_code=exit_code, reason=reason)
    info = read_run(rdir)
    failures = failed_attempts(info, job_id)
    if failures >= max_attempts:
        text = (f"FAILED after {failures} failed attempt(s) of job {job_id} (trainer.max_attempts={max_attempts})\n"
                f"last attempt {reason}\n")
        previous = failure_reason(rdir)  # the engine's traceback, when it wrote one
        if previous and previous not in text:
            text += f"\nthe trainer reported:\n{previous}\n"
        if err:
            text += f"\nlast lines of {err_log}:\n{err}\n"
        mark_failed(rdir, text)
        return "failed"
    clear_markers(rdir)  # the engine wrote FAILED for this attempt; the run goes on
    _say(f"attempt failed ({reason}); {failures} of {max_attempts} attempts of job {job_id} failed: requeue")
    return "retry"


def cmd_decide(args) -> int:
    verdict = decide(args.run_dir, job_id=args.job_id, attempts_before=args.attempts_before, exit_code=args.exit,
                     stop=args.stop, max_attempts=args.max_attempts, err_log=args.err_log,
                     world_size=args.world_size)
    target = requeue_target() if verdict in ("requeue", "retry") else None
    print(f"{verdict} {target}" if target else verdict)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m imgtrain.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("paths", "check"):
        s = sub.add_parser(name)
        s.add_argument("--config", required=True)
        s.add_argument("overrides", nargs="*", metavar="key=value")
        if name == "check":
            s.add_argument("--job-id", default=os.environ.get("SLURM_JOB_ID"))
            s.add_argument("--link-log", action="append", default=[], metavar="PATH",
                           help="link this job log file into <run dir>/logs/")
            s.add_argument("--skip-preflight", action="store_true",
                           help="check keys and types only, not the data set, model name and weights file "
                                "(a requeued attempt: they passed before, and a transient problem should be "
                                "retried, not end the run)")
    s = sub.add_parser("decide")
    s.add_argument("--run-dir", required=True)
    s.add_argument("--job-id", default=os.environ.get("SLURM_JOB_ID"))
    s.add_argument("--attempts-before", type=int, required=True, help="attempts in run.json before this step")
    s.add_argument("--exit", type=int, required=True, help="exit status of the training step")
    s.add_argument("--stop", choices=STOPS, default="none", help="the signal the batch script received, classified")
    s.add_argument("--max-attempts", type=int, default=5)
    s.add_argument("--err-log", default=None)
    s.add_argument("--world-size", type=int, default=0)
    sub.add_parser("target", help="print what `scontrol requeue` takes for this job (an array task: only it)")
    args, extra = p.parse_known_args(argv)  # overrides may also follow the options
    bad = [a for a in extra if a.startswith("-") or args.cmd in ("decide", "target")]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if args.cmd == "target":
        target = requeue_target()
        if target is None:
            print("not inside a SLURM job (no SLURM_JOB_ID)", file=sys.stderr)
            return 2
        print(target)
        return 0
    return {"paths": cmd_paths, "check": cmd_check, "decide": cmd_decide}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
