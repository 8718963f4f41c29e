#!/usr/bin/env bash
# S001 (15-Scene), section 2: the bag-of-visual-words experiments, one jobs/bow.py call per row of the
# study's Table 1, on the fixed 2,985 / 1,500 split. Runs land in ROOT/runs/s001_bow-<detector>-v<k>-<clf>;
# `python jobs/analyze.py ROOT --study S001` puts them beside the study's numbers.
# Stated in the study: SIFT + k-means + linear SVM, histograms divided by the number of clusters, FLANN
# word assignment (vocab 100; 500 with more SVM iterations; 250 with an RBF and a histogram-intersection
# kernel; 300 brute-force vs FLANN), FAST + FREAK and KAZE at 250, a random forest at 250.
# Not stated in the study: the SVM's C (we use 100: with histograms / k a C of 1 fits a single class),
# the RBF gamma (scikit-learn's "scale"), the "more iterations" count (100,000), the forest's size (200
# trees), the seed (0). The course's OpenCV SVM is replaced by scikit-learn's (same kernels).
#   bash jobs/studies/s001_bow.sh data/shards/scene15-fixed ROOT [extra jobs/bow.py options, e.g. --workers 8]
set -euo pipefail
data=${1:?usage: bash jobs/studies/s001_bow.sh SHARDS ROOT [options]}
root=${2:?usage: bash jobs/studies/s001_bow.sh SHARDS ROOT [options]}
shift 2
py=${PYTHON:-python}
bow() { "$py" jobs/bow.py --data "$data" --out "$root" --run s001_bow --norm clusters --C 100 "$@"; }
bow --vocab 100 --classifier linear --matcher flann "$@"                      # 2.3.1
bow --vocab 500 --classifier linear --matcher flann --svm-iter 100000 "$@"    # 2.3.2
bow --vocab 250 --classifier rbf inter --matcher flann "$@"                   # 2.3.3
bow --vocab 300 --classifier linear --matcher bf "$@"                         # 2.3.4 (brute force; FLANN: 2.3.1's setting)
bow --detector freak kaze --vocab 250 --classifier linear --matcher flann "$@"  # 2.3.5
bow --vocab 250 --classifier rf --matcher flann "$@"                          # 2.4
