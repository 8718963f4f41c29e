"""Shared by the tasks: metric directions (imgtrain.runs owns them: sweeps and analysis rank by the
same rule without importing torch) and numerically stable numpy softmax."""
from __future__ import annotations

import numpy as np

from imgtrain.runs import DEFAULT_MONITOR, metric_mode


def monitor_default(task: str) -> tuple[str, str]:
    """(split/metric, max|min) a task is monitored by when trainer.monitor=auto."""
    return DEFAULT_MONITOR[task], metric_mode(DEFAULT_MONITOR[task])


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
