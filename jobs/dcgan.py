#!/usr/bin/env python
"""DCGAN on MNIST/Fashion-MNIST-format IDX files or a shard data set; losses to Parquet, a sample grid
per epoch, resumable. See `python jobs/dcgan.py --help`; the logic is in imgtrain/studies/dcgan.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere, venv or container

from imgtrain.studies.dcgan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
