#!/usr/bin/env bash
# GPU proof on a lent machine whose python3 has torch but not all of requirements.txt (issue 16):
#   bash benchmarks/gpu_check.sh OUTDIR [gpu_check.py options]
# Wheels for what is missing there (deepspeed, pydantic, hjson, submitit, ...) are taken from .whl/ when it
# exists (`pip download` them on a machine with an index; see benchmarks/RESULTS.md), installed into
# /tmp/site, and the repository goes on PYTHONPATH. torch, timm, pyarrow and OpenCV are the machine's own.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [options]}
shift
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "FAIL wheels: pip install of .whl/ failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | sed 's/^/nvidia-smi: /'
exec python3 benchmarks/gpu_check.py "$out" "$@"
