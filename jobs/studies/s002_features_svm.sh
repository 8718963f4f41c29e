#!/usr/bin/env bash
# S002 (VGG-19 on clip art), 5.1 and 5.2.2: SVMs on the 4,096-d fc7 activations (VGG-19's second fully
# connected layer, after its ReLU) of a clip-art set's train and test parts; one-vs-rest; top-1, top-5 and
# cross-entropy. 5.1: the ImageNet VGG-19, RBF kernel, C 1, gamma 1e-4. 5.2.2: the optimal model's
# weights (a run of jobs/configs/s002_vgg19_optimal.yaml), sigmoid kernel, C 10, the rest kept (gamma 1e-4).
# The study held out 20 % of the training part for its parameter search (--holdout 0.2) and used unscaled
# features (--no-standardize); scores are SVC probabilities (--scores proba).
# Not stated in the study: the SVM's other parameters (scikit-learn's defaults), the seed.
#   bash jobs/studies/s002_features_svm.sh data/shards/clipart-curated /weights/vgg19.tv_in1k.safetensors fc7 ROOT curated
#   bash jobs/studies/s002_features_svm.sh data/shards/clipart-curated ROOT/runs/s002_vgg19_optimal-XXXX optimal ROOT curated
set -euo pipefail
data=${1:?usage: bash jobs/studies/s002_features_svm.sh SHARDS WEIGHTS_OR_RUN_DIR fc7|optimal ROOT NAME}
weights=${2:?}; which=${3:?}; root=${4:?}; name=${5:?}
shift 5
py=${PYTHON:-python}
feats="$root/features/s002-$which-$name"
if [ "$which" = optimal ]; then
  src=("$weights" "data.path=$data")
  kernel=(--kernel sigmoid --C 10 --gamma 0.0001)
else
  src=(--config jobs/configs/s002_vgg19_as_is.yaml "data.path=$data" "model.pretrained_path=$weights")
  kernel=(--kernel rbf --C 1 --gamma 0.0001)
fi
for split in train test; do
  "$py" jobs/extract.py "${src[@]}" --layer pre_logits --split "$split" --out "$feats/$split"
done
"$py" jobs/svm.py "$feats/train" --val "$feats/test" "${kernel[@]}" --multiclass ovr --no-standardize \
  --scores proba --holdout 0.2 --out "$root" --name "s002_${which}_svm_$name" "$@"
