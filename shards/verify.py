"""Check a packed data set against its manifest: checksums, counts, decodable images, labels of
the right type, duplicate keys and the same image in two splits."""

from __future__ import annotations

import hashlib
import json
import math
import re
import tarfile
from functools import partial
from pathlib import Path

from shards.images import BadImage, decode
from shards.manifest import CLS_EXT, IMAGE_EXTS, JSON_EXT, SHARD_RE, SPLITS, ManifestError, load_manifest
from shards.parallel import run_tasks

_MEMBER_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's key/extension rule


def verify(directory: str, workers: int = 1) -> tuple[list[str], dict | None]:
    """Return (problems, manifest); no problems means the data set is sound."""
    try:
        m = load_manifest(directory)
    except ManifestError as e:
        return [str(e)], None
    root = Path(directory)
    n_classes = len(m["classes"]) if m["task"] == "classification" else None
    tasks = [(split, shard) for split in SPLITS for shard in m["splits"].get(split, {}).get("shards", [])]
    check = partial(check_shard, root=str(root), n_classes=n_classes)
    results = run_tasks(check, tasks, workers)

    problems = [p for shard_problems, _ in results for p in shard_problems]
    first_seen: dict[str, str] = {}
    by_hash: dict[str, tuple[str, str]] = {}
    counts = {split: [0] * (n_classes or 0) for split in SPLITS}
    for (split, shard), (_, samples) in zip(tasks, results):
        for key, digest, label in samples:
            if key in first_seen:
                problems.append(f"{shard['file']}: duplicate key {key!r} (also in {first_seen[key]})")
            first_seen.setdefault(key, shard["file"])
            other = by_hash.setdefault(digest, (split, key))
            if other[0] != split:
                problems.append(f"{shard['file']}: sample {key!r} has the same image as {other[1]!r} in {other[0]}")
            if n_classes and label is not None and 0 <= label < n_classes:
                counts[split][label] += 1
    if n_classes:
        for split, entry in m["splits"].items():
            if counts[split] != entry["class_counts"]:
                problems.append(f"manifest.json: splits.{split}.class_counts does not match the shards' labels")
    listed = {shard["file"] for _, shard in tasks}
    problems += [f"{p.name}: shard file not listed in manifest.json" for p in sorted(root.iterdir())
                 if SHARD_RE.match(p.name) and p.name not in listed]
    return problems, m


def check_shard(task: tuple[str, dict], root: str, n_classes: int | None) -> tuple[list[str], list[tuple]]:
    """Worker: (problems, [(key, image sha256, label)]) for one shard."""
    split, entry = task
    name, path = entry["file"], Path(root) / entry["file"]
    if not path.is_file():
        return [f"{name}: missing shard"], []
    problems = []
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if path.stat().st_size != entry["bytes"]:
        problems.append(f"{name}: {path.stat().st_size} bytes, manifest says {entry['bytes']}")
    if h.hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 mismatch (file {h.hexdigest()[:12]}..., manifest {entry['sha256'][:12]}...)")

    groups: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                match = _MEMBER_RE.match(member.name)
                if not match:
                    problems.append(f"{name}: member {member.name!r} has no key.extension name")
                    continue
                key, ext = match.groups()
                if not groups or groups[-1][0] != key:
                    groups.append((key, {}))
                if ext in groups[-1][1]:
                    problems.append(f"{name}: sample {key!r} has two {ext} members")
                groups[-1][1][ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{name}: unreadable tar ({type(e).__name__}: {e})")

    samples = []
    for key, members in groups:
        sample_problems, digest, label = _check_sample(members, n_classes)
        problems += [f"{name}: sample {key!r}: {p}" for p in sample_problems]
        if digest:
            samples.append((key, digest, label))
    if len(groups) != entry["count"]:
        problems.append(f"{name}: {len(groups)} samples, manifest says {entry['count']}")
    return problems, samples


def _check_sample(members: dict[str, bytes], n_classes: int | None) -> tuple[list[str], str | None, int | None]:
    problems = []
    image_exts = [e for e in members if e in IMAGE_EXTS]
    digest = None
    if len(image_exts) != 1:
        problems.append(f"expected one image member ({'/'.join(IMAGE_EXTS)}), found {len(image_exts)}")
    else:
        data = members[image_exts[0]]
        digest = hashlib.sha256(data).hexdigest()
        try:
            decode(data)
        except BadImage as e:
            problems.append(f"image does not decode: {e}")
    label = None
    if n_classes is not None:
        text = members.get(CLS_EXT, b"").decode("ascii", "replace").strip()
        if not re.fullmatch(r"\d+", text):
            problems.append(f"cls {text!r} is not a class index")
        elif not int(text) < n_classes:
            problems.append(f"cls {text} out of range (0..{n_classes - 1})")
        else:
            label = int(text)
    try:
        meta = json.loads(members.get(JSON_EXT, b""))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except ValueError as e:
        problems.append(f"json member missing or invalid ({e})")
        meta = {}
    if n_classes is None and meta:
        dist = meta.get("distribution")
        ok = (isinstance(dist, list) and len(dist) == 10
              and all(isinstance(v, (int, float)) and v >= 0 for v in dist)
              and math.isclose(sum(dist), 1.0, abs_tol=1e-6))
        if not ok:
            problems.append("json distribution is not 10 non-negative numbers summing to 1")
    return problems, digest, label
