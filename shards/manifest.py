"""The shard data set contract (DESIGN.md §1): constants, manifest validation and atomic writes.

The training data loader imports this module, so it depends on nothing but the standard library.

    >>> m = load_manifest("data/cifar10")          # raises ManifestError on any problem
    >>> shard_paths("data/cifar10", m, "train")    # ['data/cifar10/train-000000.tar', ...]
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from shards import __version__

FORMAT = "imgtrain-shards/1"
TOOL = f"imgtrain-shards {__version__}"
MANIFEST_NAME = "manifest.json"

SPLITS = ("train", "val", "test")
TASKS = ("classification", "score_distribution")
BINS = list(range(1, 11))  # AVA score bins

# Tar member extensions of one sample (webdataset: "<__key__>.<ext>").
IMAGE_EXTS = ("jpg", "png", "webp")
CLS_EXT = "cls"  # class index as ASCII digits (classification only)
JSON_EXT = "json"  # metadata (source id, class name; AVA votes and distribution)

SHARD_RE = re.compile(r"^(train|val|test)-(\d{6})\.tar$")
STATS_SAMPLE = 2000  # image_stats come from at most this many train images


class ManifestError(ValueError):
    """A manifest.json that is missing, unreadable or not in the imgtrain-shards/1 structure."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def shard_paths(directory: str | os.PathLike, manifest: dict, split: str) -> list[str]:
    """Paths of one split's shards in manifest order ([] when the split is absent)."""
    entry = manifest["splits"].get(split)
    return [] if entry is None else [str(Path(directory) / s["file"]) for s in entry["shards"]]


def load_manifest(directory: str | os.PathLike) -> dict:
    """Read and validate ``DIR/manifest.json`` (``directory`` may also be the file itself)."""
    path = Path(directory)
    if path.is_dir() or path.name != MANIFEST_NAME:
        path = path / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from None
    validate_manifest(data, str(path))
    return data


def validate_manifest(m: object, where: str = MANIFEST_NAME) -> None:
    """Raise ManifestError naming ``where`` and the dotted key of the first problem found."""

    def fail(key: str, problem: str):
        raise ManifestError(f"{where}: {key}: {problem}")

    def need(obj: dict, key: str, types, prefix: str = ""):
        full = f"{prefix}{key}"
        if key not in obj:
            fail(full, "missing")
        value = obj[key]
        # bool is an int subclass; never accept it where a number is expected.
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            fail(full, f"expected {_names(types)}, got bool")
        if not isinstance(value, types):
            fail(full, f"expected {_names(types)}, got {type(value).__name__}")
        return value

    if not isinstance(m, dict):
        fail("<top>", "expected an object")
    if need(m, "format", str) != FORMAT:
        fail("format", f"expected {FORMAT!r}, got {m['format']!r}")
    need(m, "name", str)
    task = need(m, "task", str)
    if task not in TASKS:
        fail("task", f"expected one of {', '.join(TASKS)}, got {task!r}")
    n_classes = 0
    if task == "classification":
        classes = need(m, "classes", list)
        if not classes or not all(isinstance(c, str) for c in classes):
            fail("classes", "expected a non-empty list of names")
        if len(set(classes)) != len(classes):
            fail("classes", "names are not unique")
        n_classes = len(classes)
    else:
        bins = need(m, "bins", list)
        if not bins or not all(isinstance(b, int) and not isinstance(b, bool) for b in bins):
            fail("bins", "expected a non-empty list of integers")

    splits = need(m, "splits", dict)
    if not splits:
        fail("splits", "no split")
    for split, entry in splits.items():
        p = f"splits.{split}."
        if split not in SPLITS:
            fail(f"splits.{split}", f"unknown split (expected {', '.join(SPLITS)})")
        if not isinstance(entry, dict):
            fail(f"splits.{split}", "expected an object")
        count = need(entry, "count", int, p)
        if count < 1:
            fail(p + "count", "an empty split must be left out")
        if task == "classification":
            cc = need(entry, "class_counts", list, p)
            if len(cc) != n_classes or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cc):
                fail(p + "class_counts", f"expected {n_classes} non-negative integers")
            if sum(cc) != count:
                fail(p + "class_counts", f"sums to {sum(cc)}, count is {count}")
        shards = need(entry, "shards", list, p)
        if not shards:
            fail(p + "shards", "no shard")
        total = 0
        for i, s in enumerate(shards):
            sp = f"{p}shards[{i}]."
            if not isinstance(s, dict):
                fail(sp[:-1], "expected an object")
            file = need(s, "file", str, sp)
            match = SHARD_RE.match(file)
            if not match or match.group(1) != split:
                fail(sp + "file", f"expected {split}-NNNNNN.tar, got {file!r}")
            n = need(s, "count", int, sp)
            if n < 1:
                fail(sp + "count", "must be at least 1")
            if need(s, "bytes", int, sp) < 1024:
                fail(sp + "bytes", "too small for a tar file")
            if not re.fullmatch(r"[0-9a-f]{64}", need(s, "sha256", str, sp)):
                fail(sp + "sha256", "expected 64 lowercase hex digits")
            total += n
        if total != count:
            fail(p + "count", f"is {count} but the shards hold {total}")

    stats = need(m, "image_stats", dict)
    channels = need(stats, "channels", int, "image_stats.")
    if channels not in (1, 3):
        fail("image_stats.channels", f"expected 1 or 3, got {channels}")
    for key in ("mean", "std"):
        values = need(stats, key, list, "image_stats.")
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        if len(values) != channels or not ok:
            fail(f"image_stats.{key}", f"expected {channels} numbers")
    if need(stats, "sampled", int, "image_stats.") < 0:
        fail("image_stats.sampled", "must be >= 0")

    for i, item in enumerate(need(m, "skipped", list)):
        if not isinstance(item, dict):
            fail(f"skipped[{i}]", "expected an object")
        for key in ("id", "path", "reason"):
            need(item, key, str, f"skipped[{i}].")

    source = need(m, "source", dict)
    for key, types in (("kind", str), ("path", str), ("splits", str), ("seed", int),
                       ("val_fraction", (int, float)), ("test_fraction", (int, float))):
        need(source, key, types, "source.")
    created = need(m, "created", dict)
    need(created, "time", str, "created.")
    need(created, "tool", str, "created.")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    """Write JSON to a temporary file, fsync, then rename: readers see the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half file behind; the old `path` is untouched
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename durable (the directory entry itself must reach the disk)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"str": "string", "int": "integer", "float": "number", "list": "list",
                        "dict": "object"}.get(t.__name__, t.__name__) for t in types)
