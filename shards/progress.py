"""Progress on stderr: a tqdm bar on a terminal, a plain line every few seconds otherwise (logs)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, desc: str, total: int, unit: str = "img", every_s: float = 10.0):
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.done, self.start = 0, time.monotonic()
        self._last = self.start
        self._bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked later
            self._bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.total:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        rate = self.done / max(now - self.start, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(f"{self.desc}: {self.done}/{self.total} {self.unit} ({pct:.0f}%, {rate:.0f} {self.unit}/s)",
              file=sys.stderr, flush=True)
