#!/usr/bin/env python
"""Run a grid of training runs: `python jobs/sweep.py GRID.yaml [--executor slurm|local|debug] [--dry-run]`,
`python jobs/sweep.py status SWEEP`, `python jobs/sweep.py cancel SWEEP`. See `--help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, venv or container

from imgtrain.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
