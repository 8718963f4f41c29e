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

Modules (the names below are their public API):
    config.py       the choices, BowError, BowParams, each cell's config.yaml, run name and config hash
    features.py     detectors and descriptors (OpenCV), read from a shard data set in worker processes
    vocabulary.py   the k-means vocabulary, word assignment (k-means, brute force, FLANN), histograms
    classifiers.py  linear / RBF / histogram-intersection SVM, random forest; their metrics
    grid.py         the grid of runs: one run directory per (detector, vocab, classifier) cell
    cli.py          jobs/bow.py's command line
"""
from imgtrain.studies.bow.config import (CLASSIFIERS, DEFAULT_CLASSIFIERS, DETECTORS, MATCHERS, NORMS, BowError,
                                         BowParams, _common_config, _config_hash, cell_config, cell_name)
from imgtrain.studies.bow.features import (CHUNK, IMAGE_EXTS, ORB_BITS, WIDTH, DetectorSpec, SplitFeatures, as_float,
                                           describe, detector_unavailable, extract_split, extract_splits,
                                           load_dataset, make_detector, worker_pool)
from imgtrain.studies.bow.vocabulary import (MATCH_CHUNK, assign_words, fit_vocabulary, histograms,
                                             sample_descriptors)
from imgtrain.studies.bow.classifiers import classification_metrics, intersection_kernel, make_classifier
from imgtrain.studies.bow.grid import log, run_grid
from imgtrain.studies.bow.cli import EPILOG, build_parser, main

__all__ = ["CLASSIFIERS", "DEFAULT_CLASSIFIERS", "DETECTORS", "MATCHERS", "NORMS", "BowError", "BowParams",
           "cell_config", "cell_name", "CHUNK", "IMAGE_EXTS", "ORB_BITS", "WIDTH", "DetectorSpec", "SplitFeatures",
           "as_float", "describe", "detector_unavailable", "extract_split", "extract_splits", "load_dataset",
           "make_detector", "worker_pool", "MATCH_CHUNK", "assign_words", "fit_vocabulary", "histograms",
           "sample_descriptors", "classification_metrics", "intersection_kernel", "make_classifier", "log",
           "run_grid", "EPILOG", "build_parser", "main"]
