"""Tiny ImageNet (tiny-imagenet-200/): wnids.txt, words.txt, train/<wnid>/images/*.JPEG,
val/images/*.JPEG labelled by val/val_annotations.txt. The test/ images have no labels and are
not packed. Classes are the wnids sorted; their names are the first synonym in words.txt
(with the wnid appended where two classes would share a name).

``official_val`` (``--official-val``) says what the labelled val/ images become: "val" (default: the
validation split, nothing carved), "test" (the test split, while val is carved from train by
--val-fraction: S003's 80/20 of train with ``--val-fraction 0.2``, the official val kept as a held-out
test), or "none" (left out and counted in source.official_val_left_out; val carved from train).
"""

from __future__ import annotations

from pathlib import Path

from shards.records import Record, Source, SourceError, make_key, skip


OFFICIAL_VAL = ("val", "test", "none")


def tinyimagenet(src: str, official_val: str | None = None) -> Source:
    official_val = official_val or "val"
    if official_val not in OFFICIAL_VAL:
        raise SourceError(f"--official-val {official_val!r}: choose from {', '.join(OFFICIAL_VAL)}")
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
    if official_val != "val" and not annotations.is_file():
        raise SourceError(f"--official-val {official_val}: {annotations} is missing")
    n_train = len(records)
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
                records.append(record(path, cols[1].strip(), official_val))
            else:
                skipped.append(skip(path.stem, str(path), f"missing image (val_annotations.txt line {n})"))
        if val_dir.is_dir():
            for p in sorted(val_dir.iterdir()):
                if p.name not in labelled and not p.name.startswith("."):
                    skipped.append(skip(p.stem, str(p), "no label in val_annotations.txt"))
    rule = {"val": "train = train/, val = val/ labelled by val_annotations.txt (test/ has no labels)",
            "test": "train = train/, test = the official val/ labelled by val_annotations.txt (--official-val test; "
                    "test/ has no labels)",
            "none": "train = train/; the official val/ left out (--official-val none; test/ has no labels)"}
    options = {}
    if official_val != "val":
        options["official_val"] = official_val
    if official_val == "none":
        options["official_val_left_out"] = len(records) - n_train
        records = records[:n_train]
    if not annotations.is_file():
        rule[official_val] = "train = train/ (no val/val_annotations.txt)"
    return Source("tinyimagenet", "classification", classes, records, skipped, path=str(root.resolve()),
                  splits_rule=rule[official_val], options=options)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror}") from None
