"""One training run: build everything from the config, then train, evaluate, checkpoint and log.

`Trainer.fit()` reads like the recipe: resume -> epochs of steps (accumulation, AMP, clipping, EMA)
-> evaluation, early stopping and checkpoints -> test -> summary. How the model is trained across
processes (DDP or DeepSpeed) is applied from outside by a `strategy.Strategy`; the loop names neither.
`run()` does the run-directory bookkeeping around it (DONE check, attempts in run.json, FAILED marker);
the command line (`main`, `preflight`) is cli.py's. Tests reach inside through `hooks.Hooks`.
This module holds the loop; trainer_base.py builds what it trains from the config, bookkeeping.py holds
checkpoints, the end of an epoch, the test and the summary, state.py the run's state and result.
"""
from __future__ import annotations

import contextlib
import socket
import time
import warnings
from typing import Iterable, Optional

import torch

from imgtrain import config as C
from imgtrain import models, runs
from imgtrain.data import images_on_device, make_loader, train_batches
from imgtrain.data.loader import _seeded
from imgtrain.engine import dist
from imgtrain.engine.bookkeeping import Bookkeeping
from imgtrain.engine.checkpoint import RunError
from imgtrain.engine.evaluate import top1_correct
from imgtrain.engine.hooks import Hooks
from imgtrain.engine.optim import current_lr
from imgtrain.engine.signals import StopRequest
from imgtrain.engine.state import RunResult
from imgtrain.logs import Progress
from imgtrain.runs import DONE, REQUEUE_EXIT_CODE, STOPPED


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


class Trainer(Bookkeeping):
    """The training loop of one run, built from the config by TrainerBase (trainer_base.py: `batch_source` and
    `hooks` there); checkpoints, epoch ends, the test and the summary are Bookkeeping's (bookkeeping.py)."""

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
            return RunResult(self.rdir, STOPPED, REQUEUE_EXIT_CODE, stopped_by="pause")
        if reason == "signal":
            self.log(f"stopped by {self.stop.name or 'a signal on another rank'} at epoch {state.epoch} step "
                     f"{state.step}; checkpoint written, exit {REQUEUE_EXIT_CODE} (requeue me)")
            return RunResult(self.rdir, STOPPED, REQUEUE_EXIT_CODE, stopped_by="signal")
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
        steps = window["n"] / self.accum  # weights in optimizer steps: the same on any world size (data.global_batch)
        if window["n"]:
            state.epoch_loss_sum += loss * steps
        state.epoch_loss_n += steps
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
