#!/usr/bin/env bash
# The exact commands of the sample report that is to replace report/sample.pdf (issue 20; today's
# sample was made by this file as of commit 1fe3a2a): the seed study's three networks (plain VGG-16,
# ResNet-50, Inception-V3) on MNIST, the local CIFAR-10 subset and the local Tiny-ImageNet subset,
# under the `fast` protocol, as three resumable sweeps on a 2-core CPU.
# Departures from `fast`, each recorded in every run's config (the report lists them):
# - epochs (`fast` trains 10): 3 on Tiny-ImageNet's 20,000 local training images (100 per
#   class), 5 on CIFAR-10's 10,000, 2 on a stratified 20,000 of MNIST's 60,000 (train_limit).
# - test_limit=5000: a stratified half of each test split, evaluated after every epoch.
# fp32, as `fast` trains on a CPU (amp=auto): the cells are the same on whichever machine resumes
# them, and a CPU without bf16 instructions emulates bf16 autocast (measured on a 2-core AVX2
# EPYC: over 60 s a step of VGG-16 at 32 px against 1.9 s in fp32).
# MNIST first, Tiny-ImageNet last: plain VGG-16 is the cell at risk there (measured at 32 px, 3
# epochs, fp32: test top-1 0.033 with `fast`'s no dropout, 0.0105 and flagged with torchvision's
# 0.5; at 64 px it is not measured yet).
# Each sweep resumes where it stopped (finished cells are skipped, a killed one continues from its
# last checkpoint), so this script can be run again after an interruption.
# Usage: report/make_sample.sh DATA_ROOT [STORE]
set -euo pipefail
# `study`, not `python -m study`: run from the checkout, `python -m` would import ./study first.
DATA_ROOT=${1:?usage: report/make_sample.sh DATA_ROOT [STORE] (e.g. ../shared/data)}
STORE=${2:-report/sample-runs}
cd "$(dirname "$0")/.."
# Checkpoints are large: kept out of the store, where a resumed sweep finds them again.
CKPT=${STUDY_SAMPLE_CHECKPOINTS:-${TMPDIR:-/tmp}/study-sample-checkpoints}
MODELS=vgg16,resnet50,inception_v3
COMMON=(protocol=fast test_limit=5000 "data_root=$DATA_ROOT" "checkpoint_dir=$CKPT")
sweep() {  # dataset seeds [KEY=VALUE ...]
    local dataset=$1 seeds=$2
    shift 2
    study sweep --models "$MODELS" --datasets "$dataset" --seeds "$seeds" --runs "$STORE" \
        with "${COMMON[@]}" "$@"
}
sweep mnist 2 epochs=2 train_limit=20000
sweep cifar10 1 epochs=5
sweep tiny_imagenet 1 epochs=3
study report --runs "$STORE" --out report/sample.pdf \
    --title "study: the seed comparison under fast on a 2-core CPU"
