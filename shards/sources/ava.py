"""AVA (Aesthetic Visual Analysis): AVA.txt plus one JPEG per image id.

AVA.txt has 15 whitespace-separated columns per line: row index, image id, the vote counts for
scores 1..10, two semantic tag ids (0 = none) and the challenge id. tags.txt and challenges.txt
("<id> <name>" lines) give names when present. Optional official id lists (one id a line) fix
train and test; without them every image is in the train pool and val/test are carved from it.
Bad rows are skipped with their AVA.txt line number, never fatal.
"""

from __future__ import annotations

from pathlib import Path

from shards.records import Record, Source, SourceError, make_key, skip


def ava(src: str, ava_txt: str | None = None, images: str | None = None, tags: str | None = None,
        challenges: str | None = None, train_ids: str | None = None, test_ids: str | None = None) -> Source:
    root = Path(src)
    txt = Path(ava_txt) if ava_txt else root / "AVA.txt"
    image_dir = Path(images) if images else root / "images"
    if not txt.is_file():
        raise SourceError(f"{txt}: missing (AVA.txt; use --ava-txt to point elsewhere)")
    if not image_dir.is_dir():
        raise SourceError(f"{image_dir}: no such folder (AVA images; use --images to point elsewhere)")
    tag_names = _names(Path(tags) if tags else root / "tags.txt", required=bool(tags))
    challenge_names = _names(Path(challenges) if challenges else root / "challenges.txt", required=bool(challenges))
    train_list = _ids(train_ids)
    test_list = _ids(test_ids)

    records, skipped, seen = [], [], {}
    for n, line in enumerate(_read(txt).splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split()
        where = f"{txt.name} line {n}"
        image_id = cols[1] if len(cols) > 1 else f"line{n}"
        if len(cols) != 15:
            skipped.append(skip(image_id, str(txt), f"{where}: {len(cols)} columns, expected 15"))
            continue
        try:
            numbers = [int(c) for c in cols[2:]]
        except ValueError:
            skipped.append(skip(image_id, str(txt), f"{where}: non-integer vote count, tag or challenge id"))
            continue
        votes, tag_ids, challenge = numbers[:10], numbers[10:12], numbers[12]
        if any(v < 0 for v in votes):
            skipped.append(skip(image_id, str(txt), f"{where}: negative vote count"))
            continue
        total = sum(votes)
        if total == 0:
            skipped.append(skip(image_id, str(txt), f"{where}: no votes"))
            continue
        if image_id in seen:
            skipped.append(skip(image_id, str(txt), f"{where}: duplicate image id (first on line {seen[image_id]})"))
            continue
        seen[image_id] = n
        path = image_dir / f"{image_id}.jpg"
        if not path.is_file():
            skipped.append(skip(image_id, str(path), f"missing image ({where})"))
            continue
        if test_list is not None and image_id in test_list:
            split = "test"
        elif train_list is not None and image_id in train_list:
            split = "train"
        elif train_list is None or test_list is None:
            # One list given: the rest is the other split. No list: train pool, carved later.
            split = None if test_list is None and train_list is None else ("train" if train_list is None else "test")
        else:
            skipped.append(skip(image_id, str(path), "in neither the train nor the test id list"))
            continue
        tag_ids = [t for t in tag_ids if t != 0]
        meta = {"id": image_id, "votes": votes, "num_votes": total,
                "distribution": [v / total for v in votes],
                "mean_score": sum(s * v for s, v in zip(range(1, 11), votes)) / total,
                "tags": tag_ids, "challenge": challenge}
        if tag_names is not None:
            meta["tag_names"] = [tag_names.get(t, "") for t in tag_ids]
        if challenge_names is not None:
            meta["challenge_name"] = challenge_names.get(challenge, "")
        records.append(Record(make_key(image_id), None, meta, split=split, path=str(path)))

    rule = {(False, False): "",
            (True, False): "train = ids in --train-ids, test = the rest",
            (False, True): "test = ids in --test-ids, train = the rest",
            (True, True): "train = ids in --train-ids, test = ids in --test-ids (test wins), others skipped",
            }[(train_list is not None, test_list is not None)]
    options = {"ava_txt": str(txt.resolve()), "images": str(image_dir.resolve()),
               "train_ids": train_ids and str(Path(train_ids).resolve()),
               "test_ids": test_ids and str(Path(test_ids).resolve())}
    return Source("ava", "score_distribution", None, records, skipped, splits_rule=rule, options=options,
                  path=str(root.resolve()))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror}") from None


def _names(path: Path, required: bool) -> dict[int, str] | None:
    """'<id> <name>' lines -> {id: name}; None when the optional file is absent."""
    if not path.is_file():
        if required:
            raise SourceError(f"{path}: missing")
        return None
    names = {}
    for line in _read(path).splitlines():
        head, _, name = line.strip().partition(" ")
        if head.isdigit():
            names[int(head)] = name.strip()
    return names


def _ids(path: str | None) -> set[str] | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise SourceError(f"{path}: missing (id list)")
    return {line.strip() for line in _read(Path(path)).splitlines() if line.strip()}
