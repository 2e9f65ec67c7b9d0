#!/usr/bin/env bash
# The exact commands of the sample report that is to replace report/sample.pdf (issue 20; today's
# sample was made by this file as of commit 1fe3a2a): the seed study's three networks (plain VGG-16,
# ResNet-50, Inception-V3) on MNIST, the local CIFAR-10 subset and the local Tiny-ImageNet subset,
# under the `fast` protocol, as three resumable sweeps on a 2-core CPU.
# Departures from `fast`, each recorded in every run's config (the report lists them):
# - epochs (`fast` trains 10): 6 on Tiny-ImageNet's 20,000 local training images (100 per
#   class), 5 on CIFAR-10's 10,000, 2 on a stratified 20,000 of MNIST's 60,000 (train_limit).
# - test_limit=5000: a stratified half of each test split, evaluated after every epoch.
# fp32 on every machine (amp=false; `fast`'s amp=auto would train bf16 on a GPU and fp32 on a
# CPU under one recorded value): a cell trains alike wherever it runs or resumes, in the seed's
# precision; and a CPU without bf16 instructions emulates bf16 autocast (measured on a 2-core
# AVX2 EPYC: over 60 s a step of VGG-16 at 32 px against 1.9 s in fp32).
# MNIST first, Tiny-ImageNet last: plain VGG-16 is the cell at risk there. At 64 px, 3 epochs
# (2026-12-07, AVX-512 EPYC, 1,236 s) it reached test top-1 0.0350, below the 0.05 the sample
# needs (that run stays in the store as recorded), so Tiny-ImageNet trains 6 epochs, every model
# alike: one budget per data set keeps its cells comparable.
# Each sweep resumes where it stopped (finished cells are skipped, a killed one continues from its
# last checkpoint), so this script can be run again after an interruption.
# Usage: report/make_sample.sh DATA_ROOT [STORE [DATASET ...]]
# Naming data sets runs only their sweeps and builds no report (a sample made in parts, e.g. on
# a lent GPU machine: benchmarks/gpu.sh's SAMPLE mode).
# STUDY (default `study`) is the command; SAMPLE_MODELS and SAMPLE_EXTRA (settings appended to
# every cell's, e.g. "train_limit=64 test_limit=64") are for checking this script quickly.
# SAMPLE_IDS (default: every run) are the runs the report shows; the others are listed in it as
# left out. The committed sample.pdf leaves out run 10, the 3-epoch VGG-16 on Tiny-ImageNet that
# run 11 replaced (a store made afresh by this script has no such run).
set -euo pipefail
USAGE="usage: report/make_sample.sh DATA_ROOT [STORE [DATASET ...]] (e.g. ../shared/data)"
DATA_ROOT=${1:?$USAGE}
STORE=${2:-report/sample-runs}
shift $(($# < 2 ? $# : 2))
DATASETS=("$@")
cd "$(dirname "$0")/.."
# `study`, not `python -m study`: run from the checkout, `python -m` would import ./study first
# (where that is the same code, as on a machine given this checkout, `python3 -m study` will do).
read -r -a STUDY <<<"${STUDY:-study}"
read -r -a EXTRA <<<"${SAMPLE_EXTRA:-}"
# Checkpoints are large: kept out of the store, where a resumed sweep finds them again.
CKPT=${STUDY_SAMPLE_CHECKPOINTS:-${TMPDIR:-/tmp}/study-sample-checkpoints}
MODELS=${SAMPLE_MODELS:-vgg16,resnet50,inception_v3}
COMMON=(protocol=fast amp=false test_limit=5000 "data_root=$DATA_ROOT" "checkpoint_dir=$CKPT")
declare -A CELLS=(  # data set: seeds, then the departures from `fast` (see above)
    [mnist]="2 epochs=2 train_limit=20000"
    [cifar10]="1 epochs=5"
    [tiny_imagenet]="1 epochs=6"
)
for dataset in "${DATASETS[@]}"; do
    if [ -z "${CELLS[$dataset]:-}" ]; then
        echo "make_sample.sh: no data set $dataset; expected mnist, cifar10 or tiny_imagenet" >&2
        exit 2
    fi
done
for dataset in mnist cifar10 tiny_imagenet; do
    if [ ${#DATASETS[@]} -gt 0 ] && [[ ! " ${DATASETS[*]} " =~ " $dataset " ]]; then
        continue
    fi
    read -r seeds settings <<<"${CELLS[$dataset]}"
    read -r -a settings <<<"$settings"
    "${STUDY[@]}" sweep --models "$MODELS" --datasets "$dataset" --seeds "$seeds" \
        --runs "$STORE" with "${COMMON[@]}" "${settings[@]}" "${EXTRA[@]}"
done
if [ ${#DATASETS[@]} -eq 0 ]; then
    "${STUDY[@]}" report --runs "$STORE" --out report/sample.pdf ${SAMPLE_IDS:+--ids "$SAMPLE_IDS"} \
        --title "study: the seed comparison under fast on a 2-core CPU"
fi
