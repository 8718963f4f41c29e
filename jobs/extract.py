#!/usr/bin/env python
"""Extract features from a named layer of a run (or a pretrained model) to Parquet/.npy shards; optional t-SNE map.
See `python jobs/extract.py --help`; the command is imgtrain/studies/features/cli_extract.py (console script `imgtrain-extract`)."""
import sys

from imgtrain.studies.features.cli_extract import main

if __name__ == "__main__":
    sys.exit(main())
