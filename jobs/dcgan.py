#!/usr/bin/env python
"""DCGAN on MNIST/Fashion-MNIST-format IDX files or a shard data set; losses to Parquet, a sample grid
per epoch, resumable. See `python jobs/dcgan.py --help`; the logic is in imgtrain/studies/dcgan/."""
import sys

from imgtrain.studies.dcgan import main

if __name__ == "__main__":
    sys.exit(main())
