#!/usr/bin/env python
"""Evaluate a trained run (or a pretrained model) on a split: metrics, confusion matrix, per-class table, per-image predictions (also under torchrun).
See `python jobs/evaluate.py --help`; the command is imgtrain/evaluation/cli.py (console script `imgtrain-evaluate`)."""
import sys

from imgtrain.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
