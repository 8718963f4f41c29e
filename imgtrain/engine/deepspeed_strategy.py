"""DeepSpeed underneath the same engine (strategy.Strategy): config mapping, initialize, complete-only
checkpoints, export.

The trainer keeps its data pipeline, optimizer, scheduler, logs and resume guarantees; DeepSpeed gets
the model and our torch optimizer and does ZeRO partitioning, mixed precision, accumulation and
clipping. A checkpoint is written under a temporary tag and counts only once every rank has finished
and the tag has been renamed and recorded in `checkpoints/deepspeed/last`.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from imgtrain.config import Config, ConfigError
from imgtrain.data.order import micro_batches
from imgtrain.engine.checkpoint import Unusable, resume_newest
from imgtrain.logs.atomic import atomic_write_text

# DeepSpeed config keys that imgtrain sets from its own config, and where the user sets them instead.
OWNED = {
    "train_micro_batch_size_per_gpu": "data.batch_size (or data.global_batch)",
    "gradient_accumulation_steps": "trainer.grad_accum (or data.global_batch)",
    "train_batch_size": "data.batch_size x world size x trainer.grad_accum, or data.global_batch",
    "gradient_clipping": "trainer.clip_grad",
    "bf16.enabled": "trainer.precision",
    "fp16.enabled": "trainer.precision",
    "zero_optimization.stage": "dist.zero_stage",
    "zero_optimization.offload_optimizer": "dist.offload_optimizer",
    "zero_optimization.offload_param": "dist.offload_params",
    "optimizer": "optim.* (imgtrain passes its own torch optimizer)",
    "scheduler": "sched.* (imgtrain steps its own schedule)",
}


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in OWNED:
            out.update(_leaves(v, key + "."))
        else:
            out[key] = v
    return out


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def ds_config(cfg: Config, world: int) -> dict:
    """DeepSpeed's config from ours plus `dist.deepspeed` pass-through keys. A pass-through key that
    imgtrain sets itself is an error naming both keys (before anything is launched)."""
    offload = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    micro, accum = micro_batches(cfg, world)
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * world * accum,  # data.global_batch when set
        "gradient_clipping": float(cfg.trainer.clip_grad or 0.0),
        "bf16": {"enabled": cfg.trainer.precision == "bf16"},
        "fp16": {"enabled": cfg.trainer.precision == "fp16"},
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        "zero_allow_untested_optimizer": True,  # our torch optimizers are fine under ZeRO
        "zero_force_ds_cpu_optimizer": False,  # offload with a torch optimizer, no cpu_adam build
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.dist.offload_optimizer:
        ours["zero_optimization"]["offload_optimizer"] = offload
    if cfg.dist.offload_params:
        if cfg.dist.zero_stage != 3:
            raise ConfigError(f"dist.offload_params needs dist.zero_stage=3 (it is {cfg.dist.zero_stage})")
        ours["zero_optimization"]["offload_param"] = offload
    if cfg.trainer.ema_decay:
        raise ConfigError("trainer.ema_decay is not supported with dist.strategy=deepspeed")
    if cfg.trainer.max_nonfinite_steps:  # DeepSpeed updates inside backward(), before the loss could be checked
        raise ConfigError(f"trainer.max_nonfinite_steps={cfg.trainer.max_nonfinite_steps} is not supported with "
                          "dist.strategy=deepspeed (a non-finite loss stops the run there: leave it 0)")
    if cfg.trainer.compile:
        raise ConfigError("trainer.compile is not supported with dist.strategy=deepspeed (use DeepSpeed's "
                          "compile section through dist.deepspeed if you need it)")
    mine = _leaves(ours)
    for key, value in _leaves(cfg.dist.deepspeed).items():
        owner = next((k for k in OWNED if key == k or key.startswith(k + ".")), None)
        if owner is not None and mine.get(key, object()) != value:
            raise ConfigError(f"dist.deepspeed.{key}={value!r} conflicts with {OWNED[owner]}, which imgtrain maps "
                              f"to DeepSpeed's {owner}; set {OWNED[owner].split(' ')[0]} instead")
        _set(ours, key, value)
    return ours


def _import_deepspeed():
    """Import DeepSpeed so that nothing is compiled at run time on CPU machines."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.comm.torch  # noqa: F401
    if not torch.cuda.is_available():
        # The shared-memory all-reduce op is a JIT-compiled speed-up for CPU; gloo does the same job.
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    return deepspeed


class DeepSpeedStrategy:
    """strategy.Strategy on DeepSpeed: the engine does mixed precision (weights held in bf16/fp16, so the
    inputs are cast and there is no autocast), accumulation, clipping and the step; checkpoints are tags
    under checkpoints/deepspeed/ with the trainer's state as DeepSpeed's client state."""
    autocast = contextlib.nullcontext  # DeepSpeed holds the weights in bf16/fp16 itself
    optimizer_state_has_lr = False  # DeepSpeed's optimizer state has no lr: the schedule sets it on resume

    def __init__(self, cfg: Config, model: torch.nn.Module, optimizer, env, ckpt_dir: Path,
                 on_checkpoint_temp: Optional[Callable[[Path], None]] = None):
        if cfg.model.unfreeze_at_epoch is not None:  # DeepSpeed fixes its trainable parameters at start-up
            raise ConfigError("model.unfreeze_at_epoch does not work with dist.strategy=deepspeed; use ddp")
        deepspeed = _import_deepspeed()
        self.cfg, self.env, self.dir = cfg, env, Path(ckpt_dir) / "deepspeed"
        self.on_checkpoint_temp = on_checkpoint_temp
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.trainer.precision)
        self.eval_lockstep = cfg.dist.zero_stage == 3  # ZeRO-3 gathers parameters collectively in each forward
        # one process without torchrun: DeepSpeed still wants a process group. We make it (DeepSpeed then
        # adopts it) so that it is bound to our device (NCCL warns at every barrier otherwise) and so that
        # close() can destroy it
        self.own_group = not env.distributed and not torch.distributed.is_initialized()
        if self.own_group:
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
                os.environ.setdefault(key, value)
            os.environ["MASTER_PORT"] = str(_free_port())  # a fresh one per group: the last may still linger
            backend = "nccl" if env.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=0, world_size=1,
                                                 device_id=env.device if backend == "nccl" else None)
        deepspeed.init_distributed(dist_backend=env.backend or ("nccl" if env.device.type == "cuda" else "gloo"),
                                   auto_mpi_discovery=False)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config(cfg, env.world))
        self.module = torch.compile(self.engine) if cfg.trainer.compile else self.engine

    def close(self) -> None:
        """Destroy the one-process group made at start-up (a torchrun group is dist.close()'s)."""
        if self.own_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.own_group = False

    # ---------------------------------------------------------------- steps
    def accumulating(self, sync: bool):
        return contextlib.nullcontext()  # DeepSpeed knows the accumulation boundary itself

    def backward(self, loss: torch.Tensor) -> None:
        """DeepSpeed scales for accumulation, reduces, clips and steps at the boundary itself."""
        self.engine.backward(loss)
        self.engine.step()

    def optimizer_step(self, step: int) -> None:
        pass  # DeepSpeed stepped already in backward()

    def skip_step(self) -> None:  # ds_config refuses trainer.max_nonfinite_steps > 0: the run stops instead
        raise RuntimeError("DeepSpeed cannot skip an update")

    def params_changed(self) -> None:
        raise ConfigError("model.unfreeze_at_epoch does not work with dist.strategy=deepspeed; use ddp")

    def eval_module(self) -> torch.nn.Module:
        return self.engine.module

    def test_model(self, new_model) -> tuple[Optional[torch.nn.Module], bool]:
        """Consolidated fp32 weights of the best tag in a plain model."""
        model = new_model().to(self.env.device)
        model.load_state_dict(self.best_state_dict())
        return model, (self.dir / (self._pointer("best") or "")).exists()

    # ---------------------------------------------------------------- checkpoints
    def _tags(self) -> list[str]:
        if not self.dir.exists():
            return []
        return sorted((p.name for p in self.dir.iterdir() if p.is_dir() and p.name.startswith("step")), reverse=True)

    def save(self, client_state: dict, *, step: int, improved: bool = False, value=None, epoch=None) -> None:
        """Collective. Every rank writes its part under a temporary tag; rank 0 publishes it (no top-k here)."""
        tag, tmp = f"step{step:09d}", f".tmp-step{step:09d}"
        if self.env.is_main:
            shutil.rmtree(self.dir / tmp, ignore_errors=True)
        try:
            self.engine.save_checkpoint(str(self.dir), tag=tmp, client_state=client_state, save_latest=False)
        except BaseException:  # a full disk: no half-written tag is left (it would never count, but takes room)
            if self.env.is_main:
                shutil.rmtree(self.dir / tmp, ignore_errors=True)
            raise
        if self.env.is_main:
            if self.on_checkpoint_temp is not None:
                self.on_checkpoint_temp(self.dir / tmp)
            meta = {k: client_state[k] for k in ("config_hash", "world_size", "zero_stage", "run_id",
                                                  "data_fingerprint")}
            atomic_write_text(self.dir / tmp / "imgtrain.json", json.dumps({**meta, "step": step}))
            shutil.rmtree(self.dir / tag, ignore_errors=True)
            os.replace(self.dir / tmp, self.dir / tag)
            atomic_write_text(self.dir / "last", tag)
            if improved:
                atomic_write_text(self.dir / "best", tag)
            keep = {tag, self._pointer("best")} | set(self._tags()[:2])
            for old in self._tags():
                if old not in keep:
                    shutil.rmtree(self.dir / old, ignore_errors=True)
            for old in self.dir.glob("universal-step*"):  # a resume at another world size read it; done
                shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()

    def _pointer(self, name: str) -> Optional[str]:
        p = self.dir / name
        return p.read_text().strip() if p.exists() else None

    def resume(self, config_hash: str) -> Optional[dict]:
        """Client state of the newest complete checkpoint that loads (model and optimizer restored by
        DeepSpeed); None when there is none at all."""
        tags = self._tags()
        last = self._pointer("last")
        if last in tags:  # the published one first, then older complete ones
            tags.remove(last)
            tags.insert(0, last)

        def load(tag: str) -> dict:
            try:
                meta = json.loads((self.dir / tag / "imgtrain.json").read_text())
            except (OSError, ValueError) as e:
                raise Unusable(f"no readable imgtrain.json ({e})") from None
            if meta["config_hash"] != config_hash:
                raise Unusable(f"config hash {meta['config_hash']} != this run's {config_hash}")
            universal = meta["world_size"] != self.env.world and self.cfg.dist.zero_stage > 0
            if universal:  # ZeRO partitions are per rank: another world size loads DeepSpeed's universal form
                tag = self._universal(tag, meta)
            self.engine._config.load_universal_checkpoint = universal  # only for that load: an ordinary tag fails
            try:
                path, client = self.engine.load_checkpoint(str(self.dir), tag=tag, load_lr_scheduler_states=False)
            except Exception as e:
                raise Unusable(f"does not load ({type(e).__name__}: {str(e)[:300]})") from None
            finally:
                self.engine._config.load_universal_checkpoint = False
            if path is None:
                raise Unusable("DeepSpeed could not load it")
            return client

        return resume_newest(self.dir, tags, load, kind="DeepSpeed checkpoint")

    def _universal(self, tag: str, meta: dict) -> str:
        """`tag` saved by another world size under ZeRO, converted once (rank 0, DeepSpeed's ds_to_universal) into
        `universal-<tag>` beside it; its name is outside the step* tags, so it is never taken for one. Collective."""
        out = f"universal-{tag}"
        failed = None
        if self.env.is_main and not (self.dir / out / "imgtrain.json").exists():
            import argparse
            import time
            from deepspeed.checkpoint.ds_to_universal import main as to_universal
            tmp = self.dir / f".tmp-{out}"
            shutil.rmtree(tmp, ignore_errors=True)
            t0 = time.time()
            try:
                to_universal(argparse.Namespace(
                    input_folder=str(self.dir / tag), output_folder=str(tmp), num_extract_workers=1,
                    num_merge_workers=1, keep_temp_folder=False, strict=True,
                    inject_missing_state=True))  # ZeRO-1/2 checkpoints lack universal_checkpoint_info
                shutil.copy2(self.dir / tag / "imgtrain.json", tmp / "imgtrain.json")
                os.replace(tmp, self.dir / out)
            except Exception as e:  # told to every rank below, so none waits for a load that cannot come
                shutil.rmtree(tmp, ignore_errors=True)
                failed = f"{type(e).__name__}: {str(e)[:300]}"
            else:
                print(f"[imgtrain] {tag} was saved by {meta['world_size']} ranks under ZeRO-{meta['zero_stage']}, "
                      f"this attempt has {self.env.world}: converted to DeepSpeed's universal checkpoint "
                      f"{self.dir / out} in {time.time() - t0:.1f}s", flush=True)
        from imgtrain.engine import dist
        if dist.any_rank(self.env, failed is not None):
            raise Unusable(f"saved by {meta['world_size']} ranks; converting it to a universal checkpoint failed"
                           f"{f' ({failed})' if failed else ' on rank 0'}")
        return out

    def best_state_dict(self) -> Optional[dict]:
        tag = self._pointer("best") or self._pointer("last")
        return consolidated_state_dict(self.dir, tag) if tag else None


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def consolidated_state_dict(ds_dir: Path, tag: str) -> dict:
    """fp32 model weights gathered from a DeepSpeed checkpoint (ZeRO-partitioned or not)."""
    ds_dir = Path(ds_dir)
    if not (ds_dir / tag).is_dir():
        raise FileNotFoundError(f"no DeepSpeed checkpoint {ds_dir / tag}")
    if not any((ds_dir / tag).glob("*optim_states.pt")) or \
            json.loads((ds_dir / tag / "imgtrain.json").read_text()).get("zero_stage", 0) == 0:
        states = torch.load(ds_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}
    _import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(str(ds_dir), tag=tag)


def export_fp32(run_dir: Path, tag: str = "best", out: Optional[Path] = None) -> Path:
    """Write a run's weights as one plain checkpoint ({"model": fp32 state dict, ...}) that evaluation,
    feature extraction and fine-tuning (model.pretrained_path) load like any DDP checkpoint."""
    from imgtrain.engine.checkpoint import atomic_save
    run_dir = Path(run_dir)
    ds_dir = run_dir / "checkpoints" / "deepspeed"
    if ds_dir.is_dir():
        name = (ds_dir / tag).read_text().strip() if (ds_dir / tag).is_file() else tag
        meta = json.loads((ds_dir / name / "imgtrain.json").read_text())
        state = consolidated_state_dict(ds_dir, name)
    else:
        path = run_dir / "checkpoints" / (tag if tag.endswith(".pt") else f"{tag}.pt")
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} has neither checkpoints/deepspeed/ nor {path.name}")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta, name, state = ckpt, path.stem, ckpt["ema"] or ckpt["model"]
    out = Path(out) if out else run_dir / "checkpoints" / f"export-{name}.pt"
    atomic_save({"model": state, "config_hash": meta.get("config_hash"), "run_id": meta.get("run_id"),
                 "source": name}, out)
    return out
