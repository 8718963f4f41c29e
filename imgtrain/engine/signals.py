"""SIGUSR1/SIGTERM -> a stop request read at the next optimizer-step boundary (DESIGN §5).

The handler only sets a flag: the loop finishes its step, all ranks agree, `last.pt` is written and
the process exits with REQUEUE_EXIT_CODE, which the batch script and sweeps read as "requeue me".
A second signal while saving changes nothing.
"""
from __future__ import annotations

import signal

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: stopped cleanly on a signal, resume me
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopRequest:
    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        for s in STOP_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""
