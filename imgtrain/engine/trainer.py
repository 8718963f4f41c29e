"""One training run: build everything from the config, then train, evaluate, checkpoint and log.

The loop reads top to bottom: resume -> epochs of steps (with accumulation, AMP, clipping, EMA) ->
evaluation, early stopping and checkpoints -> test -> summary. DDP wraps the model from outside;
the loop only asks for `no_sync` while accumulating.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from imgtrain import config as C
from imgtrain import models, tasks
from imgtrain.data import build_mixup, build_split, dataset_info, make_loader, resolve_norm, train_batches
from imgtrain.data.loader import _seeded
from imgtrain.engine import dist
from imgtrain.engine.checkpoint import Checkpointer, rng_state, set_rng_state
from imgtrain.engine.evaluate import evaluate
from imgtrain.engine.optim import (build_optimizer, build_scheduler, current_lr, load_scheduler_state,
                                   scheduler_state)
from imgtrain.engine.signals import REQUEUE_EXIT_CODE, StopRequest
from imgtrain.logs import (MetricWriter, Progress, end_attempt, mark_done, mark_failed, read_status,
                           resolve_root, start_attempt, write_summary)
from imgtrain.logs.atomic import atomic_write_text


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


@dataclass
class RunResult:
    run_dir: Path
    status: str  # DONE | STOPPED | FAILED
    exit_code: int
    metrics: dict = field(default_factory=dict)


def run_id_for(cfg: C.Config) -> str:
    return cfg.output.run or f"{cfg.name}-{C.config_hash(cfg)[:8]}"


def _monitor(cfg: C.Config, task) -> tuple[str, str]:
    metric = cfg.trainer.monitor
    if metric == "auto":
        metric = task.monitor_default[0] if cfg.data.val_split else "train/epoch_loss"
    mode = cfg.trainer.monitor_mode
    if mode == "auto":
        mode = task.mode(metric.split("/", 1)[-1])
    return metric, mode


def _improved(value: float, best: Optional[float], mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _autocast(cfg: C.Config, device: torch.device):
    if cfg.trainer.precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def train(cfg: C.Config) -> RunResult:
    env = dist.init(cfg)
    try:
        return _train(cfg, env)
    finally:
        dist.close(env)


def _train(cfg: C.Config, env: dist.DistEnv) -> RunResult:
    t_start = time.time()
    chash = C.config_hash(cfg)
    run_id = run_id_for(cfg)
    rdir = resolve_root(cfg.output.root) / "runs" / run_id
    log = (lambda msg: print(f"[imgtrain] {msg}", flush=True)) if env.is_main else (lambda msg: None)

    if read_status(rdir) == "DONE":
        log(f"run {run_id} is already DONE ({rdir}); nothing to do")
        return RunResult(rdir, "DONE", 0)

    torch.manual_seed(cfg.trainer.seed + env.rank)
    np.random.seed((cfg.trainer.seed + env.rank) % 2**32)
    random.seed(cfg.trainer.seed + env.rank)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False

    if env.is_main:
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rdir / "config.yaml", C.to_yaml(cfg))
    attempt = start_attempt(rdir, run_id=run_id, sweep=cfg.output.sweep, cell=cfg.output.cell, config_hash=chash,
                            world_size=env.world, hosts=[socket.gethostname()]) if env.is_main else 0
    attempt = dist.broadcast_object(env, attempt)
    writer = MetricWriter(rdir, run_id, cfg.output.sweep, attempt) if env.is_main else None
    stop = StopRequest().install()
    try:
        result = _fit(cfg, env, rdir, run_id, chash, attempt, writer, stop, log, t_start)
    except BaseException as e:
        if writer is not None:
            writer.close()
        if env.is_main:
            reason = f"{type(e).__name__}: {e}"
            end_attempt(rdir, attempt, status="FAILED", exit_code=1, reason=reason)
            if not isinstance(e, KeyboardInterrupt):
                mark_failed(rdir, reason + "\n\n" + traceback.format_exc())
        raise
    finally:
        stop.uninstall()
    if writer is not None:
        writer.close()
    if env.is_main:
        end_attempt(rdir, attempt, status=result.status, exit_code=result.exit_code)
    return result


def _fit(cfg, env, rdir, run_id, chash, attempt, writer, stop, log, t_start) -> RunResult:
    # ---- data set, task, model
    info = dataset_info(cfg)
    task = tasks.build(cfg.task, info.num_outputs, info.class_counts)
    num_classes = cfg.model.num_classes or info.num_outputs
    model = models.create_model(cfg.model, num_classes=num_classes, in_chans=cfg.data.in_chans,
                                img_size=cfg.data.img_size)
    pretrained = cfg.model.pretrained_path is not None
    if pretrained:
        models.load_pretrained(model, cfg.model.pretrained_path, num_classes)
    models.apply_transfer(model, cfg.model)
    mean, std = resolve_norm(cfg.data, models.data_config(model, pretrained), info.manifest, pretrained)
    train_ds = build_split(cfg, info, cfg.data.train_split, task, train=True, mean=mean, std=std)
    val_ds = build_split(cfg, info, cfg.data.val_split, task, train=False, mean=mean, std=std) \
        if cfg.data.val_split and cfg.data.val_split in info.manifest["splits"] else None
    test_ds = build_split(cfg, info, cfg.data.test_split, task, train=False, mean=mean, std=std) \
        if cfg.data.test_split and cfg.data.test_split in info.manifest["splits"] else None
    mixup = build_mixup(cfg.data, num_classes, cfg.task.label_smoothing) if task.name == "classification" else None

    model.to(env.device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = models.param_groups(model, cfg.optim, cfg.model)
    optimizer = build_optimizer(cfg.optim, groups)
    accum, batch, world = cfg.trainer.grad_accum, cfg.data.batch_size, env.world
    global_batch = batch * world
    micro_per_epoch = len(train_ds) // global_batch
    steps_per_epoch = micro_per_epoch // accum
    if steps_per_epoch == 0:
        raise ValueError(f"split '{cfg.data.train_split}' has {len(train_ds)} samples, fewer than one optimizer step "
                         f"needs (data.batch_size {batch} x {world} ranks x trainer.grad_accum {accum})")
    monitor, mode = _monitor(cfg, task)
    sched = build_scheduler(cfg.sched, optimizer, epochs=cfg.trainer.epochs, updates_per_epoch=steps_per_epoch,
                            mode=mode)
    scaler = torch.amp.GradScaler(enabled=cfg.trainer.precision == "fp16" and env.device.type == "cuda")
    ema = None
    if cfg.trainer.ema_decay:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.trainer.ema_decay)
    autocast = _autocast(cfg, env.device)

    # ---- resume
    ckpt = Checkpointer(rdir / "checkpoints", cfg.trainer.keep_top_k, mode)
    state = TrainState()

    def check_model(s):
        model.load_state_dict(s["model"], strict=True)

    resumed = ckpt.load_resume(chash, check_model)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        load_scheduler_state(sched, resumed.get("scheduler", {}))
        if resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        if ema is not None and resumed.get("ema") is not None:
            ema.module.load_state_dict(resumed["ema"])
        state = TrainState(**resumed["state"])
        if resumed["world_size"] == world:
            set_rng_state(resumed["rng"][env.rank])
        else:  # another world size: same sample position, fresh per-rank RNG streams
            torch.manual_seed(cfg.trainer.seed + env.rank + 1000 * state.step)
            if state.consumed % (global_batch * accum):
                state.consumed -= state.consumed % (global_batch * accum)  # never skip a sample
            log(f"world size changed {resumed['world_size']} -> {world}: continuing at epoch {state.epoch}, "
                f"sample {state.consumed} of the epoch, step {state.step}")
        log(f"resumed {run_id} at epoch {state.epoch} step {state.step} (attempt {attempt})")
    if sched is not None and resumed is None:
        sched.step_update(0)

    ddp_model = DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None) \
        if env.distributed else model
    if cfg.trainer.compile:
        ddp_model = torch.compile(ddp_model)

    def snapshot() -> dict:
        rngs = dist.gather_objects(env, rng_state())
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler_state(sched), "scaler": scaler.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "state": state.__dict__.copy(), "rng": rngs, "config_hash": chash, "world_size": world,
                "run_id": run_id, "attempt": attempt, "model_name": cfg.model.name}

    def save_last() -> None:
        s = snapshot()  # collective: every rank takes part
        if env.is_main:
            ckpt.save_last(s)
            writer.flush()
        dist.barrier(env)

    total_steps = steps_per_epoch * cfg.trainer.epochs
    if cfg.trainer.max_steps:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    log(f"run {run_id} -> {rdir}")
    log(f"model {cfg.model.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
        f"{num_classes} outputs; {len(train_ds)} train samples, {world} rank(s) x batch {batch} x accum {accum}, "
        f"{steps_per_epoch} steps/epoch, monitor {monitor} ({mode})")
    progress = Progress(total_steps, desc=run_id, enabled=env.is_main, every_seconds=cfg.trainer.log_every_seconds,
                        initial=state.step, epochs=cfg.trainer.epochs)
    last_ckpt_time = time.time()
    stop_reason = None
    stop_at_step = int(os.environ.get("IMGTRAIN_TEST_SIGNAL_AT_STEP", "-1"))
    last_bad = None
    model.train()

    while state.epoch < cfg.trainer.epochs and stop_reason is None:
        epoch = state.epoch
        batches = train_batches(train_ds, seed=cfg.trainer.seed, epoch=epoch, buffer=cfg.data.shuffle_buffer,
                                batch=batch, rank=env.rank, world=world, start=state.consumed)
        usable = (batches.plan.steps // accum) * accum
        if state.consumed == 0 and writer is not None:
            dropped = len(train_ds) - micro_per_epoch // accum * accum * global_batch
            writer.log("train", "dropped", float(dropped), epoch=epoch, step=state.step)
        loader = make_loader(train_ds, batches, cfg.data.num_workers, pin_memory=env.device.type == "cuda")
        rng = torch.get_rng_state()  # creating the loader draws a seed: keep training RNG identical on resume
        it = iter(loader)
        torch.set_rng_state(rng)
        window_loss, window_n, window_imgs, window_bad, window_t = 0.0, 0, 0, 0, time.time()
        for micro, b in enumerate(it):
            if micro >= usable:
                break
            x, y = b["image"], b["target"]
            if b["bad"]:
                window_bad += len(b["bad"])
                last_bad = b["bad"][-1]
                for reason in b["bad"]:
                    warnings.warn(f"skipped training sample {reason}")
            if mixup is not None and len(x) % 2:
                x, y = x[:-1], y[:-1]
            x = x.to(env.device, non_blocking=True)
            y = y.to(env.device, non_blocking=True)
            if cfg.trainer.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if mixup is not None and len(x):
                with _seeded(cfg.trainer.seed, epoch, state.consumed + micro * global_batch + env.rank):
                    x, y = mixup(x, y)
            last_micro = (micro + 1) % accum == 0
            sync = contextlib.nullcontext() if (last_micro or not env.distributed) else ddp_model.no_sync()
            with sync:
                with autocast():
                    if len(x):
                        loss = task.loss(ddp_model(x), y)
                    else:  # every sample of this batch was bad: keep ranks in step with a zero gradient
                        loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
                scaler.scale(loss / accum).backward()
            window_loss += float(loss.detach())
            window_n += 1
            window_imgs += len(x)
            if not last_micro:
                continue

            # ---- optimizer step
            if cfg.trainer.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.consumed = batches.plan.start + (micro + 1) * global_batch
            if ema is not None:
                ema.update(model, step=state.step)
            lr = current_lr(optimizer)
            if sched is not None:
                sched.step_update(state.step)

            if state.step % cfg.trainer.log_every_steps == 0 or micro + 1 == usable:
                mean_loss = dist.sum_scalar(env, window_loss / max(window_n, 1)) / world
                dt = max(time.time() - window_t, 1e-9)
                imgs = dist.sum_scalar(env, window_imgs)
                state.images += int(imgs)
                state.skipped += int(dist.sum_scalar(env, window_bad))
                state.epoch_loss_sum += mean_loss * window_n
                state.epoch_loss_n += window_n
                if writer is not None:
                    writer.log_many("train", {"loss": mean_loss, "lr": lr, "img_per_s": imgs / dt},
                                    epoch=epoch, step=state.step)
                progress.update(state.step - progress.n, epoch=epoch + 1, loss=mean_loss, lr=lr,
                                img_per_s=imgs / dt)
                window_loss, window_n, window_imgs, window_bad, window_t = 0.0, 0, 0, 0, time.time()
                if state.skipped > cfg.data.max_bad_fraction * max(state.images, 1) and state.skipped > 10:
                    raise RuntimeError(f"{state.skipped} undecodable training samples out of {state.images} exceed "
                                       f"data.max_bad_fraction={cfg.data.max_bad_fraction}; last on this rank: {last_bad}")

            if stop_at_step == state.step:  # test hook: a real signal at a known step
                os.kill(os.getpid(), signal.SIGUSR1)
            if cfg.trainer.max_steps and state.step >= cfg.trainer.max_steps:
                stop_reason = "max_steps"
            if dist.any_rank(env, bool(stop)) and stop_reason is None:
                stop_reason = "signal"
            due = (cfg.trainer.ckpt_every_steps and state.step % cfg.trainer.ckpt_every_steps == 0) or \
                (cfg.trainer.ckpt_every_minutes and time.time() - last_ckpt_time > 60 * cfg.trainer.ckpt_every_minutes)
            if (stop_reason == "signal" or dist.any_rank(env, bool(due))) and micro + 1 < usable:
                state.wall_s += time.time() - t_start  # a mid-epoch checkpoint; the epoch end writes its own
                t_start = time.time()
                save_last()
                last_ckpt_time = time.time()
            if stop_reason:
                break

        epoch_done = state.consumed >= batches.plan.start + usable * global_batch
        if stop_reason == "signal" and not epoch_done:
            break  # last.pt was written at this step
        if epoch_done or stop_reason == "max_steps":
            # ---- end of epoch (or of the step budget): evaluate, early stopping, checkpoints
            epoch_loss = state.epoch_loss_sum / max(state.epoch_loss_n, 1)
            if writer is not None and state.epoch_loss_n:
                writer.log_many("train", {"epoch_loss": epoch_loss, "skipped": float(state.skipped)},
                                epoch=epoch, step=state.step)
            metrics = {}
            if val_ds is not None and ((epoch + 1) % cfg.trainer.eval_every_epochs == 0
                                       or epoch + 1 == cfg.trainer.epochs or stop_reason):
                eval_model = ema.module if ema is not None else model
                metrics, _ = evaluate(eval_model, val_ds, task, batch=cfg.data.eval_batch_size or batch,
                                      num_workers=cfg.data.num_workers, env=env, autocast=autocast,
                                      channels_last=cfg.trainer.channels_last)
                if writer is not None:
                    writer.log_many("val", metrics, epoch=epoch, step=state.step)
                progress.write(f"epoch {epoch + 1}/{cfg.trainer.epochs} val: " +
                               " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "/" not in k))
            value = metrics.get(monitor.split("/", 1)[1]) if monitor.startswith("val/") else \
                (epoch_loss if monitor == "train/epoch_loss" else None)
            improved = False
            if value is not None and math.isfinite(value):
                improved = _improved(value, state.best, mode, cfg.trainer.min_delta)
                if improved:
                    state.best, state.best_epoch, state.bad_evals = value, epoch, 0
                else:
                    state.bad_evals += 1
            if sched is not None:
                sched.step(epoch + 1, value)
            if epoch_done:
                state.epoch, state.consumed, state.epoch_loss_sum, state.epoch_loss_n = epoch + 1, 0, 0.0, 0
            state.wall_s += time.time() - t_start
            t_start = time.time()
            snap = snapshot()
            if env.is_main:
                ckpt.save_last(snap)
                if improved:
                    ckpt.save_best(snap)
                if value is not None:
                    ckpt.save_top_k(snap, epoch, value)
                writer.flush()
            dist.barrier(env)
            last_ckpt_time = time.time()
            if cfg.trainer.patience is not None and state.bad_evals >= cfg.trainer.patience:
                log(f"early stopping: {monitor} has not improved for {state.bad_evals} evaluations "
                    f"(best {state.best:.4f} at epoch {state.best_epoch + 1})")
                stop_reason = "early_stop"
            if dist.any_rank(env, bool(stop)) and stop_reason is None:
                stop_reason = "signal"
    progress.close()
    state.wall_s += time.time() - t_start

    if stop_reason == "signal":
        log(f"stopped by {stop.name or 'a signal on another rank'} at epoch {state.epoch} step {state.step}; "
            f"checkpoint written, exit {REQUEUE_EXIT_CODE} (requeue me)")
        return RunResult(rdir, "STOPPED", REQUEUE_EXIT_CODE)

    # ---- test with the best weights
    test_metrics = {}
    if test_ds is not None:
        best_path = rdir / "checkpoints" / "best.pt"
        eval_model = ema.module if ema is not None else model
        if best_path.exists():
            best_state = torch.load(best_path, map_location="cpu", weights_only=True)
            eval_model.load_state_dict(best_state["ema"] if ema is not None else best_state["model"])
        test_metrics, outputs = evaluate(eval_model, test_ds, task, batch=cfg.data.eval_batch_size or batch,
                                         num_workers=cfg.data.num_workers, env=env, autocast=autocast,
                                         channels_last=cfg.trainer.channels_last)
        if env.is_main:
            writer.log_many("test", test_metrics, epoch=max(state.epoch - 1, 0), step=state.step)
            extra = task.extra_outputs(outputs["logits"], outputs["targets"], info.class_names)
            results = {"split": cfg.data.test_split, "metrics": test_metrics, "class_names": info.class_names,
                       "checkpoint": "best" if best_path.exists() else "last",
                       **{k: np.asarray(v).tolist() for k, v in extra.items()}}
            atomic_write_text(rdir / "test_results.json", json.dumps(results, indent=1))
            log("test: " + " ".join(f"{k} {v:.4f}" for k, v in test_metrics.items() if "/" not in k))

    if env.is_main:
        writer.flush()
        summary = {"run_id": run_id, "sweep": cfg.output.sweep, "status": "DONE", "monitor": monitor,
                   "best": state.best, "best_epoch": state.best_epoch, "epochs": state.epoch, "steps": state.step,
                   "wall_s": state.wall_s,
                   "gpu_hours": state.wall_s * world / 3600 if env.device.type == "cuda" else 0.0,
                   "img_per_s": state.images / state.wall_s if state.wall_s else 0.0,
                   **{f"test/{k}": v for k, v in test_metrics.items() if "/" not in k}}
        write_summary(rdir, summary, config=cfg)
        mark_done(rdir)
        log(f"done: {state.epoch} epochs, {state.step} steps in {state.wall_s:.1f}s; best {monitor} "
            f"{state.best if state.best is None else round(state.best, 4)} at epoch {state.best_epoch + 1}")
    dist.barrier(env)
    return RunResult(rdir, "DONE", 0, test_metrics)


def main(argv=None) -> int:
    """`python jobs/train.py --config FILE [key=value ...] [--dry-run]`."""
    import argparse
    p = argparse.ArgumentParser(
        prog="jobs/train.py",
        description="Train and evaluate one run. Under torchrun (--nproc_per_node N, one node or several) the same "
                    "command trains with DDP. A run directory that already holds last.pt resumes automatically.",
        epilog="examples:\n  python jobs/train.py --config jobs/configs/digits.yaml data.path=demo/shards/digits\n"
               "  torchrun --nproc_per_node 2 jobs/train.py --config jobs/configs/digits.yaml optim.lr=3e-3\n"
               "  python jobs/train.py --config jobs/configs/digits.yaml --dry-run\n\n"
               f"exit status: 0 done, 1 failed, 2 bad config, {REQUEUE_EXIT_CODE} stopped by SIGUSR1/SIGTERM after "
               "writing last.pt (requeue me)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (may `extends:` another)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, YAML-typed (optim.lr=3e-4)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and run id, and exit")
    args = p.parse_args(argv)
    try:
        cfg = C.load(args.config, args.overrides)
    except C.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(C.to_yaml(cfg), end="")
        print(f"# run id: {run_id_for(cfg)}  config hash: {C.config_hash(cfg)}  "
              f"run dir: {resolve_root(cfg.output.root) / 'runs' / run_id_for(cfg)}")
        return 0
    return train(cfg).exit_code
