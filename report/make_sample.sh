#!/usr/bin/env bash
# The exact commands that made report/sample.pdf: the seed study's 9 cells (VGG-16, ResNet-50,
# Inception-V3 × MNIST, CIFAR-10, Tiny-ImageNet) on real data, under the seed's protocol
# (`paper`: Adam, lr 0.0002, batch 100, no augmentation, ImageNet stems and head + one extra
# layer) but sized for a 2-core CPU, about an hour in all: 32 px inputs (80 px for Inception-V3,
# whose stem needs 75 px without its auxiliary head), stratified training subsets, 2-3 epochs,
# 2,000 test images, and BatchNorm statistics re-estimated before each test (precise_bn) so that
# such short runs are judged by their weights, not by lagging running averages.
# Why `paper` and not `fast`: fast's small-image stems keep ResNet-50 and Inception-V3 at full
# resolution, 6-10x the CPU time per image (12 and 7 images/s at 32 px against 116 and 70 here).
# Why fixed epochs and not a time budget: a budget cuts a schedule wherever the clock says, and
# the epochs a run gets then depend on the machine's load; fixed work is what reruns compare.
# VGG-16 with BatchNorm (vgg16_bn) stands in for the seed's plain VGG-16: measured here, plain
# VGG-16 stayed at chance on Tiny-ImageNet (training loss ln 200 = 5.30 after 160 steps of Adam
# at 2e-4 and at 1e-4, and 64 steps of SGD), where VGG-16-BN left it within 80 steps.
# Tiny-ImageNet runs first: its cells are the ones that risk ending at chance.
# Usage: report/make_sample.sh DATA_ROOT [STORE]
set -euo pipefail
# `study`, not `python -m study`: run from the checkout, `python -m` would import ./study first.
DATA_ROOT=${1:?usage: report/make_sample.sh DATA_ROOT [STORE] (e.g. ../shared/data)}
STORE=${2:-report/sample-runs}
cd "$(dirname "$0")/.."
CKPT=${TMPDIR:-/tmp}/study-sample-checkpoints  # checkpoints are large: kept out of the store
COMMON=(paper test_limit=2000 precise_bn=2000 seed=0 "data_root=$DATA_ROOT" "checkpoint_dir=$CKPT")
cell() {  # dataset train_limit epochs
    local size=(image_size=32) more=("train_limit=$2" "epochs=$3")
    study run with "${COMMON[@]}" "${more[@]}" model=vgg16_bn dataset=$1 "${size[@]}" -F "$STORE"
    study run with "${COMMON[@]}" "${more[@]}" model=resnet50 dataset=$1 "${size[@]}" -F "$STORE"
    study run with "${COMMON[@]}" "${more[@]}" model=inception_v3 dataset=$1 image_size=80 \
        aux_logits=False -F "$STORE"
}
cell tiny_imagenet 8000 3  # 40 of the 100 local training images per class
cell cifar10 5000 3        # half of the 10,000 local training images
cell mnist 3000 2
study report --runs "$STORE" --out report/sample.pdf \
    --title "study: the seed comparison on a 2-core CPU"
