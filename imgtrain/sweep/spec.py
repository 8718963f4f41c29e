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
    schedule: halving                      # successive halving (halving.py), or asha (asha.py)
    rungs: [1, 2, 4]                       # epochs of each rung; the last is trainer.epochs
    keep: 0.5                              # halving: fraction kept at each rung
    eta: 3                                 # asha: promote the top 1/eta of each rung (default 3)

An axis key is a config key (checked with config.check_key: unknown keys are errors with a close
match) or `resources.<name>` (per-cell SLURM resources; cells with different resources go to
different job arrays). Every value is type-checked by building the cell's Config.

A cell's id is a stable hash of its own values (sorted keys, values typed by the config schema,
trainer.seed always included): the run id is `<name>-<id>`, so adding grid values adds cells without
touching the others, and the order of keys in the file does not matter. Shared settings (the base
config, `overrides`, command-line overrides) are not part of the id: change the sweep name when you
change them (status shows such cells as `changed`: the run dir holds another config hash).

This module reads and validates sweep files (load_spec, build); the Sweep, Cell and Halving types are in
cells.py, value text and cell ids in values.py, SLURM resources in resources.py, and the expansion into
cells in expand.py. Their public names are importable from here as before.
"""
from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from imgtrain import config as C
from imgtrain.sweep.cells import HALVING_CONTROLLED, Cell, Halving, SpecError, Sweep, _suggest
from imgtrain.sweep.expand import _expand, from_record
from imgtrain.sweep.resources import RESOURCE_DEFAULTS, RESOURCE_KEYS, _check_resources
from imgtrain.sweep.values import cell_hash, format_value, override_text

# what callers import from here, wherever it is defined
__all__ = ["REPO", "SPEC_KEYS", "Cell", "Halving", "SpecError", "Sweep", "build", "cell_hash", "format_value",
           "from_record", "load_spec", "override_text", "RESOURCE_DEFAULTS", "RESOURCE_KEYS"]

REPO = Path(__file__).resolve().parents[2]

SPEC_KEYS = ("name", "description", "config", "overrides", "grid", "zip", "include", "exclude", "seeds",
             "repeats", "resources", "schedule", "rungs", "keep", "eta", "metric", "mode")


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
    rungs, keep, eta = raw.get("rungs"), raw.get("keep"), raw.get("eta")
    metric, mode = raw.get("metric"), raw.get("mode")
    if isinstance(sched, dict):
        extra = set(sched) - {"name", "rungs", "keep", "eta", "metric", "mode"}
        if extra:
            raise SpecError(f"{where}: unknown schedule key '{sorted(extra)[0]}' (name, rungs, keep, eta, metric, "
                            "mode)")
        rungs, keep, eta = sched.get("rungs", rungs), sched.get("keep", keep), sched.get("eta", eta)
        metric, mode = sched.get("metric", metric), sched.get("mode", mode)
        sched = sched.get("name", "halving")
    if sched is None:
        for k in ("rungs", "keep", "eta", "metric", "mode"):
            if raw.get(k) is not None:
                raise SpecError(f"{where}: '{k}' needs schedule: halving or asha")
        return None
    if sched not in ("halving", "asha"):
        raise SpecError(f"{where}: schedule: {sched!r} is not known (halving or asha)")
    if not isinstance(rungs, list) or not rungs or not all(isinstance(r, int) and not isinstance(r, bool)
                                                          and r > 0 for r in rungs):
        raise SpecError(f"{where}: schedule: {sched} needs rungs: a list of positive epoch counts, got {rungs!r}")
    if any(b <= a for a, b in zip(rungs, rungs[1:])):
        raise SpecError(f"{where}: rungs must increase, got {rungs}")
    if sched == "asha":
        if keep is not None:
            raise SpecError(f"{where}: schedule: asha promotes the top 1/eta of each rung; use eta: instead of keep:")
        eta = 3 if eta is None else eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 1:
            raise SpecError(f"{where}: eta must be a number greater than 1 (3: the top third goes on), got {eta!r}")
        keep = 1.0 / eta
    elif eta is not None:
        raise SpecError(f"{where}: eta needs schedule: asha (schedule: halving keeps keep: of each rung)")
    if keep is None:
        keep = 0.5
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise SpecError(f"{where}: keep must be a fraction between 0 and 1, got {keep!r}")
    if mode not in (None, "max", "min"):
        raise SpecError(f"{where}: mode must be max or min, got {mode!r}")
    if metric is not None and (not isinstance(metric, str) or "/" not in metric):
        raise SpecError(f"{where}: metric must be split/name (val/acc1), got {metric!r}")
    return Halving(list(rungs), float(keep), metric, mode, sched, None if eta is None else float(eta))


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
