"""Process group set-up and the few collectives the engine needs.

Rank, world size and local rank come from torchrun's environment, or from submitit's
TorchDistributedEnvironment when a submitit SLURM task starts us: one code path serves both.
"""
from __future__ import annotations

import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgtrain.config import Config
from shards.procs import die_with_parent


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _export_submitit_env() -> None:
    """Under a multi-task submitit job (no torchrun), export MASTER_ADDR/RANK/... for torch."""
    if "RANK" in os.environ or "SUBMITIT_FOLDER" not in os.environ:
        return
    try:
        from submitit.helpers import TorchDistributedEnvironment
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    except RuntimeError:
        pass  # not inside a submitit job after all


def init(cfg: Config) -> DistEnv:
    _export_submitit_env()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # a rank whose torchrun agent was killed (-9, the OOM killer) used to train on, holding the run's lock;
        # it dies with it instead. SIGKILL, not SIGTERM: a rank blocked in a collective on a peer that died too
        # would act on SIGTERM only after dist.timeout_s. Checkpoints are atomic: the last one stays good.
        die_with_parent(signal.SIGKILL)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.dist.strategy == "single" and world > 1:
        raise RuntimeError(f"dist.strategy=single but WORLD_SIZE={world}: use ddp or deepspeed under torchrun")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = None
    if world > 1:
        backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if cuda else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.dist.timeout_s),
                                    device_id=device if backend == "nccl" else None)
    return DistEnv(rank, world, local_rank, device, backend)


def close(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def any_rank(env: DistEnv, flag: bool) -> bool:
    """True on every rank if it is true on any rank (a stop request must be agreed by all)."""
    if not env.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_objects(env: DistEnv, obj) -> list:
    if not env.distributed:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(env: DistEnv, obj):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_scalar(env: DistEnv, value: float) -> float:
    if not env.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=env.device if env.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return float(t.item())
