"""The grid of runs: descriptors once per detector, a vocabulary per size, then each (detector, vocab,
classifier) cell as one attempt of its own run directory (DESIGN §2), DONE or FAILED."""
from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from imgtrain import runs
from imgtrain.logs import MetricWriter, atomic_write_bytes, atomic_write_text
from imgtrain.studies.bow.classifiers import classification_metrics, make_classifier
from imgtrain.studies.bow.config import (CLASSIFIERS, MATCHERS, NORMS, BowError, BowParams, _Cell, _common_config,
                                         _hash)
from imgtrain.studies.bow.features import (DetectorSpec, detector_unavailable, extract_splits, load_dataset,
                                           worker_pool)
from imgtrain.studies.bow.vocabulary import fit_vocabulary, histograms


# =============================================================================== the grid of runs

def log(msg: str) -> None:
    print(f"[bow] {msg}", flush=True)


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
