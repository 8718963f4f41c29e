"""Random access to samples inside WebDataset tar shards.

Indexing a shard reads only the 512-byte tar headers (tarfile seeks past the data), so a resumed run
can jump to any sample position without reading or decoding the samples before it. A truncated shard
keeps the samples that are whole; the ones lost are reported missing, never a crash.
"""
from __future__ import annotations

import os
import tarfile
import warnings
from dataclasses import dataclass, field


def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: 'dir/key.ext.more' -> ('dir/key', 'ext.more')."""
    dirname, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    return (f"{dirname}/{key}" if dirname else key), ext if dot else ""


@dataclass
class ShardIndex:
    path: str
    keys: list[str] = field(default_factory=list)
    # members[i] = {ext: (data offset, size)} for sample i in file order
    members: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    error: str | None = None  # set when the shard is truncated or unreadable past some point

    def __len__(self) -> int:
        return len(self.keys)


def index_shard(path: str | os.PathLike) -> ShardIndex:
    index = ShardIndex(str(path))
    by_key: dict[str, int] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = split_member(m.name)
                if key not in by_key:
                    by_key[key] = len(index.keys)
                    index.keys.append(key)
                    index.members.append({})
                index.members[by_key[key]][ext] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError) as e:
        index.error = f"{type(e).__name__}: {e}"
    if index.error is not None:
        # the last sample may have lost members: only keep samples whose data lies inside the file
        size = os.path.getsize(path) if os.path.exists(path) else 0
        while index.members and any(off + n > size for off, n in index.members[-1].values()):
            index.keys.pop()
            index.members.pop()
        warnings.warn(f"shard {path} is damaged ({index.error}); {len(index)} whole samples are usable")
    return index


class ShardReader:
    """Reads a sample's member bytes by (shard, position); keeps a few files open per process."""

    def __init__(self, indexes: list[ShardIndex], max_open: int = 8):
        self.indexes = indexes
        self.max_open = max_open
        self._files: dict[int, object] = {}

    def read(self, shard: int, pos: int) -> tuple[str, dict[str, bytes]] | None:
        index = self.indexes[shard]
        if pos >= len(index):
            return None  # lost to truncation
        f = self._files.get(shard)
        if f is None:
            if len(self._files) >= self.max_open:
                old = next(iter(self._files))
                self._files.pop(old).close()
            f = self._files[shard] = open(index.path, "rb")
        out = {}
        for ext, (offset, size) in index.members[pos].items():
            f.seek(offset)
            out[ext] = f.read(size)
        return index.keys[pos], out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self):  # open files do not cross into DataLoader workers
        return {"indexes": self.indexes, "max_open": self.max_open, "_files": {}}
