"""Figures on the Agg canvas (no pyplot state): learning curves, sweep overlays, heat maps over two
config keys, confusion matrices.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from imgtrain.analysis.board import board_mode, board_varied
from imgtrain.analysis.load import RunSet
from imgtrain.analysis.text import _cell, cell_label
from imgtrain.runs import SPLITS

DEFAULT_PLOT_TOP = 20


def _figure(width: float, height: float):
    """A Figure on the Agg canvas, without pyplot: nothing global changes, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, out: str | os.PathLike, dpi: int = 100) -> Path:
    import io
    from imgtrain.logs.atomic import atomic_write_bytes
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format=out.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")  # legends outside
    atomic_write_bytes(out, buf.getvalue())  # a reader (or a crash) never sees half a figure
    return out


def metric_series(table: pa.Table, run_id: str, split: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, epoch, value) of one metric of one run, in step order."""
    mask = pc.and_(pc.and_(pc.equal(table["run_id"], run_id), pc.equal(table["split"], split)),
                   pc.equal(table["metric"], metric))
    t = table.filter(mask).sort_by("step")
    return (t["step"].to_numpy(), t["epoch"].to_numpy(), t["value"].to_numpy())


def _split_metric(metric: str, default_split: str = "val") -> tuple[str, str]:
    split, _, name = metric.partition("/")
    return (split, name) if split in SPLITS and name else (default_split, metric)


def learning_curves_figure(table: pa.Table, run_id: str, metric: str = "acc1", title: Optional[str] = None):
    """Train loss per step with val loss per evaluation (left); the monitored `metric` per epoch
    (right; 'acc1', 'val/acc1' or 'train/epoch_loss'). Returns the Figure."""
    fig = _figure(10, 4)
    ax_loss, ax_metric = fig.subplots(1, 2)
    step, _, loss = metric_series(table, run_id, "train", "loss")
    ax_loss.plot(step, loss, label="train loss", alpha=0.7)
    vstep, _, vloss = metric_series(table, run_id, "val", "loss")
    if len(vstep):
        ax_loss.plot(vstep, vloss, "o-", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    split, name = _split_metric(metric)
    _, mepoch, mval = metric_series(table, run_id, split, name)
    if len(mepoch):
        ax_metric.plot(mepoch + 1, mval, "o-", label=f"{split} {name}")
        ax_metric.legend()
    ax_metric.set_xlabel("epoch")
    ax_metric.xaxis.get_major_locator().set_params(integer=True)
    ax_metric.set_ylabel(name)
    fig.suptitle(title or run_id)
    fig.tight_layout()
    return fig


def plot_learning_curves(table: pa.Table, run_id: str, out: str | Path, metric: str = "acc1") -> Path:
    """Train loss per step and val loss/`metric` per epoch for one run, as a PNG."""
    return _save(learning_curves_figure(table, run_id, metric), out)


def plot_sweep_curves(runs: RunSet, board: pa.Table, out: str | os.PathLike | None = None, *,
                      top: Optional[int] = DEFAULT_PLOT_TOP, name: Optional[str] = None):
    """One line per run (the leaderboard's first `top` rows), labelled by its varied hyperparameters:
    train loss per step (left) and the monitored metric per epoch (right); `name` (the sweep) heads
    the title. Returns the Figure."""
    n = board.num_rows if top is None else min(top, board.num_rows)
    monitor = board["monitor"][0].as_py() if board.num_rows else "val/acc1"
    split, metric = _split_metric(monitor)
    fig = _figure(13, 4.8)
    ax_loss, ax_metric = fig.subplots(1, 2)
    for i in range(n):
        rid = board["run_id"][i].as_py()
        t = runs.rows(rid)
        label = cell_label(board, i)
        step, _, loss = metric_series(t, rid, "train", "loss")
        (line,) = ax_loss.plot(step, loss, lw=1, alpha=0.8)
        _, epoch, val = metric_series(t, rid, split, metric)
        ax_metric.plot(epoch + 1, val, "o-" if len(val) < 30 else "-", ms=3, lw=1.2, color=line.get_color(),
                       label=label)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    ax_metric.set_xlabel("epoch")
    ax_metric.xaxis.get_major_locator().set_params(integer=True)
    ax_metric.set_ylabel(f"{split} {metric}")
    if n:
        ax_metric.legend(fontsize=7 if n > 8 else 8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    shown = f"top {n} of {board.num_rows} runs" if n < board.num_rows else f"{n} runs"
    fig.suptitle(f"{name + ': ' if name else ''}{split} {metric} per epoch ({shown})")
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


def _sort_key(v: Any):
    if v is None:
        return (2, "")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v)
    return (1, str(v))


def heatmap_table(board: pa.Table, key_x: str, key_y: str, value: str = "best", agg: str = "mean"):
    """(xs, ys, grid[len(ys), len(xs)], counts) of `value` aggregated (mean/max/min) over the runs of
    each (key_x, key_y) combination; combinations without a finite value are NaN."""
    missing = [k for k in (key_x, key_y) if k not in board.column_names]
    if missing:
        varied = ", ".join(board_varied(board)) or "none"
        raise KeyError(f"{', '.join(missing)} not varied in these runs (varied: {varied})")
    xv, yv, vals = (board[c].to_pylist() for c in (key_x, key_y, value))
    xs, ys = sorted(set(xv), key=_sort_key), sorted(set(yv), key=_sort_key)
    cells: dict[tuple[int, int], list[float]] = {}
    for x, y, v in zip(xv, yv, vals):
        if v is not None and math.isfinite(v):
            cells.setdefault((ys.index(y), xs.index(x)), []).append(v)
    grid = np.full((len(ys), len(xs)), np.nan)
    counts = np.zeros((len(ys), len(xs)), int)
    fn = {"mean": np.mean, "max": np.max, "min": np.min}[agg]
    for (i, j), v in cells.items():
        grid[i, j], counts[i, j] = fn(v), len(v)
    return xs, ys, grid, counts


def plot_heatmap(board: pa.Table, key_x: str, key_y: str, out: str | os.PathLike | None = None, *,
                 value: str = "best", agg: str = "mean", title: Optional[str] = None,
                 over: Optional[Sequence[str]] = None):
    """Heat map of the best monitored metric over two config keys, aggregated (`agg`, default mean)
    over the other keys (`over`, named in the title; default the board's other varied keys); cells
    annotated with the value (and run count when above 1), combinations without runs left blank.
    Runs of every status count, unfinished ones with their best so far. Axes: x = key_x, y = key_y,
    tick labels = their values. Returns the Figure."""
    xs, ys, grid, counts = heatmap_table(board, key_x, key_y, value, agg)
    monitor = board["monitor"][0].as_py() if board.num_rows else value
    mode = board_mode(board, monitor)
    fig = _figure(max(5.0, 1.1 * len(xs) + 2.5), max(3.5, 0.6 * len(ys) + 2))
    ax = fig.subplots()
    import matplotlib

    # combinations nobody ran stay blank
    cmap = matplotlib.colormaps["viridis" if mode == "max" else "viridis_r"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(xs)), [_cell(x) if x is not None else "None" for x in xs],
                  rotation=30 if len(xs) > 6 else 0)
    ax.set_yticks(range(len(ys)), [_cell(y) if y is not None else "None" for y in ys])
    ax.set_xlabel(key_x)
    ax.set_ylabel(key_y)
    finite = grid[np.isfinite(grid)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(grid[i, j]):
                text = f"{grid[i, j]:.3f}" + (f"\nn={counts[i, j]}" if counts[i, j] > 1 else "")
                light = (grid[i, j] < mid) == (mode == "max")  # dark end of viridis: white text
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    label = "best" if value == "best" else value
    fig.colorbar(im, ax=ax, label=f"{label} {monitor}")
    others = [k for k in board_varied(board) if k not in (key_x, key_y)] if over is None else list(over)
    over = f" over {', '.join(others)}" if others else ""
    ax.set_title(title or f"{agg} of best {monitor}{over}", fontsize=10)
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


def plot_confusion_matrix(results: dict | str | os.PathLike, out: str | os.PathLike | None = None, *,
                          normalize: bool = False, title: Optional[str] = None):
    """A run's test confusion matrix (test_results.json or its dict): rows true classes, columns
    predictions, class names on both axes; `normalize` divides each row by its count. Returns the Figure."""
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    cm = np.asarray(results["confusion_matrix"], dtype=float)
    names = results.get("class_names") or [str(i) for i in range(len(cm))]
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(cm)
    size = min(14.0, max(5.0, 0.45 * n + 2))
    fig = _figure(size + 1, size)
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    step = max(1, n // 40)  # keep tick labels readable for 100+ classes
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90 if max(map(len, names)) > 3 else 0)
    ax.set_yticks(ticks, [names[i] for i in ticks])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        top = cm.max() or 1
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}", ha="center", va="center",
                            fontsize=7, color="white" if cm[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, label="fraction of the true class" if normalize else "samples")
    ax.set_title(title or f"confusion matrix ({results.get('split', 'test')}"
                 f"{', row-normalised' if normalize else ''})", fontsize=10)
    fig.tight_layout()
    if out is not None:
        _save(fig, out)
    return fig


# ============================================================================ the whole analysis
