"""Split assignment and sample order. Both depend only on sample keys, labels and the seed,
never on file order or the number of workers."""

from __future__ import annotations

import hashlib
import math

from shards.manifest import SPLITS
from shards.records import Record, skip


def rank(seed: int, key: str, salt: str = "") -> str:
    """The sort key of the seeded rules: sha256 of "<seed>:<key>" (salted for other uses)."""
    return hashlib.sha256(f"{seed}:{salt}{key}".encode()).hexdigest()


def assign_splits(records: list[Record], val_fraction: float, test_fraction: float, seed: int,
                  source_rule: str) -> tuple[dict[str, str], str]:
    """Map key -> split. The source's own splits are kept; a missing val (test) split is carved
    from the source's train: per class, the first n rounded half up of n*fraction samples
    ranked by sha256("<seed>:<key>") go to val, the next ones to test."""
    given = {r.split for r in records if r.split not in (None, "train")}
    carve = [(s, f) for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in given and f > 0]
    result: dict[str, str] = {}
    pools: dict[int | None, list[Record]] = {}
    for r in records:
        if r.split in (None, "train"):
            pools.setdefault(r.label, []).append(r)
        else:
            result[r.key] = r.split
    for pool in pools.values():
        pool.sort(key=lambda r: rank(seed, r.key))
        start = 0
        for split, fraction in carve:
            n = math.floor(len(pool) * fraction + 0.5)
            for r in pool[start:start + n]:
                result[r.key] = split
            start += n
        for r in pool[start:]:
            result[r.key] = "train"

    parts = [source_rule] if source_rule else []
    if carve:
        group = "per class" if any(r.label is not None for r in records) else "over all samples"
        names = " then ".join(f"{s} {f:g}" for s, f in carve)
        parts.append(f"carved from train {group}: rank samples by sha256('{seed}:' + key), the first "
                     f"round-half-up(n * fraction) go to {names}")
    parts.append(f"within a split samples are ordered by sha256('{seed}:order:' + key)")
    return result, "; ".join(parts)


def order_key(seed: int, key: str) -> str:
    # A hash order rather than key order: keys often start with the class name, and shards of one
    # class would defeat the loader's shard shuffle and small shuffle buffers.
    return rank(seed, key, "order:")


def stats_keys(train_keys: list[str], seed: int, limit: int) -> set[str]:
    """The deterministic train subsample that image_stats are computed from."""
    return set(sorted(train_keys, key=lambda k: rank(seed, k, "stats:"))[:limit])


def drop_cross_split_duplicates(items: list[tuple[str, str, str]]) -> tuple[set[str], list[dict]]:
    """items: (key, split, image sha256). An image found in several splits is kept only in the
    most held-out one (test > val > train); returns (keys to drop, skipped entries)."""
    priority = {s: i for i, s in enumerate(reversed(SPLITS))}  # test 0, val 1, train 2
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for key, split, digest in items:
        by_hash.setdefault(digest, []).append((split, key))
    drop: set[str] = set()
    skipped = []
    for group in by_hash.values():
        if len({s for s, _ in group}) < 2:
            continue
        group.sort(key=lambda sk: (priority[sk[0]], sk[1]))
        keep_split, keep_key = group[0]
        for split, key in group:
            if split != keep_split:
                drop.add(key)
                skipped.append(skip(key, "", f"same image as {keep_key} in {keep_split} (dropped from {split})"))
    skipped.sort(key=lambda s: s["id"])
    return drop, skipped
