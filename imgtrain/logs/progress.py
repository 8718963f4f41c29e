"""Rank-0 progress output: a tqdm bar on a terminal, plain timestamped lines in a log file.

A SLURM log is not a terminal, and a bar redrawn with carriage returns turns it into one huge
line, so off a TTY we print one readable line every `every_seconds` and always one at the end:
    [2026-11-22 23:59:01] epoch 3/10 step 1200/4000 (30.0%) loss 0.4123 lr 1.00e-03 img/s 812.3 eta 0:12:31
"""
from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any, Optional, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_scalar(name: str, value: Any) -> str:
    """`name value` with a format that suits the usual scalars."""
    label = "img/s" if name == "img_per_s" else name
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{label} {value}"
    if isinstance(value, int):
        return f"{label} {value}"
    if name == "lr":
        return f"{label} {value:.2e}"
    if name == "img_per_s":
        return f"{label} {value:.1f}"
    if name.startswith("loss") or name.endswith("loss"):
        return f"{label} {value:.4f}"
    return f"{label} {value:.4g}"


class Progress:
    """Progress of `total_steps` optimizer steps (None if unknown).

    `update(n, **scalars)` advances n steps and records scalars to show (loss, lr, img_per_s, ...);
    an `epoch` scalar is shown as "epoch e/epochs". `initial` is the step a resumed run starts at;
    the ETA uses only the rate measured since this object was created.
    """

    def __init__(
        self,
        total_steps: Optional[int],
        *,
        desc: str = "",
        enabled: bool = True,
        every_seconds: float = 30.0,
        initial: int = 0,
        epochs: Optional[int] = None,
        stream: Optional[TextIO] = None,
        tty: Optional[bool] = None,
    ):
        self.total, self.desc, self.enabled = total_steps, desc, enabled
        self.every_seconds, self.epochs = every_seconds, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.n = self.initial = initial
        self.scalars: dict[str, Any] = {}
        self.epoch: Optional[Any] = None
        self._start = self._last_line = time.monotonic()
        self._closed = False
        self._bar = None
        if not enabled:
            return
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        if tty:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total_steps, initial=initial, desc=desc or None, file=self.stream, dynamic_ncols=True, unit="step"
            )

    # ------------------------------------------------------------------ updates

    def update(self, n: int = 1, **scalars: Any) -> None:
        if not self.enabled or self._closed:
            return
        self.n += n
        if "epoch" in scalars:
            self.epoch = scalars.pop("epoch")
        self.scalars.update(scalars)
        if self._bar is not None:
            self._update_bar(n)
        elif time.monotonic() - self._last_line >= self.every_seconds:
            self._print(self.line())

    def _update_bar(self, n: int) -> None:
        if self.epoch is not None:
            epoch = f"epoch {self._epoch_text()}"
            self._bar.set_description_str(f"{self.desc} {epoch}" if self.desc else epoch, refresh=False)
        if self.scalars:
            self._bar.set_postfix_str(" ".join(format_scalar(k, v) for k, v in self.scalars.items()), refresh=False)
        self._bar.update(n)

    def _epoch_text(self) -> str:
        return f"{self.epoch}/{self.epochs}" if self.epochs is not None else f"{self.epoch}"

    def eta_seconds(self) -> Optional[float]:
        done = self.n - self.initial
        elapsed = time.monotonic() - self._start
        if self.total is None or done <= 0 or elapsed <= 0:
            return None
        return max(0, self.total - self.n) * elapsed / done

    def line(self, final: bool = False) -> str:
        """The plain progress line for the current state (without the newline)."""
        parts = [datetime.now().strftime("[%Y-%m-%d %H:%M:%S]")]
        if self.desc:
            parts.append(self.desc)
        if self.epoch is not None:
            parts.append(f"epoch {self._epoch_text()}")
        if self.total:
            parts.append(f"step {self.n}/{self.total} ({100.0 * self.n / self.total:.1f}%)")
        else:
            parts.append(f"step {self.n}")
        parts += [format_scalar(k, v) for k, v in self.scalars.items()]
        if final:
            parts.append(f"done in {format_duration(time.monotonic() - self._start)}")
        else:
            eta = self.eta_seconds()
            parts.append(f"eta {format_duration(eta) if eta is not None else '?'}")
        return " ".join(parts)

    def _print(self, text: str, progress: bool = True) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
        if progress:
            self._last_line = time.monotonic()

    def write(self, msg: str) -> None:
        """Print a message above the bar (or as its own line in a log file)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(msg, file=self.stream)
        else:
            self._print(msg, progress=False)

    def close(self) -> None:
        if not self.enabled or self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        else:
            self._print(self.line(final=True))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
