"""The ASHA ledger on the shared filesystem: `<root>/sweeps/<name>/asha.json`, changed only in a transaction.

A transaction takes `asha.lock` (shards/dirlock.py: a file created with O_EXCL, atomic on NFSv3+ and on
Lustre/GPFS, where fcntl/flock locks depend on a lock daemon; a holder that died is recognised and its lock
taken over: process gone on this host, SLURM job no longer running, or no heartbeat for `stale_after_s`),
reads the ledger, lets the caller decide on the dict, and writes it back atomically (temporary file, fsync,
rename). A job killed with -9 anywhere in between leaves the previous ledger whole, and its lock is taken
over by the next worker; nothing it decided counts, because nothing of it was written.

Why not Optuna's JournalFileStorage (the other choice the issue names): its file lock is the same O_EXCL
idea, but a journal replays every operation of every trial on each read and its own users report journals
corrupted by concurrent SLURM writers (optuna#5138); a study of a few hundred cells is one small JSON file
that a reader can open by hand, written whole under the lock.
"""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

from imgtrain.logs.atomic import atomic_write_text
from shards.dirlock import Locked, acquire

LEDGER, LOCK = "asha.json", "asha.lock"


class LedgerError(RuntimeError):
    pass


class LockLost(LedgerError):
    """The lock was taken over (this holder stalled past the stale limit) before the write: nothing written."""


class Ledger:
    def __init__(self, sweep_dir: str | Path):
        self.dir = Path(sweep_dir)
        self.path = self.dir / LEDGER
        self.lock_path = self.dir / LOCK

    def read(self) -> Optional[dict]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:  # never written partially (atomic rename); say where it is
            raise LedgerError(f"{self.path} is not valid JSON ({e}); it was changed by hand?") from None

    def _lock(self, timeout_s: float, log: Callable[[str], None]):
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return acquire(self.lock_path, what=f"the ASHA ledger {self.path}", heartbeat_s=10.0,
                               stale_after_s=120.0, log=log)
            except Locked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.02, 0.2))  # a decision holds the lock for milliseconds

    @contextlib.contextmanager
    def transaction(self, *, create: Optional[Callable[[], dict]] = None, timeout_s: float = 600.0,
                    before_commit: Optional[Callable[[dict], None]] = None,
                    log: Callable[[str], None] = print, write: bool = True) -> Iterator[dict]:
        """`with ledger.transaction() as data:` change `data`; it is written when the block ends without an
        exception (`write=False`: never, a consistent read). `create`: the ledger to start from when there is
        none yet. `before_commit`: called with the data just before the write (a test seam: kill the process
        there)."""
        lock = self._lock(timeout_s, log)
        try:
            data = self.read()
            if data is None:
                if create is None:
                    raise LedgerError(f"no ASHA ledger at {self.path} (submit the sweep first)")
                data = create()
            yield data
            if not write:  # a read under the lock (acting on a ledger nobody may change meanwhile)
                return
            if before_commit is not None:
                before_commit(data)

            def still_held() -> None:  # stalled past the stale limit and taken over: what we decided must not count
                if not lock.held():
                    raise LockLost(f"lost the lock {self.lock_path} before writing {self.path} (another worker "
                                   "judged this one stale); nothing was written")
            still_held()
            # checked again with the new ledger on disk, just before the rename: the gap is the rename itself
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n", before_replace=still_held)
        finally:
            lock.release()
