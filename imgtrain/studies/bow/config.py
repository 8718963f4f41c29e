"""The bag of words' settings: the choices (detectors, classifiers, norms, matchers), BowError, BowParams,
and each (detector, vocab, classifier) cell's config.yaml, run name and config hash (what a re-run
compares to skip a DONE cell or refuse a directory that holds other settings)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from imgtrain import runs
from imgtrain.logs import read_run

DETECTORS = ("sift", "orb", "kaze", "freak")  # freak: FAST keypoints + FREAK descriptors
CLASSIFIERS = ("linear", "rbf", "inter", "rf")
DEFAULT_CLASSIFIERS = ("linear", "rbf", "rf")
NORMS = ("l1", "l2", "clusters")
MATCHERS = ("kmeans", "bf", "flann")


class BowError(ValueError):
    """Bad arguments or data: unknown or unavailable detector, missing data set (exit status 2); raised by
    fit_vocabulary when there are fewer descriptors than words (that cell FAILS)."""


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
