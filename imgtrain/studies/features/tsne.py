"""A 2-D t-SNE map of features, one colour per class."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from imgtrain.evaluation.load import EvalError
from imgtrain.evaluation.plots import _figure, save_figure


def plot_tsne(X: np.ndarray, y: np.ndarray, class_names: Sequence[str], out: str | Path, *, max_points: int = 2000,
              seed: int = 0, perplexity: float = 30.0, title: Optional[str] = None) -> dict:
    """2-D t-SNE of (a seeded subsample of at most `max_points`) features, one colour per class.
    Features are standardised and reduced to 50 PCA components first when wider."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    if y.ndim != 1:
        raise EvalError("t-SNE colours by class: classification features only")
    n = len(X)
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    if len(idx) < 5:
        raise EvalError(f"t-SNE needs at least 5 points, got {len(idx)}")
    x = StandardScaler().fit_transform(X[idx].astype(np.float64))
    if x.shape[1] > 50 and len(idx) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perp = min(perplexity, (len(idx) - 1) / 3)
    emb = TSNE(2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed).fit_transform(x)
    labels = y[idx].astype(np.int64)
    k = len(class_names)
    fig = _figure(8 if k <= 20 else 7, 6)
    ax = fig.subplots()
    from matplotlib import colormaps
    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "gist_ncar"]
    for c in np.unique(labels):
        m = labels == c
        color = cmap(c % 20 if k <= 20 else c / max(k - 1, 1))
        ax.scatter(emb[m, 0], emb[m, 1], s=6, color=color, label=str(class_names[c]), alpha=0.8)
    if k <= 20:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2, fontsize=8, frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE: {title + ', ' if title else ''}{len(idx)} of {n} feature vectors", fontsize=10)
    save_figure(fig, out)
    return {"path": Path(out), "points": int(len(idx)), "of": int(n), "perplexity": perp}
