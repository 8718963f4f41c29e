#!/usr/bin/env python
"""Cross-validated SVM grids on extracted features, one run per cell.
See `python jobs/svm.py --help`; the command is imgtrain/studies/features/cli_svm.py (console script `imgtrain-svm`)."""
import sys

from imgtrain.studies.features.cli_svm import main

if __name__ == "__main__":
    sys.exit(main())
