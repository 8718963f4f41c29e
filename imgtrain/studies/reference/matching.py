"""Our side of a study's numbers: the runs (imgtrain.analysis.load_runs) that come from an experiment's
recipe and cell, the one picked, our value of a number in it (at the study's epoch, on the logged split
that holds the study's data), and jobs/evaluate.py's evaluations for models only evaluated."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain.studies.reference.study import UNITS, Experiment, Number


# ============================================================================ matching runs

def _same(have: Any, want: Any) -> bool:
    if have is None or want is None:
        return have is None and want is None
    if isinstance(want, bool) or isinstance(have, bool):
        return have == want
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(want, (list, dict)):  # summaries keep containers as JSON text
        have = json.loads(have) if isinstance(have, str) else have
        return json.dumps(have, sort_keys=True, default=str) == json.dumps(want, sort_keys=True, default=str)
    return str(have) == str(want)


def runs_of(experiment: Experiment, runs: Sequence, names: Optional[dict[str, str]] = None) -> list:
    """The RunInfos (imgtrain.analysis) of `runs` that come from the experiment's recipe and cell."""
    recipe = experiment.recipe
    if recipe is None:
        return []
    name = (names or {}).get(recipe.key) or recipe.run_name()
    cell = experiment.match_cell()
    out = []
    for r in runs:
        cfg = r.config
        sweep = r.sweep or cfg.get("cfg.output.sweep")
        if recipe.kind == "grid":
            ok = sweep == name
        elif recipe.kind == "config":
            ok = cfg.get("cfg.name") == name
        else:
            ok = cfg.get("cfg.name") == name or sweep == name
        if ok and all(_same(cfg.get(f"cfg.{k}"), v) for k, v in cell.items()):
            out.append(r)
    return out


def _pick(matches: list):
    def key(r):
        try:
            mtime = max((p.stat().st_mtime for p in r.path.iterdir()), default=0.0)
        except OSError:
            mtime = 0.0
        return (r.status == "DONE", mtime, r.run_id)

    return max(matches, key=key) if matches else None


# ============================================================================ our values

def _logged_split(run, our_split: str) -> list[str]:
    """The logged splits whose data is `our_split`, per-epoch ones first: "val" holds data.val_split's
    data at every evaluation, "test" one evaluation of best.pt on data.test_split's."""
    if our_split == "train":
        return ["train"]
    out = []
    for logged in ("val", "test"):
        key = f"cfg.data.{logged}_split"
        data = run.config[key] if key in run.config else logged
        if data == our_split:
            out.append(logged)
    return out


def _best_epoch(runs, run) -> Optional[int]:
    from imgtrain import analysis

    if run.summary and run.summary.get("best_epoch") is not None:
        return int(run.summary["best_epoch"])
    has_val = run.config.get("cfg.data.val_split", "val") is not None
    best = analysis.best_values(runs, {run.run_id: analysis.monitor_of(run, has_val)})
    return best[run.run_id][1] if run.run_id in best else None


def our_value(number: Number, run, runs) -> tuple[Optional[float], str]:
    """(our value in the study's terms, where it came from or why there is none)."""
    if number.our_split is None:
        return None, "not compared" + (f": {number.notes}" if number.notes else "")
    if UNITS.get(number.unit, 1.0) is None:
        return None, f"not compared: unit {number.unit}"
    summary = run.summary or {}
    rows = runs.rows(run.run_id)
    if number.our_split == "run":
        if number.metric == "time":
            if summary.get("wall_s") is None:
                return None, "no summary yet (wall_s)"
            return float(summary["wall_s"]) / UNITS[number.unit], f"summary wall_s / {UNITS[number.unit]:g}"
        if summary.get("epochs") is not None:
            return float(summary["epochs"]), "summary epochs"
        epochs = rows["epoch"].to_pylist()
        return (float(max(epochs) + 1), "last logged epoch + 1") if epochs else (None, "no metric rows")
    splits = _logged_split(run, number.our_split)
    if not splits:
        return None, f"no logged split holds the {number.our_split} data"
    from imgtrain.analysis.board import _select

    tried = []
    for split in splits:
        t = _select(rows, split, number.metric, columns=("epoch", "step", "value"))
        if t.num_rows == 0:
            tried.append(f"{split}/{number.metric}")
            continue
        epochs, values = t["epoch"].to_pylist(), t["value"].to_pylist()  # in step order
        best_pt = " (best.pt)" if split == "test" else ""
        if number.at == "final" or split == "test":  # the test rows: one evaluation, of the best weights
            return float(values[-1]), f"{split}/{number.metric} epoch {epochs[-1] + 1}{best_pt}"
        epoch = _best_epoch(runs, run) if number.at == "best" else int(number.at) - 1
        if epoch is None:
            return None, "no best epoch yet"
        hits = [v for e, v in zip(epochs, values) if e == epoch]
        if not hits:
            return None, (f"no {split}/{number.metric} at epoch {epoch + 1} "
                          f"(logged: {min(epochs) + 1}-{max(epochs) + 1})")
        best = " (best)" if number.at == "best" else ""
        return float(hits[-1]), f"{split}/{number.metric} epoch {epoch + 1}{best}"
    return None, f"{' / '.join(tried)} not logged"


# ============================================================================ evaluations

EVALUATIONS = "evaluations"  # ROOT/evaluations/<name>/metrics.json: `jobs/evaluate.py ... --out ROOT/evaluations/<name>`


@dataclass
class Evaluation:
    """A `jobs/evaluate.py` result (a model evaluated, nothing trained: S002's VGG-19 as is)."""
    name: str
    record: dict

    @property
    def run_id(self) -> str:
        return f"{EVALUATIONS}/{self.name}"


def load_evaluations(root: Path) -> list[Evaluation]:
    out = []
    for path in sorted((root / EVALUATIONS).glob("*/metrics.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
            out.append(Evaluation(path.parent.name, record))
    return out


def evaluations_of(experiment: Experiment, evaluations: Sequence[Evaluation]) -> list[Evaluation]:
    """The evaluations of a config recipe (by its file name) on the cell's data set (data.path)."""
    recipe = experiment.recipe
    if recipe is None or recipe.kind != "config":
        return []
    data = experiment.match_cell().get("data.path")
    out = []
    for e in evaluations:
        config, evaluated = e.record.get("config"), e.record.get("data")
        if not config or Path(config).name != Path(recipe.target).name:
            continue
        if data is not None and (evaluated is None or Path(evaluated).resolve() != Path(data).resolve()
                                 and not str(evaluated).rstrip("/").endswith(str(data).rstrip("/"))):
            continue
        out.append(e)
    return out


def evaluation_value(number: Number, evaluation: Evaluation) -> tuple[Optional[float], str]:
    """Our value from an evaluation: its split's metrics; the full-output one (`full/acc1`: over every output
    of a 1000-way head, as S002 counts) when the evaluation mapped classes onto a wider head."""
    if number.our_split is None:
        return None, "not compared" + (f": {number.notes}" if number.notes else "")
    if UNITS.get(number.unit, 1.0) is None:
        return None, f"not compared: unit {number.unit}"
    split = evaluation.record.get("split")
    if number.our_split != split:
        return None, f"the evaluation is of split {split}, not {number.our_split}"
    metrics = evaluation.record["metrics"]
    for key in (f"full/{number.metric}", number.metric):
        if metrics.get(key) is not None:
            return float(metrics[key]), f"evaluation {key}"
    return None, f"{number.metric} not in the evaluation"
