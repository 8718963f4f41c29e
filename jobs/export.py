#!/usr/bin/env python
"""Export a run's weights as one plain fp32 checkpoint (e.g. from a ZeRO-partitioned DeepSpeed checkpoint).
See `python jobs/export.py --help`; the command is imgtrain/engine/export.py (console script `imgtrain-export`)."""
import sys

from imgtrain.engine.export import main

if __name__ == "__main__":
    sys.exit(main())
