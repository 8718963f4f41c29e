"""A study beside our runs: one row per reported number (study value, ours, difference, run id), and
its output: a CSV, one bar plot per experiment group, a Markdown table."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from imgtrain.studies.reference.matching import (_pick, evaluation_value, evaluations_of, load_evaluations,
                                                 our_value, runs_of)
from imgtrain.studies.reference.study import UNITS, Experiment, Recipe, Study


# ============================================================================ comparison

COLUMNS = ("experiment", "group", "metric", "study_metric", "split", "our_split", "at", "printed", "unit",
           "study", "ours", "difference", "run_id", "status", "runs", "source", "where", "notes")


@dataclass
class Comparison:
    study: Study
    root: Path
    rows: list[dict[str, Any]]
    no_run: list[Experiment]  # a recipe, but no run of it under root yet
    no_recipe: list[Experiment]  # nothing to run (qualitative or bookkeeping numbers)
    missing_recipes: list[Recipe]  # recipe files that are not in the repository
    warnings: list[str] = field(default_factory=list)


def compare(study: Study, root: str | os.PathLike) -> Comparison:
    """Every number of `study` beside our value from the runs under `root` (imgtrain.analysis.load_runs)."""
    from imgtrain import analysis

    root = Path(root)
    runs = analysis.load_runs(root)
    evaluations = load_evaluations(root)
    names = {k: r.run_name() for k, r in study.recipes.items()}
    rows, no_run, no_recipe = [], [], []
    for x in study.experiments:
        matches = runs_of(x, runs.runs, names)
        run = _pick(matches)
        evaluation = None
        if run is None:  # a model only evaluated (jobs/evaluate.py --out ROOT/evaluations/NAME)
            evaluated = evaluations_of(x, evaluations)
            evaluation, matches = (evaluated[-1] if evaluated else None), evaluated
        if x.recipe is None:
            no_recipe.append(x)
        elif run is None and evaluation is None:
            no_run.append(x)
        for n in x.numbers:
            study_value = n.scaled()
            if run is not None:
                ours, source = our_value(n, run, runs)
            elif evaluation is not None:
                ours, source = evaluation_value(n, evaluation)
            else:
                ours, source = None, "no run" if x.recipe else "no recipe"
            rows.append({
                "experiment": x.id, "group": x.group, "metric": n.metric, "study_metric": n.study_metric,
                "split": n.split, "our_split": n.our_split, "at": n.at, "printed": n.printed, "unit": n.unit,
                "study": study_value, "ours": ours,
                "difference": ours - study_value if ours is not None and n.comparable else None,
                "run_id": run.run_id if run else (evaluation.run_id if evaluation else None),
                "status": run.status if run else ("EVALUATED" if evaluation else None),
                "runs": len(matches), "source": source, "where": n.where, "notes": n.notes})
    missing = [r for r in study.recipes.values() if not r.exists()]
    return Comparison(study, root, rows, no_run, no_recipe, missing, list(runs.warnings))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def write_csv(cmp: Comparison, path: str | os.PathLike) -> Path:
    from imgtrain.logs import atomic_write_bytes

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in cmp.rows:
        w.writerow([_fmt(r[c]) for c in COLUMNS])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue().encode())


def plot_group(cmp: Comparison, group: str, out: str | os.PathLike) -> Optional[Path]:
    """Study vs ours bars for one experiment group: one panel per (metric, our split, unit), one bar pair
    per experiment. None when the group has no comparable number."""
    from imgtrain.analysis.plots import _figure, _save

    panels: dict[tuple, list[dict]] = {}
    for r in cmp.rows:
        if r["group"] == group and r["our_split"] is not None and UNITS.get(r["unit"]) is not None:
            key = (r["metric"], r["our_split"], r["unit"] if r["unit"] not in ("%", "/100") else None)
            panels.setdefault(key, []).append(r)
    if not panels:
        return None
    n = len(panels)
    width = max(6.0, 0.45 * max(len(v) for v in panels.values()) + 2)
    fig = _figure(width, 2.8 * n)
    for i, ((metric, split, unit), rows) in enumerate(panels.items()):
        ax = fig.add_subplot(n, 1, i + 1)
        xs = range(len(rows))
        labels = [r["experiment"] + ("" if r["at"] == "final" else f" @{r['at']}") for r in rows]
        ax.bar([x - 0.2 for x in xs], [r["study"] for r in rows], 0.4, label=f"study ({cmp.study.id})", color="#888888")
        ours = [(x, r["ours"]) for x, r in zip(xs, rows) if r["ours"] is not None]
        ax.bar([x + 0.2 for x, _ in ours], [v for _, v in ours], 0.4, label="ours", color="#1f77b4")
        for x, r in zip(xs, rows):
            if r["ours"] is None:
                ax.text(x + 0.2, 0, "no run" if r["run_id"] is None else "n/a", rotation=90, ha="center",
                        va="bottom", fontsize=7, color="#aa0000")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"{split}/{metric}" + (f" ({unit})" if unit and unit not in ("fraction", "count") else ""))
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_title(f"{cmp.study.id} {group}: study vs ours")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def write_comparison(cmp: Comparison, out: str | os.PathLike, plots: bool = True) -> dict[str, Any]:
    """<out>/<study>.csv and <out>/<study>_<group>.png (groups with a comparable number)."""
    out = Path(out)
    files: dict[str, Any] = {"csv": write_csv(cmp, out / f"{cmp.study.id}.csv"), "plots": []}
    if plots:
        for group in dict.fromkeys(r["group"] for r in cmp.rows):
            if not any(r["group"] == group and r["run_id"] for r in cmp.rows):
                continue  # nothing of ours to show yet
            p = plot_group(cmp, group, out / f"{cmp.study.id}_{_safe(group)}.png")
            if p is not None:
                files["plots"].append(p)
    return files


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _short(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.4e}"
    return str(v)


def table_text(cmp: Comparison, only_ours: bool = True) -> str:
    """The comparison as a Markdown table (by default only rows with a run)."""
    cols = ("experiment", "metric", "split", "our_split", "at", "printed", "study", "ours", "difference", "run_id")
    rows = [r for r in cmp.rows if r["run_id"] or not only_ours]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in ("study", "ours", "difference") else "---"
                                                             for c in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_short(r[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines) + "\n"
