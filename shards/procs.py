"""Child processes that die with their parent.

A job's processes must not outlive the process that started them: a pack worker, a sweep's training cell or
a torchrun rank left running after its parent was killed (kill -9, an OOM kill, a lost node agent) keeps
working, holds its files and competes with the next attempt for them. Linux can deliver a signal to a process
when its parent exits (prctl PR_SET_PDEATHSIG); `die_with_parent` asks for it. Lowest layer of the project
(imgtrain depends on shards, not the other way), so every package can use it.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGTERM, parent: int | None = None) -> bool:
    """Have `signum` sent to this process when its parent exits. `parent`: the pid the caller expects as its
    parent; when it is already gone (it died between fork and this call), the signal is sent at once.
    Usable as a Popen preexec_fn or a pool initializer (functools.partial). False where the OS lacks it."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)
    return True
