"""Shard data sets on a web server or object store, for clusters without a shared filesystem.

`data.path` may name a data set by URL instead of a folder:
    https://host/datasets/cifar10            the folder's files under that prefix (manifest.json, train-000000.tar, ...)
    pipe:aws s3 cp s3://bucket/cifar10/{} -  any command that writes the file named in place of {} to stdout
Files are opened with webdataset's `gopen` (curl for http/https, a pipe for `pipe:`), the reader WebDataset
itself uses. The run does not stream from the URL: each node copies the data set once into node-local scratch
(`stage`), checking every shard against the manifest's sha256, and trains on the copy with the usual
random-access reader. That keeps what streaming would lose: the position-addressable sample order (exact
resume, DDP equal to one process) and the in-memory cache. Staging resumes shard by shard: an interrupted copy
keeps its complete, verified shards, and a data set whose manifest changed on the server is copied again.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from shards.manifest import MANIFEST_NAME, ManifestError, validate_manifest

_CHUNK = 1 << 20


class RemoteError(RuntimeError):
    """A file of a remote data set cannot be fetched, or is not what its manifest says."""


def is_remote(path: str | os.PathLike) -> bool:
    text = str(path)
    return text.startswith("pipe:") or "://" in text


def file_url(base: str, name: str) -> str:
    """The URL of file `name` of the data set at `base`."""
    if base.startswith("pipe:"):
        if "{}" not in base:
            raise RemoteError(f"{base}: a pipe: data set needs {{}} where the file name goes, "
                              "e.g. pipe:aws s3 cp s3://bucket/data/{} -")
        return base.replace("{}", name)
    return f"{base.rstrip('/')}/{name}"


def _open(url: str):
    from webdataset.gopen import gopen  # the reader WebDataset uses: curl for http(s), a pipe for pipe:
    return gopen(url, "rb")


def fetch_bytes(base: str, name: str) -> bytes:
    url = file_url(base, name)
    try:
        with _open(url) as f:
            data = f.read()
    except Exception as e:  # gopen raises what its pipe or curl says: one message naming the URL
        raise RemoteError(f"{url}: cannot be read ({e})") from None
    if not data:
        raise RemoteError(f"{url}: empty (a wrong URL, or the server refused)")
    return data


def fetch_manifest(base: str) -> dict:
    """The remote data set's manifest, validated (no shard is fetched)."""
    data = fetch_bytes(base, MANIFEST_NAME)
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise ManifestError(f"{file_url(base, MANIFEST_NAME)}: not JSON ({e})") from None
    validate_manifest(manifest, file_url(base, MANIFEST_NAME))
    return manifest


def _fetch_shard(base: str, shard: dict, dest: Path) -> None:
    """Copy one shard to `dest` through a temporary file, checking its size and sha256 on the way."""
    url = file_url(base, shard["file"])
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with _open(url) as src, open(tmp, "wb") as out:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if size != shard["bytes"] or digest.hexdigest() != shard["sha256"]:
            raise RemoteError(f"{url}: {size} bytes with sha256 {digest.hexdigest()[:12]}..., the manifest says "
                              f"{shard['bytes']} bytes, {shard['sha256'][:12]}...: the server holds another version")
        os.replace(tmp, dest)
    except RemoteError:
        raise
    except Exception as e:
        raise RemoteError(f"{url}: cannot be copied to {dest} ({e})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _complete(dest: Path, shard: dict) -> bool:
    """A shard copied before: its size and a marker that its sha256 was checked when it was copied."""
    path = dest / shard["file"]
    marker = dest / f".{shard['file']}.sha256"
    try:
        return path.stat().st_size == shard["bytes"] and marker.read_text().strip() == shard["sha256"]
    except OSError:
        return False


def stage(base: str, scratch: Path, log: Callable[[str], None] = print) -> Path:
    """The local copy of the data set at URL `base` under `scratch` (node-local), made or completed now; the
    first process of a node copies under a file lock, the others wait for it and find the copy done."""
    manifest = fetch_manifest(base)
    dest = Path(scratch) / hashlib.sha256(base.encode()).hexdigest()[:16]
    try:
        dest.mkdir(parents=True, exist_ok=True)
        lock = open(dest / ".lock", "a")
    except OSError as e:
        raise RemoteError(f"{base}: cannot stage into {dest} ({e}); set $SLURM_TMPDIR or $TMPDIR to node-local "
                          "scratch space with room") from None
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        raw = json.dumps(manifest, sort_keys=True)
        try:
            same = json.dumps(json.loads((dest / MANIFEST_NAME).read_text()), sort_keys=True) == raw
        except (OSError, ValueError):
            same = False
        if not same:
            (dest / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest vouches for a copy being changed
        shards = [s for info in manifest["splits"].values() for s in info["shards"]]
        todo = [s for s in shards if not _complete(dest, s)]
        if todo:
            total = sum(s["bytes"] for s in todo)
            log(f"staging {len(todo)} of {len(shards)} shards ({total / 1e6:.1f} MB) from {base} into {dest}")
            for i, shard in enumerate(todo, 1):
                (dest / f".{shard['file']}.sha256").unlink(missing_ok=True)
                _fetch_shard(base, shard, dest / shard["file"])
                (dest / f".{shard['file']}.sha256").write_text(shard["sha256"] + "\n")
                if i % 10 == 0 or i == len(todo):
                    log(f"staged {i}/{len(todo)} shards")
        listed = {s["file"] for s in shards}
        for old in dest.glob("*.tar"):  # shards of an earlier version of the data set
            if old.name not in listed:
                old.unlink()
                (dest / f".{old.name}.sha256").unlink(missing_ok=True)
        if not same or todo:
            tmp = dest / f".{MANIFEST_NAME}.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, dest / MANIFEST_NAME)
        fcntl.flock(lock, fcntl.LOCK_UN)
    return dest
