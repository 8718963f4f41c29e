"""Atomic file writes: readers see the old file or the new one, never a partial one.

The data goes to a hidden temporary name in the same directory (so the rename cannot cross a
file system), is fsynced, renamed over the target with os.replace, and the directory is fsynced
so the rename itself survives a crash. Temporary names start with "." and end with ".tmp", which
is how readers recognise and skip them.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable, Optional

TMP_SUFFIX = ".tmp"


def is_temp_name(name: str) -> bool:
    return name.startswith(".") or name.endswith(TMP_SUFFIX)


def temp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TMP_SUFFIX}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory entry change (rename, create). Some file systems refuse; that is fine."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data, before_replace: Optional[Callable[[], None]] = None) -> Path:
    """Write `data` (bytes or any buffer) to `path` atomically; parent directories are created.
    `before_replace`: called when the data is on disk, just before the rename (it may raise: nothing is
    replaced), e.g. a lock holder's last check that it still holds its lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8",
                      before_replace: Optional[Callable[[], None]] = None) -> Path:
    return atomic_write_bytes(path, text.encode(encoding), before_replace)
