"""A readable (or JSON) summary of a packed data set, from its manifest alone."""

from __future__ import annotations

import textwrap

from shards.manifest import SPLITS


def summary(m: dict) -> dict:
    """The facts `info` shows, as plain data (what `info --json` prints)."""
    out = {"name": m["name"], "format": m["format"], "task": m["task"]}
    if m["task"] == "classification":
        out["num_classes"] = len(m["classes"])
        out["classes"] = m["classes"]
    else:
        out["bins"] = m["bins"]
    out["splits"] = {}
    for split in SPLITS:
        entry = m["splits"].get(split)
        if entry is None:
            continue
        s = {"samples": entry["count"], "shards": len(entry["shards"]),
             "bytes": sum(sh["bytes"] for sh in entry["shards"])}
        if "class_counts" in entry:
            s["class_min"], s["class_max"] = min(entry["class_counts"]), max(entry["class_counts"])
        out["splits"][split] = s
    out["skipped"] = len(m["skipped"])
    out["image_stats"] = m["image_stats"]
    out["source"] = m["source"]
    out["created"] = m["created"]
    return out


def split_lines(m: dict) -> list[str]:
    """One aligned line per split: samples, shards, MB and per-class min..max."""
    s = summary(m)
    lines = [f"  {'split':<6}{'samples':>10}{'shards':>8}{'MB':>10}  per class"]
    for split, e in s["splits"].items():
        per_class = f"{e['class_min']:,}..{e['class_max']:,}" if "class_min" in e else "-"
        lines.append(f"  {split:<6}{e['samples']:>10,}{e['shards']:>8}{e['bytes'] / 1e6:>10.2f}  {per_class}")
    return lines


def render(m: dict) -> str:
    s = summary(m)
    if m["task"] == "classification":
        names = ", ".join(s["classes"][:10]) + (", ..." if s["num_classes"] > 10 else "")
        what = f"classes  {s['num_classes']}: {names}"
    else:
        what = f"bins     {', '.join(map(str, s['bins']))}"
    stats = s["image_stats"]
    src = s["source"]
    hidden = {"kind", "path", "splits"} | ({"quality"} if not (src.get("format") or src.get("resize")) else set())
    options = ", ".join(f"{k}={v}" for k, v in src.items() if k not in hidden and v not in (None, False))
    lines = [f"{s['name']}  ({s['task']}, {s['format']})", what, *split_lines(m),
             f"skipped  {s['skipped']}",
             f"image stats  channels {stats['channels']}, mean {_floats(stats['mean'])}, "
             f"std {_floats(stats['std'])} ({stats['sampled']:,} train images sampled)",
             f"source   {src['kind']} {src['path']}",
             *_wrap(" " * 9, options),
             *_wrap("splits   ", src["splits"]),
             f"created  {s['created']['time']} by {s['created']['tool']}"]
    return "\n".join(lines)


def _wrap(head: str, text: str) -> list[str]:
    return textwrap.wrap(text, 100, break_on_hyphens=False, initial_indent=head, subsequent_indent=" " * 9)


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"
