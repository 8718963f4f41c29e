"""Turn one record into the image bytes stored in a shard, checking that the image decodes.

JPEG and PNG files are kept byte for byte; other formats (WebP, BMP, GIF first frame, TIFF, ...)
become PNG; raw pixel arrays become PNG. ``--format`` and ``--resize`` re-encode on request.
Everything here is deterministic, so a record encodes to the same bytes in any process.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from shards.records import Record

# PIL format name -> shard extension for formats we may keep byte for byte.
_KEEPABLE = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class BadImage(Exception):
    """The file cannot become a sample; str(e) is the reason recorded in manifest 'skipped'."""


@dataclass(frozen=True)
class EncodeOptions:
    format: str | None = None  # force "png" | "jpg" | "webp"; None keeps JPEG/PNG, others -> PNG
    resize: int | None = None  # downscale so the short side is this many pixels (bicubic)
    quality: int = 95  # JPEG/WebP quality when re-encoding


def encode(record: Record, opts: EncodeOptions, full_decode: bool = False) -> tuple[str, bytes, Image.Image]:
    """Return (extension, stored bytes, decoded image). The image may be a reduced-size JPEG draft
    (a cheaper integrity check) unless ``full_decode``; with it, the image has the stored pixels."""
    if record.pixels is not None:
        img = Image.fromarray(np.ascontiguousarray(record.pixels))
        return _reencode(img, None, opts, full_decode)
    try:
        with open(record.path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror or e}") from None
    img = _open(raw)
    src_ext = _KEEPABLE.get(img.format)
    target = opts.format or (src_ext if src_ext in ("jpg", "png") else "png")
    if src_ext == target and not _needs_resize(img, opts):
        if img.format in ("JPEG", "MPO") and not full_decode:
            img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
        _load(img)
        return target, raw, img
    _load(img)
    return _reencode(img, src_ext, opts, full_decode)


def decode(data: bytes) -> Image.Image:
    """Fully decode stored image bytes (raises BadImage)."""
    img = _open(data)
    _load(img)
    return img


def moments(img: Image.Image) -> dict:
    """Per-channel pixel sums in 0..1 for image_stats: {"c": channels, "n": pixels, "s": sums, "q": sums of squares}.
    Grey images give one channel; everything else is taken as RGB."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit and float images are rare: plain floats
        flat = np.asarray(img, dtype=np.float64).reshape(-1, 1) / 65535.0
        return {"c": 1, "n": flat.shape[0], "s": flat.sum(0).tolist(), "q": (flat * flat).sum(0).tolist()}
    arr = np.asarray(img.convert("L" if img.mode in ("1", "L", "LA") else "RGB"))
    arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    # Histograms make the sums exact integers, and are much faster than float arithmetic.
    values = np.arange(256, dtype=np.int64)
    hists = [np.bincount(arr[..., c].ravel(), minlength=256) for c in range(arr.shape[2])]
    return {"c": arr.shape[2], "n": arr.shape[0] * arr.shape[1],
            "s": [int(h @ values) / 255.0 for h in hists], "q": [int(h @ (values * values)) / 65025.0 for h in hists]}


def combine_moments(parts: list[dict]) -> dict:
    """image_stats from moments(); 1-channel parts count as grey RGB when any part has 3 channels."""
    if not parts:
        return {"mean": [0.0], "std": [0.0], "channels": 1, "sampled": 0}
    channels = max(p["c"] for p in parts)
    n, s, q = 0, np.zeros(channels), np.zeros(channels)
    for p in parts:  # fixed order -> the same floats for any number of workers
        n += p["n"]
        s += np.resize(p["s"], channels)
        q += np.resize(p["q"], channels)
    mean = s / n
    std = np.sqrt(np.maximum(q / n - mean * mean, 0.0))
    return {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std],
            "channels": channels, "sampled": len(parts)}


def _open(data: bytes) -> Image.Image:
    if not data:
        raise BadImage("not an image (empty file)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except Exception as e:  # noqa: BLE001 - any failure to identify means "not an image"
        raise BadImage(f"not an image ({type(e).__name__}: {e})") from None


def _load(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - truncated/corrupt data surfaces as many error types
        raise BadImage(f"truncated or corrupt image ({type(e).__name__}: {e})") from None
    if img.width < 1 or img.height < 1:
        raise BadImage("empty image (0 pixels)")


def _needs_resize(img: Image.Image, opts: EncodeOptions) -> bool:
    return opts.resize is not None and min(img.size) > opts.resize


def _reencode(img: Image.Image, src_ext: str | None, opts: EncodeOptions, full_decode: bool):
    if _needs_resize(img, opts):
        if img.mode in ("P", "1", "LA", "PA") or img.mode not in _PNG_MODES:
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else
                              ("L" if img.mode in ("1", "L", "LA") else "RGB"))
        scale = opts.resize / min(img.size)
        size = tuple(opts.resize if v == min(img.size) else max(1, round(v * scale)) for v in img.size)
        img = img.resize(size, Image.Resampling.BICUBIC)
    target = opts.format or (src_ext if src_ext in ("jpg", "png") else "png")
    buf = io.BytesIO()
    if target == "png":
        if img.mode not in _PNG_MODES:
            img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
        img.save(buf, "PNG")
    elif target == "jpg":
        if img.mode not in ("L", "RGB", "CMYK"):
            img = img.convert("L" if img.mode in ("1", "LA", "I", "I;16") else "RGB")
        img.save(buf, "JPEG", quality=opts.quality)
    else:
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
        img.save(buf, "WEBP", quality=opts.quality, method=4)
    data = buf.getvalue()
    # Lossy output: decode what is stored, so image_stats describe the pixels the loader will see.
    if full_decode and target != "png":
        img = decode(data)
    return target, data, img
