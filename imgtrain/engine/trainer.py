"""One training run: build everything from the config, then train, evaluate, checkpoint and log.

`Trainer.fit()` reads like the recipe: resume -> epochs of steps (accumulation, AMP, clipping, EMA)
-> evaluation, early stopping and checkpoints -> test -> summary. How the model is trained across
processes (DDP or DeepSpeed) is applied from outside by a `strategy.Strategy`; the loop names neither.
`run()` does the run-directory bookkeeping around it (DONE check, attempts in run.json, FAILED marker);
the command line (`main`, `preflight`) is cli.py's. Tests reach inside through `hooks.Hooks`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from imgtrain import config as C
from imgtrain import models, tasks
from imgtrain.data import (Normalizer, build_mixup, build_split, dataset_info, images_on_device, make_loader,
                           resolve_norm, train_batches)
from imgtrain.data.loader import _seeded
from imgtrain.engine import dist, strategy
from imgtrain.data.memory import manifest_hash
from imgtrain.engine.checkpoint import RunError, rng_state, set_rng_state
from imgtrain.engine.evaluate import evaluate, top1_correct
from imgtrain.engine.optim import (build_optimizer, build_scheduler, current_lr, load_scheduler_state,
                                   scheduler_state)
from imgtrain import runs
from imgtrain.engine.hooks import Hooks
from imgtrain.engine.signals import StopRequest
from imgtrain.logs import MetricWriter, Progress
from imgtrain.logs.atomic import atomic_write_text
from imgtrain.runs import DONE, REQUEUE_EXIT_CODE, STOPPED


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""
    epoch: int = 0  # current epoch (0-based)
    step: int = 0  # optimizer steps done
    consumed: int = 0  # samples of the current epoch consumed by all ranks together
    best: Optional[float] = None
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations without improvement (early stopping)
    wall_s: float = 0.0  # training time over all attempts
    images: int = 0  # training images seen over all attempts
    skipped: int = 0  # undecodable training samples over all attempts
    epoch_loss_sum: float = 0.0  # this epoch's logged train losses, so a mid-epoch resume reports the same mean
    epoch_loss_n: int = 0
    # classification: this epoch's correct top-1 predictions on the training batches as they were trained
    # (training-mode outputs, all ranks) and the samples they were counted over -> train/acc1
    epoch_correct: float = 0.0
    epoch_samples: float = 0.0
    nonfinite: int = 0  # optimizer steps skipped for a non-finite loss (trainer.max_nonfinite_steps)


def _window_state(window: Optional[dict]) -> Optional[dict]:
    """A log window's running sums for a checkpoint (device tensors as CPU tensors, exact); None: no window."""
    if window is None:
        return None
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in window.items() if k != "t"}


def _window_from_state(saved: Optional[dict], device: torch.device) -> Optional[dict]:
    if saved is None:
        return None
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in saved.items()}


@dataclass
class RunResult:
    run_dir: Path
    status: str  # runs.DONE | runs.STOPPED (exit REQUEUE_EXIT_CODE)
    exit_code: int
    metrics: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------- the run

def train(cfg: C.Config, hooks: Optional[Hooks] = None) -> RunResult:
    env = dist.init(cfg)
    try:
        return run(cfg, env, hooks=hooks)
    finally:
        dist.close(env)


def run(cfg: C.Config, env: dist.DistEnv, batch_source=None, hooks: Optional[Hooks] = None) -> RunResult:
    """Bookkeeping around Trainer.fit(): DONE runs are left alone, every attempt is recorded."""
    rdir, run_id = runs.run_dir(cfg), runs.run_id(cfg)
    if runs.read_status(rdir) == DONE:
        if env.is_main:
            print(f"[imgtrain] run {run_id} is already DONE ({rdir}); nothing to do", flush=True)
        return RunResult(rdir, DONE, 0)
    # every rank's host (distinct, in rank order): run.json says where each attempt ran
    hosts = list(dict.fromkeys(dist.gather_objects(env, socket.gethostname())))
    # trainer.deterministic switches process-wide torch flags: a later run in this process (sweep debug
    # executor, tests) must not inherit them (on GPU an op without a deterministic kernel would then fail)
    flags = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    # rank 0 records the attempt (run.json; FAILED and compaction if anything below raises, DONE's
    # compaction at the end); the trainer is closed before that, so its metric rows are in the parts
    with runs.attempt(rdir, run_id=run_id, sweep=cfg.output.sweep, cell=cfg.output.cell,
                      config_hash=C.config_hash(cfg), world_size=env.world, hosts=hosts,
                      config_yaml=C.to_yaml(cfg), write=env.is_main) as attempt:
        number = dist.broadcast_object(env, attempt.number)
        stop = StopRequest().install()
        try:
            with contextlib.closing(Trainer(cfg, env, number, stop, batch_source=batch_source, hooks=hooks)) as trainer:
                result = trainer.fit()
        finally:
            stop.uninstall()
            torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
            torch.backends.cudnn.benchmark = flags[2]
        attempt.end(result.status, result.exit_code)
    # the first rank to exit 75 makes torchrun and srun (--kill-on-bad-exit) kill the others: none leaves
    # before rank 0 has recorded the attempt
    dist.barrier(env)
    return result


class Trainer:
    """Everything one run needs, built from the config. `batch_source(epoch, plan)` may replace the shard
    loader (benchmarks feed in-memory batches through it); `hooks` are the tests' seams."""

    def __init__(self, cfg: C.Config, env: dist.DistEnv, attempt: int = 0, stop: Optional[StopRequest] = None,
                 batch_source: Optional[Callable] = None, hooks: Optional[Hooks] = None):
        self.cfg, self.env, self.attempt = cfg, env, attempt
        self.hooks = hooks or Hooks()
        self.stop = stop if stop is not None else StopRequest()
        self.run_id, self.rdir, self.chash = runs.run_id(cfg), runs.run_dir(cfg), C.config_hash(cfg)
        self.batch_source = batch_source
        seed_everything(cfg.trainer.seed + env.rank)
        if cfg.trainer.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False

        # data set, task, model
        self.info = info = dataset_info(cfg)
        # the data set's contents (shard names, counts, checksums): a resume onto other data is refused
        self.data_fingerprint = manifest_hash(info.manifest)
        self.task = tasks.build(cfg.task, info.num_outputs, info.class_counts, info.class_names, cfg.model.num_classes)
        self.num_classes = cfg.model.num_classes or self.task.num_outputs
        model = self.new_model()
        pretrained = cfg.model.pretrained_path is not None
        if pretrained:
            models.load_pretrained(model, cfg.model.pretrained_path, self.num_classes)
        models.apply_transfer(model, cfg.model)
        mean, std = resolve_norm(cfg.data, models.data_config(model, pretrained), info.manifest, pretrained)
        splits = info.manifest["splits"]

        def split(name, train):
            return build_split(cfg, info, name, self.task, train=train, mean=mean, std=std) \
                if name and (train or name in splits) else None

        self.train_ds = split(cfg.data.train_split, True)
        self.normalize = Normalizer(mean, std, env.device, cfg.data.re_prob)
        self.val_ds, self.test_ds = split(cfg.data.val_split, False), split(cfg.data.test_split, False)
        if cfg.data.cache != "none":  # issue 18: splits decoded once into memory-mapped arrays (data/memory.py)
            from imgtrain.data.memory import use_memory
            feed, self.val_ds, self.test_ds = use_memory(cfg, info, self.task, env, self.train_ds, self.val_ds,
                                                         self.test_ds, mean, std, log=self.log)
            self.batch_source = self.batch_source or feed
        self.mixup = build_mixup(cfg.data, self.num_classes, cfg.task.label_smoothing) \
            if self.task.name == "classification" else None

        # optimisation
        model.to(env.device)
        if cfg.trainer.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = build_optimizer(cfg.optim, models.param_groups(model, cfg.optim, cfg.model))
        self.accum, self.batch = cfg.trainer.grad_accum, cfg.data.batch_size
        self.global_batch = self.batch * env.world
        self.steps_per_epoch = len(self.train_ds) // self.global_batch // self.accum
        if self.steps_per_epoch == 0:
            raise ValueError(f"split '{cfg.data.train_split}' has {len(self.train_ds)} samples, fewer than one "
                             f"optimizer step needs (data.batch_size {self.batch} x {env.world} ranks x "
                             f"trainer.grad_accum {self.accum})")
        from imgtrain.engine.cli import split_and_monitor_problems  # what preflight checks, for other callers
        problems = split_and_monitor_problems(cfg, info)
        if problems:
            raise RunError("; ".join(problems))
        self.monitor, self.mode = self._monitor()
        self.sched = build_scheduler(cfg.sched, self.optimizer, epochs=cfg.trainer.epochs,
                                     updates_per_epoch=self.steps_per_epoch, mode=self.mode)
        # DDP or DeepSpeed around the model and the optimizer: the loop below only calls self.strategy
        self.strategy = strategy.build(cfg, model, self.optimizer, env, self.rdir / "checkpoints", mode=self.mode,
                                       on_checkpoint_temp=self.hooks.on_checkpoint_temp)

        # bookkeeping
        self.writer = MetricWriter(self.rdir, self.run_id, cfg.output.sweep, attempt) if env.is_main else None
        self.state = TrainState()
        # the log window of the epoch being trained (running sums since the last train/loss row): in mid-epoch
        # checkpoints, so the first row after a resume averages the same steps as uninterrupted
        self.window: Optional[dict] = None
        self.resumed_window: Optional[dict] = None
        self.t_mark = time.time()
        self.last_bad: Optional[str] = None

    # ------------------------------------------------------------------------------------ helpers

    def new_model(self) -> torch.nn.Module:
        return models.create_model(self.cfg.model, num_classes=self.num_classes, in_chans=self.cfg.data.in_chans,
                                   img_size=self.cfg.data.img_size)

    def log(self, msg: str) -> None:
        if self.env.is_main:
            print(f"[imgtrain] {msg}", flush=True)

    def _monitor(self) -> tuple[str, str]:
        # the split exists only if the data set has it: the same rule sweep status and analysis apply
        m = runs.monitor_of(self.cfg, has_val=self.val_ds is not None)
        return m.metric, m.mode

    def _improved(self, value: float) -> bool:
        return runs.Monitor(self.monitor, self.mode).improved(value, self.state.best, self.cfg.trainer.min_delta)

    def _tick(self) -> None:
        """Add the time since the last tick to the run's wall time (kept across attempts)."""
        now = time.time()
        self.state.wall_s += now - self.t_mark
        self.t_mark = now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.strategy.close()

    # ------------------------------------------------------------------------------------ checkpoints

    def snapshot(self) -> dict:
        """DESIGN §4: the run's state; the strategy adds the model's and optimizer's (under DeepSpeed this is
        DeepSpeed's client state). Collective: every rank contributes its RNG state."""
        rngs = dist.gather_objects(self.env, rng_state())
        windows = dist.gather_objects(self.env, _window_state(self.window))
        return {"scheduler": scheduler_state(self.sched), "state": asdict(self.state), "rng": rngs, "window": windows,
                "config_hash": self.chash, "world_size": self.env.world, "run_id": self.run_id,
                "attempt": self.attempt, "model_name": self.cfg.model.name, "zero_stage": self.cfg.dist.zero_stage,
                "data_fingerprint": self.data_fingerprint}

    def save(self, *, improved: bool = False, value: Optional[float] = None, epoch: Optional[int] = None) -> None:
        self._tick()
        self.strategy.save(self.snapshot(), step=self.state.step, improved=improved, value=value,
                           epoch=epoch if epoch is not None else self.state.epoch)
        if self.env.is_main:
            self.writer.flush()  # metrics up to this checkpoint are on disk with it
            runs.record_checkpoint(self.rdir, self.state.step)  # the run has progress: never start it over
        dist.barrier(self.env)

    def resume(self) -> None:
        resumed = self.strategy.resume(self.chash)  # model, optimizer (scaler, EMA) restored
        if resumed is None:
            step = runs.checkpoint_step(self.rdir)
            if step > 0:  # every checkpoint deleted (checkpoint.resume_newest covers damaged ones)
                raise RunError(f"run {self.run_id} has progress (run.json: a checkpoint at step {step} was written) "
                               f"but {self.rdir / 'checkpoints'} holds none: refusing to start over; to start "
                               f"over, move {self.rdir} away or set output.run=NEW_ID")
            if self.sched is not None:
                self.sched.step_update(0)
            return
        saved = resumed.get("data_fingerprint")  # None: a checkpoint from before fingerprints
        if saved is not None and saved != self.data_fingerprint:
            raise RunError(f"the data set at {self.cfg.data.path} changed since the checkpoint (data fingerprint "
                           f"{saved} in the checkpoint, {self.data_fingerprint} now): refusing to resume onto other "
                           "data; restore the data set, or start over (move the run directory away or set "
                           "output.run=NEW_ID)")
        load_scheduler_state(self.sched, resumed.get("scheduler", {}))
        if not self.strategy.optimizer_state_has_lr and self.sched is not None:
            self.sched.step_update(resumed["state"]["step"])
        self.state = state = TrainState(**resumed["state"])
        if resumed["world_size"] == self.env.world:
            set_rng_state(resumed["rng"][self.env.rank])
            saved = resumed.get("window")  # None: a checkpoint from before the log window was saved
            self.resumed_window = _window_from_state(saved[self.env.rank], self.env.device) if saved else None
        else:  # same sample position, fresh per-rank RNG streams; exactness is not promised here
            seed_everything(self.cfg.trainer.seed + self.env.rank + 1000 * state.step)
            self.log(f"world size changed {resumed['world_size']} -> {self.env.world}: continuing at epoch "
                     f"{state.epoch}, sample {state.consumed} of the epoch, step {state.step}")
        self.log(f"resumed {self.run_id} at epoch {state.epoch} step {state.step} (attempt {self.attempt})")

    # ------------------------------------------------------------------------------------ training

    def fit(self) -> RunResult:
        cfg = self.cfg
        self.resume()
        state = self.state
        total = self.steps_per_epoch * cfg.trainer.epochs
        if cfg.trainer.max_steps:
            total = min(total, cfg.trainer.max_steps)
        self.log(f"run {self.run_id} -> {self.rdir}")
        if cfg.data.select_on_test and cfg.data.selects_on_test() and self.env.is_main:  # S004's protocol, asked for
            from imgtrain.logs.runinfo import add_warning
            self.log("WARNING: " + add_warning(self.rdir, f"data.select_on_test: validation on the test split "
                     f"'{cfg.data.val_split}' picks the model; its test results are not held out"))
        self.log(f"model {cfg.model.name}: {sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}M params, "
                 f"{self.num_classes} outputs; {len(self.train_ds)} train samples, {self.env.world} rank(s) x "
                 f"batch {self.batch} x accum {self.accum}, {self.steps_per_epoch} steps/epoch, "
                 f"monitor {self.monitor} ({self.mode})")
        self.progress = Progress(total, desc=self.run_id, enabled=self.env.is_main,
                                 every_seconds=cfg.trainer.log_every_seconds, initial=state.step,
                                 epochs=cfg.trainer.epochs)
        pause_at = cfg.trainer.stop_after_epochs

        def pause() -> Optional[str]:  # successive halving: stop at a rung, the sweep decides what follows
            return "pause" if pause_at is not None and pause_at <= state.epoch < cfg.trainer.epochs else None

        reason = "max_steps" if cfg.trainer.max_steps and state.step >= cfg.trainer.max_steps else pause()
        while state.epoch < cfg.trainer.epochs and reason is None:
            reason, epoch_done = self.train_epoch()
            if reason == "signal" and not epoch_done:
                break  # last.pt was written at the step the signal was seen
            if epoch_done or reason == "max_steps":
                reason = self.end_epoch(epoch_done) or reason
            reason = reason or pause()
        self.progress.close()
        self._tick()
        if reason == "pause":
            self.log(f"paused after epoch {state.epoch} (trainer.stop_after_epochs={pause_at}); checkpoint written, "
                     f"exit {REQUEUE_EXIT_CODE}")
            return RunResult(self.rdir, STOPPED, REQUEUE_EXIT_CODE)
        if reason == "signal":
            self.log(f"stopped by {self.stop.name or 'a signal on another rank'} at epoch {state.epoch} step "
                     f"{state.step}; checkpoint written, exit {REQUEUE_EXIT_CODE} (requeue me)")
            return RunResult(self.rdir, STOPPED, REQUEUE_EXIT_CODE)
        test_metrics = self.test()
        self.finish(test_metrics)
        return RunResult(self.rdir, DONE, 0, test_metrics)

    def epoch_batches(self, epoch: int) -> tuple[Iterable[dict], int]:
        """(batches of this rank for the rest of the epoch, how many of them to use)."""
        cfg, env = self.cfg, self.env
        sampler = train_batches(self.train_ds, seed=cfg.trainer.seed, epoch=epoch, buffer=cfg.data.shuffle_buffer,
                                batch=self.batch, rank=env.rank, world=env.world, start=self.state.consumed)
        usable = sampler.plan.steps // self.accum * self.accum
        if self.batch_source is not None:
            return self.batch_source(epoch, sampler.plan), usable
        loader = make_loader(self.train_ds, sampler, cfg.data.num_workers, pin_memory=env.device.type == "cuda")
        rng = torch.get_rng_state()  # creating a loader draws a seed: keep training RNG identical on resume
        it = iter(loader)
        torch.set_rng_state(rng)
        return it, usable

    def train_epoch(self) -> tuple[Optional[str], bool]:
        """Steps until the epoch ends or something stops it: (stop reason or None, epoch finished)."""
        cfg, env, state = self.cfg, self.env, self.state
        epoch, start = state.epoch, state.consumed
        self.set_phase(epoch)
        batches, usable = self.epoch_batches(epoch)
        if start == 0 and self.writer is not None:
            dropped = len(self.train_ds) - self.steps_per_epoch * self.accum * self.global_batch
            self.writer.log("train", "dropped", float(dropped), epoch=epoch, step=state.step)
        window = {"loss": 0.0, "n": 0, "images": 0, "bad": 0, "correct": 0, "t": time.time()}
        if self.resumed_window is not None:  # mid-epoch resume: the window's sums up to the checkpoint
            window.update(self.resumed_window)
            self.resumed_window = None
        self.window = window
        try:
            return self._train_steps(window, batches, usable, epoch, start)
        finally:
            self.window = None  # an epoch-end checkpoint has no open window

    def _train_steps(self, window: dict, batches, usable: int, epoch: int, start: int) -> tuple[Optional[str], bool]:
        cfg, env, state = self.cfg, self.env, self.state
        on_batch, on_step = self.hooks.on_batch, self.hooks.on_step
        last_ckpt = time.time()
        reason = None
        step_losses = []  # this step's micro-batches: (loss, correct top-1), added to the window if finite
        self.model.train()
        for micro, b in enumerate(batches):
            if micro >= usable:
                break
            last_micro = (micro + 1) % self.accum == 0
            if on_batch is not None:
                on_batch(env.rank, epoch, state.step * self.accum + micro % self.accum, b)
            loss, n, correct = self.forward_backward(b, epoch, start + micro * self.global_batch, sync=last_micro)
            step_losses.append((loss, correct))
            window["images"] += n
            window["bad"] += len(b["bad"])
            if not last_micro:
                continue
            finite = self.finite_step(step_losses, epoch)
            if finite:
                for loss, correct in step_losses:
                    window["loss"] += loss
                    window["correct"] += correct
                    window["n"] += 1
            step_losses = []
            lr = self.optimizer_step(skip=not finite)
            state.consumed = start + (micro + 1) * self.global_batch
            if state.step % cfg.trainer.log_every_steps == 0 or micro + 1 == usable:
                self.log_window(window, lr, epoch)
            if on_step is not None:
                on_step(env.rank, state.step)
            if cfg.trainer.max_steps and state.step >= cfg.trainer.max_steps:
                reason = "max_steps"
            if reason is None and dist.any_rank(env, bool(self.stop)):
                reason = "signal"
            due = (cfg.trainer.ckpt_every_steps and state.step % cfg.trainer.ckpt_every_steps == 0) or \
                (cfg.trainer.ckpt_every_minutes and time.time() - last_ckpt > 60 * cfg.trainer.ckpt_every_minutes)
            if (reason == "signal" or dist.any_rank(env, bool(due))) and micro + 1 < usable:
                self.save()  # mid-epoch; the epoch end writes its own
                last_ckpt = time.time()
            if reason:
                break
        return reason, state.consumed >= start + usable * self.global_batch

    def set_phase(self, epoch: int) -> None:
        """model.unfreeze_at_epoch: freeze or unfreeze the backbone for this epoch (also right after a resume).
        DDP registers the parameters that need gradients when it is built, so it is built again."""
        if not models.set_phase(self.model, self.cfg.model, epoch):
            return
        params = list(self.model.parameters())
        self.log(f"epoch {epoch + 1}: backbone {'frozen' if epoch < self.cfg.model.unfreeze_at_epoch else 'unfrozen'} "
                 f"(model.unfreeze_at_epoch={self.cfg.model.unfreeze_at_epoch}); "
                 f"{sum(p.requires_grad for p in params)} of {len(params)} parameter tensors train")
        self.strategy.params_changed()

    def _correct(self, out: Optional[torch.Tensor], y: torch.Tensor):
        """Correct top-1 predictions of a training micro-batch, on the device (0 for other tasks). With
        mixup/cutmix the targets are soft: the argmax of the soft target counts as the label."""
        if out is None or self.task.name != "classification":
            return 0
        return top1_correct(out.detach(), y)

    def forward_backward(self, b: dict, epoch: int, position: int, sync: bool) -> tuple[torch.Tensor, int, object]:
        """One micro-batch: (its loss, still on the device, its size, its correct top-1 predictions, also on
        the device). Both are read only when a log line needs them: reading the loss every step made the host
        wait for the device (3 % of a ViT-B step on an H200)."""
        data = self.cfg.data
        # data.decode_on=device: the batch's deferred JPEGs are decoded here (a failure lands in b["bad"])
        x, y = images_on_device(b, self.env.device, data.img_size, data.interpolation, data.in_chans)
        for why in b["bad"]:
            self.last_bad = why
            warnings.warn(f"skipped training sample {why}")
        if self.mixup is not None and len(x) % 2:  # timm's mixup pairs samples
            x, y = x[:-1], y[:-1]
        # the loader may hand over channels_last batches; the model's layout decides (a mismatch costs DDP a
        # gradient copy per bucket), and re-laying out the uint8 batch is 4x cheaper than the float one
        fmt = torch.channels_last if self.cfg.trainer.channels_last else torch.contiguous_format
        x = self.normalize(x.contiguous(memory_format=fmt), train=True)
        if self.mixup is not None and len(x):
            with _seeded(self.cfg.trainer.seed, epoch, position + self.env.rank):
                x, y = self.mixup(x, y)
        st = self.strategy
        if st.input_dtype is not None:
            x = x.to(st.input_dtype)
        with st.accumulating(sync):
            out = None
            with st.autocast():
                if len(x):
                    out = st.module(x)
                    loss = self.task.loss(out, y)
                else:  # every sample of this batch was bad: keep ranks in step with a zero gradient
                    loss = sum(p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad)
            st.backward(loss)
        return loss.detach(), len(x), self._correct(out, y)

    def finite_step(self, step_losses: list, epoch: int) -> bool:
        """Whether this step's losses are finite on every rank (collective; one host sync per step). A
        non-finite one is skipped while trainer.max_nonfinite_steps allows, else the run stops (RunError)."""
        losses = torch.stack([loss.float().reshape(()) for loss, _ in step_losses])
        ok = bool(torch.isfinite(losses).all())  # the one sync
        bad = [] if ok else [float(v) for v in losses.cpu() if not torch.isfinite(v)]
        if not dist.any_rank(self.env, bool(bad)):
            return True
        state, limit = self.state, self.cfg.trainer.max_nonfinite_steps
        state.nonfinite += 1
        value = f"{bad[0]}" if bad else "non-finite on another rank"
        if state.nonfinite > limit:
            raise RunError(f"non-finite training loss ({value}) at step {state.step + 1} (epoch {epoch + 1}): the "
                           f"run diverged; {state.nonfinite} non-finite step(s), trainer.max_nonfinite_steps={limit} "
                           "tolerated (lower optim.lr, set trainer.clip_grad, or use bf16 rather than fp16)")
        warnings.warn(f"skipped step {state.step + 1}: non-finite training loss ({value}); {state.nonfinite} of "
                      f"trainer.max_nonfinite_steps={limit} tolerated")
        return False

    def optimizer_step(self, skip: bool = False) -> float:
        """The strategy's end of the step (clipping, step, EMA), then the schedule; `skip`: no update (the
        step still counts, the schedule moves on). Returns the base lr the step used."""
        self.state.step += 1
        if skip:
            self.strategy.skip_step()
        else:
            self.strategy.optimizer_step(self.state.step)
        lr = current_lr(self.optimizer)
        if self.sched is not None:
            self.sched.step_update(self.state.step)
        return lr

    def log_window(self, window: dict, lr: float, epoch: int) -> None:
        """Train loss (mean over ranks), lr and speed since the last log line; the epoch's train accuracy
        counts. Collective."""
        env, state = self.env, self.state
        # every step of the window skipped for a non-finite loss (trainer.max_nonfinite_steps): no loss to show
        loss = dist.sum_scalar(env, float(window["loss"]) / window["n"]) / env.world if window["n"] else float("nan")
        images = dist.sum_scalar(env, window["images"])
        state.skipped += int(dist.sum_scalar(env, window["bad"]))
        rate = images / max(time.time() - window["t"], 1e-9)
        state.images += int(images)
        if window["n"]:
            state.epoch_loss_sum += loss * window["n"]
        state.epoch_loss_n += window["n"]
        if self.task.name == "classification":
            state.epoch_correct += dist.sum_scalar(env, float(window["correct"]))  # the device count's one sync
            state.epoch_samples += images
        if self.writer is not None:
            self.writer.log_many("train", {"loss": loss, "lr": lr, "img_per_s": rate}, epoch=epoch, step=state.step)
        self.progress.update(state.step - self.progress.n, epoch=epoch + 1, loss=loss, lr=lr, img_per_s=rate)
        window.update(loss=0.0, n=0, images=0, bad=0, correct=0, t=time.time())
        limit = self.cfg.data.max_bad_fraction
        if state.skipped > 10 and state.skipped > limit * max(state.images, 1):
            raise RunError(f"{state.skipped} undecodable training samples out of {state.images} exceed "
                               f"data.max_bad_fraction={limit}; last on this rank: {self.last_bad}")

    def eval_model(self):
        return self.strategy.eval_module()

    def end_epoch(self, epoch_done: bool) -> Optional[str]:
        """Evaluate, early stopping, checkpoints. Returns a stop reason or None."""
        cfg, state = self.cfg, self.state
        epoch = state.epoch
        epoch_loss = state.epoch_loss_sum / max(state.epoch_loss_n, 1)
        train = {"epoch_loss": epoch_loss, "skipped": float(state.skipped)}
        if state.epoch_samples:  # classification: accuracy of the training batches as trained (Keras's accuracy)
            train["acc1"] = state.epoch_correct / state.epoch_samples
        if self.writer is not None and state.epoch_loss_n:
            self.writer.log_many("train", train, epoch=epoch, step=state.step)
        train_line = f"train loss {epoch_loss:.4f}" + (f" acc1 {train['acc1']:.4f}" if "acc1" in train else "")
        metrics = {}
        last = epoch + 1 == cfg.trainer.epochs or not epoch_done
        if self.val_ds is not None and ((epoch + 1) % cfg.trainer.eval_every_epochs == 0 or last):
            metrics, _ = self.evaluate(self.val_ds)
            if self.writer is not None:
                self.writer.log_many("val", metrics, epoch=epoch, step=state.step)
            self.progress.write(f"epoch {epoch + 1}/{cfg.trainer.epochs} val: " +
                                " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k) +
                                (f"; {train_line}" if state.epoch_loss_n else ""))
        elif state.epoch_loss_n:
            self.progress.write(f"epoch {epoch + 1}/{cfg.trainer.epochs} {train_line}")
        value = metrics.get(self.monitor.split("/", 1)[1]) if self.monitor.startswith("val/") else \
            (epoch_loss if self.monitor == "train/epoch_loss" else None)
        improved = False
        if value is not None and math.isfinite(value):
            improved = self._improved(value)
            if improved:
                state.best, state.best_epoch, state.bad_evals = value, epoch, 0
            else:
                state.bad_evals += 1
        if self.sched is not None:
            self.sched.step(epoch + 1, value)
        if epoch_done:
            state.epoch, state.consumed, state.epoch_loss_sum, state.epoch_loss_n = epoch + 1, 0, 0.0, 0
            state.epoch_correct, state.epoch_samples = 0.0, 0.0
        self.save(improved=improved, value=value, epoch=epoch)
        if cfg.trainer.patience is not None and state.bad_evals >= cfg.trainer.patience:
            self.log(f"early stopping: {self.monitor} has not improved for {state.bad_evals} evaluations "
                     f"(best {state.best:.4f} at epoch {state.best_epoch + 1})")
            return "early_stop"
        if dist.any_rank(self.env, bool(self.stop)):
            return "signal"
        return None

    def evaluate(self, dataset, model=None):
        return evaluate(model if model is not None else self.eval_model(), dataset, self.task,
                        batch=self.cfg.data.eval_batch_size or self.batch, num_workers=self.cfg.data.num_workers,
                        env=self.env, autocast=self.strategy.autocast, channels_last=self.cfg.trainer.channels_last,
                        input_dtype=None if model is not None else self.strategy.input_dtype,
                        lockstep=model is None and self.strategy.eval_lockstep)

    def test(self) -> dict:
        """Test split with the best weights; the confusion matrix etc. go to test_results.json."""
        if self.test_ds is None:
            return {}
        model, from_best = self.strategy.test_model(self.new_model)
        metrics, outputs = self.evaluate(self.test_ds, model)
        if self.env.is_main:
            self.writer.log_many("test", metrics, epoch=max(self.state.epoch - 1, 0), step=self.state.step)
            names = getattr(self.task, "output_names", None) or self.info.class_names  # task.class_map: the outputs'
            extra = self.task.extra_outputs(outputs["logits"], outputs["targets"], names)
            results = {"split": self.cfg.data.test_split, "metrics": metrics, "class_names": names,
                       "checkpoint": "best" if from_best else "last",
                       **{k: np.asarray(v).tolist() for k, v in extra.items()}}
            atomic_write_text(self.rdir / "test_results.json", json.dumps(results, indent=1))
            self.log("test: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k))
        return metrics

    def finish(self, test_metrics: dict) -> None:
        state, env = self.state, self.env
        if env.is_main:
            self.writer.flush()
            row = runs.summary(run_id=self.run_id, sweep=self.cfg.output.sweep, monitor=self.monitor,
                               best=state.best, best_epoch=state.best_epoch, epochs=state.epoch, steps=state.step,
                               wall_s=state.wall_s,
                               gpu_hours=state.wall_s * env.world / 3600 if env.device.type == "cuda" else 0.0,
                               img_per_s=state.images / state.wall_s if state.wall_s else 0.0,
                               **{f"test/{k}": v for k, v in test_metrics.items() if "/" not in k})
            runs.finish(self.rdir, row, config=self.cfg)
            best = "n/a" if state.best is None else f"{state.best:.4f} at epoch {state.best_epoch + 1}"
            self.log(f"done: {state.epoch} epochs, {state.step} steps in {state.wall_s:.1f}s; "
                     f"best {self.monitor} {best}")
        dist.barrier(env)


from imgtrain.engine.cli import main, preflight  # noqa: E402,F401  (callers that import them from here)
