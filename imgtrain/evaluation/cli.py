"""Helpers shared by jobs/evaluate.py, jobs/extract.py and jobs/svm.py."""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from imgtrain.evaluation.load import EvalError, LoadedModel


def split_positionals(items: Sequence[str], config: Optional[str]) -> tuple[Optional[str], list[str]]:
    """`RUN_DIR [key=value ...]` or, with --config, `[key=value ...]`: (run dir, overrides)."""
    items = list(items)
    if config is None:
        if not items or "=" in items[0]:
            raise EvalError("give a RUN_DIR (a directory <root>/runs/<run id>) or --config FILE")
        run_dir, items = items[0], items[1:]
    else:
        run_dir = None
    bad = [i for i in items if "=" not in i]
    if bad:
        raise EvalError(f"unexpected argument '{bad[0]}' (overrides are key=value"
                        f"{'; a RUN_DIR does not go with --config' if config else ''})")
    return run_dir, items


def log_notes(loaded: LoadedModel, prog: str) -> None:
    for note in loaded.notes:
        print(f"{prog}: note: {note}", file=sys.stderr, flush=True)
