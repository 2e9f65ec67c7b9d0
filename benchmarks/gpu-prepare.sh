#!/usr/bin/env bash
# Prepare, on this machine, what benchmarks/gpu.sh needs on a lent GPU machine that has torch,
# torchvision, timm, pluggy, numpy, jinja2, matplotlib and pytest but no network:
#   .whl/        Sacred and its dependencies, pymongo, setuptools<82, as Python 3.12 wheels
#   build-site/  this checkout installed with --no-deps (the entry points register the plugins)
#   .gpu-data/   the real MNIST files (11 MB) from DATA_ROOT, without any decoded cache, and
#                compact CIFAR-10 and Tiny-ImageNet subsets in their own formats (12 + 13 MB:
#                300 / 100 and 20 / 5 train / test images a class; benchmarks/subset_data.py)
# All three are git-ignored; name them in the device call's `carry`. Usage:
#   benchmarks/gpu-prepare.sh ../shared/data
# With --sample (instead of the above), the sample study's whole data root (report/make_sample.sh)
# byte for byte, cut into pieces that each fit one call, for gpu.sh's SAMPLE mode to put together:
#   PIECES/mnist/ (11 MB), PIECES/cifar10/ (63 MB), PIECES/tiny-a/ and tiny-b/ (the
#   Tiny-ImageNet zip, 67 MB, in two halves), each with SHA256SUMS of the whole files.
#   benchmarks/gpu-prepare.sh ../shared/data --sample [PIECES (default .gpu-sample)]
set -euo pipefail
DATA_ROOT=${1:?usage: benchmarks/gpu-prepare.sh DATA_ROOT [--sample [PIECES]]}
DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
if [ "${2:-}" = --sample ]; then
    PIECES=${3:-$(dirname "$0")/../.gpu-sample}
    rm -rf "$PIECES"
    mkdir -p "$PIECES"/{mnist/MNIST/raw,cifar10,tiny-a,tiny-b}
    cp "$DATA_ROOT"/MNIST/raw/*-ubyte.gz "$PIECES/mnist/MNIST/raw/"
    cp "$DATA_ROOT"/cifar-10-python.tar.gz "$PIECES/cifar10/"
    zip="$DATA_ROOT/tiny-imagenet-200.zip"
    half=$((($(stat -c %s "$zip") + 1) / 2))
    head -c "$half" "$zip" >"$PIECES/tiny-a/tiny-imagenet-200.zip.part-a"
    tail -c +"$((half + 1))" "$zip" >"$PIECES/tiny-b/tiny-imagenet-200.zip.part-b"
    (cd "$DATA_ROOT" && sha256sum MNIST/raw/*-ubyte.gz cifar-10-python.tar.gz \
        tiny-imagenet-200.zip) >"$PIECES/SHA256SUMS"
    for piece in "$PIECES"/*/; do cp "$PIECES/SHA256SUMS" "$piece"; done
    du -sh "$PIECES"/*/
    exit 0
fi
cd "$(dirname "$0")/.."
rm -rf .whl build-site .gpu-data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    sacred==0.8.7 GitPython gitdb smmap docopt-ng jsonpickle munch pymongo dnspython pyyaml \
    "setuptools>=77.0.3,<82"
python3 -m pip install -q --no-deps --target build-site .
rm -rf build-site/bin build
mkdir -p .gpu-data/MNIST/raw
cp "$DATA_ROOT"/MNIST/raw/*-ubyte.gz .gpu-data/MNIST/raw/
STUDY_CACHE_DIR=$(mktemp -d) python3 benchmarks/subset_data.py "$DATA_ROOT" .gpu-data
du -sh .whl build-site .gpu-data
