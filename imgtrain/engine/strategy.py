"""How the model is trained across processes: the one place that knows DDP from DeepSpeed.

The training loop (trainer.py) builds a model and a torch optimizer, hands both to `build()`, and from
then on only calls the `Strategy` below: the forward goes through `strategy.module`, a micro-batch's
backward through `backward()` inside `accumulating(sync)`, the end of an optimizer step through
`optimizer_step()`, checkpoints through `save()`/`resume()`. `DataParallel` (one process or DDP,
optionally compiled, with AMP's grad scaler, clipping and EMA) is here; `DeepSpeedStrategy`
(ZeRO, DeepSpeed's own mixed precision, accumulation, clipping and tagged checkpoints) is in
deepspeed_strategy.py.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, ContextManager, Optional, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from imgtrain import config as C
from imgtrain.data.order import micro_batches
from imgtrain.engine import dist
from imgtrain.engine.checkpoint import Checkpointer


class Strategy(Protocol):
    module: torch.nn.Module  # what the training forward calls (DDP, compiled or DeepSpeed's engine)
    autocast: Callable[[], ContextManager]  # around the forward and the loss
    input_dtype: Optional[torch.dtype]  # the training and evaluation inputs' dtype; None: as they come
    eval_lockstep: bool  # evaluation must run the same number of batches on every rank (ZeRO-3)
    optimizer_state_has_lr: bool  # resume() restores each group's lr (else the schedule sets it again)

    def accumulating(self, sync: bool) -> ContextManager:
        """Around one micro-batch's forward and backward; sync=False inside gradient accumulation."""

    def backward(self, loss: torch.Tensor) -> None:
        """One micro-batch's backward (the loss is the micro-batch's mean, not yet divided for accumulation)."""

    def optimizer_step(self, step: int) -> None:
        """The end of an optimizer step (clipping, step, zeroing, EMA); `step` counts this one."""

    def skip_step(self) -> None:
        """Instead of optimizer_step: drop this step's gradients, no update (a non-finite loss)."""

    def params_changed(self) -> None:
        """The trainable parameters changed (model.unfreeze_at_epoch)."""

    def eval_module(self) -> torch.nn.Module:
        """The module validation evaluates (EMA weights where kept)."""

    def save(self, snap: dict, *, step: int, improved: bool, value: Optional[float], epoch: int) -> None:
        """Collective. Write `snap` (the run's state) with the model's and optimizer's as the last checkpoint,
        as best when improved, among the top-k when `value` is given."""

    def resume(self, config_hash: str) -> Optional[dict]:
        """Restore model and optimizer from the newest usable checkpoint (checkpoint.resume_newest) and
        return its `snap`; None when there is none."""

    def test_model(self, new_model: Callable[[], torch.nn.Module]) -> tuple[Optional[torch.nn.Module], bool]:
        """The weights the test split is evaluated with: (a model to evaluate as given, or None for
        eval_module() with its inputs as in validation; whether they are the best checkpoint's)."""

    def close(self) -> None:
        ...


def build(cfg: C.Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, env: dist.DistEnv,
          ckpt_dir: Path, *, mode: str, on_checkpoint_temp: Optional[Callable[[Path], None]] = None) -> Strategy:
    """The strategy dist.strategy names, around `model` (already on env.device) and `optimizer`."""
    if cfg.dist.strategy == "deepspeed":
        from imgtrain.engine.deepspeed_strategy import DeepSpeedStrategy
        return DeepSpeedStrategy(cfg, model, optimizer, env, ckpt_dir, on_checkpoint_temp=on_checkpoint_temp)
    return DataParallel(cfg, model, optimizer, env, ckpt_dir, mode=mode, on_checkpoint_temp=on_checkpoint_temp)


def autocast_of(cfg: C.Config, device: torch.device) -> Callable[[], ContextManager]:
    if cfg.trainer.precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _wrap(model: torch.nn.Module, env: dist.DistEnv, compile_model: bool) -> torch.nn.Module:
    """DDP around `model` when distributed, compiled when trainer.compile. Built at start-up and again when
    the trainable parameters change (model.unfreeze_at_epoch): DDP registers them when it is built."""
    if env.distributed:
        model = DDP(model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    return torch.compile(model) if compile_model else model


class DataParallel:
    """One process or DDP: AMP (grad scaler for fp16 on CUDA), clipping, EMA; plain .pt checkpoints
    (checkpoint.Checkpointer: last/prev/best/top-k, written by rank 0)."""
    input_dtype = None
    eval_lockstep = False
    optimizer_state_has_lr = True

    def __init__(self, cfg: C.Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, env: dist.DistEnv,
                 ckpt_dir: Path, *, mode: str, on_checkpoint_temp: Optional[Callable[[Path], None]] = None):
        self.cfg, self.model, self.optimizer, self.env = cfg, model, optimizer, env
        self.accum = micro_batches(cfg, env.world)[1]
        self.scaler = torch.amp.GradScaler(enabled=cfg.trainer.precision == "fp16" and env.device.type == "cuda")
        self.ema = None
        if cfg.trainer.ema_decay:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=cfg.trainer.ema_decay)
        self.autocast = autocast_of(cfg, env.device)
        self.module = _wrap(model, env, cfg.trainer.compile)
        self.ckpt = Checkpointer(ckpt_dir, cfg.trainer.keep_top_k, mode, on_temp=on_checkpoint_temp)

    def accumulating(self, sync: bool) -> ContextManager:
        return self.module.no_sync() if not sync and self.env.distributed else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.accum).backward()

    def optimizer_step(self, step: int) -> None:
        if self.cfg.trainer.clip_grad:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def params_changed(self) -> None:
        if self.env.distributed:
            self.module = _wrap(self.model, self.env, self.cfg.trainer.compile)

    def eval_module(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def save(self, snap: dict, *, step: int, improved: bool, value: Optional[float], epoch: int) -> None:
        if not self.env.is_main:
            return
        snap = dict(snap, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                    scaler=self.scaler.state_dict(), ema=self.ema.module.state_dict() if self.ema is not None else None)
        self.ckpt.save_last(snap)
        if improved:
            self.ckpt.save_best(snap)
        if value is not None:
            self.ckpt.save_top_k(snap, epoch, value)

    def resume(self, config_hash: str) -> Optional[dict]:
        snap = self.ckpt.load_resume(config_hash, lambda s: self.model.load_state_dict(s["model"], strict=True))
        if snap is None:
            return None
        self.optimizer.load_state_dict(snap["optimizer"])  # also restores each group's lr
        if snap.get("scaler"):
            self.scaler.load_state_dict(snap["scaler"])
        if self.ema is not None and snap.get("ema") is not None:
            self.ema.module.load_state_dict(snap["ema"])
        return snap

    def test_model(self, new_model: Callable[[], torch.nn.Module]) -> tuple[Optional[torch.nn.Module], bool]:
        best_path = self.ckpt.dir / "best.pt"
        if best_path.exists():
            best = torch.load(best_path, map_location="cpu", weights_only=True)
            self.eval_module().load_state_dict(best["ema"] if self.ema is not None else best["model"])
        return None, best_path.exists()

    def close(self) -> None:
        pass
