"""The reference studies' reported numbers (jobs/studies/S000.yaml ... S004.yaml) and our runs beside them.

    study = load_study("S004")                 # validated; StudyError names file:line on a bad file
    cmp = compare(study, root)                 # rows: study value, ours, difference, run id
    files = write_comparison(cmp, out_dir)     # <out>/S004.csv + one PNG per experiment group

A study file (YAML):

    study: S004                                # = the file name's stem
    title: ...
    source: 004_4f16f69e87ac1b68.txt           # the original document's file name
    notes: ...                                 # optional
    recipes:                                   # every recipe of the study, in one place
      mlp: {grid: jobs/grids/s004_mlp.yaml}    # runs of the sweep named in the grid file (`name:`)
      cnn_base: {config: jobs/configs/s004_cnn_base.yaml}   # runs whose config `name:` is the file's
      bow: {name: s001_bow, command: "python jobs/bow.py ..."}   # runs named so by another tool
      x: {config: ..., cell: {data.path: ...}} # a recipe may also fix config values the run must have
    experiments:
      - id: mlp_sgd_relu_1                     # short, stable, unique in the file
        group: mlp                             # optional: one plot per group (default: the id)
        description: ...
        recipe: mlp                            # optional (no recipe: listed, never matched)
        cell: {optim.name: sgd, model.depth: 1}   # config values a run must have (grid cell)
        where: "1.1.4 Resultados"             # optional default for its numbers
        notes: ...                             # optional
        numbers:
          - metric: acc1                       # OUR metric name (acc1, acc5, loss, epoch_loss, mse, mae, time, ...)
            study_metric: val_accuracy         # optional: the name the study prints
            split: val                         # the split as the study names it
            our_split: test                    # train | val | test | run (time, epochs) | null (not comparable)
            printed: "0,5414"                  # exactly as printed (decimal comma kept)
            value: 0.5414                      # the parsed number, in the printed unit
            unit: "%"                          # optional: fraction (default), %, /100, count, s, min, h, d, not stated
            at: final                          # optional: final (default) | best (the run's best epoch) | N (1-based)
            where: "Table 1"                   # optional (else the experiment's)
            notes: "text says 0.46"            # optional

Runs are the analysis module's (imgtrain.analysis.load_runs: config, summary, Parquet metric rows). A run
matches an experiment when it comes from the experiment's recipe (grid: the run's sweep is the grid's
name; config: the run config's `name:` is the recipe config's; name: either) and has every value of the
recipe's and the experiment's `cell`. Several matching runs: a DONE one, the most recently changed.
Our value: the metric on the logged split whose data is `our_split` (a run with data.val_split=test
logs the test data per epoch under "val"; the "test" rows are one evaluation of best.pt), at the epoch
the study reports (`at`). Percentages are compared as fractions, times in the study's unit.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
STUDIES_DIR = REPO / "jobs" / "studies"

OUR_SPLITS = ("train", "val", "test", "run")
UNITS = {None: 1.0, "fraction": 1.0, "%": 100.0, "/100": 100.0, "count": 1.0, "not stated": None,
         "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_TIME_UNITS = ("s", "min", "h", "d")

_TOP = {"study": True, "title": True, "source": True, "experiments": True, "notes": False, "recipes": False}
_RECIPE = {"config": False, "grid": False, "name": False, "cell": False, "command": False, "notes": False}
_EXPERIMENT = {"id": True, "description": True, "numbers": True, "group": False, "recipe": False, "cell": False,
               "where": False, "notes": False}
_NUMBER = {"metric": True, "split": True, "our_split": True, "printed": True, "value": True, "study_metric": False,
           "unit": False, "at": False, "where": False, "notes": False}
_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


class StudyError(ValueError):
    """A problem in a study file (the message names file:line) or an unknown study id."""


@dataclass
class Recipe:
    key: str
    kind: str  # config | grid | name
    target: str  # the path (config, grid) or the run name
    cell: dict[str, Any] = field(default_factory=dict)
    command: Optional[str] = None

    def exists(self) -> bool:
        return self.kind == "name" or (REPO / self.target).is_file()

    def run_name(self) -> str:
        """The name runs of this recipe carry: the recipe file's `name:` (its stem while it is missing)."""
        if self.kind == "name":
            return self.target
        try:
            data = yaml.safe_load((REPO / self.target).read_text()) or {}
            name = data.get("name") if isinstance(data, dict) else None
        except (OSError, yaml.YAMLError):
            name = None
        return str(name) if name else Path(self.target).stem

    def describe(self) -> str:
        return f"{self.kind} {self.target}" + (f" {_cell_text(self.cell)}" if self.cell else "")


@dataclass
class Number:
    metric: str
    split: str
    our_split: Optional[str]
    printed: str
    value: float
    study_metric: Optional[str] = None
    unit: Optional[str] = None
    at: Any = "final"
    where: Optional[str] = None
    notes: Optional[str] = None
    line: int = 0

    @property
    def comparable(self) -> bool:
        return self.our_split is not None and UNITS.get(self.unit) is not None

    def scaled(self) -> float:
        """The study's value in our terms: a percentage as a fraction; times stay in their unit."""
        if self.unit in ("%", "/100"):
            return self.value / 100.0
        return self.value


@dataclass
class Experiment:
    id: str
    description: str
    numbers: list[Number]
    group: str
    recipe: Optional[Recipe] = None
    cell: dict[str, Any] = field(default_factory=dict)
    where: Optional[str] = None
    notes: Optional[str] = None
    line: int = 0

    def match_cell(self) -> dict[str, Any]:
        return {**(self.recipe.cell if self.recipe else {}), **self.cell}


@dataclass
class Study:
    id: str
    title: str
    source: str
    path: Path
    experiments: list[Experiment]
    recipes: dict[str, Recipe]
    notes: Optional[str] = None


# ============================================================================ loading

def known_ids(directory: str | os.PathLike | None = None) -> list[str]:
    d = Path(directory) if directory is not None else STUDIES_DIR
    return sorted(p.stem for p in d.glob("*.yaml"))


def study_path(study_id: str, directory: str | os.PathLike | None = None) -> Path:
    """The file of a study id (case-insensitive); StudyError listing the known ids for an unknown one."""
    d = Path(directory) if directory is not None else STUDIES_DIR
    ids = known_ids(d)
    hit = next((i for i in ids if i.lower() == str(study_id).lower()), None)
    if hit is None:
        raise StudyError(f"unknown study {study_id!r}; known studies: {', '.join(ids) or '(none in ' + str(d) + ')'}")
    return d / f"{hit}.yaml"


def load_study(study: str | os.PathLike, directory: str | os.PathLike | None = None) -> Study:
    """A study by id (S004) or by path to its YAML file, validated."""
    path = Path(study)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = study_path(str(study), directory)
    return parse_study(path.read_text(), path)


def load_all(directory: str | os.PathLike | None = None) -> list[Study]:
    return [load_study(i, directory) for i in known_ids(directory)]


def _loader():
    from imgtrain.config import _Loader  # safe_load that also reads 1e-3 as a float

    return _Loader


def parse_study(text: str, path: str | os.PathLike = "<study>") -> Study:
    path = Path(path)
    try:
        node = yaml.compose(text, Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyError(f"{path}{line}: invalid YAML: {problem}") from None
    p = _Parser(path)
    if node is None:
        raise StudyError(f"{path}:1: empty study file")
    top = p.mapping(node, _TOP, "study file")
    sid = p.string(top["study"], "study")
    if sid != path.stem and path.name != "<study>":
        raise StudyError(f"{p.at(top['study'])}: study {sid!r} does not match the file name {path.name}")
    recipes: dict[str, Recipe] = {}
    if "recipes" in top:
        rnode = top["recipes"]
        if not isinstance(rnode, yaml.MappingNode):
            raise StudyError(f"{p.at(rnode)}: recipes: a mapping of name -> {{config|grid|name: ...}}")
        for knode, vnode in rnode.value:
            key = knode.value
            r = p.mapping(vnode, _RECIPE, f"recipe {key}")
            kinds = [k for k in ("config", "grid", "name") if k in r]
            if len(kinds) != 1:
                raise StudyError(f"{p.at(vnode)}: recipe {key}: exactly one of config, grid, name (got "
                                 f"{', '.join(kinds) or 'none'})")
            recipes[key] = Recipe(key, kinds[0], p.string(r[kinds[0]], kinds[0]),
                                  p.cell(r["cell"]) if "cell" in r else {},
                                  p.string(r["command"], "command") if "command" in r else None)
    enode = top["experiments"]
    if not isinstance(enode, yaml.SequenceNode) or not enode.value:
        raise StudyError(f"{p.at(enode)}: experiments: a non-empty list")
    experiments, seen = [], {}
    for xnode in enode.value:
        x = p.mapping(xnode, _EXPERIMENT, "experiment")
        xid = p.string(x["id"], "id")
        if not _ID.match(xid):
            raise StudyError(f"{p.at(x['id'])}: experiment id {xid!r}: letters, digits, '_', '.', '-' only")
        if xid in seen:
            raise StudyError(f"{p.at(x['id'])}: duplicate experiment id {xid!r} (first at line {seen[xid]})")
        seen[xid] = x["id"].start_mark.line + 1
        recipe = None
        if "recipe" in x and not _is_null(x["recipe"]):
            rkey = p.string(x["recipe"], "recipe")
            if rkey not in recipes:
                raise StudyError(f"{p.at(x['recipe'])}: experiment {xid}: unknown recipe {rkey!r} "
                                 f"(recipes: {', '.join(recipes) or 'none'})")
            recipe = recipes[rkey]
        where = p.string(x["where"], "where") if "where" in x else None
        nnode = x["numbers"]
        if not isinstance(nnode, yaml.SequenceNode) or not nnode.value:
            raise StudyError(f"{p.at(nnode)}: experiment {xid}: numbers: a non-empty list")
        numbers = [p.number(n, where) for n in nnode.value]
        experiments.append(Experiment(
            xid, p.string(x["description"], "description"), numbers,
            p.string(x["group"], "group") if "group" in x else xid, recipe,
            p.cell(x["cell"]) if "cell" in x else {}, where,
            p.string(x["notes"], "notes") if "notes" in x else None, xnode.start_mark.line + 1))
    return Study(sid, p.string(top["title"], "title"), p.string(top["source"], "source"), path, experiments,
                 recipes, p.string(top["notes"], "notes") if "notes" in top else None)


def _is_null(node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


class _Parser:
    """Checks nodes of a composed YAML document; every error names file:line."""

    def __init__(self, path: Path):
        self.path = path
        self.constructor = _loader()("")

    def at(self, node) -> str:
        return f"{self.path}:{node.start_mark.line + 1}"

    def value(self, node) -> Any:
        return self.constructor.construct_object(node, deep=True)

    def mapping(self, node, keys: dict[str, bool], what: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise StudyError(f"{self.at(node)}: {what}: expected a mapping")
        out = {}
        for k, v in node.value:
            if k.value not in keys:
                raise StudyError(f"{self.at(k)}: {what}: unknown key {k.value!r} (known: {', '.join(keys)})")
            out[k.value] = v
        missing = [k for k, required in keys.items() if required and k not in out]
        if missing:
            raise StudyError(f"{self.at(node)}: {what}: missing key{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}")
        return out

    def string(self, node, key: str) -> str:
        v = self.value(node)
        if not isinstance(v, str) or not v:
            raise StudyError(f"{self.at(node)}: {key}: expected a non-empty string, got {v!r}")
        return v

    def cell(self, node) -> dict[str, Any]:
        v = self.value(node)
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise StudyError(f"{self.at(node)}: cell: a mapping of config key -> value")
        return v

    def number(self, node, where: Optional[str]) -> Number:
        n = self.mapping(node, _NUMBER, "number")
        metric = self.string(n["metric"], "metric")
        split = self.string(n["split"], "split")
        our = self.value(n["our_split"])
        if our is not None and our not in OUR_SPLITS:
            raise StudyError(f"{self.at(n['our_split'])}: our_split: one of {', '.join(OUR_SPLITS)} or null, "
                             f"got {our!r}")
        printed = self.value(n["printed"])
        if not isinstance(printed, str) or not n["printed"].style:  # quoted: "0,5414" stays a string
            raise StudyError(f"{self.at(n['printed'])}: printed: the value as printed, quoted (e.g. \"0,5414\"), "
                             f"got {printed!r}")
        value = self.value(n["value"])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StudyError(f"{self.at(n['value'])}: value: a number, got {value!r}")
        unit = self.value(n["unit"]) if "unit" in n else None
        if unit not in UNITS:
            raise StudyError(f"{self.at(n['unit'])}: unit: one of {', '.join(str(u) for u in UNITS if u)}, "
                             f"got {unit!r}")
        at = self.value(n["at"]) if "at" in n else "final"
        if not (at in ("final", "best") or (isinstance(at, int) and not isinstance(at, bool) and at >= 1)):
            raise StudyError(f"{self.at(n['at'])}: at: final, best or an epoch number (1-based), got {at!r}")
        if our == "run" and metric not in ("time", "epochs"):
            raise StudyError(f"{self.at(n['our_split'])}: our_split run is for time and epochs, not {metric!r}")
        if our == "run" and metric == "time" and unit not in _TIME_UNITS:
            raise StudyError(f"{self.at(n['unit'])}: a compared time needs a unit ({', '.join(_TIME_UNITS)})")
        opt = {k: self.string(n[k], k) for k in ("study_metric", "where", "notes") if k in n}
        return Number(metric, split, our, printed, float(value), opt.get("study_metric"), unit, at,
                      opt.get("where", where), opt.get("notes"), node.start_mark.line + 1)


# ============================================================================ matching runs

def _cell_text(cell: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in cell.items()) + "}"


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
