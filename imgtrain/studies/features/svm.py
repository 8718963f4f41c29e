"""Cross-validated SVM grids over extracted features (top-1, top-5, cross-entropy, as S002 reports), one
run directory per cell.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import yaml

from imgtrain import runs
from imgtrain.evaluation.load import EvalError
from imgtrain.evaluation.outputs import write_csv
from imgtrain.logs import MetricWriter, atomic_write_text
from imgtrain.studies.features.extract import Features


@dataclass(frozen=True)
class SvmCell:
    kernel: str
    C: float
    gamma: Any = None  # 'scale' | 'auto' | float; None for the linear kernel

    @property
    def label(self) -> str:
        g = "" if self.gamma is None else f"-g{self.gamma:g}" if isinstance(self.gamma, float) else f"-g{self.gamma}"
        return f"{self.kernel}-C{self.C:g}{g}"


def parse_gamma(text: str):
    if text in ("scale", "auto"):
        return text
    try:
        return float(text)
    except ValueError:
        raise EvalError(f"--gamma {text}: scale, auto or a number") from None


def svm_grid(kernels: Sequence[str], Cs: Sequence[float], gammas: Sequence[Any]) -> list[SvmCell]:
    """kernel x C x gamma; the linear kernel has no gamma, so it gets one cell per C."""
    cells = []
    for k in kernels:
        if k not in ("linear", "rbf", "poly", "sigmoid"):
            raise EvalError(f"--kernel {k}: linear, rbf, poly or sigmoid")
        for c in Cs:
            if c <= 0:
                raise EvalError(f"--C {c}: must be > 0")
            cells += [SvmCell(k, float(c))] if k == "linear" else [SvmCell(k, float(c), g) for g in gammas]
    return list(dict.fromkeys(cells))


SCORES = ("decision", "proba")
PROB_FLOOR = 1e-12  # cross-entropy clips the true class's probability here (a class the SVM never saw: 0)
# scikit-learn 1.9 deprecates SVC(probability=True) (removal planned for 1.11) in favour of
# CalibratedClassifierCV(SVC(), ensemble=False); the pinned 1.9.1 still has it, and it is what S002 ran
_PROBABILITY_DEPRECATED = "The `probability` parameter was deprecated"


def _probability_svc(**kw):
    """SVC(probability=True) (libsvm's Platt scaling from an internal 5-fold CV), or, on a scikit-learn
    without that parameter, its documented replacement: sigmoid calibration on 5 folds of one SVC."""
    from sklearn.svm import SVC

    if "probability" in SVC().get_params():
        return SVC(probability=True, **kw)
    from sklearn.calibration import CalibratedClassifierCV
    return CalibratedClassifierCV(SVC(**kw), method="sigmoid", cv=5, ensemble=False)


def make_svm(cell: SvmCell, multiclass: str = "ovr", seed: int = 0, *, standardize: bool = True,
             scores: str = "decision"):
    """[StandardScaler +] SVM. one-vs-rest: LinearSVC (liblinear) for the linear kernel, otherwise one
    SVC per class (OneVsRestClassifier); ovo: SVC, libsvm's one-vs-one. scores="proba": every SVC is
    SVC(probability=True) (libsvm's Platt scaling, fitted by an internal 5-fold CV: about 5x the fit time),
    and the linear kernel is SVC(kernel="linear") too, since LinearSVC has no probabilities."""
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if scores not in SCORES:
        raise EvalError(f"--scores {scores}: {' or '.join(SCORES)}")
    proba = scores == "proba"
    if multiclass == "ovr" and cell.kernel == "linear" and not proba:
        clf = LinearSVC(C=cell.C, dual="auto", max_iter=20000, random_state=seed)
    else:
        kw = dict(kernel=cell.kernel, C=cell.C, gamma=cell.gamma if cell.gamma is not None else "scale",
                  random_state=seed)
        svc = _probability_svc(**kw) if proba else SVC(**kw)
        clf = OneVsRestClassifier(svc) if multiclass == "ovr" else svc
    return make_pipeline(StandardScaler(), clf) if standardize else make_pipeline(clf)


def class_probabilities(model, X: np.ndarray, n_classes: int, scores: str = "decision") -> np.ndarray:
    """[N, n_classes] class probabilities of a fitted make_svm model: predict_proba (scores="proba") or the
    softmax of decision_function (scores="decision"; two classes: the one decision value d becomes
    [0, d], i.e. sigmoid(d)). Columns follow the data set's class indices; a class absent from the
    training labels gets probability 0."""
    classes = np.asarray(model.classes_).astype(np.int64)
    if scores == "proba":
        p = model.predict_proba(X).astype(np.float64)
    else:
        d = np.asarray(model.decision_function(X), np.float64)
        if d.ndim == 1:
            d = np.stack([np.zeros_like(d), d], axis=1)
        d = d - d.max(axis=1, keepdims=True)
        p = np.exp(d)
        p /= p.sum(axis=1, keepdims=True)
    out = np.zeros((len(X), n_classes), np.float64)
    out[:, classes] = p
    return out


def score_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """acc1 (the top-ranked class), acc5 (true class among the min(5, K) highest), loss (mean cross-entropy
    -log p_true, p clipped at PROB_FLOOR), macro precision/recall/f1 of the top-ranked class."""
    from sklearn.metrics import precision_recall_fscore_support

    y = np.asarray(y).astype(np.int64)
    k = min(5, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")
    pred = order[:, 0]
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    p_true = probs[np.arange(len(y)), y]
    return {"acc1": float((pred == y).mean()), "acc5": float((order[:, :k] == y[:, None]).any(axis=1).mean()),
            "loss": float(-np.log(np.maximum(p_true, PROB_FLOOR)).mean()), "precision": float(p),
            "recall": float(r), "f1": float(f)}


def per_class_scores(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """acc1, acc5 and loss of each class's samples (S002 reports them per class too)."""
    y = np.asarray(y).astype(np.int64)
    out = []
    for i, name in enumerate(class_names):
        m = y == i
        row = {"class": i, "name": name, "samples": int(m.sum())}
        if m.any():
            s = score_metrics(y[m], probs[m])
            row.update(acc1=s["acc1"], acc5=s["acc5"], loss=s["loss"])
        out.append(row)
    return out


def _scorer(n_classes: int, scores: str):
    """A cross_validate scorer: every metric of score_metrics from one pass of the fold's scores."""
    def score(model, X, y):
        m = score_metrics(y, class_probabilities(model, X, n_classes, scores))
        return {k: m[k] for k in ("acc1", "f1", "acc5", "loss")}
    return score


def _subsample(feats: Features, max_samples: Optional[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    X, y = feats.X, feats.y
    if max_samples and len(X) > max_samples:
        from sklearn.model_selection import train_test_split
        keep, _ = train_test_split(np.arange(len(X)), train_size=max_samples, stratify=y, random_state=seed)
        keep = np.sort(keep)
        X, y = X[keep], y[keep]
    return X, y


@dataclass
class SvmStudy:
    rows: list[dict]  # one per cell, best first
    best: dict
    test: Optional[dict]  # held-out metrics of the best cell refit on all training features
    files: dict[str, Path] = field(default_factory=dict)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def svm_study(train: Features, val: Optional[Features], cells: Sequence[SvmCell], *, out_root: str | Path,
              name: str, cv: int = 5, seed: int = 0, jobs: int = 1, multiclass: str = "ovr",
              max_samples: Optional[int] = None, standardize: bool = True, scores: str = "decision",
              holdout: Optional[float] = None, log=print) -> SvmStudy:
    """Cross-validate every cell (stratified `cv` folds, seeded; the scaler, when `standardize`, is fitted
    inside each fold; `holdout` = a fraction: one stratified split holding out that fraction instead, as
    S002's search held out 20 %), refit the best on all training features and score it on `val`. Every
    score (acc1, acc5, loss; f1) comes from class probabilities: softmax of the decision values
    (scores="decision") or libsvm's Platt probabilities (scores="proba"); see class_probabilities.
    Each cell is a run `<out_root>/runs/<name>-<cell>` (DESIGN §2/§3: metrics/*.parquet,
    summary.parquet, DONE; the best also test_results.json), so jobs/analyze.py ranks them; the table
    goes to <out_root>/<name>.csv and .md."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import confusion_matrix
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit, cross_validate

    if train.y.ndim != 1:
        raise EvalError("the SVM needs classification features (one class per sample)")
    if multiclass not in ("ovr", "ovo"):
        raise EvalError(f"--multiclass {multiclass}: ovr or ovo")
    if scores not in SCORES:
        raise EvalError(f"--scores {scores}: {' or '.join(SCORES)}")
    X, y = _subsample(train, max_samples, seed)
    counts = np.bincount(y.astype(np.int64))
    smallest = int(counts[counts > 0].min())
    if holdout is not None:
        if not 0 < holdout < 1:
            raise EvalError(f"--holdout {holdout}: a fraction between 0 and 1")
        if smallest < 2:
            raise EvalError(f"--holdout needs at least 2 samples of every class (the smallest has {smallest})")
        n_val = math.ceil(holdout * len(y))
        n_cls = int((counts > 0).sum())
        if n_val < n_cls or len(y) - n_val < n_cls:
            raise EvalError(f"--holdout {holdout}: {n_val} of {len(y)} samples held out; both parts need one "
                            f"sample of each of the {n_cls} classes")
    elif cv < 2 or cv > smallest:
        raise EvalError(f"--cv {cv}: needs 2 <= folds <= the smallest class's sample count ({smallest})")
    if val is not None:
        for key in ("model", "checkpoint", "layer", "pool"):
            a, b = train.manifest.get(key), val.manifest.get(key)
            if a != b:
                raise EvalError(f"--val features come from {key} {b}, the training features from {key} {a}")
        if val.X.shape[1] != X.shape[1] or val.class_names != train.class_names:
            raise EvalError("--val features have other dimensions or classes than the training features")
    folds = StratifiedShuffleSplit(n_splits=1, test_size=holdout, random_state=seed) if holdout is not None \
        else StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)
    n_classes = len(train.class_names)
    opts = dict(standardize=standardize, scores=scores)
    out_root = Path(out_root)
    rows = []
    for i, cell in enumerate(cells):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            warnings.filterwarnings("ignore", _PROBABILITY_DEPRECATED, FutureWarning)
            res = cross_validate(make_svm(cell, multiclass, seed, **opts), X, y, cv=folds, n_jobs=jobs,
                                 scoring=_scorer(n_classes, scores))
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
        acc = res["test_acc1"]
        rows.append({"run_id": f"{_safe(name)}-{_safe(cell.label)}", "kernel": cell.kernel, "C": cell.C,
                     "gamma": "" if cell.gamma is None else cell.gamma, "cv_acc1": float(acc.mean()),
                     "cv_acc1_std": float(acc.std()), "cv_f1": float(res["test_f1"].mean()),
                     "cv_acc5": float(res["test_acc5"].mean()), "cv_loss": float(res["test_loss"].mean()),
                     "fit_s": float(res["fit_time"].sum()), "folds": " ".join(f"{a:.4f}" for a in acc),
                     "converged": converged, "cell": cell, "fold_acc1": [float(a) for a in acc]})
        log(f"[svm] {i + 1}/{len(cells)} {cell.label}: cv acc1 {acc.mean():.4f} +- {acc.std():.4f}, acc5 "
            f"{rows[-1]['cv_acc5']:.4f}, loss {rows[-1]['cv_loss']:.4f}{'' if converged else ' (not converged)'}")
    rows.sort(key=lambda r: -r["cv_acc1"])
    best = rows[0]
    test = None
    if val is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _PROBABILITY_DEPRECATED, FutureWarning)
            model = make_svm(best["cell"], multiclass, seed, **opts).fit(X, y)
        probs = class_probabilities(model, val.X, n_classes, scores)
        pred = probs.argmax(axis=1)
        test = score_metrics(val.y, probs)
        test["samples"] = float(len(val.y))
        test["confusion_matrix"] = confusion_matrix(val.y, pred, labels=np.arange(len(val.class_names))).tolist()
        test["per_class"] = per_class_scores(val.y, probs, val.class_names)
        best.update(test_acc1=test["acc1"], test_f1=test["f1"], test_acc5=test["acc5"], test_loss=test["loss"])
    features_cfg = {"path": str(train.path), "layer": train.manifest.get("layer"), "dim": int(X.shape[1]),
                    "samples": int(len(X)), "model": train.manifest.get("model"),
                    "val": str(val.path) if val is not None else None}
    svm_cfg = {"cv": None if holdout is not None else cv, "holdout": holdout, "multiclass": multiclass,
               "seed": seed, "standardize": standardize, "scores": scores}
    for r in rows:
        _write_cell_run(runs.run_path(out_root, r["run_id"]), r, name, features_cfg, svm_cfg,
                        test if r is best else None, train.class_names, val)
    study = SvmStudy(rows, best, test)
    table = [{k: v for k, v in r.items() if k not in ("cell", "fold_acc1")} for r in rows]
    study.files["csv"] = write_csv(table, out_root / f"{_safe(name)}.csv")
    study.files["markdown"] = atomic_write_text(out_root / f"{_safe(name)}.md", svm_markdown(study, name))
    return study


_NOT_SCALAR = ("confusion_matrix", "per_class")


def _write_cell_run(run_dir: Path, row: dict, sweep: str, features_cfg: dict, svm_cfg: dict,
                    test: Optional[dict], class_names: list[str], val: Optional[Features]) -> None:
    if run_dir.is_dir():  # our own output of an earlier svm.py run: replaced, never mixed with it
        shutil.rmtree(run_dir)
    cell: SvmCell = row["cell"]
    scalars = {k: v for k, v in (test or {}).items() if k not in _NOT_SCALAR}
    with MetricWriter(run_dir, row["run_id"], sweep) as w:
        w.log_many("val", {"acc1": row["cv_acc1"], "acc1_std": row["cv_acc1_std"], "f1": row["cv_f1"],
                           "acc5": row["cv_acc5"], "loss": row["cv_loss"], "fit_s": row["fit_s"]}, epoch=0, step=0)
        for i, a in enumerate(row["fold_acc1"]):
            w.log("cv", "acc1", a, epoch=0, step=i)
        if test is not None:
            w.log_many("test", scalars, epoch=0, step=0)
    gamma = None if cell.gamma is None else str(cell.gamma)
    config = {"svm": {"kernel": cell.kernel, "C": cell.C, "gamma": gamma, **svm_cfg}, "features": features_cfg}
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    summary = runs.summary(run_id=row["run_id"], sweep=sweep, monitor="val/acc1", best=row["cv_acc1"],
                           best_epoch=0, epochs=1, steps=0, wall_s=row["fit_s"], gpu_hours=0.0, img_per_s=0.0)
    if test is not None:
        summary.update({f"test/{k}": v for k, v in scalars.items()})
        results = {"split": val.manifest.get("split", "val"), "metrics": scalars,
                   "class_names": class_names, "checkpoint": "svm refit on all training features",
                   "scores": svm_cfg["scores"], "confusion_matrix": test["confusion_matrix"],
                   "per_class": test["per_class"]}
        atomic_write_text(run_dir / "test_results.json", json.dumps(results, indent=1))
    runs.finish(run_dir, summary, config=config)


def svm_markdown(study: SvmStudy, name: str) -> str:
    head = ("| rank | kernel | C | gamma | cv acc1 | +- | cv acc5 | cv loss | cv f1 | fit s | run |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {i + 1} | {r['kernel']} | {r['C']:g} | {r['gamma'] if r['gamma'] != '' else '-'} | "
             f"{r['cv_acc1']:.4f} | {r['cv_acc1_std']:.4f} | {r['cv_acc5']:.4f} | {r['cv_loss']:.4f} | "
             f"{r['cv_f1']:.4f} | {r['fit_s']:.1f} | {r['run_id']}"
             f"{'' if r['converged'] else ' (not converged)'} |" for i, r in enumerate(study.rows)]
    text = f"# SVM grid: {name}\n\n" + head + "\n".join(lines) + "\n"
    if study.test is not None:
        t = study.test
        text += (f"\nBest ({study.best['run_id']}) refit on all training features, held out "
                 f"({int(t['samples'])} samples): acc1 {t['acc1']:.4f}, acc5 {t['acc5']:.4f}, loss {t['loss']:.4f}, "
                 f"precision {t['precision']:.4f}, recall {t['recall']:.4f}, f1 {t['f1']:.4f}\n")
    return text
