"""Tiny ImageNet (tiny-imagenet-200/): wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
val/images/*.JPEG labelled by val/val_annotations.txt. The test/ images have no labels and are
not packed. Classes are the wnids sorted; their names are the first synonym in words.txt
(with the wnid appended where two classes would share a name).
"""

from __future__ import annotations

from pathlib import Path

from shards.records import Record, Source, SourceError, make_key, skip


def tinyimagenet(src: str) -> Source:
    root = next((p for p in (Path(src), Path(src) / "tiny-imagenet-200") if (p / "wnids.txt").is_file()), None)
    if root is None:
        raise SourceError(f"{src}: no tiny-imagenet-200 folder with wnids.txt")
    wnids = sorted({w.strip() for w in _lines(root / "wnids.txt") if w.strip()})
    words = {}
    if (root / "words.txt").is_file():
        for line in _lines(root / "words.txt"):
            wnid, _, gloss = line.partition("\t")
            words[wnid.strip()] = gloss.strip()
    names = [words.get(w, w).split(",")[0].strip() or w for w in wnids]
    classes = [f"{n} ({w})" if names.count(n) > 1 else n for n, w in zip(names, wnids)]
    index = {w: i for i, w in enumerate(wnids)}

    def record(path: Path, wnid: str, split: str) -> Record:
        meta = {"id": path.relative_to(root).as_posix(), "wnid": wnid, "words": words.get(wnid, wnid),
                "class": classes[index[wnid]], "label": index[wnid]}
        return Record(make_key(path.stem), index[wnid], meta, split=split, path=str(path))

    records, skipped = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        if folder.is_dir():
            records += [record(p, wnid, "train") for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    if not records:
        raise SourceError(f"{root}: no train/<wnid>/images/ folders")

    val_dir, annotations = root / "val" / "images", root / "val" / "val_annotations.txt"
    if annotations.is_file():
        labelled = set()
        for n, line in enumerate(_lines(annotations), 1):
            cols = line.split("\t")
            if not line.strip():
                continue
            if len(cols) < 2 or cols[1].strip() not in index:
                skipped.append(skip(cols[0], str(annotations), f"line {n}: unknown wnid or malformed line"))
                continue
            path = val_dir / cols[0].strip()
            labelled.add(path.name)
            if path.is_file():
                records.append(record(path, cols[1].strip(), "val"))
            else:
                skipped.append(skip(path.stem, str(path), f"missing image (val_annotations.txt line {n})"))
        if val_dir.is_dir():
            for p in sorted(val_dir.iterdir()):
                if p.name not in labelled and not p.name.startswith("."):
                    skipped.append(skip(p.stem, str(p), "no label in val_annotations.txt"))
    rule = "train = train/, val = val/ labelled by val_annotations.txt (test/ has no labels)"
    return Source("tinyimagenet", "classification", classes, records, skipped, path=str(root.resolve()),
                  splits_rule=rule if annotations.is_file() else "train = train/ (no val/val_annotations.txt)")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror}") from None
