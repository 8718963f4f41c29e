"""CIFAR-10 / CIFAR-100, the official "python version" pickles.

cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta
cifar-100-python/:    train, test, meta (fine and coarse labels)
Each batch holds 'data' (N x 3072 uint8: 1024 red, 1024 green, 1024 blue, row-major 32x32),
labels and filenames. Keys are "<batch>-<index in batch>", e.g. "data_batch_3-00042".
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from shards.records import Record, Source, SourceError, skip


def cifar10(src: str) -> Source:
    root = _find(src, "cifar-10-batches-py", "batches.meta")
    classes = _str_list(_load(root / "batches.meta", "label_names")["label_names"])
    records, skipped = [], []
    for batch, split in [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]:
        d = _load(root / batch, "data", "labels", "filenames")
        for i, (pixels, label, filename) in enumerate(zip(_pixels(d, root / batch), d["labels"], d["filenames"])):
            key = f"{batch}-{i:05d}"
            if not 0 <= label < len(classes):
                skipped.append(skip(key, str(root / batch), f"label {label} out of range"))
                continue
            meta = {"id": key, "filename": _str(filename), "class": classes[label], "label": int(label)}
            records.append(Record(key, int(label), meta, split=split, pixels=pixels))
    return Source("cifar10", "classification", classes, records, skipped, path=str(root.resolve()),
                  splits_rule="train = data_batch_1..5, test = test_batch (the official split)")


def cifar100(src: str, coarse: bool = False) -> Source:
    root = _find(src, "cifar-100-python", "meta")
    meta_file = _load(root / "meta", "fine_label_names", "coarse_label_names")
    fine_names = _str_list(meta_file["fine_label_names"])
    coarse_names = _str_list(meta_file["coarse_label_names"])
    records, skipped = [], []
    for batch in ("train", "test"):
        d = _load(root / batch, "data", "fine_labels", "coarse_labels", "filenames")
        rows = zip(_pixels(d, root / batch), d["fine_labels"], d["coarse_labels"], d["filenames"])
        for i, (pixels, fine, coarse_label, filename) in enumerate(rows):
            key = f"{batch}-{i:05d}"
            if not (0 <= fine < len(fine_names) and 0 <= coarse_label < len(coarse_names)):
                skipped.append(skip(key, str(root / batch), f"label {fine}/{coarse_label} out of range"))
                continue
            meta = {"id": key, "filename": _str(filename), "fine_label": int(fine), "fine_class": fine_names[fine],
                    "coarse_label": int(coarse_label), "coarse_class": coarse_names[coarse_label]}
            label = int(coarse_label if coarse else fine)
            meta.update({"class": (coarse_names if coarse else fine_names)[label], "label": label})
            records.append(Record(key, label, meta, split=batch, pixels=pixels))
    return Source("cifar100-coarse" if coarse else "cifar100", "classification",
                  coarse_names if coarse else fine_names, records, skipped, path=str(root.resolve()),
                  splits_rule="train = train, test = test (the official split)",
                  options={"coarse": coarse})


def _find(src: str, dirname: str, marker: str) -> Path:
    """Accept the batches folder itself or a folder that contains it."""
    for root in (Path(src), Path(src) / dirname):
        if (root / marker).is_file():
            return root
    raise SourceError(f"{src}: no {dirname}/ folder with {marker} (the official python version)")


def _load(path: Path, *keys: str) -> dict:
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise SourceError(f"{path}: missing") from None
    except Exception as e:  # noqa: BLE001 - a broken pickle can raise nearly anything
        raise SourceError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    # Python 2 pickles load with bytes keys; re-pickled copies may have str keys.
    d = {_str(k): v for k, v in d.items()} if isinstance(d, dict) else {}
    missing = [k for k in keys if k not in d]
    if missing:
        raise SourceError(f"{path}: not a CIFAR pickle (no {', '.join(missing)})")
    return d


def _pixels(d: dict, path: Path) -> np.ndarray:
    data = np.asarray(d["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072:
        raise SourceError(f"{path}: 'data' has shape {data.shape}, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-planar -> H, W, C


def _str(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _str_list(values) -> list[str]:
    return [_str(v) for v in values]
