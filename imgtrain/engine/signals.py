"""SIGUSR1/SIGTERM -> a stop request read at the next optimizer-step boundary (DESIGN §5).

The handler only sets a flag: the loop finishes its step, all ranks agree, `last.pt` is written and
the process exits with imgtrain.runs.REQUEUE_EXIT_CODE, which the batch script and sweeps read as "requeue me".
A second signal while saving changes nothing.

Which signal a stop names: SIGTERM outranks SIGUSR1, whatever the order. SLURM ends a job (requeue,
preemption, scancel, time limit) by sending TERM to every process of it, the workers included, and the
batch script forwards its own copy as USR1 a moment later. CPython runs the Python-level handlers of
signals that are pending together in signal-number order (USR1 = 10 before TERM = 15), so when both
arrive during one long native call (a forward/backward, torch.save, a descheduled process) "the first
handler to run" would be USR1 although TERM came first. USR1 alone (SLURM's time-limit warning, a
user's `scancel --signal=USR1`) still names USR1.

A worker spends seconds importing torch before the trainer installs its handler; an entry point that
calls `catch_early()` first keeps a signal of that time, and the next StopRequest starts with it (so
the run stops after its first step, with a checkpoint). This module imports nothing heavy.
"""
from __future__ import annotations

import signal

from imgtrain.runs import REQUEUE_EXIT_CODE  # noqa: F401 (the exit status of a stop, owned by the run)
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_RANK = {signal.SIGUSR1: 1, signal.SIGTERM: 2}  # which one a stop is named after (see above)


def stronger(current: int | None, signum: int) -> int:
    """The signal a stop is named after once `signum` arrives (None: none so far)."""
    if current is None or _RANK.get(signal.Signals(signum), 0) > _RANK.get(signal.Signals(current), 0):
        return signum
    return current


_early: list[int] = []  # a stop signal received before any StopRequest was installed
_before_early: dict = {}  # the handlers catch_early() replaced
_keep: list[bool] = [False]  # catch_early(keep=True): record between StopRequests too


def _record_early(signum, frame) -> None:
    _early[:] = [stronger(_early[0] if _early else None, signum)]


def catch_early(keep: bool = False) -> None:
    """Record USR1/TERM from now on, until a StopRequest takes over (call it before heavy imports).
    Calling it again changes nothing (the handler it replaced stays the one a StopRequest restores).
    `keep`: a process that runs one trainer after another (an ASHA worker). A StopRequest's uninstall then
    puts the recorder back instead of the original handler, and hands it the signal it saw: a signal that
    arrives between two runs, or that a run saw after its last step (too late to act on), is kept for the
    process to act on, never lost and never fatal."""
    if keep:
        _keep[0] = True
    for s in STOP_SIGNALS:
        if signal.getsignal(s) is _record_early:
            continue
        _before_early[s] = signal.signal(s, _record_early)


def early_signal() -> int | None:
    """The stop signal catch_early() has recorded and no StopRequest has taken yet (None: none)."""
    return _early[0] if _early else None


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        for s in STOP_SIGNALS:
            previous = signal.signal(s, self._handle)
            # the start-up recorder has done its job: uninstall() restores what was there before it
            if previous is _record_early and not _keep[0]:
                previous = _before_early.pop(s, previous)
            self._previous[s] = previous
        if _early and self.signum is None:  # arrived while the process was still starting up
            self.signum = _early.pop()
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = stronger(self.signum, signum)  # a stop stays a stop; only its name may change

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if _keep[0] and self.signum is not None:  # see catch_early(keep=True)
            _early[:] = [stronger(_early[0] if _early else None, self.signum)]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
