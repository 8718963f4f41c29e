"""Local descriptors of a shard data set's grey images: the OpenCV detectors (SIFT, ORB, KAZE, FAST +
FREAK), their storage form, and extraction of whole splits in chunks, in this process or a spawned pool."""
from __future__ import annotations

import io
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from imgtrain.studies.bow.config import DETECTORS, BowError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
ORB_BITS = 256
WIDTH = {"sift": 128, "orb": ORB_BITS // 8, "kaze": 64, "freak": 64}  # stored descriptor width (FREAK: 512 bits)
CHUNK = 200  # samples per extraction task


# =============================================================================== detectors

@dataclass(frozen=True)
class DetectorSpec:
    name: str = "sift"
    max_keypoints: int = 0  # 0: as many as the detector finds (ORB: its default 500)
    min_side: int = 0  # enlarge (bilinear) images whose short side is smaller

    @property
    def binary(self) -> bool:
        return self.name in ("orb", "freak")


def _kaze_factory():
    """cv2.KAZE_create (OpenCV 4) or cv2.xfeatures2d.KAZE_create (OpenCV 5 with contrib), else None."""
    return getattr(cv2, "KAZE_create", None) or getattr(getattr(cv2, "xfeatures2d", None), "KAZE_create", None)


def detector_unavailable(name: str) -> Optional[str]:
    """Why `name` cannot be used in this OpenCV build, or None when it can."""
    if name not in DETECTORS:
        return f"unknown detector {name!r} (choose from {', '.join(DETECTORS)})"
    if name == "kaze" and _kaze_factory() is None:
        return (f"KAZE is not in this OpenCV build ({cv2.__version__}): OpenCV 5 moved KAZE/AKAZE to "
                "opencv-contrib; install opencv-contrib-python-headless, or use sift or orb")
    if name == "sift" and not hasattr(cv2, "SIFT_create"):
        return f"SIFT is not in this OpenCV build ({cv2.__version__})"
    if name == "freak" and not hasattr(getattr(cv2, "xfeatures2d", None), "FREAK_create"):
        return (f"FREAK is not in this OpenCV build ({cv2.__version__}): it is in opencv-contrib "
                "(cv2.xfeatures2d); install opencv-contrib-python-headless, or use sift or orb")
    return None


def make_detector(spec: DetectorSpec):
    reason = detector_unavailable(spec.name)
    if reason:
        raise BowError(reason)
    if spec.name == "sift":
        return cv2.SIFT_create(nfeatures=spec.max_keypoints)
    if spec.name == "orb":
        return cv2.ORB_create(nfeatures=spec.max_keypoints or 500)
    if spec.name == "freak":
        return cv2.FastFeatureDetector_create(), cv2.xfeatures2d.FREAK_create()
    return _kaze_factory()()


def describe(detector, spec: DetectorSpec, grey: np.ndarray) -> np.ndarray:
    """Descriptors of one grey uint8 image in storage form: SIFT uint8 [n, 128], ORB packed uint8
    [n, 32], KAZE float32 [n, 64], FREAK packed uint8 [n, 64]; [0, d] when no keypoint is found.
    FAST + FREAK: the strongest `max_keypoints` FAST corners (by response) are described."""
    if spec.min_side and min(grey.shape) < spec.min_side:
        scale = spec.min_side / min(grey.shape)
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR)
    if spec.name == "freak":
        fast, freak = detector
        kps = fast.detect(grey, None)
        if spec.max_keypoints and len(kps) > spec.max_keypoints:
            keep = np.argsort([-k.response for k in kps], kind="stable")[:spec.max_keypoints]
            kps = [kps[i] for i in np.sort(keep)]
        kps, des = freak.compute(grey, kps) if len(kps) else ((), None)
    else:
        kps, des = detector.detectAndCompute(grey, None)
    width = WIDTH[spec.name]
    if des is None or len(kps) == 0:
        return np.zeros((0, width), np.float32 if spec.name == "kaze" else np.uint8)
    if spec.name == "kaze" and spec.max_keypoints and len(kps) > spec.max_keypoints:
        keep = np.argsort([-k.response for k in kps], kind="stable")[:spec.max_keypoints]
        des = des[np.sort(keep)]
    if spec.name == "sift":  # OpenCV rounds SIFT to 0..255 even as float32: uint8 is lossless
        return np.clip(np.rint(des), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(des, np.uint8 if spec.binary else np.float32)


def as_float(des: np.ndarray, binary: bool) -> np.ndarray:
    """Stored descriptors -> float32 rows for k-means (ORB, FREAK: bits unpacked to {0, 1})."""
    if binary:
        return np.unpackbits(des, axis=1).astype(np.float32)
    return des.astype(np.float32)


# =============================================================================== data

@dataclass
class SplitFeatures:
    split: str
    descriptors: list[np.ndarray] = field(default_factory=list)  # per image, storage form
    labels: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "key: reason" of unreadable samples
    seconds: float = 0.0

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def empty(self) -> int:
        return sum(1 for d in self.descriptors if len(d) == 0)

    @property
    def keypoints(self) -> int:
        return sum(len(d) for d in self.descriptors)


def load_dataset(data: str | os.PathLike) -> dict:
    """The validated manifest of a classification shard data set; BowError otherwise."""
    from shards.manifest import ManifestError, load_manifest

    path = Path(data)
    if not path.exists():
        raise BowError(f"--data {data}: no such directory")
    try:
        manifest = load_manifest(path)
    except ManifestError as e:
        raise BowError(f"--data {data}: not a shard data set ({e})") from None
    if manifest["task"] != "classification":
        raise BowError(f"--data {data}: task is {manifest['task']}; the bag of words needs classification labels")
    return manifest


def _tasks(data: Path, manifest: dict, split: str, max_images: Optional[int]) -> list[tuple[str, list]]:
    """(shard path, [(key, {ext: (offset, size)}) or (None, "file#pos")]) chunks of at most CHUNK samples
    covering the first `max_images` samples of `split`, from the tar index (headers only). The workers get
    these offsets and read with a plain seek, so they never import the imgtrain.data package (torch, timm)."""
    from imgtrain.data.tarindex import index_shard

    out, left = [], max_images if max_images else None
    for shard in manifest["splits"][split]["shards"]:
        n = int(shard["count"]) if left is None else min(int(shard["count"]), left)
        index = index_shard(data / shard["file"])  # a damaged shard keeps its whole samples, with a warning
        samples = [(index.keys[i], index.members[i]) if i < len(index) else (None, f"{shard['file']}#{i}")
                   for i in range(n)]
        out += [(str(data / shard["file"]), samples[a:a + CHUNK]) for a in range(0, n, CHUNK)]
        if left is not None:
            left -= n
            if left <= 0:
                break
    return out


def _grey(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im.convert("L"))


def _extract_chunk(path: str, samples: list, spec: DetectorSpec):
    """Top-level (picklable) worker: descriptors of one chunk of a shard; also its busy seconds."""
    t0 = time.perf_counter()
    cv2.setNumThreads(1)
    detector = make_detector(spec)
    descs, labels, keys, skipped = [], [], [], []
    name = os.path.basename(path)
    with open(path, "rb") as f:
        for key, members in samples:
            if key is None:
                skipped.append(f"{members}: missing from a damaged shard")
                continue
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            try:
                if ext is None:
                    raise ValueError("no image member")
                if "cls" not in members:
                    raise ValueError("no cls label")
                got = {}
                for e in (ext, "cls"):
                    offset, size = members[e]
                    f.seek(offset)
                    got[e] = f.read(size)
                label = int(got["cls"])
                grey = _grey(got[ext])
            except Exception as e:  # PIL raises many types for broken files
                skipped.append(f"{key} in {name}: {type(e).__name__}: {e}")
                continue
            descs.append(describe(detector, spec, grey))
            labels.append(label)
            keys.append(key)
    return descs, labels, keys, skipped, time.perf_counter() - t0


def worker_pool(workers: int) -> Optional[ProcessPoolExecutor]:
    """Processes for descriptor extraction (None for 1: everything runs in this process). spawn, not fork:
    the parent may already run OpenMP/BLAS threads (k-means), which a forked child does not survive."""
    if workers <= 1:
        return None
    import multiprocessing as mp

    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))


def extract_splits(data: str | os.PathLike, splits: Sequence[str], spec: DetectorSpec, *,
                   manifest: Optional[dict] = None, max_images: Optional[int] = None,
                   pool: Optional[ProcessPoolExecutor] = None) -> dict[str, SplitFeatures]:
    """Descriptors of every sample of each split (or its first `max_images`, in manifest order, which the
    packer made a seeded hash order), in manifest order whatever the pool. `seconds` of a split is the busy
    time of its chunks (with a pool they overlap)."""
    data = Path(data)
    manifest = manifest or load_dataset(data)
    for split in splits:
        if split not in manifest["splits"]:
            raise BowError(f"{data}/manifest.json has no split {split!r} (it has: {', '.join(manifest['splits'])})")
    tasks = [(split, t) for split in splits for t in _tasks(data, manifest, split, max_images)]
    if pool is not None and len(tasks) > 1:
        futures = [pool.submit(_extract_chunk, *t, spec) for _, t in tasks]
        parts = [f.result() for f in futures]
    else:
        parts = [_extract_chunk(*t, spec) for _, t in tasks]
    out = {split: SplitFeatures(split) for split in splits}
    for (split, _), (descs, labels, keys, skipped, seconds) in zip(tasks, parts):
        f = out[split]
        f.descriptors += descs
        f.labels += labels
        f.keys += keys
        f.skipped += skipped
        f.seconds += seconds
    return out


def extract_split(data: str | os.PathLike, split: str, spec: DetectorSpec, *, manifest: Optional[dict] = None,
                  max_images: Optional[int] = None, workers: int = 1) -> SplitFeatures:
    """extract_splits for one split, with a pool of `workers` processes made for it."""
    pool = worker_pool(workers)
    try:
        return extract_splits(data, [split], spec, manifest=manifest, max_images=max_images, pool=pool)[split]
    finally:
        if pool is not None:
            pool.shutdown()
