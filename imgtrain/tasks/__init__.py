"""Tasks: what the model's outputs mean — the loss, per-sample targets, and split metrics.

    task = build(cfg.task, num_outputs, class_counts)
    loss = task.loss(logits, target)                    # differentiable scalar
    target = task.target_from_sample(cls, meta)         # one sample's target tensor
    values = task.metrics(logits_np, targets_np)        # {metric: float} over a whole split
    extra = task.extra_outputs(logits_np, targets_np, class_names)   # arrays saved with test results
    task.monitor_default                                # ("val/acc1", "max") | ("val/emd", "min")
    task.mode("val/loss")                               # "max" | "min"

Importing this package imports no torch: the names below that need it (the task classes, emd_torch,
balanced_class_weights) are imported from their modules on first use (`__getattr__`), and `build` imports
the task class it makes. `metric_mode` and `base` (numpy softmax, metric directions) are torch-free.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

from imgtrain.lazy import lazy_exports

if TYPE_CHECKING:
    import numpy as np
    import torch

    from imgtrain.config import TaskConfig

    from .base import metric_mode
    from .classification import ClassificationTask, balanced_class_weights
    from .score_distribution import ScoreDistributionTask, emd_numpy, emd_torch


class Task(Protocol):
    name: str
    num_outputs: int
    monitor_default: tuple[str, str]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...
    def target_from_sample(self, cls: Optional[int], meta: dict) -> torch.Tensor: ...
    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]: ...
    def mode(self, metric_name: str) -> str: ...
    def extra_outputs(self, logits: np.ndarray, targets: np.ndarray,
                      class_names: Optional[list[str]] = None) -> dict: ...


def build(task_cfg: TaskConfig, num_outputs: int, class_counts: Optional[list[int]] = None,
          class_names: Optional[list[str]] = None, model_outputs: Optional[int] = None) -> Task:
    """The task for `task_cfg`; `class_counts` (training split, index order) feeds balanced class weights;
    `class_names` (the data set's) and `model_outputs` (model.num_classes) feed task.class_map."""
    from imgtrain.config import ConfigError

    if task_cfg.name == "classification":
        from .classification import ClassificationTask, balanced_class_weights  # torch

        if task_cfg.loss != "ce":
            raise ConfigError(f"task.loss: '{task_cfg.loss}' does not apply to classification; use ce")
        if task_cfg.class_map is not None:
            if task_cfg.class_weights is not None:
                raise ConfigError("task.class_weights and task.class_map together are not supported")
            if class_names is None:
                raise ConfigError("task.class_map needs the data set's class names")
            from .class_map import resolve
            try:
                cmap = resolve(task_cfg.class_map, list(class_names), model_outputs)
            except ValueError as e:
                raise ConfigError(str(e)) from None
            return ClassificationTask(cmap.num_outputs, task_cfg.label_smoothing, None, cmap.outputs,
                                      cmap.output_names)
        weights = None
        if task_cfg.class_weights == "balanced":
            if class_counts is None:
                raise ConfigError("task.class_weights=balanced needs the training split's class counts")
            if len(class_counts) != num_outputs:
                raise ConfigError(f"task.class_weights: {len(class_counts)} class counts for {num_outputs} outputs")
            weights = balanced_class_weights(class_counts)
        elif task_cfg.class_weights is not None:
            raise ConfigError(f"task.class_weights: unknown '{task_cfg.class_weights}' (None or balanced)")
        return ClassificationTask(num_outputs, task_cfg.label_smoothing, weights)
    if task_cfg.class_map is not None:
        raise ConfigError("task.class_map applies to classification only")
    if task_cfg.name == "score_distribution":
        from .score_distribution import ScoreDistributionTask  # torch

        if task_cfg.loss not in ("emd", "mse"):
            raise ConfigError(f"task.loss: '{task_cfg.loss}' does not apply to score_distribution; "
                              "set task.loss=emd (NIMA) or mse")
        if task_cfg.label_smoothing or task_cfg.class_weights:
            raise ConfigError("task.label_smoothing and task.class_weights apply to classification only")
        if task_cfg.emd_r < 1:
            raise ConfigError(f"task.emd_r must be >= 1, got {task_cfg.emd_r}")
        return ScoreDistributionTask(num_outputs, task_cfg.loss, task_cfg.emd_r)
    raise ConfigError(f"task.name: unknown task '{task_cfg.name}' (classification or score_distribution)")


# exported name -> the submodule that defines it, imported when the name is first used (PEP 562)
_LAZY = {
    "metric_mode": "base",
    "ClassificationTask": "classification", "balanced_class_weights": "classification",
    "ScoreDistributionTask": "score_distribution", "emd_torch": "score_distribution",
    "emd_numpy": "score_distribution",
}
_SUBMODULES = frozenset({"base", "class_map", "classification", "score_distribution"})

__all__ = ["build", "Task", "metric_mode", "ClassificationTask", "ScoreDistributionTask",
           "balanced_class_weights", "emd_torch", "emd_numpy"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY, _SUBMODULES)
