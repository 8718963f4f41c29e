"""Packing throughput: images/s of `shards pack imagefolder` on N real JPEGs (default 5,000) with
1 and 2 workers, against the I/O floor: a plain sequential tarfile copy of the same files.

The JPEGs are random crops of scikit-learn's two bundled photos, resized to 128..256 px and
saved class-per-folder (10 classes). Every run starts from an empty output folder (otherwise
pack would resume and keep the shards). The files stay in the page cache for all runs.

    python benchmarks/pack_throughput.py            # 5,000 images
    python benchmarks/pack_throughput.py --n 1000

The last line is `ratio: X.XX` = best pack images/s / floor images/s (higher is better; the
pack decodes every image to reject bad ones, the floor only copies bytes).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


from shards.pack import PackOptions, pack  # noqa: E402


def write_jpegs(root: Path, n: int, seed: int = 0) -> list[Path]:
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        src = photos[i % 2]
        h, w = int(rng.integers(96, src.shape[0])), int(rng.integers(96, src.shape[1]))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        side = int(rng.integers(128, 257))
        img = Image.fromarray(src[y:y + h, x:x + w]).resize((side, side * h // w or 1), Image.Resampling.BILINEAR)
        path = root / f"class_{i % 10}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())
        paths.append(path)
    return paths


def floor(paths: list[Path], out: Path) -> float:
    """Seconds to copy every file into one tar, sequentially, with fsync (pack fsyncs too)."""
    start = time.perf_counter()
    with open(out, "wb") as f:
        with tarfile.open(fileobj=f, mode="w") as tar:
            for p in paths:
                tar.add(p, arcname=p.relative_to(p.parent.parent).as_posix())
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def ours(src: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    pack(PackOptions(kind="imagefolder", src=str(src), out=str(out), workers=workers, val_fraction=0.0))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000, help="number of JPEGs (default 5000)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per configuration; the best counts (default 2)")
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed afterwards)")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="pack_bench_"))
    try:
        t = time.perf_counter()
        paths = write_jpegs(work / "src", args.n)
        mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"wrote {args.n} JPEGs ({mb:.1f} MB, 10 classes) in {time.perf_counter() - t:.1f} s; "
              f"{os.cpu_count()} CPUs", flush=True)
        floor_s = min(floor(paths, work / "floor.tar") for _ in range(args.repeat))
        print(f"floor  (sequential tarfile copy): {args.n / floor_s:8.0f} images/s  ({floor_s:.2f} s)", flush=True)
        best = 0.0
        for workers in (1, 2):
            secs = min(ours(work / "src", work / f"out{workers}", workers) for _ in range(args.repeat))
            best = max(best, args.n / secs)
            print(f"pack   --workers {workers}:               {args.n / secs:8.0f} images/s  ({secs:.2f} s)",
                  flush=True)
        print(f"ratio: {best / (args.n / floor_s):.2f}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
