"""The DCGAN's data: IDX files (MNIST's format: parse, read, write, find), MNIST-format folders, grey
images of a shard data set, and the images as a float tensor in [-1, 1]."""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from imgtrain.logs import atomic_write_bytes


class DataError(ValueError):
    """Missing or malformed input data, or bad arguments (exit status 2)."""


# =============================================================================== IDX files

# type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT")
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_TYPES.items()}


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    """An IDX byte string (gzip-compressed or not) as a native-endian array."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{where}: damaged gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{where}: not an IDX file (the magic number starts with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise DataError(f"{where}: unknown IDX data type 0x{code:02x}")
    if ndim == 0:
        raise DataError(f"{where}: IDX header with 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_TYPES[code])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise DataError(f"{where}: {len(raw) - header} data bytes, the header's shape {dims} needs "
                        f"{count * dtype.itemsize} (truncated or not this format)")
    arr = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (`.gz` or plain: told apart by content, not by name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return parse_idx(raw, str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store {array.dtype} (it stores {', '.join(sorted(map(str, _IDX_CODES)))})")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError("IDX stores arrays of 1 to 255 dimensions")
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, IDX_TYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write `array` as an IDX file, gzip-compressed when the name ends in .gz (atomically)."""
    data = idx_bytes(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)


def find_idx(directory: str | os.PathLike, prefix: str, kind: str, ndim: int) -> Optional[Path]:
    """`<prefix>-<kind>-idx<ndim>-ubyte` (or `.idx<ndim>-ubyte`, as some copies name them), plain or .gz."""
    directory = Path(directory)
    for name in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            if (directory / (name + suffix)).is_file():
                return directory / (name + suffix)
    return None


def load_mnist_dir(directory: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(images uint8 [N, H, W], labels [N] or None) from a folder of MNIST-format IDX files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--mnist-dir {directory}: no such directory")
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"--split {split}: MNIST-format folders hold train and test (t10k) files")
    img_path = find_idx(directory, prefix, "images", 3)
    if img_path is None:
        raise DataError(f"--mnist-dir {directory}: no {prefix}-images-idx3-ubyte[.gz] in it")
    images = read_idx(img_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{img_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DataError(f"{img_path}: no images")
    labels = None
    lab_path = find_idx(directory, prefix, "labels", 1)
    if lab_path is not None:
        labels = read_idx(lab_path)
        if labels.shape != (len(images),):
            raise DataError(f"{lab_path}: {labels.shape[0]} labels for {len(images)} images")
    return images, labels


def load_shard_images(directory: str | os.PathLike, split: str = "train",
                      max_images: Optional[int] = None) -> tuple[list[np.ndarray], list[str], str]:
    """(grey uint8 images in manifest order, skipped "key: reason" lines, data set name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"--data {directory}: no such directory")
    from PIL import Image

    from imgtrain.data.tarindex import ShardReader, index_shard  # numpy and the tars only
    from shards.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(directory)
    except ManifestError as e:
        raise DataError(f"--data {directory}: not a shard data set ({e})") from None
    if split not in manifest["splits"]:
        raise DataError(f"{directory}/manifest.json has no split {split!r} (it has: {', '.join(manifest['splits'])})")
    shards = manifest["splits"][split]["shards"]
    reader = ShardReader([index_shard(directory / s["file"]) for s in shards])
    images, skipped = [], []
    try:
        for i, s in enumerate(shards):
            for pos in range(int(s["count"])):
                if max_images and len(images) >= max_images:
                    break
                got = reader.read(i, pos)
                if got is None:
                    skipped.append(f"{s['file']}#{pos}: missing from a damaged shard")
                    continue
                key, members = got
                ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in members), None)
                try:
                    if ext is None:
                        raise ValueError("no image member")
                    with Image.open(io.BytesIO(members[ext])) as im:
                        im.load()
                        images.append(np.asarray(im.convert("L")))
                except Exception as e:
                    skipped.append(f"{key} in {s['file']}: {type(e).__name__}: {e}")
    finally:
        reader.close()
    if not images:
        raise DataError(f"--data {directory}: no readable image in split {split}")
    return images, skipped, manifest["name"]


def to_tensor(images, img_size: int) -> torch.Tensor:
    """Grey uint8 images (an array [N, H, W] or a list of [H, W]) -> float [N, 1, S, S] in [-1, 1]."""
    from PIL import Image

    out = np.empty((len(images), img_size, img_size), np.uint8)
    for i, im in enumerate(images):
        if im.shape != (img_size, img_size):
            im = np.asarray(Image.fromarray(im).resize((img_size, img_size), Image.Resampling.BILINEAR))
        out[i] = im
    return torch.from_numpy(out).unsqueeze(1).float().div_(127.5).sub_(1.0)
