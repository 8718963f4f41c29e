#!/usr/bin/env python
"""Run a grid of training runs: `python jobs/sweep.py GRID.yaml [--executor slurm|local|debug] [--dry-run]`,
`python jobs/sweep.py status SWEEP`, `python jobs/sweep.py cancel SWEEP`. See `--help`."""
import sys

from imgtrain.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
