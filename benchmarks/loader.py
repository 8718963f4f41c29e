#!/usr/bin/env python
"""Data loading: imgtrain's shard pipeline against torchvision ImageFolder + DataLoader.

Both decode the same N JPEGs (default 5,000 photo crops of 375..640 px, class-per-folder), apply
random-resized-crop to 224 (bilinear), horizontal flip and normalisation, with 2 loader workers and
batch 64, for one full pass. Ours reads WebDataset shards packed from the same files (byte for byte)
through the position-addressable sampler, with per-sample seeded augmentation; its workers hand over
uint8 batches and the normalisation is done (and timed) in the main process, where the engine does it
on the training device. JPEG draft decoding (data.jpeg_draft) is on, as by default.

    python benchmarks/loader.py [--n 5000] [--workers 2] [--repeats 2]
It also prints the CPU time of decoding the same JPEGs alone (libjpeg-turbo at the loader's draft scale, no crop,
resize, flip or batching): the floor of this path, and ours against it.
The last line is `ratio: X.XX` = ours / ImageFolder images/s (higher is better; target >= 1.3). On a
shared machine images/s follow whatever else runs; the CPU time per image (main process + workers,
from getrusage) is printed too, as the steadier measure of the work each pipeline does.
"""
import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms as T  # noqa: E402

from imgtrain import config as C  # noqa: E402
from imgtrain import tasks  # noqa: E402
from imgtrain.data import Normalizer, build_split, dataset_info, make_loader, train_batches  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpegs(root: Path, n: int, seed: int = 0) -> None:
    """ImageNet-like photos: crops of scikit-learn's two bundled photos at 375..640 px."""
    from sklearn.datasets import load_sample_images
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    for i in range(n):
        src = photos[i % 2]
        h, w = int(rng.integers(200, src.shape[0])), int(rng.integers(200, src.shape[1]))
        y, x = int(rng.integers(0, src.shape[0] - h + 1)), int(rng.integers(0, src.shape[1] - w + 1))
        long_side = int(rng.integers(375, 641))
        scale = long_side / max(h, w)
        img = Image.fromarray(src[y:y + h, x:x + w]).resize((max(1, int(w * scale)), max(1, int(h * scale))),
                                                           Image.Resampling.BILINEAR)
        path = root / f"class_{i % 10}" / f"img_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        path.write_bytes(buf.getvalue())


def cpu_seconds() -> float:
    """User + system time of this process and its reaped children (the loader workers, once joined)."""
    return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def rate(loader, finish=lambda x: x) -> tuple[float, float]:
    """(images/s over one pass after the first batch (worker start-up) has arrived, CPU ms per image of the
    whole pass). `finish` is the work the training step still has to do to the batch (ours: uint8 ->
    normalised float, as on the GPU)."""
    cpu0 = cpu_seconds()
    it = iter(loader)
    first = next(it)
    n, start = 0, time.perf_counter()
    for b in it:
        x = finish(b[0] if isinstance(b, (list, tuple)) else b["image"])
        n += len(x)
    wall = time.perf_counter() - start
    n_first = len(first[0] if isinstance(first, (list, tuple)) else first["image"])
    del first, it  # the workers exit and are reaped: their CPU time is counted
    return n / wall, 1e3 * (cpu_seconds() - cpu0) / (n + n_first)


def imagefolder(src: Path, workers: int, batch: int) -> tuple[float, float]:
    tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(str(src), transform=tf)
    return rate(DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                           persistent_workers=False))


def ours(shards: Path, workers: int, batch: int, extra=()) -> tuple[float, float]:
    cfg = C.load(None, [f"data.path={shards}", "data.img_size=224", f"data.batch_size={batch}",
                        f"data.num_workers={workers}", "data.interpolation=bilinear", f"data.mean={list(MEAN)}",
                        f"data.std={list(STD)}", "data.val_split=null", "data.test_split=null", *extra])
    info = dataset_info(cfg)
    task = tasks.build(cfg.task, info.num_outputs)
    ds = build_split(cfg, info, "train", task, train=True, mean=MEAN, std=STD)
    batches = train_batches(ds, seed=0, epoch=0, buffer=cfg.data.shuffle_buffer, batch=batch, rank=0, world=1)
    normalize = Normalizer(MEAN, STD, torch.device("cpu"))  # in the main process, on the CPU: counted
    return rate(make_loader(ds, batches, workers), normalize)


def decode_floor(src: Path, img_size: int) -> float:
    """CPU ms per image of decoding the JPEGs alone (libjpeg-turbo through OpenCV, at the reduced DCT scale the
    loader's draft decoding uses for `img_size`), in this process, files already read: the floor of the 224 px
    path, which every pipeline pays before it crops, resizes or flips."""
    from imgtrain.data.decode import decode_image
    files = [p.read_bytes() for p in sorted(src.rglob("*.jpg"))]
    t = time.process_time()
    for data in files:
        decode_image(data, "RGB", img_size, True)
    return 1e3 * (time.process_time() - t) / len(files)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="imgtrain-loader-"))
    try:
        return measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ~450 MB of photos and shards per run


def measure(args, tmp: Path) -> int:
    src, shards = tmp / "photos", tmp / "shards"
    write_jpegs(src, args.n)
    subprocess.run([sys.executable, "-m", "shards", "pack", "imagefolder", str(src), str(shards),
                    "--val-fraction", "0", "--workers", "2"], check=True, cwd=ROOT, capture_output=True)
    best = {"imagefolder": (0.0, float("inf")), "ours": (0.0, float("inf"))}  # (img/s, CPU ms per image)
    for _ in range(args.repeats):  # alternate, keep the best of each: the page cache is warm for both
        for name, fn, src_dir in (("imagefolder", imagefolder, src), ("ours", ours, shards)):
            r = fn(src_dir, args.workers, args.batch)
            best[name] = (max(best[name][0], r[0]), min(best[name][1], r[1]))
    print(f"{args.n} JPEGs (375..640 px) -> RRC 224 + flip + normalise, {args.workers} workers, batch {args.batch}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, label in (("imagefolder", "torchvision ImageFolder + DataLoader:"), ("ours", "imgtrain shards pipeline:")):
        print(f"{label:37s} {best[name][0]:8.1f} img/s  {best[name][1]:6.2f} CPU ms per image")
    floor = min(decode_floor(src, 224) for _ in range(args.repeats))
    print(f"{'JPEG decoding alone (libjpeg-turbo, draft):':37s} {'':8s}       {floor:6.2f} CPU ms per image")
    print(f"CPU time per image, ImageFolder / ours: {best['imagefolder'][1] / best['ours'][1]:.2f}; "
          f"ours / decoding alone: {best['ours'][1] / floor:.2f} (issue 18's target <= 1.5)")
    print(f"ratio: {best['ours'][0] / best['imagefolder'][0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
