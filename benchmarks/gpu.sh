#!/usr/bin/env bash
# The GPU benchmark, prepared to run in one go (under 8 minutes) on a lent H100:
# the three seed networks at their `paper` sizes and at `fast` sizes, on synthetic
# device-resident data and on the real MNIST files, each against the seed-style pipeline.
#
# On the device machine (torch present, sacred/pluggy carried as wheels in .whl/):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/build-site bash benchmarks/gpu.sh DATA_ROOT OUT_DIR
# where build-site holds `pip install --no-deps --target build-site .` of this checkout.
set -euo pipefail
DATA_ROOT=${1:?usage: benchmarks/gpu.sh DATA_ROOT OUT_DIR}
OUT=${2:?usage: benchmarks/gpu.sh DATA_ROOT OUT_DIR}
MACHINE=${MACHINE:-h100}
run() { timeout 150 python3 benchmarks/benchmark.py --machine "$MACHINE" --out "$OUT" \
        --steps 30 --warmup 10 --workers 16 "$@" || echo "FAILED: $*"; }
run --model resnet50,vgg16,inception_v3 --dataset cifar10 --protocol paper --data synthetic
run --model resnet50,vgg16,inception_v3 --dataset cifar10 --protocol fast --data synthetic \
    --batch-size 512
run --model resnet50,vgg16,inception_v3 --dataset mnist --protocol paper,fast --data real \
    --data-root "$DATA_ROOT"
