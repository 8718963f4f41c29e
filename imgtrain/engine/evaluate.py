"""Evaluate a model on a split: every sample exactly once across ranks, metrics equal to one process."""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from imgtrain.data import EvalBatches, Normalizer, eval_positions, make_loader
from imgtrain.engine import dist
from imgtrain.engine.dist import DistEnv


@torch.no_grad()
def top1_correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many rows' top-1 prediction is the target, as a device tensor (reading it is the caller's
    host sync). Hard targets are int [B] labels; soft [B, C] targets (mixup/cutmix) count their argmax,
    the class with the larger share, as Keras's `accuracy` does with mixed one-hot labels."""
    if target.is_floating_point() and target.ndim == logits.ndim:
        target = target.argmax(-1)
    return (logits.argmax(-1) == target.to(logits.device)).sum()


@torch.no_grad()
def predict(model, dataset, *, batch: int, num_workers: int, env: DistEnv, autocast=contextlib.nullcontext,
            channels_last: bool = False, input_dtype=None, lockstep: bool = False):
    """(logits [N, C] float32, targets, sample indices, bad-sample reasons), gathered in index order.

    `lockstep`: every rank runs the same number of forward passes (ZeRO-3 gathers parameters with
    collectives inside forward), repeating its last batch where it has fewer and discarding the result.
    """
    normalize = Normalizer(dataset.mean, dataset.std, env.device)
    was_training = model.training
    model.eval()
    if hasattr(dataset, "eval_batches"):  # data.cache=memory: batches gathered from the split's cached array
        loader = dataset.eval_batches(env.rank, env.world, batch)
    else:
        loader = make_loader(dataset, EvalBatches(len(dataset), env.rank, env.world, batch), num_workers,
                             pin_memory=env.device.type == "cuda")
    logits, targets, indices, bad = [], [], [], []
    state = torch.get_rng_state()  # creating a loader draws a seed: keep the training RNG untouched
    it = iter(loader)
    torch.set_rng_state(state)
    rounds = max(-(-len(eval_positions(len(dataset), r, env.world)) // batch) for r in range(env.world)) \
        if lockstep else 0
    x = None
    for b in it:
        rounds -= 1
        bad += b["bad"]
        if len(b["index"]) == 0:
            continue
        x = normalize(b["image"].to(env.device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if input_dtype is not None:
            x = x.to(input_dtype)
        with autocast():
            out = model(x)
        logits.append(out.float().cpu())
        targets.append(b["target"])
        indices.append(b["index"])
    for _ in range(rounds):  # lockstep: keep the other ranks' collectives company
        if x is None:
            raise RuntimeError(f"rank {env.rank} has no readable sample of split '{dataset.split}' to run in lockstep")
        with autocast():
            model(x)
    model.train(was_training)
    local = (torch.cat(logits) if logits else None, torch.cat(targets) if targets else None,
             torch.cat(indices) if indices else None, bad)
    parts = dist.gather_objects(env, local)
    kept = [p for p in parts if p[0] is not None]
    all_bad = [r for p in parts for r in p[3]]
    if not kept:
        raise RuntimeError(f"no sample of split '{dataset.split}' could be read ({len(all_bad)} bad)")
    lg = torch.cat([p[0] for p in kept]).numpy()
    tg = torch.cat([p[1] for p in kept]).numpy()
    ix = torch.cat([p[2] for p in kept]).numpy()
    order = np.argsort(ix, kind="stable")
    return lg[order], tg[order], ix[order], all_bad


def evaluate(model, dataset, task, **kw) -> tuple[dict, dict]:
    """(metrics, extra outputs such as the confusion matrix) on one split."""
    logits, targets, indices, bad = predict(model, dataset, **kw)
    metrics = task.metrics(logits, targets)
    metrics["samples"] = float(len(indices))
    metrics["skipped"] = float(len(bad))
    return metrics, {"logits": logits, "targets": targets, "indices": indices, "bad": bad}
