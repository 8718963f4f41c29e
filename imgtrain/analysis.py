"""Runs -> tables and figures (DESIGN §3 metrics). Importable from notebooks; jobs/analyze.py wraps it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def metric_series(table: pa.Table, run_id: str, split: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, epoch, value) of one metric of one run, in step order."""
    mask = pc.and_(pc.and_(pc.equal(table["run_id"], run_id), pc.equal(table["split"], split)),
                   pc.equal(table["metric"], metric))
    t = table.filter(mask).sort_by("step")
    return (t["step"].to_numpy(), t["epoch"].to_numpy(), t["value"].to_numpy())


def plot_learning_curves(table: pa.Table, run_id: str, out: str | Path, metric: str = "acc1") -> Path:
    """Train loss per step and val loss/`metric` per epoch for one run, as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    step, _, loss = metric_series(table, run_id, "train", "loss")
    ax_loss.plot(step, loss, label="train loss", alpha=0.7)
    vstep, _, vloss = metric_series(table, run_id, "val", "loss")
    if len(vstep):
        ax_loss.plot(vstep, vloss, "o-", label="val loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    mstep, mepoch, mval = metric_series(table, run_id, "val", metric)
    if len(mstep):
        ax_metric.plot(mepoch + 1, mval, "o-", label=f"val {metric}")
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    fig.suptitle(run_id)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
