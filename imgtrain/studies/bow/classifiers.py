"""The classifiers of the word histograms (linear, RBF and histogram-intersection SVMs, random forest) and
the metrics they are scored with."""
from __future__ import annotations

from typing import Optional

import numpy as np

from imgtrain.studies.bow.config import CLASSIFIERS, BowError


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
