#!/usr/bin/env python
"""Analyse the runs under ROOT: leaderboard, learning curves, heat map, confusion matrix, report.md; --study SNNN beside a reference study.
See `python jobs/analyze.py --help`; the command is imgtrain/analysis/cli.py (console script `imgtrain-analyze`)."""
import sys

from imgtrain.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
