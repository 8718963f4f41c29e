"""Score distributions (AVA, NIMA): predict the 10-bin vote distribution; EMD or MSE loss."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .base import check_2d, metric_mode, monitor_default, softmax

_VOTE_KEYS = ("votes", "counts", "ratings")  # raw vote counts, normalised when "distribution" is absent


def emd_torch(p: torch.Tensor, q: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Per-sample NIMA EMD: (mean over bins |CDF_p - CDF_q|^r)^(1/r), shape [B]."""
    d = (torch.cumsum(p, dim=-1) - torch.cumsum(q, dim=-1)).abs()
    # clamp: the r-th root has an infinite slope at 0 (identical distributions)
    return d.pow(r).mean(dim=-1).clamp_min(1e-12).pow(1.0 / r)


def emd_numpy(p: np.ndarray, q: np.ndarray, r: int = 2) -> np.ndarray:
    d = np.abs(np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1))
    return (d ** r).mean(axis=-1) ** (1.0 / r)


def _corr(fn, a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # undefined for constant scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(a, b)[0])


@dataclass
class ScoreDistributionTask:
    num_outputs: int = 10
    loss_name: str = "emd"  # emd | mse, on softmax(logits)
    emd_r: int = 2
    threshold: float = 5.0  # mean score splitting "good" from "bad" images (AVA binary accuracy)

    name: ClassVar[str] = "score_distribution"
    monitor_default: ClassVar[tuple[str, str]] = monitor_default("score_distribution")

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(logits.float(), dim=-1)
        q = target.float()
        if self.loss_name == "emd":
            return emd_torch(p, q, self.emd_r).mean()
        return F.mse_loss(p, q)

    def target_from_sample(self, cls: Optional[int], meta: dict) -> torch.Tensor:
        meta = meta or {}
        dist = meta.get("distribution")
        if dist is None:
            dist = next((meta[k] for k in _VOTE_KEYS if k in meta), None)
        if dist is None:
            raise ValueError(f"score sample without 'distribution' or vote counts (json keys: {sorted(meta)})")
        t = torch.as_tensor(dist, dtype=torch.float32).flatten()
        if t.numel() != self.num_outputs or not bool(t.sum() > 0):
            raise ValueError(f"score distribution {dist!r}: expected {self.num_outputs} bins with a positive sum")
        return t / t.sum()

    def mean_scores(self, dist: np.ndarray) -> np.ndarray:
        """sum_i p_i * i over bins i = 1..C."""
        return np.asarray(dist, dtype=np.float64) @ np.arange(1, dist.shape[1] + 1)

    def metrics(self, logits: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """loss (the training loss), emd (r = emd_r), mse and mae of the distributions; srcc and lcc of the
        mean scores; acc: agreement of (mean > threshold) between prediction and truth."""
        q = np.asarray(targets, dtype=np.float64)
        logits = check_2d(logits, len(q))
        q = q / q.sum(axis=1, keepdims=True)
        p = softmax(logits)
        emd = emd_numpy(p, q, self.emd_r).mean()
        mse = ((p - q) ** 2).mean()
        pm, tm = self.mean_scores(p), self.mean_scores(q)
        from scipy.stats import pearsonr, spearmanr  # here, not at the top: ~0.9 s of every run's start-up
        return {
            "loss": float(emd if self.loss_name == "emd" else mse),
            "emd": float(emd),
            "mse": float(mse),
            "mae": float(np.abs(p - q).mean()),
            "srcc": _corr(spearmanr, pm, tm),
            "lcc": _corr(pearsonr, pm, tm),
            "acc": float(((pm > self.threshold) == (tm > self.threshold)).mean()),
        }

    def mode(self, metric_name: str) -> str:
        return metric_mode(metric_name)

    def extra_outputs(self, logits: np.ndarray, targets: np.ndarray,
                      class_names: Optional[list[str]] = None) -> dict:
        """Predicted and true mean scores per sample (for scatter plots)."""
        q = np.asarray(targets, dtype=np.float64)
        logits = check_2d(logits, len(q))
        return {"pred_mean": self.mean_scores(softmax(logits)),
                "true_mean": self.mean_scores(q / q.sum(axis=1, keepdims=True))}
