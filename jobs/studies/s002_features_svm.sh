#!/usr/bin/env bash
# S002 (VGG-19 on clip art), 5.1 and 5.2.2: SVMs on the 4,096-d fc7 activations (VGG-19's second fully
# connected layer, after its ReLU), trained on the Curated set's train part (C-train) and scored on a
# set's 20 % test part (C or N23); one-vs-rest; top-1, top-5 and cross-entropy. 5.1: the ImageNet VGG-19,
# RBF kernel, C 1, gamma 1e-4. 5.2.2: the optimal model's weights (a run of
# jobs/configs/s002_vgg19_optimal.yaml), sigmoid kernel, C 10, the rest kept (gamma 1e-4). The study held
# out 20 % of the training part for its parameter search (--holdout 0.2) and used unscaled features
# (--no-standardize); scores are SVC probabilities (--scores proba).
# Not stated in the study: the SVM's other parameters (scikit-learn's defaults), the seed.
#   bash jobs/studies/s002_features_svm.sh TRAIN_SHARDS EVAL_SHARDS WEIGHTS|RUN_DIR fc7|optimal ROOT NAME
#   bash jobs/studies/s002_features_svm.sh data/shards/clipart-curated data/shards/clipart-noisy23 /weights/vgg19.tv_in1k.safetensors fc7 ROOT noisy23
#   bash jobs/studies/s002_features_svm.sh data/shards/clipart-curated data/shards/clipart-curated ROOT/runs/s002_vgg19_optimal-XXXX optimal ROOT curated
set -euo pipefail
usage="usage: bash jobs/studies/s002_features_svm.sh TRAIN_SHARDS EVAL_SHARDS WEIGHTS|RUN_DIR fc7|optimal ROOT NAME"
[ $# -ge 6 ] || { echo "$usage" >&2; exit 2; }
train_data=$1; eval_data=$2; weights=$3; which=$4; root=$5; name=$6
shift 6
case "$which" in fc7|optimal) ;; *) echo "$usage (got '$which')" >&2; exit 2 ;; esac
py=${PYTHON:-python}
feats="$root/features/s002-$which-$name"
for part in "train $train_data" "test $eval_data"; do
  set -- $part
  if [ "$which" = optimal ]; then
    src=("$weights" "data.path=$2")
  else
    src=(--config jobs/configs/s002_vgg19_as_is.yaml "data.path=$2" "model.pretrained_path=$weights")
  fi
  "$py" jobs/extract.py "${src[@]}" --layer pre_logits --split "$1" --out "$feats/$1"
done
if [ "$which" = optimal ]; then kernel=(--kernel sigmoid --C 10 --gamma 0.0001); else kernel=(--kernel rbf --C 1 --gamma 0.0001); fi
"$py" jobs/svm.py "$feats/train" --val "$feats/test" "${kernel[@]}" --multiclass ovr --no-standardize \
  --scores proba --holdout 0.2 --out "$root" --name "s002_${which}_svm_$name"
