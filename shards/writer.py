"""Shard planning and atomic, resumable shard writing.

A shard's content is fixed by the plan (which samples, in which order, with which image bytes),
so any process can write any shard and get the same file. Tar headers carry no time, owner or
permissions of the machine that wrote them, so the sha256 is reproducible.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from shards.images import BadImage, EncodeOptions, encode
from shards.manifest import CLS_EXT, JSON_EXT, fsync_dir, shard_name
from shards.records import Record

_MTIME = 0
_FORMAT = tarfile.PAX_FORMAT
_ENCODING = "utf-8"
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


class PackError(Exception):
    """Packing cannot continue (e.g. a source file changed between scan and write): exit status 1."""


@dataclass
class PlannedSample:
    record: Record
    ext: str  # image member extension
    size: int  # image bytes
    sha256: str  # of the image bytes

    def members(self) -> list[tuple[str, bytes | None, int]]:
        """(member name, payload or None for the image, size) in stored order."""
        key = self.record.key
        out: list[tuple[str, bytes | None, int]] = [(f"{key}.{self.ext}", None, self.size)]
        if self.record.label is not None:
            cls = str(self.record.label).encode()
            out.append((f"{key}.{CLS_EXT}", cls, len(cls)))
        meta = json_bytes(self.record)
        out.append((f"{key}.{JSON_EXT}", meta, len(meta)))
        return out


@dataclass
class ShardSpec:
    split: str
    index: int
    samples: list[PlannedSample]
    bytes: int  # predicted file size

    @property
    def file(self) -> str:
        return shard_name(self.split, self.index)


@dataclass
class ShardResult:
    file: str
    split: str
    count: int
    bytes: int
    sha256: str
    reused: bool  # an existing complete shard matched the plan and was kept


def json_bytes(record: Record) -> bytes:
    return json.dumps(record.meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _MTIME, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def sample_bytes(sample: PlannedSample) -> int:
    """Bytes the sample's members take in a tar (headers, including pax ones for long names, + data)."""
    return sum(_header_bytes(name, size) + _padded(size) for name, _, size in sample.members())


def _header_bytes(name: str, size: int) -> int:
    if name.isascii() and len(name) <= 100 and size < 8 ** 11:
        return _BLOCK  # fits a plain ustar header; building it is the slow part of planning
    return len(_tarinfo(name, size).tobuf(_FORMAT, _ENCODING, "surrogateescape"))


def tar_bytes(body: int) -> int:
    """File size of a tar whose members take ``body`` bytes: end blocks, padded to a record."""
    return -(-(body + 2 * _BLOCK) // _RECORD) * _RECORD


def plan_shards(split: str, samples: list[PlannedSample], shard_size: int, max_bytes: int | None) -> list[ShardSpec]:
    """Cut an ordered split into shards of at most shard_size samples and max_bytes bytes
    (a single sample larger than max_bytes gets a shard of its own)."""
    shards: list[ShardSpec] = []
    current: list[PlannedSample] = []
    body = 0
    for s in samples:
        size = sample_bytes(s)
        full = len(current) >= shard_size or (max_bytes is not None and tar_bytes(body + size) > max_bytes)
        if current and full:
            shards.append(ShardSpec(split, len(shards), current, tar_bytes(body)))
            current, body = [], 0
        current.append(s)
        body += size
    if current:
        shards.append(ShardSpec(split, len(shards), current, tar_bytes(body)))
    return shards


def write_shard(spec: ShardSpec, opts: EncodeOptions, out_dir: str,
                before_sample: Optional[Callable[[ShardSpec, int], None]] = None) -> ShardResult:
    """Keep an existing complete shard that matches the plan, else write it atomically:
    temporary name, fsync, rename. A final name therefore only ever holds a whole shard.
    `before_sample(spec, i)` runs before sample i goes into the temporary file (the tests' seam: stall
    half-way through a shard, tests/hooked_pack.py)."""
    final = Path(out_dir) / spec.file
    if final.exists():
        digest = _matching_digest(final, spec)
        if digest:
            return ShardResult(spec.file, spec.split, len(spec.samples), final.stat().st_size, digest, True)
    tmp = final.with_name(f".{spec.file}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            sink = _HashingFile(f)
            with tarfile.open(fileobj=sink, mode="w", format=_FORMAT, encoding=_ENCODING) as tar:
                for i, sample in enumerate(spec.samples):
                    if before_sample is not None:
                        f.flush()  # what is written so far is visible in the temporary file
                        before_sample(spec, i)
                    image = _image_bytes(sample, opts)
                    for name, payload, size in sample.members():
                        tar.addfile(_tarinfo(name, size), io.BytesIO(image if payload is None else payload))
            f.flush()
            os.fsync(f.fileno())
        if sink.size != spec.bytes:  # the plan's size arithmetic and tarfile disagree: a bug, not bad data
            raise PackError(f"{spec.file}: wrote {sink.size} bytes, planned {spec.bytes}")
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # only a kill -9 leaves a temporary file (removed by the next run)
        if isinstance(e, OSError) and not e.filename:  # a full disk: say where, as `cannot write FILE`
            raise OSError(e.errno, e.strerror, str(final)) from None
        raise
    os.replace(tmp, final)
    fsync_dir(out_dir)
    return ShardResult(spec.file, spec.split, len(spec.samples), sink.size, sink.hash.hexdigest(), False)


def _image_bytes(sample: PlannedSample, opts: EncodeOptions) -> bytes:
    record = sample.record
    try:
        if record.path is not None:
            with open(record.path, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() == sample.sha256:
                return data  # stored byte for byte; it was decoded and checked while scanning
        _, data, _ = encode(record, opts)
    except (OSError, BadImage) as e:
        raise PackError(f"{record.path}: cannot be read any more since it was scanned: {e}") from None
    if hashlib.sha256(data).hexdigest() != sample.sha256:
        raise PackError(f"{record.path or record.key}: image changed since it was scanned; pack again")
    return data


def _matching_digest(path: Path, spec: ShardSpec) -> str | None:
    """sha256 of an existing shard if its members are exactly the planned ones, else None."""
    if path.stat().st_size != spec.bytes:
        return None
    expected = [(name, payload, size, s.sha256) for s in spec.samples for name, payload, size in s.members()]
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            if len(members) != len(expected):
                return None
            for m, (name, payload, size, image_hash) in zip(members, expected):
                if m.name != name or m.size != size:
                    return None
                data = tar.extractfile(m).read()
                if (data != payload) if payload is not None else hashlib.sha256(data).hexdigest() != image_hash:
                    return None
    except (tarfile.TarError, OSError):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _HashingFile:
    """A write-only file wrapper that hashes and counts what goes through (tarfile needs tell())."""

    def __init__(self, f):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.f.write(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()
