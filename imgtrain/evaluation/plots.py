"""Evaluation figures on the Agg canvas, written atomically: confusion matrix, predicted vs true scores."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from imgtrain.logs import atomic_write_bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, out: str | Path, dpi: int = 100) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(out, buf.getvalue())


def plot_confusion(cm: np.ndarray, names: Sequence[str], out: str | Path, title: str = "") -> Path:
    """Counts, rows true classes, columns predictions, class names on both axes (every n-th beyond 40)."""
    cm = np.asarray(cm)
    n = len(cm)
    size = min(16.0, max(5.0, 0.45 * n + 2))
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    ticks = list(range(0, n, max(1, n // 40)))
    longest = max((len(str(s)) for s in names), default=1)
    ax.set_xticks(ticks, [str(names[i]) for i in ticks], rotation=90 if longest > 3 else 0)
    ax.set_yticks(ticks, [str(names[i]) for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        top = cm.max() or 1
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="images")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


def plot_scores(true_mean: np.ndarray, pred_mean: np.ndarray, out: str | Path, title: str = "") -> Path:
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(true_mean, pred_mean, s=6, alpha=0.5)
    lo, hi = float(min(true_mean.min(), pred_mean.min())), float(max(true_mean.max(), pred_mean.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
    ax.set_xlabel("true mean score")
    ax.set_ylabel("predicted mean score")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)
