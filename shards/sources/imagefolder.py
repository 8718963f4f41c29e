"""Class-per-folder trees: SRC/<class>/**/<image>, or SRC/{train,val,test}/<class>/**/<image>.

Classes are the class folder names, sorted (the union over the split folders). Every file in a
class folder is a candidate (hidden files excepted); one that is not a readable image is skipped
when scanned. Keys are the file's path relative to SRC without its extension.

Fixed split lists (``--split-list NAME=FILE``, repeatable or joined as ``--split-lists train=A,val=B``,
NAME train, val or test; e.g. 15-Scene's
fixed 2,985 train / 1,500 validation): each FILE holds one path a line, relative to SRC as the keys
are (``bedroom/image_0001.jpg``; a leading ``./`` is ignored, blank lines and lines starting with ``#`` too).
Only listed files are packed, each in the split of its list (split folders, if any, are overridden);
files found in class folders but in no list are left out and counted (source.unlisted in the
manifest), not reported one by one. A listed path that is no file in a class folder, or a path
listed twice, is an error naming the list file and line. A split no list gives (val, test) is
carved from the listed train as usual (--val-fraction / --test-fraction; 0 to carve none).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shards.manifest import SPLITS
from shards.records import Record, Source, SourceError, make_key


def imagefolder(src: str, split_list: list[str] | None = None) -> Source:
    root = Path(src)
    if not root.is_dir():
        raise SourceError(f"{src}: no such folder")
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs and "train" not in split_dirs:
        raise SourceError(f"{src}: has {', '.join(split_dirs)}/ but no train/ folder")
    tops = split_dirs or {None: root}
    classes = sorted({d.name for top in tops.values() for d in _subdirs(top)})
    if not classes:
        raise SourceError(f"{src}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for split, top in tops.items():
        for class_dir in _subdirs(top):
            for path in _files(class_dir):
                rel = path.relative_to(root).as_posix()
                meta = {"id": rel, "class": class_dir.name, "label": index[class_dir.name]}
                key = make_key(rel.rsplit(".", 1)[0] if "." in path.name else rel)
                records.append(Record(key, index[class_dir.name], meta, split=split, path=str(path)))
    rule = (f"{', '.join(s for s in split_dirs)} = the source's {', '.join(s + '/' for s in split_dirs)} folders"
            if split_dirs else "")
    options = {}
    if split_list:
        lists = parse_split_lists(split_list)
        records, unlisted = apply_split_lists(records, lists, root)
        rule = ", ".join(f"{name} = the files listed in {path}" for name, path in lists.items())
        options = {"split_lists": {name: str(path) for name, path in lists.items()}, "unlisted": unlisted}
    return Source(root.resolve().name or "imagefolder", "classification", classes, records, path=str(root.resolve()),
                  splits_rule=rule, options=options)


def parse_split_lists(values: list[str]) -> dict[str, Path]:
    """["train=FILE", "val=FILE"] or ["train=FILE,val=FILE"] -> {"train": Path, "val": Path}; SourceError
    on a bad value."""
    lists: dict[str, Path] = {}
    values = [part for v in values for part in re.split(r",(?=\s*(?:train|val|test)=)", v)]  # train=A,val=B
    for value in values:
        name, sep, path = value.partition("=")
        name = name.strip()
        if not sep or not path.strip():
            raise SourceError(f"--split-list {value!r}: expected NAME=FILE, e.g. train=lists/train.txt")
        if name not in SPLITS:
            raise SourceError(f"--split-list {value!r}: the split must be one of {', '.join(SPLITS)}")
        if name in lists:
            raise SourceError(f"--split-list: two lists for {name}")
        lists[name] = Path(path.strip())
    return {name: lists[name] for name in SPLITS if name in lists}


def apply_split_lists(records: list[Record], lists: dict[str, Path], root: Path) -> tuple[list[Record], int]:
    """Keep the listed records, each with the split of its list; return them and how many were left out."""
    by_id = {r.meta["id"]: r for r in records}
    where: dict[str, str] = {}  # id -> "FILE line N" of its first listing
    kept = []
    for split, path in lists.items():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise SourceError(f"{path}: cannot read the {split} list: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise SourceError(f"{path}: the {split} list is not UTF-8 text") from None
        for n, line in enumerate(lines, 1):
            rel = line.strip().replace("\\", "/")
            while rel.startswith("./"):
                rel = rel[2:]
            if not rel or rel.startswith("#"):
                continue
            here = f"{path} line {n}"
            if rel in where:
                raise SourceError(f"{here}: {rel} is listed again (first at {where[rel]})")
            record = by_id.get(rel)
            if record is None:
                problem = "is not an image in a class folder" if (root / rel).is_file() else "does not exist"
                raise SourceError(f"{here}: {rel} {problem} (in {root})")
            where[rel] = here
            record.split = split
            kept.append(record)
    kept.sort(key=lambda r: r.meta["id"])
    return kept, len(records) - len(kept)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(class_dir: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)
