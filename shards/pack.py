"""One pack run: list the source, assign splits, scan every image, plan shards, write them, then
the manifest. Re-running after an interruption keeps every complete shard that matches the plan.

Two passes over the images: the scan decodes each one (skipping bad files, measuring sizes and
content hashes, sampling image_stats), so the shard plan (cross-split duplicates removed, byte
limits honoured) is fixed before any shard is written; the write pass then only copies bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from shards import images, parallel, splits
from shards.dirlock import acquire as acquire_lock
from shards.images import BadImage, EncodeOptions
from shards.manifest import BINS, FORMAT, MANIFEST_NAME, SHARD_RE, SPLITS, STATS_SAMPLE, TOOL, write_json_atomic
from shards.progress import Progress
from shards.records import Record, Source, dedupe_keys, skip
from shards.sources import open_source
from shards.writer import PackError, PlannedSample, ShardResult, ShardSpec, plan_shards, write_shard

STATE_NAME = ".pack-state.json"  # scan results of an unfinished pack, so a resume need not rescan
LOCK_NAME = ".pack-lock"  # the pack writing into the folder (shards/dirlock.py), while it runs
_TEMP_RE = re.compile(r"^\.((train|val|test)-\d{6}\.tar|manifest\.json|\.pack-state\.json|pack-state\.json)\.tmp-\d+$")


class UsageError(Exception):
    """Wrong command line or output folder; nothing was written (exit status 2)."""


class StrictError(Exception):
    """--strict and something had to be skipped (exit status 1)."""


@dataclass
class PackOptions:
    kind: str
    src: str
    out: str
    workers: int = 1
    shard_size: int = 1000
    max_shard_bytes: int | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 0
    strict: bool = False
    resize: int | None = None
    format: str | None = None
    quality: int = 95
    name: str | None = None
    source_options: dict = field(default_factory=dict)  # kind-specific (coarse, upscale, ava_txt, ...)
    submitit_array: int | None = None  # run scan and write as a job array of this many jobs
    submitit_cluster: str = "slurm"
    submitit_folder: str | None = None
    slurm_partition: str | None = None
    replace: bool = False  # replace a complete data set in `out` packed from the same source with other options
    # the tests' seam, not an option: write_shard's before_sample (e.g. stall half-way through a shard)
    before_sample: Optional[Callable[[ShardSpec, int], None]] = None


class Scan(NamedTuple):
    """What the scan learnt about one record (JSON-able, kept in the state file for a resume)."""

    ext: str | None  # stored image extension
    size: int  # stored image bytes
    sha256: str | None  # of the stored image bytes
    moments: dict | None  # pixel sums, for train records in the image_stats sample
    reason: str | None  # why the record is skipped; None when it is good


def pack(opts: PackOptions) -> dict:
    """Pack and return {"manifest": ..., "written_bytes", "new_shards", "kept_shards", "seconds"}."""
    start = time.monotonic()
    _check_numbers(opts)
    source = open_source(opts.kind, opts.src, opts.source_options)
    dedupe_keys(source.records)
    name = opts.name or source.name
    out = Path(opts.out)
    _check_output(out, name, opts.kind, source.path)
    if opts.strict and source.skipped:
        raise StrictError(_describe(source.skipped[0]))

    _check_options(out, opts, source)
    split_of, rule = splits.assign_splits(source.records, opts.val_fraction, opts.test_fraction, opts.seed,
                                          source.splits_rule)
    want_stats = splits.stats_keys([k for k, s in split_of.items() if s == "train"], opts.seed, STATS_SAMPLE)
    enc = EncodeOptions(opts.format, opts.resize, opts.quality)
    fingerprint = _fingerprint(opts, name, source, split_of)
    scanned = _load_state(out, fingerprint) or _scan(opts, out, source.records, want_stats, enc)
    bad = [skip(r.key, r.path or "", scanned[r.key].reason) for r in source.records if scanned[r.key].reason]
    if opts.strict and bad:
        raise StrictError(_describe(bad[0]))

    out.mkdir(parents=True, exist_ok=True)
    # one pack at a time per folder: two would interleave shards of two plans under one manifest
    lock = acquire_lock(out / LOCK_NAME, what=f"output folder {out}", log=print)
    try:
        _remove_temp_files(out)
        write_json_atomic(out / STATE_NAME, {"name": name, "source": {"kind": opts.kind, "path": source.path},
                                             "fingerprint": fingerprint, "scan": scanned})

        good = [r for r in source.records if not scanned[r.key].reason]
        drop, dups = splits.drop_cross_split_duplicates(
            [(r.key, split_of[r.key], scanned[r.key].sha256) for r in good])
        paths = {r.key: r.path or "" for r in good}
        for d in dups:
            d["path"] = paths[d["id"]]
        if opts.strict and dups:
            raise StrictError(_describe(dups[0]))
        kept = [r for r in good if r.key not in drop]
        plan = _plan(opts, kept, split_of, scanned)
        if not plan:
            raise PackError(f"{opts.src}: no readable sample to pack ({len(source.skipped) + len(bad)} skipped)")

        _retire_old_manifest(out, plan)
        bar = Progress("write", len(kept))
        try:
            written: list[ShardResult] = _map(opts, out, partial(write_shard, opts=enc, out_dir=str(out),
                                                                       before_sample=opts.before_sample), plan,
                                              lambda res: bar.update(res.count))
        except PackError:
            (out / STATE_NAME).unlink(missing_ok=True)  # the scan no longer describes the source
            raise
        finally:
            bar.close()
        _remove_stale_shards(out, {s.file for s in plan})

        stats_parts = [scanned[r.key].moments for r in kept if r.key in want_stats]
        source_info = {"kind": opts.kind, "path": source.path,
                       "splits": rule + "; an image found in several splits is kept only in the most held-out one",
                       **_options(opts, source)}
        manifest = build_manifest(name, source, plan, written, stats_parts, source.skipped + bad + dups,
                                  source_info)
        write_json_atomic(out / MANIFEST_NAME, manifest)
        (out / STATE_NAME).unlink(missing_ok=True)
        if opts.submitit_array and not opts.submitit_folder:
            shutil.rmtree(out / ".submitit", ignore_errors=True)
        new = [w for w in written if not w.reused]
        return {"manifest": manifest, "written_bytes": sum(w.bytes for w in new), "new_shards": len(new),
                "kept_shards": len(written) - len(new), "seconds": time.monotonic() - start}
    finally:
        lock.release()


def _scan(opts: PackOptions, out: Path, records: list[Record], want_stats: set[str],
          enc: EncodeOptions) -> dict[str, Scan]:
    chunk = max(1, min(256, math.ceil(len(records) / (opts.workers * 16))))
    tasks = [[(r, r.key in want_stats) for r in records[i:i + chunk]] for i in range(0, len(records), chunk)]
    bar = Progress("scan", len(records))
    results = _map(opts, out, partial(scan_chunk, opts=enc), tasks, lambda rs: bar.update(len(rs)))
    bar.close()
    return {key: scan for chunk_results in results for key, scan in chunk_results}


def scan_chunk(chunk: list[tuple[Record, bool]], opts: EncodeOptions) -> list[tuple[str, Scan]]:
    """Worker: read, decode and encode each record; full decodes only for the image_stats sample."""
    results = []
    for record, want_stats in chunk:
        try:
            ext, data, img = images.encode(record, opts, full_decode=want_stats)
        except BadImage as e:
            results.append((record.key, Scan(None, 0, None, None, str(e))))
            continue
        stats = images.moments(img) if want_stats else None
        results.append((record.key, Scan(ext, len(data), hashlib.sha256(data).hexdigest(), stats, None)))
    return results


def _plan(opts: PackOptions, records: list[Record], split_of: dict[str, str],
          scanned: dict[str, Scan]) -> list[ShardSpec]:
    plan: list[ShardSpec] = []
    for split in SPLITS:
        ordered = sorted((r for r in records if split_of[r.key] == split),
                         key=lambda r: splits.order_key(opts.seed, r.key))
        samples = [PlannedSample(r, scanned[r.key].ext, scanned[r.key].size, scanned[r.key].sha256) for r in ordered]
        plan += plan_shards(split, samples, opts.shard_size, opts.max_shard_bytes)
    return plan


def build_manifest(name: str, source: Source, plan: list[ShardSpec], written: list[ShardResult],
                   stats_parts: list[dict], skipped: list[dict], source_info: dict) -> dict:
    classification = source.task == "classification"
    split_entries = {}
    for split in SPLITS:
        specs = [(s, w) for s, w in zip(plan, written) if s.split == split]
        if not specs:
            continue
        entry: dict = {"count": sum(len(s.samples) for s, _ in specs)}
        if classification:
            counts = [0] * len(source.classes)
            for s, _ in specs:
                for sample in s.samples:
                    counts[sample.record.label] += 1
            entry["class_counts"] = counts
        entry["shards"] = [{"file": w.file, "count": w.count, "bytes": w.bytes, "sha256": w.sha256} for _, w in specs]
        split_entries[split] = entry
    manifest = {"format": FORMAT, "name": name, "task": source.task}
    manifest.update({"classes": source.classes} if classification else {"bins": BINS})
    manifest.update({
        "splits": split_entries,
        "image_stats": images.combine_moments(stats_parts),
        "skipped": skipped,
        "source": source_info,
        "created": {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tool": TOOL},
    })
    return manifest


def _map(opts: PackOptions, out: Path, fn, tasks: list, on_done) -> list:
    if not opts.submitit_array:
        return parallel.run_tasks(fn, tasks, opts.workers, on_done)
    if not tasks:
        return []
    folder = opts.submitit_folder or str(out / ".submitit")
    results = parallel.run_array(fn, tasks, opts.submitit_array, opts.workers, opts.submitit_cluster, folder,
                                 opts.slurm_partition)
    for r in results:
        on_done(r)
    return results


def _check_numbers(opts: PackOptions) -> None:
    problems = []
    if not (0 <= opts.val_fraction < 1 and 0 <= opts.test_fraction < 1
            and opts.val_fraction + opts.test_fraction < 1):
        problems.append("--val-fraction and --test-fraction must be in [0, 1) with a sum below 1")
    if opts.workers < 1 or opts.shard_size < 1:
        problems.append("--workers and --shard-size must be at least 1")
    if opts.max_shard_bytes is not None and opts.max_shard_bytes < 10240:
        problems.append("--max-shard-bytes must be at least 10240 (one tar record)")
    if opts.resize is not None and opts.resize < 1:
        problems.append("--resize must be at least 1")
    if not 1 <= opts.quality <= 100:
        problems.append("--quality must be in 1..100")
    if opts.submitit_array is not None and opts.submitit_array < 1:
        problems.append("--submitit-array must be at least 1")
    if problems:
        raise UsageError("; ".join(problems))


def _check_output(out: Path, name: str, kind: str, path: str) -> None:
    """Refuse an output folder that holds another data set (or something else entirely)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a folder")
    if not out.is_dir():
        return
    for marker in (MANIFEST_NAME, STATE_NAME):
        try:
            other = json.loads((out / marker).read_text(encoding="utf-8"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            raise UsageError(f"{out / marker}: unreadable; remove it or choose another output folder") from None
        theirs = (other.get("name"), (other.get("source") or {}).get("kind"), (other.get("source") or {}).get("path"))
        if theirs != (name, kind, path):
            raise UsageError(f"{out}: holds another data set ({theirs[0]!r}, {theirs[1]} from {theirs[2]}); "
                             f"choose another output folder")
        return
    if any(SHARD_RE.match(p.name) for p in out.iterdir()):
        raise UsageError(f"{out}: holds shard files but no {MANIFEST_NAME}; choose another output folder")


def _options(opts: PackOptions, source: Source) -> dict:
    """The options that decide what the data set holds, as the manifest's "source" records them."""
    return {"seed": opts.seed, "val_fraction": opts.val_fraction, "test_fraction": opts.test_fraction,
            "shard_size": opts.shard_size, "max_shard_bytes": opts.max_shard_bytes, "resize": opts.resize,
            "format": opts.format, "quality": opts.quality, **source.options}


def _check_options(out: Path, opts: PackOptions, source: Source) -> None:
    """A complete data set in `out` packed from this source with other options is replaced only when asked:
    runs train on it by its path, and a resumed run would carry on with other samples (already-seen images
    now in validation) without a word."""
    try:
        old = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # nothing complete there (an interrupted pack resumes or starts over as before)
    theirs = old.get("source") or {}
    mine = _options(opts, source)
    changed = [f"{k} {theirs.get(k)!r} -> {v!r}" for k, v in mine.items() if k in theirs and theirs[k] != v]
    if changed and not opts.replace:
        raise UsageError(f"{out}: holds {old.get('name')!r} packed from this source with other options "
                         f"({', '.join(changed)}); packing again would replace the data set under every run that "
                         "trains on it (a resumed run would go on with other samples). Pass --replace to do "
                         "it, or choose another output folder")


def _fingerprint(opts: PackOptions, name: str, source: Source, split_of: dict) -> str:
    """Everything that fixes the scan results, so a resume reuses them only when still valid."""
    h = hashlib.sha256()
    h.update(json.dumps([TOOL, name, opts.kind, source.path, asdict(EncodeOptions(opts.format, opts.resize,
                         opts.quality))], sort_keys=True).encode())
    for r in source.records:
        h.update(json.dumps([r.key, split_of[r.key], r.label, r.path, r.meta], sort_keys=True).encode())
        if r.pixels is not None:
            h.update(r.pixels.tobytes())
    return h.hexdigest()


def _load_state(out: Path, fingerprint: str) -> dict[str, Scan] | None:
    try:
        state = json.loads((out / STATE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != fingerprint:
        return None
    return {key: Scan(*value) for key, value in state["scan"].items()}


def _retire_old_manifest(out: Path, plan: list[ShardSpec]) -> None:
    """Remove an earlier manifest unless it already lists exactly the planned shards, so that no
    reader sees a manifest whose shards are being replaced; the new one is written at the end."""
    try:
        old = json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))
        listed = [(s["file"], s["count"], s["bytes"]) for e in old["splits"].values() for s in e["shards"]]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    if listed != [(s.file, len(s.samples), s.bytes) for s in plan]:
        (out / MANIFEST_NAME).unlink(missing_ok=True)


def _remove_temp_files(out: Path) -> None:
    for p in out.iterdir():
        if _TEMP_RE.match(p.name):
            p.unlink(missing_ok=True)


def _remove_stale_shards(out: Path, planned: set[str]) -> None:
    """Shards of an earlier plan (other options) that this plan does not have."""
    for p in out.iterdir():
        if SHARD_RE.match(p.name) and p.name not in planned:
            p.unlink()


def _describe(item: dict) -> str:
    where = item["path"] or item["id"]
    return f"{where}: {item['reason']} (id {item['id']}; --strict)"
