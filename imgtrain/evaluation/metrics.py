"""Predict a split once (DDP: each rank its block) and score it: the task's metrics, confusion matrix,
per-class table, per-image predictions.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from imgtrain import config as C
from imgtrain import tasks
from imgtrain.data import ShardSplit
from imgtrain.engine.dist import DistEnv
from imgtrain.engine.evaluate import predict
from imgtrain.evaluation.load import EvalError, LoadedModel
from imgtrain.tasks.base import log_softmax, softmax


def _autocast(cfg: C.Config, device: torch.device):
    """As the trainer evaluates: autocast in the run's precision."""
    if cfg.trainer.precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


@dataclass
class EvalResult:
    loaded: LoadedModel
    split: str
    metrics: dict[str, float]
    logits: np.ndarray  # [N, model outputs], index order
    targets: np.ndarray  # [N] class (data set's index) or [N, bins]
    indices: np.ndarray  # [N] sample index in the split
    keys: list[str]
    bad: list[str]  # unreadable samples, with reasons
    world: int
    seconds: float

    @property
    def class_names(self) -> list[str]:
        return self.loaded.info.class_names

    @property
    def restricted(self) -> np.ndarray:
        """Logits over the data set's classes: the mapped outputs' columns (all of them without a map)."""
        m = self.loaded.class_map
        return self.logits if m is None else self.logits[:, m]


def sample_keys(ds: ShardSplit, indices: Sequence[int]) -> list[str]:
    """Each sample's `__key__`, from the shard index (no sample is read)."""
    out = []
    for i in indices:
        shard, pos = ds.locate(int(i))
        out.append(ds.reader.indexes[shard].keys[pos])
    return out


def evaluate_split(loaded: LoadedModel, split: str, env: DistEnv) -> EvalResult:
    """Predict every sample of `split` once (DDP: each rank its block, gathered on every rank) and
    compute the task's metrics."""
    ds = loaded.dataset(split)
    cfg = loaded.cfg
    t0 = time.time()
    try:
        logits, targets, indices, bad = predict(
            loaded.model, ds, batch=cfg.data.eval_batch_size or cfg.data.batch_size,
            num_workers=cfg.data.num_workers, env=env, autocast=_autocast(cfg, env.device),
            channels_last=cfg.trainer.channels_last)
    except RuntimeError as e:
        if "could be read" in str(e):
            raise EvalError(str(e)) from None
        raise
    result = EvalResult(loaded, split, {}, logits, targets, indices, sample_keys(ds, indices), bad, env.world,
                        time.time() - t0)
    result.metrics = compute_metrics(result)
    return result


def compute_metrics(result: EvalResult) -> dict[str, float]:
    loaded = result.loaded
    metrics = loaded.task.metrics(result.restricted, result.targets)
    if loaded.class_map is not None:
        full = tasks.ClassificationTask(loaded.num_outputs).metrics(result.logits, loaded.class_map[result.targets])
        metrics.update({f"full/{k}": full[k] for k in ("loss", "acc1", "acc5")})
    metrics["samples"] = float(len(result.indices))
    metrics["skipped"] = float(len(result.bad))
    return metrics


def _topk(probs: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def confusion(result: EvalResult) -> np.ndarray:
    """[K, K], rows true classes, columns predictions (over the data set's classes)."""
    return np.asarray(result.loaded.task.extra_outputs(result.restricted, result.targets)["confusion_matrix"])


def per_class(result: EvalResult) -> list[dict]:
    """Per data set class: samples, top-1, top-5, mean cross-entropy, precision, recall and F1 (scikit-learn,
    0 where undefined), and the class it is most often mistaken for."""
    logits, y, names = result.restricted, result.targets.astype(np.int64), result.class_names
    k = min(5, logits.shape[1])
    top = _topk(logits, k)
    nll = -log_softmax(logits)[np.arange(len(y)), y]
    cm = confusion(result)
    from sklearn.metrics import precision_recall_fscore_support
    prec, rec, f1s, _ = precision_recall_fscore_support(y, top[:, 0], labels=np.arange(len(names)),
                                                        average=None, zero_division=0)
    rows = []
    for i, name in enumerate(names):
        mask = y == i
        n = int(mask.sum())
        wrong = cm[i].copy()
        wrong[i] = 0
        j = int(wrong.argmax())
        rows.append({"class": i, "name": name, "samples": n,
                     "top1": float((top[mask, 0] == i).mean()) if n else None,
                     "top5": float((top[mask] == i).any(axis=1).mean()) if n else None,  # top-min(5, K)
                     "loss": float(nll[mask].mean()) if n else None,
                     "precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1s[i]),
                     "confused_with": names[j] if wrong[j] else "", "confused_count": int(wrong[j])})
    return rows


def predictions_table(result: EvalResult) -> pa.Table:
    """One row per evaluated image, in index order.

    classification: key, index, label, label_name, pred, pred_name, correct, prob (of the true class),
    loss, top5 / top5_name / top5_prob (over the data set's classes); with a class map also
    model_top5 / model_top5_name / model_top5_prob over all of the model's outputs.
    score_distribution: key, index, true_mean, pred_mean, abs_error, emd, true_dist, pred_dist."""
    n = len(result.indices)
    cols: dict[str, pa.Array] = {"key": pa.array(result.keys, pa.string()),
                                 "index": pa.array(result.indices.astype(np.int64))}
    loaded = result.loaded

    def lists(values: np.ndarray, typ) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel(), typ), values.shape[1]) if n else \
            pa.array([], pa.list_(typ, values.shape[1]))

    if loaded.info.task == "classification":
        names = np.asarray(result.class_names, dtype=object)
        y = result.targets.astype(np.int64)
        probs = softmax(result.restricted)
        k = min(5, probs.shape[1])
        top = _topk(probs, k)
        pred = top[:, 0]
        cols.update(
            label=pa.array(y.astype(np.int32)), label_name=pa.array(names[y].tolist(), pa.string()),
            pred=pa.array(pred.astype(np.int32)), pred_name=pa.array(names[pred].tolist(), pa.string()),
            correct=pa.array(pred == y), prob=pa.array(probs[np.arange(n), y].astype(np.float32)),
            loss=pa.array((-np.log(np.maximum(probs[np.arange(n), y], 1e-45))).astype(np.float32)),
            top5=lists(top.astype(np.int32), pa.int32()),
            top5_name=pa.array([names[t].tolist() for t in top], pa.list_(pa.string())),
            top5_prob=lists(np.take_along_axis(probs, top, 1).astype(np.float32), pa.float32()))
        if loaded.class_map is not None:
            full = softmax(result.logits)
            ftop = _topk(full, min(5, full.shape[1]))
            onames = loaded.output_names or [str(i) for i in range(loaded.num_outputs)]
            cols.update(model_top5=lists(ftop.astype(np.int32), pa.int32()),
                        model_top5_name=pa.array([[onames[j] for j in t] for t in ftop], pa.list_(pa.string())),
                        model_top5_prob=lists(np.take_along_axis(full, ftop, 1).astype(np.float32), pa.float32()))
    else:
        q = np.asarray(result.targets, dtype=np.float64)
        q = q / q.sum(axis=1, keepdims=True)
        p = softmax(result.logits)
        task = loaded.task
        pm, tm = task.mean_scores(p), task.mean_scores(q)
        cols.update(true_mean=pa.array(tm), pred_mean=pa.array(pm), abs_error=pa.array(np.abs(pm - tm)),
                    emd=pa.array(tasks.emd_numpy(p, q, task.emd_r)),
                    true_dist=lists(q.astype(np.float32), pa.float32()),
                    pred_dist=lists(p.astype(np.float32), pa.float32()))
    return pa.table(cols)
