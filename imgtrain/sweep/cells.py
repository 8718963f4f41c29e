"""What a sweep file becomes (DESIGN §7): a Sweep of Cells, each with its own values, resources, resolved
config and run id, and the successive-halving schedule (Halving); SpecError for problems in a sweep file."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from imgtrain import config as C
from imgtrain import runs
from imgtrain.sweep.values import override_text

HALVING_CONTROLLED = "trainer.epochs"


class SpecError(C.ConfigError):
    """A problem in a sweep file; the message names the file and the key."""


def _suggest(key: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"


@dataclass
class Halving:
    """A rung schedule: `halving` (synchronous successive halving, halving.py: keep a fraction per rung) or
    `asha` (asynchronous successive halving, asha*.py: promote the top 1/eta of each rung as results come)."""
    rungs: list[int]
    keep: float
    metric: Optional[str] = None  # default: the cells' trainer.monitor
    mode: Optional[str] = None  # max | min; default from the metric
    kind: str = "halving"  # halving | asha
    eta: Optional[float] = None  # asha: the reduction factor

    @property
    def final(self) -> int:
        return self.rungs[-1]

    @property
    def asha(self) -> bool:
        return self.kind == "asha"

    def record(self) -> dict:
        """What sweep.json keeps (from_record reads it back)."""
        return {"rungs": self.rungs, "keep": self.keep, "metric": self.metric, "mode": self.mode,
                "kind": self.kind, "eta": self.eta}

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
