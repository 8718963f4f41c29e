#!/usr/bin/env python
"""Train and evaluate one run (also under torchrun for DDP). See `python jobs/train.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, venv or container

from imgtrain.engine.signals import catch_early  # noqa: E402  (no torch: installed within milliseconds)

catch_early()  # a preemption signal during the imports below stops the run after its first step

from imgtrain.engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
