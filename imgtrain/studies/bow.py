"""Bag-of-visual-words baseline (the 15-scene study): local descriptors -> k-means vocabulary ->
normalised word histograms -> linear SVM / RBF SVM / histogram-intersection SVM / random forest, logged
like any training run.

    from imgtrain.studies import bow
    train = bow.extract_split("shards/scene15", "train", bow.DetectorSpec("sift"))
    vocab = bow.fit_vocabulary(train.descriptors, 200, binary=False, seed=0)
    X = bow.histograms(train.descriptors, vocab, norm="l2", binary=False)

What is where:
- Images are read from a shard data set (manifest + tar index, no webdataset pipeline), decoded to grey
  (PIL "L"), optionally enlarged so the short side is at least `min_side` (small images give few or no
  keypoints: ORB, for instance, ignores a 31 px border by default).
- Descriptors: SIFT (128 floats, integer-valued 0..255 in OpenCV, stored as uint8 losslessly), ORB
  (256-bit binary, stored packed), KAZE (64 floats; OpenCV 5 moved KAZE to opencv-contrib, so it is
  looked up as cv2.KAZE_create or cv2.xfeatures2d.KAZE_create and reported as unavailable otherwise),
  "freak": FAST keypoints (cv2.FastFeatureDetector_create defaults: threshold 10, non-max suppression)
  described by FREAK (cv2.xfeatures2d.FREAK_create defaults; 512-bit binary, stored packed; FREAK drops
  keypoints too close to the border), as S001 2.3.5 ran it (SURF being patented). The contrib wheel
  (opencv-contrib-python-headless) has KAZE and FREAK.
  Binary descriptors (ORB, FREAK) are unpacked to 256/512 values in {0, 1} for k-means: the squared
  Euclidean distance between two such vectors is exactly their Hamming distance, so k-means and the
  nearest-word assignment work in their own metric (the centres become per-bit frequencies).
- Vocabulary: scikit-learn MiniBatchKMeans, seeded, on at most `max_descriptors` train descriptors drawn
  uniformly at random (seeded). Only train images build the vocabulary.
- Word assignment (`matcher`): "kmeans" (default) the vocabulary's own predict (exact nearest centre);
  "bf" OpenCV's brute-force matcher (cv2.BFMatcher, NORM_L2: exact, the same words up to ties); "flann"
  OpenCV's FLANN matcher (cv2.FlannBasedMatcher() defaults: 4 randomised KD-trees, 32 checks; approximate,
  seeded with cv2.setRNGSeed(seed) so a run repeats). S001's course `image_classifier` used FLANN by
  default and compared brute force (2.3.4).
- Histograms: word counts per image, normalised: "l1" (counts / keypoints), "l2" (unit Euclidean norm),
  or "clusters" (counts / vocabulary size k: S001's "dividiendo el conteo por el número total de
  clusters"). An image without keypoints gets an all-zero histogram and is counted (`empty`).
- Classifiers: "linear" LinearSVC(C), "rbf" SVC(rbf, C, gamma="scale"), "inter" SVC(C) with the
  histogram-intersection kernel K(x, z) = sum_i min(x_i, z_i) (OpenCV's SVM_INTER, as a callable sklearn
  kernel), "rf" RandomForestClassifier(trees). `svm_iter` caps the SVM solver's iterations (LinearSVC
  max_iter, default 10000; SVC max_iter, default unlimited): S001 2.3.2 ran "more SVM iterations". Whether
  the solver converged is in results.json (train.converged) and the summary (converged).

Runs: one run per (detector, vocab, classifier) cell, `<root>/runs/<base>-<detector>-v<vocab>-<clf>/`,
the run directory of DESIGN §2 (config.yaml, run.json, metrics/*.parquet, summary.parquet, DONE),
plus results.json (val and test metrics and confusion matrices), test_results.json (the trainer's
layout) and model.pkl (vocabulary centres + fitted classifier). Every cell of one invocation shares the
sweep name `<base>`, so `jobs/analyze.py ROOT --sweep <base>` tabulates the grid; each summary's monitor is
val/acc1 (test/acc1 when the data set has no val split). Metric rows: epoch 0,
step 0 (nothing is iterated); split train: acc1, samples, skipped, empty, keypoints (mean per image),
extract_s, vocab_s, fit_s; splits val and test: acc1, precision, recall, f1 (macro, scikit-learn's
default set of classes, zero_division=0), acc_class/<i>, samples, skipped, empty, keypoints.
A cell that is already DONE is skipped, so re-running the same command finishes an interrupted grid.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from imgtrain import runs
from imgtrain.logs import MetricWriter, atomic_write_bytes, atomic_write_text, read_run

DETECTORS = ("sift", "orb", "kaze", "freak")  # freak: FAST keypoints + FREAK descriptors
CLASSIFIERS = ("linear", "rbf", "inter", "rf")
DEFAULT_CLASSIFIERS = ("linear", "rbf", "rf")
NORMS = ("l1", "l2", "clusters")
MATCHERS = ("kmeans", "bf", "flann")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
ORB_BITS = 256
WIDTH = {"sift": 128, "orb": ORB_BITS // 8, "kaze": 64, "freak": 64}  # stored descriptor width (FREAK: 512 bits)
CHUNK = 200  # samples per extraction task


class BowError(ValueError):
    """Bad arguments or data: unknown or unavailable detector, missing data set (exit status 2); raised by
    fit_vocabulary when there are fewer descriptors than words (that cell FAILS)."""


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


# =============================================================================== vocabulary, histograms

def sample_descriptors(descriptors: Sequence[np.ndarray], max_n: int, seed: int, binary: bool) -> np.ndarray:
    """At most `max_n` descriptors drawn uniformly without replacement (seeded), as float32 rows."""
    stacked = [d for d in descriptors if len(d)]
    if not stacked:
        return np.zeros((0, 0), np.float32)
    allx = np.concatenate(stacked)
    if max_n and len(allx) > max_n:
        rng = np.random.default_rng(seed)
        allx = allx[np.sort(rng.choice(len(allx), max_n, replace=False))]
    return as_float(allx, binary)


def fit_vocabulary(descriptors: Sequence[np.ndarray], k: int, *, binary: bool, seed: int = 0,
                   max_descriptors: int = 100_000, batch_size: int = 4096):
    """A fitted MiniBatchKMeans with `k` words over (a seeded sample of) the train descriptors."""
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    x = sample_descriptors(descriptors, max_descriptors, seed, binary)
    if len(x) < k:
        raise BowError(f"only {len(x)} train descriptors for a vocabulary of {k} words: use a smaller --vocab, "
                       "more images, or --min-side to enlarge small images")
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=min(batch_size, len(x)), n_init=3,
                         max_iter=100)
    # MiniBatchKMeans runs OpenMP threads that each call BLAS: multi-threaded BLAS inside them
    # oversubscribes the cores (measured 5x slower on 2 cores); plain KMeans limits BLAS the same way
    with threadpool_limits(1, "blas"):
        km.fit(x)
    return km


MATCH_CHUNK = 65536  # query descriptors per OpenCV match call (brute force holds a chunk x k distance matrix)


def assign_words(x: np.ndarray, vocab, matcher: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Index of the nearest vocabulary word of every float32 descriptor row: the k-means model's own
    predict, OpenCV's brute-force matcher (L2, exact) or its FLANN matcher (KD-trees, approximate; the
    trees are randomised, so cv2.setRNGSeed(seed) first makes the assignment repeat)."""
    from threadpoolctl import threadpool_limits

    if matcher not in MATCHERS:
        raise BowError(f"unknown matcher {matcher!r} (choose from {', '.join(MATCHERS)})")
    if matcher == "kmeans":
        with threadpool_limits(1, "blas"):
            return vocab.predict(x)
    centres = np.ascontiguousarray(vocab.cluster_centers_, np.float32)
    if matcher == "bf":
        m = cv2.BFMatcher(cv2.NORM_L2)
    else:
        cv2.setRNGSeed(seed)
        m = cv2.FlannBasedMatcher()
    m.add([centres])
    m.train()
    words = np.empty(len(x), np.int64)
    for a in range(0, len(x), MATCH_CHUNK):
        q = np.ascontiguousarray(x[a:a + MATCH_CHUNK], np.float32)
        words[a:a + len(q)] = [mt.trainIdx for mt in m.match(q)]
    return words


def histograms(descriptors: Sequence[np.ndarray], vocab, *, norm: str, binary: bool, matcher: str = "kmeans",
               seed: int = 0) -> np.ndarray:
    """[n images, k] word histograms normalised by `norm` (l1: / keypoints, l2: / Euclidean norm, clusters:
    / k); images without descriptors stay all-zero. `matcher` assigns the words (assign_words)."""
    if norm not in NORMS:
        raise BowError(f"unknown norm {norm!r} (choose from {', '.join(NORMS)})")
    k = vocab.n_clusters
    n = len(descriptors)
    counts = np.zeros((n, k), np.float64)
    sizes = np.array([len(d) for d in descriptors], np.int64)
    if sizes.sum():
        x = as_float(np.concatenate([d for d in descriptors if len(d)]), binary)
        words = assign_words(x, vocab, matcher, seed)
        image = np.repeat(np.arange(n), sizes)
        np.add.at(counts, (image, words), 1.0)
    if norm == "clusters":
        return counts / k
    scale = counts.sum(axis=1, keepdims=True) if norm == "l1" else np.linalg.norm(counts, axis=1, keepdims=True)
    return np.divide(counts, scale, out=np.zeros_like(counts), where=scale > 0)


# =============================================================================== classifiers, metrics

def intersection_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Histogram-intersection Gram matrix K[i, j] = sum_w min(a[i, w], b[j, w]) (OpenCV's SVM_INTER),
    computed in row blocks of at most ~16M elements."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.empty((len(a), len(b)), np.float64)
    step = max(1, (1 << 24) // max(1, b.size))
    for i in range(0, len(a), step):
        out[i:i + step] = np.minimum(a[i:i + step, None, :], b[None, :, :]).sum(axis=2)
    return out


def make_classifier(name: str, *, C: float = 1.0, trees: int = 200, seed: int = 0, jobs: int = 1,
                    svm_iter: Optional[int] = None):
    """`svm_iter`: the SVM solver's iteration cap (None: LinearSVC 10000, SVC unlimited)."""
    if name == "linear":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=C, max_iter=svm_iter or 10_000, random_state=seed)
    if name in ("rbf", "inter"):
        from sklearn.svm import SVC

        kernel = dict(kernel="rbf", gamma="scale") if name == "rbf" else dict(kernel=intersection_kernel)
        return SVC(C=C, max_iter=svm_iter or -1, random_state=seed, **kernel)
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=jobs)
    raise BowError(f"unknown classifier {name!r} (choose from {', '.join(CLASSIFIERS)})")


def classification_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[dict[str, float], np.ndarray]:
    """acc1, macro precision/recall/f1 (as the trainer computes them), acc_class/<i>; confusion matrix
    (rows true classes, columns predictions)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    out = {"acc1": float((pred == y).mean()) if len(y) else float("nan")}
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    out.update(precision=float(p), recall=float(r), f1=float(f))
    for i in range(n_classes):
        mask = y == i
        out[f"acc_class/{i}"] = float((pred[mask] == i).mean()) if mask.any() else float("nan")
    return out, confusion_matrix(y, pred, labels=np.arange(n_classes))


# =============================================================================== the grid of runs

@dataclass
class BowParams:
    data: str
    detectors: list[str] = field(default_factory=lambda: ["sift"])
    vocabs: list[int] = field(default_factory=lambda: [100, 200, 500])
    classifiers: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSIFIERS))
    norm: str = "l2"
    matcher: str = "kmeans"
    svm_iter: Optional[int] = None  # None: LinearSVC 10000, SVC unlimited
    max_descriptors: int = 100_000
    max_keypoints: int = 0
    min_side: int = 0
    max_images: Optional[int] = None
    C: float = 1.0
    trees: int = 200
    seed: int = 0
    workers: int = 1
    root: Optional[str] = None
    run: Optional[str] = None


def cell_name(detector: str, vocab: int, classifier: str) -> str:
    return f"{detector}-v{vocab}-{classifier}"


# settings added after runs existed: left out of the hashes at these defaults, so the run names and config
# hashes of earlier grids stay what they were
_NEW_DEFAULTS = {"matcher": "kmeans", "svm_iter": None}


def _common_config(p: BowParams, manifest: dict) -> dict:
    """The settings every cell shares (what the base run name's hash covers: no paths, no workers)."""
    out = {"data_name": manifest["name"], "max_images": p.max_images, "min_side": p.min_side, "norm": p.norm,
           "max_descriptors": p.max_descriptors, "max_keypoints": p.max_keypoints, "C": p.C, "trees": p.trees,
           "seed": p.seed}
    out.update({k: getattr(p, k) for k, d in _NEW_DEFAULTS.items() if getattr(p, k) != d})
    return out


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def cell_config(p: BowParams, manifest: dict, base: str, detector: str, vocab: int, classifier: str) -> dict:
    """config.yaml of one cell: keys shaped like the trainer's, so cfg.* summary columns line up."""
    return {
        "name": base,
        "job": "bow",
        "task": {"name": "classification"},
        "data": {"path": str(Path(p.data).resolve()), "name": manifest["name"], "max_images": p.max_images,
                 "min_side": p.min_side},
        "bow": {"detector": detector, "vocab": vocab, "classifier": classifier, "norm": p.norm,
                "matcher": p.matcher, "max_descriptors": p.max_descriptors, "max_keypoints": p.max_keypoints,
                "C": p.C, "svm_iter": p.svm_iter, "trees": p.trees},
        "trainer": {"seed": p.seed, "monitor": "val/acc1"},
        "output": {"root": str(p.root), "run": f"{base}-{cell_name(detector, vocab, classifier)}", "sweep": base,
                   "cell": cell_name(detector, vocab, classifier)},
    }


def _config_hash(cfg: dict) -> str:
    """What changes results: everything but output.* and the data set's path."""
    kept = {k: v for k, v in cfg.items() if k != "output"}
    kept["data"] = {k: v for k, v in cfg["data"].items() if k != "path"}
    kept["bow"] = {k: v for k, v in cfg["bow"].items() if k not in _NEW_DEFAULTS or v != _NEW_DEFAULTS[k]}
    return _hash(kept)


def log(msg: str) -> None:
    print(f"[bow] {msg}", flush=True)


class _Cell:
    def __init__(self, p: BowParams, manifest: dict, base: str, detector: str, vocab: int, clf: str):
        self.detector, self.vocab, self.clf = detector, vocab, clf
        self.cfg = cell_config(p, manifest, base, detector, vocab, clf)
        self.run_id = self.cfg["output"]["run"]
        self.dir = runs.run_path(p.root, self.run_id)
        self.hash = _config_hash(self.cfg)

    def check(self) -> Optional[str]:
        """DONE (skip), None (to do); raises BowError when the directory belongs to other settings."""
        info = read_run(self.dir)
        if info is not None and info.get("config_hash") not in (None, self.hash):
            raise BowError(f"{self.dir} holds a run with other settings (config hash {info.get('config_hash')} != "
                           f"{self.hash}); pass another --run name or move it away")
        return runs.DONE if runs.read_status(self.dir) == runs.DONE else None


def run_grid(p: BowParams) -> int:
    """Every (detector, vocab, classifier) cell as its own run; 0 when all are DONE, 1 if one failed.
    BowError (bad arguments or data) propagates before any run directory is written."""
    from imgtrain.logs import resolve_root

    for name in p.detectors:
        reason = detector_unavailable(name)
        if reason:
            raise BowError(reason)
    for name in p.classifiers:
        if name not in CLASSIFIERS:
            raise BowError(f"unknown classifier {name!r} (choose from {', '.join(CLASSIFIERS)})")
    if p.norm not in NORMS:
        raise BowError(f"unknown norm {p.norm!r} (choose from {', '.join(NORMS)})")
    if p.matcher not in MATCHERS:
        raise BowError(f"unknown matcher {p.matcher!r} (choose from {', '.join(MATCHERS)})")
    if p.svm_iter is not None and p.svm_iter < 1:
        raise BowError("--svm-iter: at least 1 iteration")
    if any(v < 2 for v in p.vocabs):
        raise BowError("--vocab: a vocabulary needs at least 2 words")
    manifest = load_dataset(p.data)
    if "train" not in manifest["splits"]:
        raise BowError(f"{p.data}/manifest.json has no train split")
    p.root = str(resolve_root(p.root))
    base = p.run or f"bow-{manifest['name']}-{_hash(_common_config(p, manifest))[:8]}"
    eval_splits = [s for s in ("val", "test") if s in manifest["splits"]]
    monitor_split = "val" if "val" in eval_splits else (eval_splits[0] if eval_splits else "train")
    cells = {d: {v: [_Cell(p, manifest, base, d, v, c) for c in p.classifiers] for v in p.vocabs}
             for d in p.detectors}
    todo = {d: {v: [c for c in cs if c.check() is None] for v, cs in by_v.items()} for d, by_v in cells.items()}
    total = sum(len(cs) for by_v in cells.values() for cs in by_v.values())
    n_todo = sum(len(cs) for by_v in todo.values() for cs in by_v.values())
    log(f"{manifest['name']}: {len(manifest['classes'])} classes; {total} cells ({', '.join(p.detectors)} x vocab "
        f"{', '.join(map(str, p.vocabs))} x {', '.join(p.classifiers)}), {total - n_todo} already DONE; "
        f"runs {Path(p.root) / 'runs' / base}-*")
    failed = 0
    pool = worker_pool(p.workers) if n_todo else None
    try:
        for detector, by_vocab in todo.items():
            if any(by_vocab.values()):
                failed += _run_detector(p, manifest, detector, by_vocab, eval_splits, monitor_split, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    log(f"{total - failed} of {total} cells DONE" + (f", {failed} FAILED" if failed else "")
        + f"; read them with imgtrain.logs.read_metrics('{p.root}') or jobs/analyze.py {p.root} --sweep {base}")
    return 1 if failed else 0


def _run_detector(p: BowParams, manifest: dict, detector: str, by_vocab: dict[int, list["_Cell"]],
                  eval_splits: list[str], monitor_split: str, pool) -> int:
    """Descriptors once, a vocabulary per size, then each cell; returns the number of failed cells."""
    spec = DetectorSpec(detector, p.max_keypoints, p.min_side)
    t0 = time.perf_counter()
    feats = extract_splits(p.data, ["train", *eval_splits], spec, manifest=manifest, max_images=p.max_images,
                           pool=pool)
    log(f"{detector}: descriptors of {sum(f.n for f in feats.values())} images in {time.perf_counter() - t0:.1f}s "
        f"({p.workers} process{'es' if p.workers > 1 else ''})")
    for split, f in feats.items():
        log(f"{detector} {split}: {f.n} images, {f.keypoints:,} keypoints (mean {f.keypoints / max(f.n, 1):.1f}), "
            f"{f.empty} without keypoints, {len(f.skipped)} skipped")
        for s in f.skipped[:5]:
            log(f"  skipped {s}")
    if feats["train"].n == 0:
        raise BowError(f"{p.data}: no readable train image")
    failed = 0
    for vocab, todo_cells in by_vocab.items():
        if not todo_cells:
            continue
        t0 = time.perf_counter()
        try:
            km = fit_vocabulary(feats["train"].descriptors, vocab, binary=spec.binary, seed=p.seed,
                                max_descriptors=p.max_descriptors)
            hist = {s: histograms(f.descriptors, km, norm=p.norm, binary=spec.binary, matcher=p.matcher,
                                  seed=p.seed) for s, f in feats.items()}
        except BowError as e:
            for cell in todo_cells:
                _fail_unstarted(cell, str(e))
            log(f"{detector} vocab {vocab}: FAILED: {e}")
            failed += len(todo_cells)
            continue
        vocab_s = time.perf_counter() - t0
        used = min(p.max_descriptors or feats["train"].keypoints, feats["train"].keypoints)
        log(f"{detector} vocab {vocab}: k-means on {used:,} descriptors + histograms ({p.matcher} words, "
            f"{p.norm}) in {vocab_s:.1f}s")
        for cell in todo_cells:
            ok, line = _run_cell(cell, p, manifest["classes"], feats, hist, km, vocab_s, monitor_split)
            failed += not ok
            log(line)
    return failed


def _fail_unstarted(cell: _Cell, reason: str) -> None:
    """A cell that cannot start (its vocabulary failed): one FAILED attempt and the marker, no traceback."""
    with runs.attempt(cell.dir, run_id=cell.run_id, sweep=cell.cfg["output"]["sweep"],
                      cell=cell.cfg["output"]["cell"], config_hash=cell.hash) as attempt:
        attempt.end(runs.FAILED, 1, reason)
    runs.mark_failed(cell.dir, reason)


def _run_cell(cell: _Cell, p: BowParams, classes: list[str], feats: dict, hist: dict, km, vocab_s: float,
              monitor_split: str) -> tuple[bool, str]:
    """One cell as one attempt of its run; (ok, the line to log). A failure is recorded in the run
    directory (FAILED with the traceback) and reported, and the grid goes on."""
    import yaml

    cfg, rdir = cell.cfg, cell.dir
    t0 = time.perf_counter()
    attempt = None
    try:
        with runs.attempt(rdir, run_id=cell.run_id, sweep=cfg["output"]["sweep"], cell=cfg["output"]["cell"],
                          config_hash=cell.hash, config_yaml=yaml.safe_dump(cfg, sort_keys=False)) as attempt, \
                MetricWriter(rdir, cell.run_id, cfg["output"]["sweep"], attempt.number) as writer:
            train_acc, per_split, wall_s, converged = _fit_cell(cell, p, classes, feats, hist, km, vocab_s,
                                                                monitor_split, writer, attempt, t0)
    except Exception:
        if attempt is None:  # the attempt could not even be recorded: not this cell's failure
            raise
        return False, f"{cell.run_id}: FAILED: {attempt.reason}"
    parts = [f"{s} acc1 {d['metrics']['acc1']:.4f} f1 {d['metrics']['f1']:.4f}" for s, d in per_split.items()]
    return True, (f"{cell.run_id}: train acc1 {train_acc:.4f} | " + " | ".join(parts) + f" ({wall_s:.1f}s"
                  + ("" if converged else "; the solver stopped at its iteration cap, not converged") + ")")


def _fit_cell(cell: _Cell, p: BowParams, classes: list[str], feats: dict, hist: dict, km, vocab_s: float,
              monitor_split: str, writer: MetricWriter, attempt: runs.Attempt, t0: float):
    """Fit and evaluate the cell's classifier, log its metrics, write its files and say DONE."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    cfg, rdir = cell.cfg, cell.dir
    tr = feats["train"]
    clf = make_classifier(cell.clf, C=p.C, trees=p.trees, seed=p.seed, jobs=p.workers, svm_iter=p.svm_iter)
    y_train = np.asarray(tr.labels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(hist["train"], y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    fit_s = time.perf_counter() - t0
    train_acc = float((clf.predict(hist["train"]) == y_train).mean())
    writer.log_many("train", {"acc1": train_acc, "samples": tr.n, "skipped": len(tr.skipped), "empty": tr.empty,
                              "keypoints": tr.keypoints / max(tr.n, 1), "extract_s": tr.seconds,
                              "vocab_s": vocab_s, "fit_s": fit_s}, epoch=0, step=0)
    per_split = {}
    for split, f in feats.items():
        if split == "train":
            continue
        y = np.asarray(f.labels)
        metrics, cm = classification_metrics(y, clf.predict(hist[split]), len(classes))
        metrics.update(samples=f.n, skipped=len(f.skipped), empty=f.empty, keypoints=f.keypoints / max(f.n, 1))
        writer.log_many(split, metrics, epoch=0, step=0)
        per_split[split] = {"metrics": metrics, "confusion_matrix": cm.tolist()}
    writer.flush()
    wall_s = time.perf_counter() - t0
    results = {"class_names": classes, "train": {"acc1": train_acc, "samples": tr.n, "empty": tr.empty,
                                                 "converged": converged}, **per_split}
    atomic_write_text(rdir / "results.json", json.dumps(results, indent=1))
    if "test" in per_split:
        atomic_write_text(rdir / "test_results.json", json.dumps(
            {"split": "test", "metrics": per_split["test"]["metrics"], "class_names": classes,
             "checkpoint": "model.pkl", "confusion_matrix": per_split["test"]["confusion_matrix"]}, indent=1))
    atomic_write_bytes(rdir / "model.pkl", pickle.dumps(
        {"vocabulary": km.cluster_centers_.astype(np.float32), "classifier": clf, "detector": asdict(
            DetectorSpec(cell.detector, p.max_keypoints, p.min_side)), "norm": p.norm, "matcher": p.matcher,
         "classes": classes}))
    monitor = f"{monitor_split}/acc1"
    best = train_acc if monitor_split == "train" else per_split[monitor_split]["metrics"]["acc1"]
    row = runs.summary(run_id=cell.run_id, sweep=cfg["output"]["sweep"], monitor=monitor, best=best,
                       best_epoch=0, epochs=1, steps=0, wall_s=wall_s, gpu_hours=0.0, img_per_s=None,
                       extract_s=tr.seconds, vocab_s=vocab_s, fit_s=fit_s, converged=converged,
                       **{f"test/{k}": v for k, v in per_split.get("test", {}).get("metrics", {}).items()
                          if "/" not in k})
    attempt.done(row, config=cfg)  # run.json's end and the compaction follow when the attempt closes
    return train_acc, per_split, wall_s, converged


# =============================================================================== command line

EPILOG = """\
examples:
  python jobs/bow.py --data shards/scene15                        # SIFT x vocab 100 200 500 x linear rbf rf
  python jobs/bow.py --data shards/scene15 --detector sift orb --vocab 200 --classifier rbf --workers 8
  python -m shards pack digits - shards/digits64 --upscale 64    # 8x8 digits give no keypoints
  python jobs/bow.py --data shards/digits64 --vocab 50 100 --out /tmp/bow --run bow-digits
  python jobs/bow.py --data shards/digits64 --detector orb --min-side 128 --vocab 50 --out /tmp/bow --run bow-digits
  python jobs/analyze.py /tmp/bow --sweep bow-digits              # the grid as a table

S001 (15-scene, course image_classifier: OpenCV SVM, histograms / k, FLANN words):
  python jobs/bow.py --data shards/scene15 --vocab 100 --classifier linear --norm clusters --matcher flann
  python jobs/bow.py --data shards/scene15 --vocab 500 --classifier linear --norm clusters --matcher flann --svm-iter 100000
  python jobs/bow.py --data shards/scene15 --vocab 250 --classifier rbf inter --norm clusters --matcher flann
  python jobs/bow.py --data shards/scene15 --vocab 300 --classifier linear --norm clusters --matcher bf
  python jobs/bow.py --data shards/scene15 --detector freak kaze --vocab 250 --classifier linear --norm clusters
  python jobs/bow.py --data shards/scene15 --vocab 250 --classifier rf --norm clusters --matcher flann
S001 states no C, gamma, iteration count or tree count. Histograms / k are small (about keypoints / k^2
per word), so at the default --C 1 the SVMs barely fit them: try larger C values (e.g. 100, 1000).

One run per (detector, vocab, classifier) cell: ROOT/runs/<run>-<detector>-v<vocab>-<classifier>/ with
config.yaml, run.json, metrics/*.parquet (epoch 0, step 0; splits train/val/test), summary.parquet
(monitor val/acc1), results.json (metrics and confusion matrices), test_results.json, model.pkl, DONE.
<run> defaults to bow-<data set name>-<hash of the shared settings>; all cells share it as sweep name.
Cells already DONE are skipped: the same command again finishes an interrupted grid.
Exit status: 0 every cell DONE, 1 a cell FAILED (e.g. fewer train descriptors than words: its FAILED
marker says so), 2 bad arguments or data (missing data set, unknown or unavailable detector, a run
directory that holds other settings).
"""


def build_parser():
    import argparse

    p = argparse.ArgumentParser(
        prog="jobs/bow.py",
        description="Bag-of-visual-words baseline: OpenCV descriptors (SIFT/ORB/KAZE/FAST+FREAK) of a shard data "
                    "set's grey images, a k-means vocabulary fitted on train, normalised word histograms, and linear "
                    "SVM, RBF SVM, histogram-intersection SVM and random forest classifiers scored on val and test; "
                    "one run directory per cell, logged to the Parquet metrics schema.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="SHARDS_DIR", help="shard data set (holds manifest.json)")
    p.add_argument("--detector", nargs="+", default=["sift"], choices=DETECTORS, metavar="NAME",
                   help="sift, orb, kaze and/or freak (FAST keypoints + FREAK descriptors) (default sift); KAZE "
                        "and FREAK need OpenCV's contrib build (opencv-contrib-python-headless)")
    p.add_argument("--vocab", nargs="+", type=int, default=[100, 200, 500], metavar="K",
                   help="vocabulary sizes (default 100 200 500)")
    p.add_argument("--classifier", nargs="+", default=list(DEFAULT_CLASSIFIERS), choices=CLASSIFIERS,
                   metavar="NAME", help="linear (LinearSVC), rbf (SVC, gamma scale), inter (SVC with the "
                                        "histogram-intersection kernel) and/or rf (random forest); default linear "
                                        "rbf rf")
    p.add_argument("--norm", choices=NORMS, default="l2",
                   help="histogram normalisation: l1 (counts / keypoints), l2 (unit length; default) or clusters "
                        "(counts / vocabulary size, S001's image_classifier: features ~1/k^2 per word, so "
                        "the SVMs need a far larger --C)")
    p.add_argument("--matcher", choices=MATCHERS, default="kmeans",
                   help="descriptor -> word assignment: kmeans (the vocabulary's predict, exact; default), bf "
                        "(OpenCV brute force, exact) or flann (OpenCV FLANN KD-trees, approximate, seeded)")
    p.add_argument("--max-descriptors", type=int, default=100_000, metavar="N",
                   help="train descriptors sampled for k-means (default 100000; 0: all)")
    p.add_argument("--max-keypoints", type=int, default=0, metavar="N",
                   help="strongest keypoints kept per image (default 0: SIFT/KAZE/FAST all, ORB 500)")
    p.add_argument("--min-side", type=int, default=0, metavar="PX",
                   help="enlarge images whose short side is smaller (default 0: never); small images "
                        "give few keypoints, and ORB (31 px border) almost none below ~100 px")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="use the first N samples of each split (manifest order, a seeded hash order)")
    p.add_argument("--C", type=float, default=1.0, help="SVM regularisation (default 1.0)")
    p.add_argument("--svm-iter", type=int, default=None, metavar="N",
                   help="SVM solver iteration cap (default: LinearSVC 10000, SVC unlimited); S001 raised it")
    p.add_argument("--trees", type=int, default=200, help="random forest size (default 200)")
    p.add_argument("--seed", type=int, default=0, help="k-means, descriptor sample and classifier seed (default 0)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="processes extracting descriptors, random forest jobs (default 1)")
    p.add_argument("--out", metavar="ROOT", default=None,
                   help="run root: runs land in ROOT/runs/ (default $IMGTRAIN_ROOT or .)")
    p.add_argument("--run", metavar="NAME", default=None, help="base run name (default bow-<data set>-<hash>)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    params = BowParams(data=args.data, detectors=list(dict.fromkeys(args.detector)),
                       vocabs=list(dict.fromkeys(args.vocab)), classifiers=list(dict.fromkeys(args.classifier)),
                       norm=args.norm, matcher=args.matcher, svm_iter=args.svm_iter,
                       max_descriptors=args.max_descriptors, max_keypoints=args.max_keypoints,
                       min_side=args.min_side, max_images=args.max_images, C=args.C, trees=args.trees,
                       seed=args.seed, workers=max(1, args.workers), root=args.out, run=args.run)
    try:
        return run_grid(params)
    except BowError as e:
        print(f"bow.py: error: {e}", file=sys.stderr)
        return 2
