#!/usr/bin/env python
"""Bag-of-visual-words baseline (SIFT/ORB/KAZE/FAST+FREAK, k-means vocabulary, linear / RBF /
histogram-intersection SVM, random forest), one run per (detector, vocab, classifier) cell.
See `python jobs/bow.py --help`; the logic is in imgtrain/studies/bow/."""
import sys

from imgtrain.studies.bow import main

if __name__ == "__main__":
    sys.exit(main())
