"""jobs/bow.py's command line: the parser, its examples, and main."""
from __future__ import annotations

from imgtrain.studies._cli import job_parser, run_job
from imgtrain.studies.bow.config import (CLASSIFIERS, DEFAULT_CLASSIFIERS, DETECTORS, MATCHERS, NORMS, BowError,
                                         BowParams)
from imgtrain.studies.bow.grid import run_grid

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
    p = job_parser(
        "jobs/bow.py",
        "Bag-of-visual-words baseline: OpenCV descriptors (SIFT/ORB/KAZE/FAST+FREAK) of a shard data "
        "set's grey images, a k-means vocabulary fitted on train, normalised word histograms, and linear "
        "SVM, RBF SVM, histogram-intersection SVM and random forest classifiers scored on val and test; "
        "one run directory per cell, logged to the Parquet metrics schema.", EPILOG)
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
    return run_job(run_grid, params, BowError, "bow.py")
