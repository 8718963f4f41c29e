"""Optimizer and learning-rate schedule factories (timm's optimizers; timm's schedulers, stepped per
optimizer update)."""
from __future__ import annotations

import warnings

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.scheduler.plateau_lr import PlateauLRScheduler

from imgtrain.config import OptimConfig, SchedConfig


def build_optimizer(cfg: OptimConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """timm.optim.create_optimizer_v2 over our parameter groups, which carry 'lr_scale' (per-group multiplier)
    and 'weight_decay' (0 for norms and biases); `cfg.optimizer_args()` maps optim.* to timm's arguments.

    Each group's lr is optim.lr x lr_scale. timm's schedulers set lr = (scheduled value) x lr_scale from each
    group's 'initial_lr', which they take from the group's lr unless it is set: it is set here to the unscaled
    optim.lr, or the scale would apply twice (as it did before, for runs with lr_groups or layer_decay and a
    schedule; a resumed run keeps the schedule bases of its checkpoint)."""
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g["lr"] = cfg.lr * g["lr_scale"]
        g["initial_lr"] = cfg.lr
    return create_optimizer_v2(groups, **cfg.optimizer_args())


def build_scheduler(cfg: SchedConfig, optimizer, *, epochs: int, updates_per_epoch: int, mode: str):
    """A timm scheduler driven by `step_update(global_step)` and `step(epoch, metric)`; None for 'none'."""
    if cfg.name == "none":
        return None
    with warnings.catch_warnings():
        # timm deprecates its plateau scheduler because its checkpoints lose the patience counters;
        # ours keep them (scheduler_state), so the warning would only mislead
        warnings.filterwarnings("ignore", message="PlateauLRScheduler is deprecated", category=FutureWarning)
        sched, _ = create_scheduler_v2(
            optimizer, sched=cfg.name, num_epochs=epochs, decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
            min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs,
            patience_epochs=cfg.patience_epochs, plateau_mode=mode,
            step_on_epochs=cfg.name == "plateau", updates_per_epoch=max(1, updates_per_epoch))
    return sched


def scheduler_state(sched) -> dict:
    if sched is None:
        return {}
    state = sched.state_dict()
    if isinstance(sched, PlateauLRScheduler):  # timm keeps only part of torch's plateau state
        state = {"plateau": sched.lr_scheduler.state_dict(), **state}
    return state


def load_scheduler_state(sched, state: dict) -> None:
    if sched is None or not state:
        return
    state = dict(state)
    plateau = state.pop("plateau", None)
    sched.load_state_dict(state)
    if plateau is not None and isinstance(sched, PlateauLRScheduler):
        sched.lr_scheduler.load_state_dict(plateau)


def current_lr(optimizer) -> float:
    """The base learning rate (group lr divided by its scale)."""
    g = optimizer.param_groups[0]
    return g["lr"] / g.get("lr_scale", 1.0)
