"""The shard format is plain WebDataset (docs/DESIGN.md §1): upstream `webdataset.WebDataset` (and
`wids.ShardListDataset`, where the installed webdataset ships `wids`) read the shards the project's packer
writes, and yield for every sample the same key, label and decoded pixels as the project's own reader
(imgtrain/data/loader.py ShardSplit)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sourcedata import write_imagefolder

from conftest import pack_in_process
from imgtrain.data.loader import IMAGE_EXTS, Sample, ShardSplit
from shards.manifest import load_manifest

wds = pytest.importorskip("webdataset")


def _identity(img):
    return img


def _cls_target(cls, meta):
    import torch
    return torch.tensor(-1 if cls is None else cls, dtype=torch.long)


def _pixels(img) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def ours(root: Path, split: str, mode: str) -> list[tuple[str, int, str, np.ndarray]]:
    """(key, label, image member's extension, decoded pixels) for every sample of `split`, in manifest order,
    through ShardSplit: the same decode as training (PIL, in the mode in_chans selects), no augmentation."""
    manifest = load_manifest(root)
    ds = ShardSplit(root, manifest, split, _identity, _cls_target, seed=0, in_chans=3 if mode == "RGB" else 1)
    ds.random_transform = False
    out = []
    for i in range(len(ds)):
        sample = ds[(0, i)]
        assert isinstance(sample, Sample), sample
        assert sample.index == i
        key, members = ds.reader.read(*ds.locate(i))
        ext = next(e for e in IMAGE_EXTS if e in members)
        out.append((key, int(sample.target), ext, _pixels(sample.image)))
    return out


def shard_paths(root: Path, split: str) -> list[str]:
    return [str(root / s["file"]) for s in load_manifest(root)["splits"][split]["shards"]]


def upstream_raw(root: Path, split: str) -> list[dict]:
    """The samples as upstream webdataset streams them, undecoded, shards in manifest order."""
    return list(wds.WebDataset(shard_paths(root, split), shardshuffle=False, empty_check=False))


def upstream_decoded(root: Path, split: str, mode: str) -> list[tuple[str, int, Image.Image]]:
    """webdataset's own decoders: `.decode("pil")` (its PIL image handler) and `cls` parsed as an integer."""
    ds = (wds.WebDataset(shard_paths(root, split), shardshuffle=False, empty_check=False)
          .decode("pil").to_tuple("__key__", "cls", ";".join(IMAGE_EXTS)))
    return [(key, cls, img if img.mode == mode else img.convert(mode)) for key, cls, img in ds]


def check_split(root: Path, split: str, mode: str) -> int:
    expected = ours(root, split, mode)
    manifest = load_manifest(root)
    assert len(expected) == manifest["splits"][split]["count"] > 0

    raw = upstream_raw(root, split)
    assert [s["__key__"] for s in raw] == [k for k, _, _, _ in expected]
    for sample, (key, label, ext, pixels) in zip(raw, expected):
        assert int(sample["cls"]) == label, key
        meta = json.loads(sample["json"])
        assert isinstance(meta, dict)
        with Image.open(io.BytesIO(sample[ext])) as im:
            im.load()
            theirs = _pixels(im if im.mode == mode else im.convert(mode))
        assert theirs.shape == pixels.shape and np.array_equal(theirs, pixels), key

    decoded = upstream_decoded(root, split, mode)
    assert [k for k, _, _ in decoded] == [k for k, _, _, _ in expected]
    for (key, cls, img), (_, label, _, pixels) in zip(decoded, expected):
        assert cls == label, key
        assert np.array_equal(_pixels(img), pixels), key
    return len(expected)


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    """A class-per-folder tree of JPEG and PNG photos, several shards per split (JPEG bytes stored as they are)."""
    tmp = tmp_path_factory.mktemp("wds_photos")
    src = write_imagefolder(tmp / "src", n_per_class=8, formats=("jpg", "png"), size=(24, 32))
    return pack_in_process("imagefolder", src, tmp / "shards", "--shard-size", "5", "--val-fraction", "0.2",
                           "--test-fraction", "0.2")


def test_digits_shards_read_the_same_with_upstream_webdataset(digits_shards):
    """scikit-learn's real digits packed by `python -m shards pack digits` (conftest's fixture), every split."""
    manifest = load_manifest(digits_shards)
    assert manifest["format"] == "imgtrain-shards/1"
    total = sum(check_split(digits_shards, split, "L") for split in manifest["splits"])
    assert total == sum(e["count"] for e in manifest["splits"].values()) == 1797


def test_photo_shards_read_the_same_with_upstream_webdataset(photo_shards):
    manifest = load_manifest(photo_shards)
    assert sum(len(e["shards"]) for e in manifest["splits"].values()) > 3
    exts = set()
    for split in manifest["splits"]:
        check_split(photo_shards, split, "RGB")
        exts |= {ext for _, _, ext, _ in ours(photo_shards, split, "RGB")}
    assert exts == {"jpg", "png"}


def test_wids_reads_the_same(digits_shards, tmp_path):
    """wids (random access by index, like ShardSplit) over a shard list built from the manifest."""
    wids = pytest.importorskip("wids", reason="the installed webdataset does not ship wids")
    manifest = load_manifest(digits_shards)
    split = "val"
    shards = [{"url": str(digits_shards / s["file"]), "nsamples": s["count"]}
              for s in manifest["splits"][split]["shards"]]
    ds = wids.ShardListDataset(shards, cache_dir=str(tmp_path / "wids"))
    expected = ours(digits_shards, split, "L")
    assert len(ds) == len(expected)
    for i, (key, label, ext, pixels) in enumerate(expected):
        sample = ds[i]
        assert sample["__key__"] == key
        assert _wids_int(sample[".cls"]) == label, key
        assert np.array_equal(_wids_pixels(sample[f".{ext}"]), pixels), key


def _wids_bytes(value) -> bytes:
    return value.getvalue() if isinstance(value, io.BytesIO) else value.read() if hasattr(value, "read") else value


def _wids_int(value) -> int:
    """wids' default decoder gives an int; without decoding, a stream or bytes of ASCII digits."""
    return value if isinstance(value, int) else int(_wids_bytes(value))


def _wids_pixels(value) -> np.ndarray:
    """A PIL image (wids' "PIL" decoding), a uint8 array (its numpy decoding) or the undecoded bytes -> L pixels."""
    if isinstance(value, np.ndarray):
        return value if value.ndim == 2 else _pixels(Image.fromarray(value).convert("L"))
    if not isinstance(value, Image.Image):
        value = Image.open(io.BytesIO(_wids_bytes(value)))
    return _pixels(value.convert("L"))
