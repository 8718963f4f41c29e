#!/usr/bin/env python
"""Bag-of-visual-words baseline (SIFT/ORB/KAZE/FAST+FREAK, k-means vocabulary, linear / RBF /
histogram-intersection SVM, random forest), one run per (detector, vocab, classifier) cell.
See `python jobs/bow.py --help`; the logic is in imgtrain/studies/bow.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, venv or container

from imgtrain.studies.bow import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
