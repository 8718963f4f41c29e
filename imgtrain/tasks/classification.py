"""Classification: cross-entropy (label smoothing, class weights, soft mixup targets) and split metrics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .base import check_2d, log_softmax, metric_mode, monitor_default


def balanced_class_weights(class_counts: list[int]) -> torch.Tensor:
    """n / (C * count_c), as scikit-learn's 'balanced'; a class without samples gets weight 0."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    weights = counts.sum() / (len(counts) * counts)
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows true classes, columns predictions (scikit-learn's confusion_matrix with labels 0..C-1;
    numpy here because importing sklearn.metrics costs ~0.6 s of every run's start-up)."""
    flat = np.asarray(y, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_prf(y: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float, float]:
    """Macro precision, recall, F1 over the classes present in labels or predictions, 0 where undefined: the same as
    scikit-learn's precision_recall_fscore_support(average="macro", zero_division=0) (tests/test_tasks.py)."""
    cm = confusion(y, pred, num_classes).astype(np.float64)
    tp, true, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = (true > 0) | (predicted > 0)
    if not present.any():
        return 0.0, 0.0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, tp / predicted, 0.0)
        r = np.where(true > 0, tp / true, 0.0)
        f = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(p[present].mean()), float(r[present].mean()), float(f[present].mean())


def _hard_labels(targets: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets)
    return targets.argmax(axis=1) if targets.ndim == 2 else targets.astype(np.int64)


@dataclass(eq=False)
class ClassificationTask:
    num_outputs: int
    label_smoothing: float = 0.0
    class_weights: Optional[torch.Tensor] = None  # [C], applied to hard and soft targets alike
    target_map: Optional[list[int]] = None  # data set class i -> output target_map[i] (task.class_map)
    output_names: Optional[list[str]] = None  # names of the outputs when they are not the data set's classes

    name: ClassVar[str] = "classification"
    monitor_default: ClassVar[tuple[str, str]] = monitor_default("classification")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on int64 [B] labels or soft [B, C] targets (mixup/cutmix).

        Label smoothing applies to hard labels only: soft targets come from timm's Mixup, which
        smooths them itself (built with the same task.label_smoothing). With class weights, torch
        averages hard targets by the summed weight of the batch's labels, soft ones by the batch size.
        """
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        if target.is_floating_point():
            return F.cross_entropy(logits.float(), target.float(), weight=weight)
        return F.cross_entropy(logits.float(), target.long(), weight=weight, label_smoothing=self.label_smoothing)

    def target_from_sample(self, cls: Optional[int], meta: dict) -> torch.Tensor:
        if cls is None:
            cls = (meta or {}).get("cls", (meta or {}).get("label"))
        if cls is None:
            raise ValueError(f"classification sample without a class (no cls member; json keys: {sorted(meta or {})})")
        cls = int(cls)
        if self.target_map is not None:
            if not 0 <= cls < len(self.target_map):
                raise ValueError(f"class index {cls} outside the class map's {len(self.target_map)} classes")
            cls = self.target_map[cls]
        if not 0 <= cls < self.num_outputs:
            raise ValueError(f"class index {cls} outside the model's {self.num_outputs} outputs")
        return torch.tensor(cls, dtype=torch.long)

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """loss (unsmoothed, unweighted CE), acc1, acc5 (top-min(5, C)), acc_class/<i> (NaN for a class
        absent from the split), and macro precision/recall/f1 over the classes present in labels or
        predictions (scikit-learn's default, zero_division=0)."""
        y = _hard_labels(targets)
        logits = check_2d(logits, len(y))
        n, c = logits.shape
        loss = -log_softmax(logits)[np.arange(n), y].mean()
        pred = logits.argmax(axis=1)
        k = min(5, c)
        topk = np.argpartition(-logits, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (n, 1))
        out = {"loss": float(loss), "acc1": float((pred == y).mean()),
               "acc5": float((topk == y[:, None]).any(axis=1).mean())}
        for i in range(c):
            mask = y == i
            out[f"acc_class/{i}"] = float((pred[mask] == i).mean()) if mask.any() else float("nan")
        p, r, f = macro_prf(y, pred, c)
        out.update(precision=p, recall=r, f1=f)
        return out

    def mode(self, metric_name: str) -> str:
        return metric_mode(metric_name)

    def extra_outputs(self, logits: np.ndarray, targets: np.ndarray,
                      class_names: Optional[list[str]] = None) -> dict:
        """confusion_matrix [C, C]: rows are true classes, columns predictions."""
        y = _hard_labels(targets)
        logits = check_2d(logits, len(y))
        cm = confusion(y, logits.argmax(axis=1), logits.shape[1])
        out = {"confusion_matrix": cm}
        if class_names is not None:
            out["class_names"] = list(class_names)
        return out
