"""MNIST and Fashion-MNIST, the official IDX files (the two data sets use the same file names):

    train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte  t10k-labels-idx1-ubyte

each possibly gzipped (.gz, as distributed) and possibly spelt with a dot (train-images.idx3-ubyte);
SRC is the folder holding them, or a folder with them under raw/ (torchvision's MNIST/raw/ layout).
Images are grey 28x28 uint8, stored as lossless PNG. train = the 60,000 train images, test = the
10,000 t10k images (the official split); val is carved from train by --val-fraction.

Which of the two: ``--fashion`` gives the 10 Fashion-MNIST class names (and the default name
fashion_mnist), ``--no-fashion`` the digits 0-9 (name mnist). Without either, SRC's path decides: a
folder name containing "fashion" (e.g. data/fashion-mnist/ or FashionMNIST/raw/) means Fashion-MNIST;
on the command line a --name containing "fashion" (--name fashion_mnist) implies --fashion.
The manifest records which, and how it was decided (source.variant, source.variant_from).
Keys are "train-NNNNN" / "t10k-NNNNN" (the index in the file).
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from shards.records import Record, Source, SourceError, skip

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes; 3 and 1 dimensions

_FILES = {"train": ("train-images", "train-labels"), "t10k": ("t10k-images", "t10k-labels")}


def mnist(src: str, fashion: bool | None = None) -> Source:
    root = _find_root(Path(src))
    if fashion is None:
        fashion = any("fashion" in part.lower() for part in root.resolve().parts[-3:])
        how = "folder name" + (" contains 'fashion'" if fashion else " has no 'fashion'")
    else:
        how = "--fashion" if fashion else "--no-fashion"
    classes = FASHION_CLASSES if fashion else MNIST_CLASSES
    records, skipped = [], []
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images_path = _find_file(root, _FILES[prefix][0], "idx3")
        labels_path = _find_file(root, _FILES[prefix][1], "idx1")
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        if len(images) != len(labels):
            raise SourceError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
        for i, (pixels, label) in enumerate(zip(images, labels)):
            key = f"{prefix}-{i:05d}"
            if label >= len(classes):
                skipped.append(skip(key, str(labels_path), f"label {int(label)} out of range"))
                continue
            meta = {"id": key, "index": i, "class": classes[label], "label": int(label)}
            records.append(Record(key, int(label), meta, split=split, pixels=pixels))
    name = "fashion_mnist" if fashion else "mnist"
    return Source(name, "classification", classes, records, skipped, path=str(root.resolve()),
                  splits_rule="train = train-images/labels, test = t10k-images/labels (the official split)",
                  options={"variant": name, "variant_from": how})


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array in an IDX file (gzipped or not): (N, rows, cols) for images, (N,) for labels.
    SourceError naming the file for a wrong magic number or a truncated file."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as e:  # gzip.BadGzipFile is an OSError
        raise SourceError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except (EOFError, zlib.error) as e:
        raise SourceError(f"{path}: truncated or corrupt gzip file ({e})") from None
    what = "image" if magic == IMAGES_MAGIC else "label"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise SourceError(f"{path}: not an IDX {what} file (magic number {found}, expected 0x{magic:08x})")
    if len(raw) < header:
        raise SourceError(f"{path}: truncated IDX file ({len(raw)} bytes, shorter than its {header}-byte header)")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    need = header + int(np.prod(dims))
    if len(raw) < need:
        raise SourceError(f"{path}: truncated IDX file: its header says {' x '.join(map(str, dims))} "
                          f"({need:,} bytes), the file has {len(raw):,} bytes")
    if len(raw) > need:
        raise SourceError(f"{path}: {len(raw) - need:,} bytes after the {' x '.join(map(str, dims))} "
                          f"{what} data; not an IDX file of this shape")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find_root(src: Path) -> Path:
    for root in (src, src / "raw"):
        if any(root.glob("train-images*idx3-ubyte*")):
            return root
    if not src.is_dir():
        raise SourceError(f"{src}: no such folder")
    raise SourceError(f"{src}: no train-images-idx3-ubyte[.gz] here or under raw/ (the MNIST IDX files)")


def _find_file(root: Path, stem: str, idx: str) -> Path:
    names = [f"{stem}-{idx}-ubyte", f"{stem}.{idx}-ubyte"]
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise SourceError(f"{root}: missing {names[0]} (or {names[0]}.gz)")
