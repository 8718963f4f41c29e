#!/usr/bin/env bash
# S001 (15-Scene practical), section 4: a DCGAN on MNIST and on Fashion-MNIST (the study shows sample
# figures only, no numbers). Its PyTorch port: ReLU in the generator (jobs/dcgan.py's generator is the
# DCGAN paper's, ReLU) and an extra 32-filter convolution in the discriminator (--d-extra-conv 32).
# Not stated in the study: epochs (we use 25), batch (64), learning rates (Adam 2e-4, beta1 0.5, the
# DCGAN paper's), noise size (100), image size (28, the data's own).
#   bash jobs/studies/s001_dcgan.sh /data/mnist /data/fashion-mnist ROOT
set -euo pipefail
mnist=${1:?usage: bash jobs/studies/s001_dcgan.sh MNIST_DIR FASHION_DIR ROOT}
fashion=${2:?usage: bash jobs/studies/s001_dcgan.sh MNIST_DIR FASHION_DIR ROOT}
root=${3:?usage: bash jobs/studies/s001_dcgan.sh MNIST_DIR FASHION_DIR ROOT}
shift 3
py=${PYTHON:-python}
"$py" jobs/dcgan.py --mnist-dir "$mnist" --epochs 25 --d-extra-conv 32 --out "$root" --run s001_dcgan_mnist "$@"
"$py" jobs/dcgan.py --mnist-dir "$fashion" --epochs 25 --d-extra-conv 32 --out "$root" --run s001_dcgan_fashion_mnist "$@"
