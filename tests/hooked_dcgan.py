#!/usr/bin/env python
"""jobs/dcgan.py with the checkpoint-write pause of tests/hooked_train.py (IMGTRAIN_TEST_PAUSE_IN_SAVE,
IMGTRAIN_TEST_PAUSE_AT_SAVE): every checkpoint.atomic_save of the process gets it as its on_temp seam."""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooked_train import pause_in_save  # noqa: E402  (tests/ is sys.path[0] when run as a script)

from imgtrain.engine import checkpoint  # noqa: E402

if __name__ == "__main__":
    flag = os.environ.get("IMGTRAIN_TEST_PAUSE_IN_SAVE")
    if flag:
        real = checkpoint.atomic_save
        pause = pause_in_save(flag, int(os.environ.get("IMGTRAIN_TEST_PAUSE_AT_SAVE", "1")))
        checkpoint.atomic_save = lambda obj, path, on_temp=None: real(obj, path, on_temp or pause)
    from imgtrain.studies.dcgan import main
    sys.exit(main())
