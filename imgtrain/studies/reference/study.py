"""A reference study's file (jobs/studies/SNNN.yaml; the format is in the package's notes): its
dataclasses (Study, Experiment, Recipe, Number), finding it by id, and loading it with every value
checked (StudyError names file:line)."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[3]  # imgtrain/studies/reference/study.py -> the repository
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


def _cell_text(cell: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in cell.items()) + "}"


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

