"""The visual vocabulary: k-means over a seeded sample of train descriptors, the nearest-word assignment
(k-means predict, OpenCV brute force or FLANN) and the normalised word histograms."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from imgtrain.studies.bow.config import MATCHERS, NORMS, BowError
from imgtrain.studies.bow.features import as_float


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
