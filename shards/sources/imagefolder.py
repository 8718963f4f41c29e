"""Class-per-folder trees: SRC/<class>/**/<image>, or SRC/{train,val,test}/<class>/**/<image>.

Classes are the class folder names, sorted (the union over the split folders). Every file in a
class folder is a candidate (hidden files excepted); one that is not a readable image is skipped
when scanned. Keys are the file's path relative to SRC without its extension.
"""

from __future__ import annotations

import os
from pathlib import Path

from shards.manifest import SPLITS
from shards.records import Record, Source, SourceError, make_key


def imagefolder(src: str) -> Source:
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
    return Source(root.resolve().name or "imagefolder", "classification", classes, records, path=str(root.resolve()),
                  splits_rule=rule)


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files(class_dir: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(found)
