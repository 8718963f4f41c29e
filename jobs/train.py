#!/usr/bin/env python
"""Train and evaluate one run (also under torchrun for DDP). See `python jobs/train.py --help`."""
import sys

from imgtrain.engine.signals import catch_early  # no torch: installed within milliseconds

catch_early()  # a preemption signal during the imports below stops the run after its first step

from imgtrain.engine.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
