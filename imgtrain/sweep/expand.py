"""A parsed sweep expanded into cells (DESIGN §7): every distinct value type-checked by building configs
with it, each cell's stable id, run id, resolved config and resources; and a Sweep rebuilt from its
record (sweep.json) when the sweep file is gone."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from imgtrain import config as C
from imgtrain import runs
from imgtrain.sweep.cells import HALVING_CONTROLLED, Cell, Halving, SpecError, Sweep
from imgtrain.sweep.resources import RESOURCE_DEFAULTS, _check_resource_value
from imgtrain.sweep.values import _get, _with, cell_hash, override_text

PLACEHOLDER = "???sweep-cell-sets-this"


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
    halving = Halving(h["rungs"], h["keep"], h.get("metric"), h.get("mode"), h.get("kind", "halving"),
                      h.get("eta")) if h else None
    return Sweep(info["name"], None, config_path, Path(info["root"]), cells, info.get("shared_overrides", []),
                 dict(RESOURCE_DEFAULTS), halving, info.get("axes", []), [], None, info.get("cli_overrides", []))
