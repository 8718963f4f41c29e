"""Tiny data sets in the real source formats, made from real photos, for tests.

Images are crops of scikit-learn's two bundled photos (china.jpg, flower.jpg), so every test
image is real, distinct and needs no download. Each ``write_*`` function creates the layout the
official distribution uses and returns where it put it.

    from sourcedata import write_cifar10     # tests/ is on sys.path under pytest
    root = write_cifar10(tmp_path, n_per_batch=4)   # tmp_path/cifar-10-batches-py
"""

from __future__ import annotations

import io
import pickle
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@lru_cache(maxsize=1)
def _sample_photos() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_sample_images

    return tuple(load_sample_images().images)  # two (427, 640, 3) uint8 photos


def photos(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> list[np.ndarray]:
    """``n`` distinct real RGB images of ``size`` (height, width) as uint8 arrays: random crops
    of the bundled photos, resized."""
    rng = np.random.default_rng(seed)
    base = _sample_photos()
    out = []
    for i in range(n):
        src = base[i % len(base)]
        h = int(rng.integers(40, src.shape[0]))
        w = int(rng.integers(40, src.shape[1]))
        y = int(rng.integers(0, src.shape[0] - h + 1))
        x = int(rng.integers(0, src.shape[1] - w + 1))
        crop = Image.fromarray(src[y:y + h, x:x + w]).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        out.append(np.asarray(crop))
    return out


def image_bytes(pixels: np.ndarray, fmt: str) -> bytes:
    """Encode pixels as "jpg", "png", "webp", "bmp", "gif" or "tiff" file bytes."""
    buf = io.BytesIO()
    name = {"jpg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(fmt, fmt.upper())
    Image.fromarray(pixels).save(buf, name, **({"quality": 90} if name == "JPEG" else {}))
    return buf.getvalue()


def _cifar_batch(pixels: list[np.ndarray], extra: dict) -> dict:
    # The official batches are Python 2 pickles: bytes keys and bytes filenames once unpickled.
    data = np.stack([p.transpose(2, 0, 1).reshape(-1) for p in pixels]).astype(np.uint8)  # channel-planar
    return {b"data": data, **extra}


def _dump(obj, path: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(directory, n_per_batch: int = 6, n_test: int = 6, seed: int = 0) -> Path:
    """Write ``directory/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta) with
    ``n_per_batch`` images per training batch and ``n_test`` test images; labels cycle over the
    10 classes. Returns the cifar-10-batches-py folder."""
    root = Path(directory) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    imgs = photos(5 * n_per_batch + n_test, seed=seed)
    batches = [(f"data_batch_{i + 1}", imgs[i * n_per_batch:(i + 1) * n_per_batch]) for i in range(5)]
    batches.append(("test_batch", imgs[5 * n_per_batch:]))
    for b, (name, pixels) in enumerate(batches):
        labels = [(b + i) % 10 for i in range(len(pixels))]
        names = [f"{CIFAR10_CLASSES[lab]}_s_{b:02d}{i:04d}.png".encode() for i, lab in enumerate(labels)]
        _dump(_cifar_batch(pixels, {b"labels": labels, b"filenames": names,
                                    b"batch_label": f"{name} of 5".encode()}), root / name)
    _dump({b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_cases_per_batch": n_per_batch,
           b"num_vis": 3072}, root / "batches.meta")
    return root


def write_cifar100(directory, n_train: int = 40, n_test: int = 20, n_fine: int = 10, seed: int = 1) -> Path:
    """Write ``directory/cifar-100-python/`` (train, test, meta). Uses ``n_fine`` fine classes
    named fine_00.. grouped five per coarse class (coarse = fine // 5); the meta files still list
    all names, as the real ones do. Returns the cifar-100-python folder."""
    root = Path(directory) / "cifar-100-python"
    root.mkdir(parents=True, exist_ok=True)
    imgs = photos(n_train + n_test, seed=seed)
    for name, pixels in (("train", imgs[:n_train]), ("test", imgs[n_train:])):
        fine = [i % n_fine for i in range(len(pixels))]
        _dump(_cifar_batch(pixels, {b"fine_labels": fine, b"coarse_labels": [f // 5 for f in fine],
                                    b"filenames": [f"img_{name}_{i:04d}.png".encode() for i in range(len(pixels))],
                                    b"batch_label": name.encode()}), root / name)
    _dump({b"fine_label_names": [f"fine_{i:02d}".encode() for i in range(100)],
           b"coarse_label_names": [f"coarse_{i:02d}".encode() for i in range(20)]}, root / "meta")
    return root


def write_imagefolder(directory, classes=("cat", "dog", "fox"), n_per_class: int = 4,
                      splits: tuple[str, ...] | None = None, formats=("jpg",), size=(24, 32), seed: int = 2) -> Path:
    """Write a class-per-folder tree: ``directory/<class>/img_NNN.<fmt>``, or with ``splits``
    (e.g. ("train", "val")) ``directory/<split>/<class>/...``. File formats cycle through
    ``formats`` (jpg, png, webp, bmp, gif, tiff). Returns ``directory``."""
    root = Path(directory)
    imgs = iter(photos(len(classes) * n_per_class * len(splits or [None]), size=size, seed=seed))
    for split in splits or [None]:
        for c in classes:
            folder = root / split / c if split else root / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                fmt = formats[i % len(formats)]
                (folder / f"img_{i:03d}.{fmt}").write_bytes(image_bytes(next(imgs), fmt))
    return root


def add_bad_files(folder) -> dict[str, str]:
    """Put a truncated JPEG, a text file named .jpg and an empty file into ``folder``.
    Returns {file name: a word the skip reason contains}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    good = image_bytes(photos(1, size=(64, 64), seed=99)[0], "jpg")
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "empty.png").write_bytes(b"")
    return {"truncated.jpg": "truncated", "notes.jpg": "not an image", "empty.png": "not an image"}


def write_tinyimagenet(directory, n_classes: int = 3, n_train: int = 4, n_val: int = 2, seed: int = 3) -> Path:
    """Write ``directory/tiny-imagenet-200/`` (wnids.txt, words.txt, train/<wnid>/images/*.JPEG with
    <wnid>_boxes.txt, val/images/ + val_annotations.txt, an unlabelled test/images/) with 64x64
    JPEGs. Returns the tiny-imagenet-200 folder."""
    root = Path(directory) / "tiny-imagenet-200"
    wnids = [f"n{1440000 + 17 * i:08d}" for i in range(n_classes)]
    words = {w: f"thing{i}, other name {i}" for i, w in enumerate(wnids)}
    imgs = iter(photos(n_classes * (n_train + n_val) + 2, size=(64, 64), seed=seed))
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    # The real words.txt lists all 82k WordNet ids; a few extra lines keep the reader honest.
    (root / "words.txt").write_text("".join(f"{w}\t{g}\n" for w, g in [("n00001740", "entity"), *words.items()]))
    for w in wnids:
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True)
        boxes = []
        for i in range(n_train):
            (folder / f"{w}_{i}.JPEG").write_bytes(image_bytes(next(imgs), "jpg"))
            boxes.append(f"{w}_{i}.JPEG\t0\t0\t63\t63\n")
        (root / "train" / w / f"{w}_boxes.txt").write_text("".join(boxes))
    val = root / "val" / "images"
    val.mkdir(parents=True)
    lines = []
    for i in range(n_classes * n_val):
        (val / f"val_{i}.JPEG").write_bytes(image_bytes(next(imgs), "jpg"))
        lines.append(f"val_{i}.JPEG\t{wnids[i % n_classes]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    (root / "test" / "images").mkdir(parents=True)
    for i in range(2):
        (root / "test" / "images" / f"test_{i}.JPEG").write_bytes(image_bytes(next(imgs), "jpg"))
    return root


class AvaData(NamedTuple):
    root: Path  # holds AVA.txt, images/, tags.txt, challenges.txt
    ids: list[str]  # image ids of the good rows, in file order
    votes: dict[str, list[int]]  # id -> the 10 vote counts
    bad_lines: dict[int, str]  # AVA.txt line number -> a word the skip reason contains


def write_ava(directory, n: int = 12, bad_rows: bool = False, seed: int = 4) -> AvaData:
    """Write an AVA layout: ``AVA.txt`` (15 columns: index, image id, votes for 1..10, two tag ids,
    challenge id), ``images/<id>.jpg``, ``tags.txt`` and ``challenges.txt``. With ``bad_rows``,
    rows follow the good ones with: too few columns, a non-integer vote, a negative vote, zero
    votes, and a good row whose image is missing (see ``bad_lines``)."""
    root = Path(directory)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, ids, votes = [], [], {}
    for i, pixels in enumerate(photos(n, size=(48, 64), seed=seed)):
        image_id = str(950000 + 37 * i)
        v = [int(x) for x in rng.integers(0, 30, size=10)]
        v[4] += 1  # never all zero
        tags = [int(rng.integers(1, 5)), 0 if i % 3 else int(rng.integers(1, 5))]
        lines.append(" ".join(map(str, [i + 1, image_id, *v, *tags, 1390 + i % 2])))
        (root / "images" / f"{image_id}.jpg").write_bytes(image_bytes(pixels, "jpg"))
        ids.append(image_id)
        votes[image_id] = v
    bad = {}
    if bad_rows:
        rows = [("10 11 12 13", "columns"),
                ("1 2 x 4 5 6 7 8 9 10 1 0 1390", "non-integer"),
                ("1 2 3 -4 5 6 7 8 9 10 1 0 1390", "negative"),
                ("0 0 0 0 0 0 0 0 0 0 1 0 1390", "no votes"),
                ("1 2 3 4 5 6 7 8 9 10 1 0 1390", "missing image")]
        for j, (rest, word) in enumerate(rows):
            image_id = str(990000 + j)
            lines.append(f"{n + j + 1} {image_id} {rest}")
            bad[len(lines)] = word
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "tags.txt").write_text("1 Abstract\n2 Animals\n3 Architecture\n4 Black and White\n")
    (root / "challenges.txt").write_text("1390 Persuasive\n1391 Reflections\n")
    return AvaData(root, ids, votes, bad)


def read_split(directory, split: str) -> list[dict]:
    """Read one split of a packed data set back with upstream webdataset (no shuffling), in
    manifest shard order: a list of {"__key__": str, "<ext>": bytes, ...} dicts."""
    import json as _json

    import webdataset as wds

    manifest = _json.loads((Path(directory) / "manifest.json").read_text())
    urls = [str(Path(directory) / s["file"]) for s in manifest["splits"][split]["shards"]]
    return [dict(s) for s in wds.WebDataset(urls, shardshuffle=False, empty_check=False)]


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (the MNIST format): magic 0x0000 08 <ndim>, big-endian dimensions, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


class MnistData(NamedTuple):
    root: Path  # holds the four IDX files
    images: dict[str, np.ndarray]  # "train" / "t10k" -> (N, 28, 28) uint8
    labels: dict[str, np.ndarray]  # "train" / "t10k" -> (N,) uint8


def write_mnist(directory, n_train: int = 20, n_test: int = 10, gz: bool = False, dotted: bool = False,
                seed: int = 5) -> MnistData:
    """Write the four MNIST / Fashion-MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte,
    t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; ``.gz`` with ``gz``; ``train-images.idx3-ubyte``
    spelling with ``dotted``) into ``directory``: grey 28x28 crops of the bundled photos, labels cycling
    over 0..9."""
    import gzip as _gzip

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    grey = [np.asarray(Image.fromarray(p).convert("L")) for p in photos(n_train + n_test, size=(28, 28), seed=seed)]
    images = {"train": np.stack(grey[:n_train]), "t10k": np.stack(grey[n_train:])}
    labels = {k: (np.arange(len(v)) * 3 + (k == "t10k")).astype(np.uint8) % 10 for k, v in images.items()}
    for prefix in ("train", "t10k"):
        for what, idx, data in (("images", "idx3", images[prefix]), ("labels", "idx1", labels[prefix])):
            name = f"{prefix}-{what}{'.' if dotted else '-'}{idx}-ubyte"
            raw = idx_bytes(data)
            if gz:
                (root / f"{name}.gz").write_bytes(_gzip.compress(raw, mtime=0))
            else:
                (root / name).write_bytes(raw)
    return MnistData(root, images, labels)
