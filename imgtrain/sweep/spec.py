"""Sweep files (DESIGN §7): parse, validate and expand into cells, before anything is submitted.

A sweep file names a base config and how cells differ from it:

    name: cifar10_mlp                      # runs land in <root>/runs/<name>-<cell hash>
    config: jobs/configs/cifar10_mlp.yaml  # base config (relative to the current dir or this file)
    overrides: {trainer.epochs: 50}        # applied to every cell
    grid: {optim.name: [sgd, adam], model.depth: [1, 2, 3]}   # cartesian product
    zip: {model.name: [a, b], model.pretrained_path: [x, y]}  # varied together (or a list of such groups)
    exclude: [{optim.name: sgd, model.depth: 3}]               # partial cells to drop (grid cells only)
    include: [{optim.name: adamw, model.depth: 2}]             # extra cells
    seeds: [0, 1]                          # or repeats: 2  (trainer.seed of each cell)
    resources: {partition: gpu, gpus_per_node: 1, time: 240}  # SLURM, for every cell
    schedule: halving                      # successive halving (halving.py)
    rungs: [1, 2, 4]                       # epochs of each rung; the last is trainer.epochs
    keep: 0.5                              # fraction kept at each rung

An axis key is a config key (checked with config.check_key: unknown keys are errors with a close
match) or `resources.<name>` (per-cell SLURM resources; cells with different resources go to
different job arrays). Every value is type-checked by building the cell's Config.

A cell's id is a stable hash of its own values (sorted keys, values typed by the config schema,
trainer.seed always included): the run id is `<name>-<id>`, so adding grid values adds cells without
touching the others, and the order of keys in the file does not matter. Shared settings (the base
config, `overrides`, command-line overrides) are not part of the id: change the sweep name when you
change them (status shows such cells as `changed`: the run dir holds another config hash).
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from imgtrain import config as C
from imgtrain import runs

REPO = Path(__file__).resolve().parents[2]

SPEC_KEYS = ("name", "description", "config", "overrides", "grid", "zip", "include", "exclude", "seeds",
             "repeats", "resources", "schedule", "rungs", "keep", "metric", "mode")

# SLURM resources of a cell (submitit names where they exist)
RESOURCE_KEYS = {
    "partition": str, "account": str, "qos": str, "constraint": str,
    "nodes": int, "gpus_per_node": int, "tasks_per_node": int, "cpus_per_task": int,
    "mem_gb": (int, float), "time": (int, str),  # minutes, or a SLURM time string ("1-00:00:00")
    "signal_delay_s": int,  # SIGUSR1 this long before the time limit (the trainer saves and stops)
    "array_parallelism": int,  # tasks of the array running at once
    "max_requeues": int,  # a task stops requeueing itself after this many restarts
    "additional": dict,  # raw sbatch options {"exclusive": true, "gres": "gpu:a100:4"}
    "setup": list,  # shell lines run before the task (module load ..., source venv)
}
RESOURCE_DEFAULTS = {"nodes": 1, "time": 60, "signal_delay_s": 120, "max_requeues": 20}

HALVING_CONTROLLED = "trainer.epochs"
PLACEHOLDER = "???sweep-cell-sets-this"


class SpecError(C.ConfigError):
    """A problem in a sweep file; the message names the file and the key."""


# --------------------------------------------------------------------------- value helpers

_FORMATTED: dict[tuple[str, str], str] = {}


_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./\-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}


def format_value(value: Any) -> str:
    """`value` as command-line text that config.parse_value reads back identically (YAML flow)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    token = (type(value).__name__, json.dumps(value, sort_keys=True, default=str))
    text = _FORMATTED.get(token)
    if text is None:
        text = _FORMATTED[token] = _format_value(value)
    return text


def _format_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    if text.endswith("\n..."):
        text = text[:-4].strip()
    elif text.endswith("..."):
        text = text[:-3].strip()
    try:
        back = C.parse_value(text)
    except yaml.YAMLError:
        back = object()
    if back == value and type(back) is type(value):
        return text
    return json.dumps(value)


def override_text(key: str, value: Any) -> str:
    return f"{key}={format_value(value)}"


def cell_hash(values: dict[str, Any], length: int = 8) -> str:
    """Stable id of a cell: sha256 of its values, keys sorted (file order does not matter)."""
    blob = json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _get(cfg: C.Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


def _with(cfg: C.Config, values: dict[str, Any]) -> C.Config:
    """A copy of `cfg` with typed values set (sections copied, never mutated in place)."""
    sections: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in values.items():
        parts = key.split(".")
        if len(parts) == 1:
            top[key] = value
        else:
            sections.setdefault(parts[0], {})[".".join(parts[1:])] = value
    for sec, items in sections.items():
        obj = getattr(cfg, sec)
        direct, nested = {}, {}
        for k, v in items.items():
            name, _, rest = k.partition(".")
            if rest:  # a key inside a free-form dict (model.kwargs.foo)
                nested.setdefault(name, {})[rest] = v
            else:
                direct[name] = v
        for name, sub in nested.items():
            d = dict(direct.get(name, getattr(obj, name)))
            for k, v in sub.items():
                _set_path(d, k.split("."), v)
            direct[name] = d
        top[sec] = dataclasses.replace(obj, **direct)
    return dataclasses.replace(cfg, **top)


def _set_path(d: dict, parts: list[str], value) -> None:
    for p in parts[:-1]:
        d[p] = dict(d.get(p) or {})
        d = d[p]
    d[parts[-1]] = value


def _resolve_config_path(config: str, spec_path: Optional[Path]) -> Path:
    p = Path(os.path.expanduser(config))
    if p.is_absolute():
        return p
    candidates = [Path.cwd() / p]
    if spec_path is not None:
        candidates.append(spec_path.parent / p)
    candidates.append(REPO / p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return candidates[0]


# --------------------------------------------------------------------------- the spec

@dataclass
class Halving:
    rungs: list[int]
    keep: float
    metric: Optional[str] = None  # default: the cells' trainer.monitor
    mode: Optional[str] = None  # max | min; default from the metric

    @property
    def final(self) -> int:
        return self.rungs[-1]

    def keep_count(self, n: int) -> int:
        return max(1, math.ceil(n * self.keep - 1e-9)) if n else 0


@dataclass
class Cell:
    index: int  # position in the sweep (stable for a given file)
    id: str  # hash of `values`
    run_id: str
    values: dict[str, Any]  # the cell's own config values (typed), trainer.seed included
    resources: dict[str, Any]  # SLURM resources (defaults + sweep + cell)
    config: C.Config  # the resolved config of the cell (halving: trainer.epochs = final rung)
    config_hash: str
    overrides: list[str]  # what jobs/train.py / the job callable gets after --config
    origin: str = "grid"  # grid | include

    def describe(self, skip_seed: bool = False) -> str:
        items = [(k, v) for k, v in self.values.items() if not (skip_seed and k == "trainer.seed")]
        items += [(f"resources.{k}", v) for k, v in self.cell_resources.items()]
        return " ".join(override_text(k, v) for k, v in items)

    cell_resources: dict[str, Any] = field(default_factory=dict)  # resources set by the cell itself


@dataclass
class Sweep:
    name: str
    path: Optional[Path]  # the sweep file
    config_path: Path
    root: Path  # output root: runs in root/runs, sweep records in root/sweeps/<name>
    cells: list[Cell]
    shared_overrides: list[str]  # spec overrides + command-line overrides (+ output.*, halving epochs)
    resources: dict[str, Any]
    halving: Optional[Halving] = None
    axes: list[str] = field(default_factory=list)  # keys that vary between cells
    warnings: list[str] = field(default_factory=list)
    description: Optional[str] = None
    cli_overrides: list[str] = field(default_factory=list)  # the command line's part of shared_overrides

    @property
    def dir(self) -> Path:
        return self.root / "sweeps" / self.name

    def describe(self, cell: Cell) -> str:
        """The cell's values, without trainer.seed when every cell has the same one."""
        return cell.describe(skip_seed="trainer.seed" not in self.axes)

    def run_dir(self, cell: Cell) -> Path:
        return runs.run_path(self.root, cell.run_id)

    def by_id(self) -> dict[str, Cell]:
        return {c.id: c for c in self.cells}


# --------------------------------------------------------------------------- parsing

def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"


def _flat_keys(mapping: dict, where: str, prefix: str = "") -> dict[str, Any]:
    """{'trainer': {'epochs': 5}} and {'trainer.epochs': 5} both give {'trainer.epochs': 5}; free-form
    dict keys (model.kwargs) keep their mapping values."""
    known = C.known_keys()
    out = {}
    for k, v in mapping.items():
        if not isinstance(k, str):
            raise SpecError(f"{where}: keys must be strings, got {k!r}")
        key = f"{prefix}{k}"
        is_section = key not in known and any(x.startswith(key + ".") for x in known)
        if isinstance(v, dict) and is_section and not key.startswith("resources"):
            out.update(_flat_keys(v, where, key + "."))
        else:
            out[key] = v
    return out


def _check_axis_key(key: str, where: str, halving: bool) -> None:
    if key.startswith("resources."):
        name = key.split(".", 1)[1]
        if name not in RESOURCE_KEYS:
            raise SpecError(f"unknown resource '{key}' [{where}]{_suggest(name, list(RESOURCE_KEYS))}")
        return
    if key.startswith("output."):
        raise SpecError(f"{key} [{where}]: output.* is set by the sweep (run id, sweep, cell); use --root "
                        "for the output root")
    try:
        C.check_key(key, where)
    except C.ConfigError as e:
        raise SpecError(str(e)) from None
    if key == "trainer.stop_after_epochs":
        raise SpecError(f"{key} [{where}]: set by the sweep itself (successive halving rungs)")
    if halving and key == HALVING_CONTROLLED:
        raise SpecError(f"{key} [{where}]: with schedule: halving, trainer.epochs is the last rung; it cannot "
                        "vary between cells or be overridden")


def _check_resources(res: Any, where: str) -> dict[str, Any]:
    if res is None:
        return {}
    if not isinstance(res, dict):
        raise SpecError(f"{where}: expected a mapping of resource names, got {res!r}")
    for k, v in res.items():
        if k not in RESOURCE_KEYS:
            raise SpecError(f"unknown resource '{k}' [{where}]{_suggest(str(k), list(RESOURCE_KEYS))}")
        _check_resource_value(k, v, f"{where}.{k}")
    return dict(res)


def _check_resource_value(k: str, v: Any, where: str) -> None:
    tp = RESOURCE_KEYS[k]
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, tp):
        names = " or ".join(t.__name__ for t in (tp if isinstance(tp, tuple) else (tp,)))
        raise SpecError(f"{where}: expected {names}, got {v!r} ({type(v).__name__})")
    if tp is int and v < (0 if k in ("signal_delay_s", "max_requeues") else 1):
        raise SpecError(f"{where}: must be positive, got {v}")


def _axis_lists(mapping: Any, where: str) -> dict[str, list]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SpecError(f"{where}: expected a mapping of config keys to lists of values, got {mapping!r}")
    out = {}
    for key, values in _flat_keys(mapping, where).items():
        if not isinstance(values, list):
            raise SpecError(f"{where}.{key}: expected a list of values, got {values!r} "
                            f"(write [{format_value(values)}] for a single value)")
        if not values:
            raise SpecError(f"{where}.{key}: empty list of values")
        out[key] = values
    return out


def _partial_cells(entries: Any, where: str) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise SpecError(f"{where}: expected a list of {{key: value}} mappings, got {entries!r}")
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e:
            raise SpecError(f"{where}[{i}]: expected a non-empty mapping {{key: value, ...}}, got {e!r}")
        out.append(_flat_keys(e, f"{where}[{i}]"))
    return out


def _halving(raw: dict, where: str) -> Optional[Halving]:
    sched = raw.get("schedule")
    rungs, keep = raw.get("rungs"), raw.get("keep")
    metric, mode = raw.get("metric"), raw.get("mode")
    if isinstance(sched, dict):
        extra = set(sched) - {"name", "rungs", "keep", "metric", "mode"}
        if extra:
            raise SpecError(f"{where}: unknown schedule key '{sorted(extra)[0]}' (name, rungs, keep, metric, mode)")
        rungs, keep = sched.get("rungs", rungs), sched.get("keep", keep)
        metric, mode = sched.get("metric", metric), sched.get("mode", mode)
        sched = sched.get("name", "halving")
    if sched is None:
        for k in ("rungs", "keep", "metric", "mode"):
            if raw.get(k) is not None:
                raise SpecError(f"{where}: '{k}' needs schedule: halving")
        return None
    if sched != "halving":
        raise SpecError(f"{where}: schedule: {sched!r} is not known (only 'halving')")
    if not isinstance(rungs, list) or not rungs or not all(isinstance(r, int) and not isinstance(r, bool)
                                                          and r > 0 for r in rungs):
        raise SpecError(f"{where}: schedule: halving needs rungs: a list of positive epoch counts, got {rungs!r}")
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise SpecError(f"{where}: rungs must increase, got {rungs}")
    if keep is None:
        keep = 0.5
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise SpecError(f"{where}: keep must be a fraction between 0 and 1, got {keep!r}")
    if mode not in (None, "max", "min"):
        raise SpecError(f"{where}: mode must be max or min, got {mode!r}")
    if metric is not None and (not isinstance(metric, str) or "/" not in metric):
        raise SpecError(f"{where}: metric must be split/name (val/acc1), got {metric!r}")
    return Halving(list(rungs), float(keep), metric, mode)


def load_spec(path: str | os.PathLike, cli_overrides: Sequence[str] = (), root: Optional[str] = None) -> Sweep:
    """Read and validate a sweep file and expand it into cells. Raises SpecError/ConfigError naming the key."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(f"cannot read sweep file {path}: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=C._Loader)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a sweep file holds a mapping (name, config, grid, ...)")
    return build(raw, path, cli_overrides, root)


def build(raw: dict, path: Optional[Path] = None, cli_overrides: Sequence[str] = (),
          root: Optional[str] = None) -> Sweep:
    where = str(path) if path is not None else "sweep"
    for k in raw:
        if k not in SPEC_KEYS:
            raise SpecError(f"unknown sweep key '{k}' [{where}]{_suggest(str(k), SPEC_KEYS)}")
    name = raw.get("name") or (path.stem if path is not None else None)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise SpecError(f"name [{where}]: a sweep needs a name of letters, digits, '_', '.', '-', got {name!r}")
    if not isinstance(raw.get("config"), str):
        raise SpecError(f"config [{where}]: the base config file is required (config: jobs/configs/x.yaml)")
    config_path = _resolve_config_path(raw["config"], path)
    if not config_path.is_file():
        raise SpecError(f"config [{where}]: base config '{raw['config']}' not found ({config_path})")
    halving = _halving(raw, where)

    # shared overrides: the file's, then the command line's
    shared: list[tuple[str, Any, str]] = []
    ov = raw.get("overrides") or {}
    if isinstance(ov, list):
        for i, text in enumerate(ov):
            if not isinstance(text, str):
                raise SpecError(f"overrides[{i}] [{where}]: expected 'key=value', got {text!r}")
            k, v = C.parse_override(text)
            shared.append((k, v, f"{where}: overrides"))
    elif isinstance(ov, dict):
        shared += [(k, v, f"{where}: overrides") for k, v in _flat_keys(ov, f"{where}: overrides").items()]
    else:
        raise SpecError(f"overrides [{where}]: expected a mapping {{key: value}} or a list of key=value")
    for text in cli_overrides:
        k, v = C.parse_override(text)
        shared.append((k, v, f"override '{text}'"))
    for k, v, w in shared:
        if k.startswith("resources."):
            raise SpecError(f"{k} [{w}]: resources go in the sweep's resources: mapping or on the command line "
                            "(--partition, --time, ...)")
        _check_axis_key(k, w, bool(halving))

    # axes
    grid = _axis_lists(raw.get("grid"), f"{where}: grid")
    zraw = raw.get("zip")
    zgroups_raw = zraw if isinstance(zraw, list) else ([zraw] if zraw else [])
    zgroups = []
    for i, g in enumerate(zgroups_raw):
        w = f"{where}: zip" + (f"[{i}]" if isinstance(zraw, list) else "")
        lists = _axis_lists(g, w)
        lengths = {k: len(v) for k, v in lists.items()}
        if len(set(lengths.values())) > 1:
            raise SpecError(f"{w}: lists must have equal lengths, got " +
                            ", ".join(f"{k} ({n})" for k, n in lengths.items()))
        if lists:
            zgroups.append(lists)
    include = _partial_cells(raw.get("include"), f"{where}: include")
    exclude = _partial_cells(raw.get("exclude"), f"{where}: exclude")
    seeds = raw.get("seeds")
    if seeds is not None and raw.get("repeats") is not None:
        raise SpecError(f"seeds / repeats [{where}]: give one of them")
    if raw.get("repeats") is not None:
        r = raw["repeats"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise SpecError(f"repeats [{where}]: expected a positive integer, got {r!r}")
        seeds = list(range(r))
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds):
            raise SpecError(f"seeds [{where}]: expected a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise SpecError(f"seeds [{where}]: repeated seed in {seeds}")

    axis_keys: list[str] = []
    for k in [*grid, *(k for g in zgroups for k in g)]:
        if k in axis_keys:
            raise SpecError(f"{k} [{where}]: varied twice (in grid and zip, or in two zip groups)")
        axis_keys.append(k)
    if seeds is not None and "trainer.seed" in axis_keys:
        raise SpecError(f"trainer.seed [{where}]: varied by the grid and by seeds/repeats; use one")
    for k in axis_keys:
        _check_axis_key(k, f"{where}: {'grid' if k in grid else 'zip'}", bool(halving))
    for kind, entries in (("include", include), ("exclude", exclude)):
        for i, e in enumerate(entries):
            for k in e:
                _check_axis_key(k, f"{where}: {kind}[{i}]", bool(halving))
    for k, _, w in shared:
        if k in axis_keys or any(k in e for e in include):
            raise SpecError(f"{k} [{w}]: this key varies between cells (grid/zip/include); a shared override "
                            "would hide that")
    if not grid and not zgroups and not include:
        raise SpecError(f"grid [{where}]: empty grid: give grid:, zip: or include: with at least one cell")

    # raw cells: grid x zip groups, minus exclude, plus include; x seeds
    axes = [[(k, v) for v in vals] for k, vals in grid.items()]
    axes += [[tuple(zip(g.keys(), row)) for row in zip(*g.values())] for g in zgroups]
    raw_cells: list[tuple[dict[str, Any], str]] = []
    if grid or zgroups:
        for combo in itertools.product(*axes):
            cell: dict[str, Any] = {}
            for part in combo:
                if part and isinstance(part[0], tuple):
                    cell.update(dict(part))
                else:
                    cell[part[0]] = part[1]
            raw_cells.append((cell, "grid"))
    if exclude:
        raw_cells = [c for c in raw_cells
                     if not any(all(k in c[0] and c[0][k] == v for k, v in e.items()) for e in exclude)]
    raw_cells += [(dict(e), "include") for e in include]
    if seeds is not None:
        raw_cells = [({**c, "trainer.seed": s} if "trainer.seed" not in c else dict(c), o)
                     for c, o in raw_cells for s in (seeds if "trainer.seed" not in c else [None])]
    if not raw_cells:
        raise SpecError(f"exclude [{where}]: every cell is excluded; nothing to run")

    res_base = dict(RESOURCE_DEFAULTS)
    res_base.update({k: v for k, v in _check_resources(raw.get("resources"), f"{where}: resources").items()
                     if v is not None})
    sweep = _expand(name, path, config_path, raw_cells, shared, halving, res_base, axis_keys, root,
                    raw.get("description"))
    sweep.cli_overrides = list(cli_overrides)
    return sweep


def _expand(name, path, config_path, raw_cells, shared, halving, res_base, axis_keys, root, description) -> Sweep:
    where = str(path) if path is not None else "sweep"
    shared_texts = [override_text(k, v) for k, v, _ in shared]
    shared_where = {t: w for t, (_, _, w) in zip(shared_texts, shared)}
    if halving:
        text = override_text(HALVING_CONTROLLED, halving.final)
        shared_texts.append(text)
        shared_where[text] = f"{where}: rungs (the last rung)"

    def load(extra: list[str], w_extra: Optional[str] = None) -> C.Config:
        """config.load(base, shared + extra); error messages name the sweep file, not the override text."""
        try:
            return C.load(config_path, shared_texts + extra)
        except C.ConfigError as e:
            msg = str(e)
            for t, w in shared_where.items():
                msg = msg.replace(f"[override '{t}']", f"[{w}]")
            if w_extra:
                for t in extra:
                    msg = msg.replace(f"[override '{t}']", f"[{w_extra}]")
            raise C.ConfigError(msg) from None

    cell_keys = sorted({k for c, _ in raw_cells for k in c if not k.startswith("resources.")})
    # a required value (data.path: ???) that the cells set: a placeholder in the base, checked per cell
    placeholders: list[str] = []
    while True:
        try:
            base = load([f"{k}={PLACEHOLDER}" for k in placeholders])
            break
        except C.ConfigError as e:
            m = re.match(r"missing required value '([^']+)'", str(e))
            if not m or m.group(1) not in cell_keys or m.group(1) in placeholders:
                raise C.ConfigError(f"base config {config_path} + sweep overrides: {e}") from None
            placeholders.append(m.group(1))

    # root: --root, else output.root of the (overridden) base, else $IMGTRAIN_ROOT, else .
    from imgtrain.logs.runinfo import resolve_root
    root_path = Path(root) if root else resolve_root(base.output.root)
    root_path = Path(os.path.abspath(os.path.expanduser(root_path)))

    # each distinct (key, value) is type-checked by building configs with it: one config per round,
    # taking the next distinct value of every key; a failing round is redone key by key to name the culprit
    distinct: dict[str, dict[str, Any]] = {}
    first_cell: dict[tuple[str, str], tuple[dict, str]] = {}
    for raw_cell, origin in raw_cells:
        for k, v in raw_cell.items():
            if k.startswith("resources."):
                continue
            token = json.dumps(v, sort_keys=True, default=str)
            distinct.setdefault(k, {}).setdefault(token, v)
            first_cell.setdefault((k, token), (raw_cell, origin))
    typed: dict[tuple[str, str], Any] = {}
    columns = {k: list(vals.items()) for k, vals in distinct.items()}
    for i in range(max((len(v) for v in columns.values()), default=0)):
        pairs = [(k, *vals[i]) for k, vals in columns.items() if i < len(vals)]
        others = [f"{k}={PLACEHOLDER}" for k in placeholders if not any(k == p[0] for p in pairs)]
        try:
            cfg = load(others + [override_text(k, v) for k, _, v in pairs])
            for k, token, _ in pairs:
                typed[(k, token)] = _get(cfg, k)
        except C.ConfigError:
            for k, token, v in pairs:
                raw_cell, origin = first_cell[(k, token)]
                desc = " ".join(override_text(a, b) for a, b in raw_cell.items())
                w = f"{where}: {origin}"
                # the value within its own first cell: some keys are only valid together (optim.alpha
                # with an optimizer that has one), so a value is checked alone only as a first step
                own = [override_text(a, b) for a, b in raw_cell.items() if not a.startswith("resources.")]
                others = [f"{p}={PLACEHOLDER}" for p in placeholders if p not in raw_cell]
                try:
                    cfg = load(others + own, w)
                except C.ConfigError as e:
                    raise SpecError(f"cell {desc}: {e}") from None
                typed[(k, token)] = _get(cfg, k)

    def typed_value(key: str, value: Any, cell_desc: str, w: str) -> Any:
        return typed[(key, json.dumps(value, sort_keys=True, default=str))]

    base_seed = base.trainer.seed
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    warnings: list[str] = []
    for raw_cell, origin in raw_cells:
        desc = " ".join(override_text(k, v) for k, v in raw_cell.items())
        w = f"{where}: {origin}"
        values: dict[str, Any] = {}
        cell_res: dict[str, Any] = {}
        for k, v in raw_cell.items():
            if k.startswith("resources."):
                rk = k.split(".", 1)[1]
                _check_resource_value(rk, v, f"cell {desc}: {k}")
                cell_res[rk] = v
            else:
                values[k] = typed_value(k, v, desc, w)
        for k in placeholders:
            if k not in values:
                raise SpecError(f"cell {desc}: missing required value '{k}' [{config_path}]; the other cells set "
                                f"it, this one does not (or set it for all with {k}=...)")
        values.setdefault("trainer.seed", base_seed)
        cid = cell_hash(values)
        if cid in seen:
            warnings.append(f"cell {desc} repeats cell {cells[seen[cid]].id}; kept once")
            continue
        run_id = runs.sweep_run_id(name, cid)
        cfg = _with(base, {**values, "output.run": run_id, "output.sweep": name, "output.cell": cid,
                           "output.root": str(root_path)})
        overrides = shared_texts + [override_text(k, v) for k, v in values.items()] + [
            override_text("output.root", str(root_path)), override_text("output.run", run_id),
            override_text("output.sweep", name), override_text("output.cell", cid)]
        resources = {**res_base, **cell_res}
        seen[cid] = len(cells)
        cells.append(Cell(len(cells), cid, run_id, values, resources, cfg, C.config_hash(cfg), overrides, origin,
                          cell_res))
    if halving:
        every = {c.config.trainer.eval_every_epochs for c in cells}
        for r in halving.rungs:
            if any(r % e for e in every):
                raise SpecError(f"rungs [{where}]: rung {r} is not a multiple of trainer.eval_every_epochs "
                                f"({sorted(every)}): the metric must be measured at every rung")
    varying = [k for k in dict.fromkeys(axis_keys + [k for c, _ in raw_cells for k in c])
               if len({json.dumps(c.values.get(k), default=str) for c in cells}) > 1 or k.startswith("resources.")]
    if "trainer.seed" not in varying and len({c.values["trainer.seed"] for c in cells}) > 1:
        varying.append("trainer.seed")
    return Sweep(name, path, config_path, root_path, cells, shared_texts, res_base, halving, varying, warnings,
                 description)


def from_record(info: dict) -> Sweep:
    """A Sweep rebuilt from <root>/sweeps/<name>/sweep.json (when its sweep file is gone)."""
    config_path = Path(info["config"])
    cells = []
    for i, rec in enumerate(info.get("cells", [])):
        try:
            cfg = C.load(config_path, rec["overrides"])
        except C.ConfigError as e:
            raise SpecError(f"sweep {info.get('name')}: cell {rec['id']} cannot be rebuilt from its record: {e}")
        cells.append(Cell(i, rec["id"], rec["run_id"], rec["values"], {**RESOURCE_DEFAULTS, **rec.get("resources", {})},
                          cfg, rec["config_hash"], rec["overrides"], "record", rec.get("resources", {})))
    h = info.get("halving")
    halving = Halving(h["rungs"], h["keep"], h.get("metric"), h.get("mode")) if h else None
    return Sweep(info["name"], None, config_path, Path(info["root"]), cells, info.get("shared_overrides", []),
                 dict(RESOURCE_DEFAULTS), halving, info.get("axes", []), [], None, info.get("cli_overrides", []))
