"""Shared by the tasks: metric directions and numerically stable numpy softmax."""
from __future__ import annotations

import numpy as np

_MAX = {"acc", "acc1", "acc5", "acc_class", "precision", "recall", "f1", "srcc", "lcc", "img_per_s"}
_MIN = {"loss", "emd", "mse", "mae"}
_SPLITS = ("train", "val", "test")


def metric_mode(name: str) -> str:
    """'max' or 'min' for a metric name, with or without a split prefix ('val/acc1', 'acc_class/3')."""
    parts = name.split("/")
    if parts[0] in _SPLITS and len(parts) > 1:
        parts = parts[1:]
    if parts[0] in _MAX:
        return "max"
    if parts[0] in _MIN or parts[0].endswith("loss"):  # epoch_loss and friends
        return "min"
    raise ValueError(f"no known direction for metric '{name}' (maximised: {', '.join(sorted(_MAX))}; "
                     f"minimised: {', '.join(sorted(_MIN))}); set trainer.monitor_mode")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def check_2d(logits: np.ndarray, n_targets: int) -> np.ndarray:
    logits = np.asarray(logits)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"metrics need logits of shape [N>0, C], got {logits.shape}")
    if len(logits) != n_targets:
        raise ValueError(f"{len(logits)} logits rows but {n_targets} targets")
    return logits
