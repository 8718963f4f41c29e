"""What one training run is made of, built from its config: `TrainerBase`, the base of trainer.Trainer.

Its constructor seeds, builds the data set's splits, the task, the model (pretrained weights, transfer),
the optimizer and schedule, the strategy around model and optimizer (strategy.build), the metric writer
and the TrainState; the small helpers the rest of the run uses are here too.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional

import torch

from imgtrain import config as C
from imgtrain import models, runs, tasks
from imgtrain.data import Normalizer, build_mixup, build_split, dataset_info, resolve_norm
from imgtrain.data.memory import manifest_hash
from imgtrain.data.order import micro_batches
from imgtrain.engine import dist, strategy
from imgtrain.engine.checkpoint import RunError
from imgtrain.engine.hooks import Hooks
from imgtrain.engine.optim import build_optimizer, build_scheduler
from imgtrain.engine.signals import StopRequest
from imgtrain.engine.state import TrainState, seed_everything
from imgtrain.logs import MetricWriter


class TrainerBase:
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
        self.batch, self.accum = micro_batches(cfg, env.world)
        self.global_batch = self.batch * env.world  # one micro-batch on every rank: stream positions per micro-step
        self.steps_per_epoch = len(self.train_ds) // self.global_batch // self.accum  # with data.global_batch:
        if self.steps_per_epoch == 0:                                                # the same on any world size
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

    def _tick(self) -> None:
        """Add the time since the last tick to the run's wall time (kept across attempts)."""
        now = time.time()
        self.state.wall_s += now - self.t_mark
        self.t_mark = now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.strategy.close()
