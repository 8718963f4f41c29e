"""What a source hands to the packer: one Record per sample, plus the data set's description."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np


class SourceError(Exception):
    """The source cannot be read at all (missing folder or index file): exit status 2."""


@dataclass
class Record:
    """One sample as the source describes it; the image is read and checked later, in a worker."""

    key: str  # webdataset __key__, from make_key(source id)
    label: int | None  # class index; None for score_distribution
    meta: dict  # becomes the json member
    split: str | None = None  # the source's own split; None means "train pool, carve as needed"
    path: str | None = None  # image file to read ...
    pixels: np.ndarray | None = None  # ... or raw uint8 pixels (H, W) or (H, W, 3), stored as PNG


@dataclass
class Source:
    name: str
    task: str  # "classification" | "score_distribution"
    classes: list[str] | None
    records: list[Record]
    skipped: list[dict] = field(default_factory=list)  # {"id", "path", "reason"} found while listing
    splits_rule: str = ""  # how the source's own splits were used, for manifest source.splits
    options: dict = field(default_factory=dict)  # source-specific options for manifest source
    path: str = ""  # what manifest source.path records


def skip(id_: str, path: str, reason: str) -> dict:
    return {"id": str(id_), "path": str(path), "reason": reason}


_UNSAFE = re.compile(r"[^A-Za-z0-9_/-]")


def make_key(source_id: str) -> str:
    """A webdataset-safe key: webdataset splits a member name at the first '.' of its basename,
    so dots (and anything else unusual) become '_'."""
    return _UNSAFE.sub("_", source_id).strip("/") or "_"


def dedupe_keys(records: list[Record]) -> None:
    """Make keys unique in place: records whose sanitised keys collide all get a suffix from a
    hash of their original id, so the result does not depend on listing order."""
    seen: dict[str, list[Record]] = {}
    for r in records:
        seen.setdefault(r.key, []).append(r)
    for group in seen.values():
        if len(group) > 1:
            for r in group:
                digest = hashlib.sha256(str(r.meta.get("id", r.path)).encode()).hexdigest()[:8]
                r.key = f"{r.key}-{digest}"
