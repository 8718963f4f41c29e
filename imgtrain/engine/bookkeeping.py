"""The run's bookkeeping around the training loop: `Bookkeeping`, the base of trainer.Trainer.

Checkpoints (snapshot, save, resume; DESIGN §4), the end of an epoch (evaluation, model selection,
early stopping and the epoch's checkpoint), the test split with the best weights, and the summary.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Optional

import numpy as np

from imgtrain import runs
from imgtrain.engine import dist
from imgtrain.engine.checkpoint import RunError, rng_state, set_rng_state
from imgtrain.engine.evaluate import evaluate
from imgtrain.engine.optim import load_scheduler_state, scheduler_state
from imgtrain.data.order import micro_batches
from imgtrain.engine.state import TrainState, _window_from_state, _window_state, regroup_windows, seed_everything
from imgtrain.engine.trainer_base import TrainerBase
from imgtrain.logs.atomic import atomic_write_text


class Bookkeeping(TrainerBase):
    """Checkpoints, the end of each epoch, the test and the summary of a run built by TrainerBase."""

    def _improved(self, value: float) -> bool:
        return runs.Monitor(self.monitor, self.mode).improved(value, self.state.best, self.cfg.trainer.min_delta)

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
        else:  # same sample position (and with data.global_batch the same global batches), fresh RNG streams
            seed_everything(self.cfg.trainer.seed + self.env.rank + 1000 * state.step)
            saved = resumed.get("window")
            if saved:
                before = micro_batches(self.cfg, resumed["world_size"])[1]
                self.resumed_window = regroup_windows(saved, before, self.accum, self.env.rank)
            fixed = (f"the same global batch of {self.cfg.data.global_batch} (now {self.batch} x {self.accum} "
                     f"micro-batches per rank)" if self.cfg.data.global_batch else
                     f"global batch now {self.batch * self.env.world * self.accum} (data.global_batch keeps it)")
            self.log(f"world size changed {resumed['world_size']} -> {self.env.world}: continuing at epoch "
                     f"{state.epoch}, sample {state.consumed} of the epoch, step {state.step}; {fixed}")
        self.log(f"resumed {self.run_id} at epoch {state.epoch} step {state.step} (attempt {self.attempt})")

    # ------------------------------------------------------------------------------------ evaluation

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
