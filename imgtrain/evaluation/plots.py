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
    """Counts, rows true classes, columns predictions: the analysis' confusion-matrix figure (one drawing for
    `jobs/evaluate.py` and `jobs/analyze.py`), written to `out`."""
    from imgtrain.analysis.plots import plot_confusion_matrix  # torch-free, and only when a figure is asked for
    results = {"confusion_matrix": np.asarray(cm).tolist(), "class_names": [str(s) for s in names]}
    plot_confusion_matrix(results, out, title=title or None)
    return Path(out)


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
