"""A leaderboard as text: CSV, a Markdown table, a short label per row."""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa

from imgtrain.analysis.board import board_varied
from imgtrain.logs import atomic_write_bytes


def _cell(v: Any, column: str = "") -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if column == "wall_s":
            return f"{v:.1f}"
        if column == "img_per_s":
            return f"{v:.0f}"
        if column == "best" or column.startswith("test/"):
            return f"{v:.4f}"
        return f"{v:g}"
    return str(v)


def write_csv(board: pa.Table, path: str | os.PathLike) -> Path:
    """The leaderboard as CSV; floats keep full precision (repr), nulls are empty fields."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(board.column_names)
    for row in zip(*[board[c].to_pylist() for c in board.column_names]):
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(path, buf.getvalue().encode())


def to_markdown(board: pa.Table, limit: Optional[int] = None, columns: Optional[Sequence[str]] = None) -> str:
    """The leaderboard (first `limit` rows) as a GitHub Markdown table."""
    columns = list(columns or board.column_names)
    if limit is not None:
        board = board.slice(0, limit)
    data = [board[c].to_pylist() for c in columns]

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |",
             "|" + "|".join("---:" if pa.types.is_integer(board[c].type) or pa.types.is_floating(board[c].type)
                            else "---" for c in columns) + "|"]
    for row in zip(*data):
        lines.append("| " + " | ".join(esc(_cell(v, c)) for v, c in zip(row, columns)) + " |")
    return "\n".join(lines) + "\n"


def _short_labels(keys: Sequence[str]) -> dict[str, str]:
    """'optim.lr' -> 'lr', 'optim.name' -> 'optim', where that is unambiguous among `keys`."""
    parts = [k.split(".") for k in keys]
    short = [p[-2] if p[-1] == "name" and len(p) > 1 else p[-1] for p in parts]
    return {k: (s if short.count(s) == 1 else k) for k, s in zip(keys, short)}


def cell_label(board: pa.Table, index: int, keys: Optional[Sequence[str]] = None) -> str:
    """'lr=0.05 depth=2' for one leaderboard row: its varied hyperparameters (else its run id)."""
    keys = board_varied(board) if keys is None else keys
    short = _short_labels(keys)
    parts = [f"{short[k]}={_cell(board[k][index].as_py())}" for k in keys]
    return " ".join(parts) or board["run_id"][index].as_py()
