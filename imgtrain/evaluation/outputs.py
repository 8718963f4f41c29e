"""An evaluation's files (metrics.json, predictions.parquet, per_class.csv, figures) and the lines the
CLIs print about it.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgtrain.evaluation.load import LoadedModel
from imgtrain.evaluation.metrics import EvalResult, confusion, per_class, predictions_table
from imgtrain.evaluation.plots import plot_confusion, plot_scores
from imgtrain.logs import atomic_write_bytes, atomic_write_text, resolve_root


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def default_out(loaded: LoadedModel, split: str, kind: str = "eval", suffix: str = "") -> Path:
    """RUN_DIR/<kind>/<data set>-<split>-<checkpoint><suffix>, or
    <output root>/<kind>/<config name>-<data set>-<split><suffix>."""
    src, data = loaded.source, loaded.info.manifest.get("name") or loaded.info.root.name
    if src.run_dir is not None:
        return src.run_dir / kind / f"{data}-{split}-{Path(src.tag).stem}{suffix}"
    return resolve_root(loaded.cfg.output.root) / kind / f"{loaded.cfg.name}-{data}-{split}{suffix}"


def most_confused(cm: np.ndarray, names: Sequence[str], top: int = 5) -> list[tuple[str, str, int]]:
    off = np.asarray(cm).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(names[i], names[j], int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j]]


def write_outputs(result: EvalResult, out: str | Path) -> dict[str, Path]:
    """metrics.json, predictions.parquet, and confusion_matrix.png + per_class.csv (classification) or
    scores.png (score distributions), each written atomically. Call on rank 0."""
    out = Path(out)
    loaded, src = result.loaded, result.loaded.source
    files: dict[str, Path] = {}
    table = predictions_table(result)
    record = {
        "split": result.split, "data": str(loaded.info.root), "dataset": loaded.info.manifest.get("name"),
        "task": loaded.info.task, "run_dir": str(src.run_dir) if src.run_dir else None,
        "config": str(src.config_file) if src.config_file else None, "model": loaded.cfg.model.name,
        "checkpoint": str(src.weights), "weights": loaded.weights_kind, "model_outputs": loaded.num_outputs,
        "mean": list(loaded.mean), "std": list(loaded.std), "metrics": result.metrics,
        "class_names": result.class_names,
        "class_map": loaded.class_map.tolist() if loaded.class_map is not None else None,
        "skipped": result.bad, "notes": loaded.notes, "world_size": result.world,
        "seconds": round(result.seconds, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if loaded.info.task == "classification":
        cm = confusion(result)
        rows = per_class(result)
        record.update(confusion_matrix=cm.tolist(), per_class=rows)
        files["per_class"] = write_csv(rows, out / "per_class.csv")
        title = f"{loaded.cfg.model.name} on {record['dataset']} {result.split} (acc1 {result.metrics['acc1']:.4f})"
        files["confusion"] = plot_confusion(cm, result.class_names, out / "confusion_matrix.png", title)
    else:
        files["scores"] = plot_scores(table["true_mean"].to_numpy(), table["pred_mean"].to_numpy(),
                                      out / "scores.png", f"{loaded.cfg.model.name} on {record['dataset']} "
                                      f"{result.split} (srcc {result.metrics['srcc']:.3f})")
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    files["predictions"] = atomic_write_bytes(out / "predictions.parquet", buf.getvalue())
    files["metrics"] = atomic_write_text(out / "metrics.json", json.dumps(_json_safe(record), indent=1))
    return files


def write_csv(rows: list[dict], path: str | Path) -> Path:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return atomic_write_text(path, buf.getvalue())


def summary_lines(result: EvalResult, files: dict[str, Path]) -> list[str]:
    """What the CLI prints: the metrics, the weakest classes, the most frequent confusions, the files."""
    m = result.metrics
    shown = " ".join(f"{k} {v:.4f}" for k, v in m.items() if "/" not in k and k not in ("samples", "skipped"))
    lines = [f"{result.split}: {shown} | {int(m['samples'])} images, {int(m['skipped'])} skipped, "
             f"{result.seconds:.1f}s on {result.world} process(es)"]
    if result.loaded.class_map is not None:
        lines.append(f"over all {result.loaded.num_outputs} model outputs: " +
                     " ".join(f"{k[5:]} {m[k]:.4f}" for k in ("full/acc1", "full/acc5", "full/loss")))
    if result.loaded.info.task == "classification":
        rows = [r for r in per_class(result) if r["samples"]]
        worst = sorted(rows, key=lambda r: (r["top1"], r["class"]))[:5]
        lines.append("weakest classes (top-1): " + ", ".join(f"{r['name']} {r['top1']:.2f}" for r in worst))
        pairs = most_confused(confusion(result), result.class_names)
        if pairs:
            lines.append("most confused (true -> predicted): " + ", ".join(f"{a} -> {b} ({c})" for a, b, c in pairs))
    for name, path in files.items():
        lines.append(f"  {name:<12} {path}")
    return lines
