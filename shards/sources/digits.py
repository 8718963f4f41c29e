"""scikit-learn's bundled handwritten digits (1,797 real 8x8 grey images, no download).

Pixel values 0..16 become uint8 as v * 255 // 16 (0 -> 0, 8 -> 127, 16 -> 255). ``upscale``
enlarges each image to upscale x upscale pixels by nearest neighbour, so every source pixel
becomes a uniform block and no value is invented. Keys are "digits-%04d" % index.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from shards.records import Record, Source, SourceError


def to_uint8(images: np.ndarray) -> np.ndarray:
    """The documented 0..16 -> 0..255 mapping (exact integers)."""
    return (images.astype(np.int64) * 255 // 16).astype(np.uint8)


def digits(src: str, upscale: int | None = None) -> Source:
    if src != "-":
        raise SourceError(f"digits takes '-' as SRC (the data set ships with scikit-learn), got {src!r}")
    if upscale is not None and upscale < 8:
        raise SourceError(f"--upscale {upscale}: must be at least 8 (the images are 8x8)")
    from sklearn.datasets import load_digits

    data = load_digits()
    images = to_uint8(data.images)
    if upscale:
        images = np.stack([np.asarray(Image.fromarray(im).resize((upscale, upscale), Image.Resampling.NEAREST))
                           for im in images])
    classes = [str(n) for n in data.target_names]
    records = []
    for i, (pixels, label) in enumerate(zip(images, data.target)):
        key = f"digits-{i:04d}"
        meta = {"id": key, "index": i, "class": classes[label], "label": int(label)}
        records.append(Record(key, int(label), meta, pixels=pixels))
    return Source("digits", "classification", classes, records, path="-",
                  options={"upscale": upscale, "upscale_filter": "nearest" if upscale else None,
                           "pixel_scale": "v * 255 // 16"})
