"""What a SLURM array task of a sweep runs: `CellJob(config path, overrides)()`.

The callable holds nothing but the base config's path and the cell's overrides (output.run included),
so whatever starts it (the first start, a requeue by SLURM, by submitit or by this code) resumes the
same run directory from its last.pt: nothing depends on submitit's pickled state.

Signals and requeueing (verified on the local SLURM cluster, tests/test_sweep.py):
- The array is submitted with `--signal=USR1@<signal_delay_s>` and `--requeue`. SIGUSR1 (the time
  limit is near, or `scancel --signal=USR1`) and SIGUSR2 (submitit's own preemption signal, e.g.
  `job._interrupt()`) make the trainer finish its step, write last.pt and return STOPPED. While the job
  is still RUNNING in SLURM's eyes, task 0 of this array element then runs
  `scontrol requeue <array job>_<task>` itself and exits without a result (so submitit records none);
  the requeued task starts the same callable again, which resumes.
- SIGTERM comes from SLURM ending the job: `scontrol requeue` by hand or by a preempting scheduler,
  `scancel`, the time limit itself. submitit ignores SIGTERM; the trainer stops and saves. The job is
  then COMPLETING, so nothing is requeued here: SLURM requeues it (requeue, preemption) or not
  (cancel). A requeued task restarts the original pickle = this callable = resume.
- submitit's SIGUSR2 handler (checkpoint() + requeue + exit at once) is replaced while this callable
  runs, because it would requeue before the trainer saved. `checkpoint()` is still defined (it returns
  the same callable with the same arguments) for a USR2 that arrives before that.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Optional

from submitit.helpers import Checkpointable, DelayedSubmission

from imgtrain import launch, runs
from imgtrain.logs.runinfo import read_run
from imgtrain.runs import REQUEUE_EXIT_CODE


def _say(msg: str) -> None:
    print(f"[imgtrain.sweep] {msg}", flush=True)


def epochs_done(run_dir: Path) -> int:
    """Epochs the run has completed, from its Parquet logs (train/epoch_loss is logged at each epoch end)."""
    from imgtrain.logs import read_metrics
    import pyarrow.compute as pc
    try:
        t = read_metrics(run_dir, columns=["split", "metric", "epoch"])
    except FileNotFoundError:
        return 0
    t = t.filter(pc.and_(pc.equal(t["split"], "train"), pc.equal(t["metric"], "epoch_loss")))
    if t.num_rows == 0:
        return 0
    return int(pc.max(t["epoch"]).as_py()) + 1


class CellJob(Checkpointable):
    """Runs one sweep cell in a submitit task: `CellJob()(config path, overrides)` is what
    `python jobs/train.py --config CONFIG OVERRIDES...` does, plus the requeue logic above.
    `executor.map_array(CellJob(), configs, overrides)` submits a sweep as one array."""

    def __init__(self, max_requeues: int = 20):
        self.max_requeues = max_requeues

    def __repr__(self) -> str:
        return f"CellJob(max_requeues={self.max_requeues})"

    def checkpoint(self, config: str, overrides: list[str]) -> DelayedSubmission:
        """submitit's preemption path: the same pure (config, overrides); the run dir has the state."""
        return DelayedSubmission(CellJob(self.max_requeues), config, list(overrides))

    # ------------------------------------------------------------------------------------------------
    def __call__(self, config: str, overrides: list[str]) -> dict:
        self.config, self.overrides = str(config), list(overrides)
        stop = {"signal": None}

        def early(signum, frame):  # before and after training: remember; during training: tell the trainer
            stop["signal"] = signal.Signals(signum).name

        def usr2(signum, frame):
            stop["signal"] = "SIGUSR2"
            signal.raise_signal(signal.SIGUSR1)  # the trainer's stop while it runs, `early` otherwise

        signal.signal(signal.SIGUSR1, early)
        signal.signal(signal.SIGUSR2, usr2)

        from imgtrain import config as C
        run_dir = self._run_dir()
        try:
            cfg = C.load(self.config, self.overrides)
        except C.ConfigError as e:
            if run_dir is not None:
                run_dir.mkdir(parents=True, exist_ok=True)
                runs.mark_failed(run_dir, f"config error when the job started: {e}")
            raise
        from imgtrain.engine.trainer import train
        run_dir = runs.run_dir(cfg)
        attempts_before = len((read_run(run_dir) or {}).get("attempts", []))
        if stop["signal"]:
            _say(f"{stop['signal']} before training started")
            return self._stopped(run_dir, cfg, attempts_before)
        result = train(cfg)
        if result.status == runs.DONE:
            return {"status": runs.DONE, "run_dir": str(result.run_dir)}
        return self._stopped(run_dir, cfg, attempts_before)

    def _run_dir(self) -> Optional[Path]:
        """The run dir from the overrides alone (the sweep sets output.run), so a config that no longer
        loads still gets its FAILED marker."""
        vals = dict(o.split("=", 1) for o in self.overrides if "=" in o)
        if "output.run" not in vals:
            return None
        from imgtrain.logs.runinfo import resolve_root
        return runs.run_path(resolve_root(vals.get("output.root")), vals["output.run"])

    def _stopped(self, run_dir: Path, cfg, attempts_before: int) -> dict:
        """STOPPED: paused at a halving rung (done for now), or stopped by a signal: requeue or not is decided
        as for an sbatch job (imgtrain.launch.decide, from this job's state in SLURM)."""
        rung = getattr(cfg.trainer, "stop_after_epochs", None)
        if rung is not None and epochs_done(run_dir) >= rung:
            _say(f"paused after epoch {rung} (successive halving rung)")
            return {"status": "PAUSED", "run_dir": str(run_dir), "rung": rung}
        return requeue_after_stop(run_dir, attempts_before, self.max_requeues)


def requeue_after_stop(run_dir: Optional[Path], attempts_before: int, max_requeues: int) -> dict:
    """A sweep task stopped by a signal after writing last.pt: requeue this SLURM task (array element) or
    not, as imgtrain.launch decides for sbatch jobs, then leave without a result (SystemExit 75: submitit
    must not see this attempt as the job's outcome). Not under SLURM: returns STOPPED (whoever started us
    starts us again). `run_dir` None: stopped between runs (an ASHA worker), nothing to decide on."""
    task = launch.requeue_target()
    if task is None:
        return {"status": runs.STOPPED, "run_dir": str(run_dir) if run_dir else None}
    if int(os.environ.get("SLURM_PROCID", "0")) == 0:
        state = launch.job_state(task)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        stop = launch.stop_of_signal(state)
        verdict = launch.decide(run_dir, job_id=os.environ.get("SLURM_JOB_ID"), attempts_before=attempts_before,
                                exit_code=REQUEUE_EXIT_CODE, stop=stop) if run_dir else \
            ("requeue" if stop == "requeue" else stop)
        if verdict != "requeue":
            _say(f"stopped after writing last.pt; SLURM is ending {task} (state {state}): it requeues it or not")
        elif restarts >= max_requeues:
            _say(f"stopped; not requeueing {task}: it restarted {restarts} times (max_requeues)")
        elif launch.requeue(task, f"stopped after writing last.pt (restart {restarts + 1})"):
            _say(f"stopped after writing last.pt; requeued {task} (restart {restarts + 1})")
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(REQUEUE_EXIT_CODE)
