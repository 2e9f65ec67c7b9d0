#!/usr/bin/env bash
# The exact commands that made report/sample.pdf: the seed study's 9 cells (VGG-16, ResNet-50,
# Inception-V3 × MNIST, CIFAR-10, Tiny-ImageNet) on real data, under the seed's protocol
# (`paper`: Adam, lr 0.0002, batch 100, no augmentation, ImageNet head + one extra layer) but
# CPU-sized: small input sizes, stratified subsets, 3 epochs, and BatchNorm statistics
# re-estimated before each test (precise_bn) so that such short runs are judged by their
# weights, not by lagging running averages. Usage: report/make_sample.sh DATA_ROOT
set -euo pipefail
# `study`, not `python -m study`: run from the checkout, `python -m` would import ./study first.
DATA_ROOT=${1:?usage: report/make_sample.sh DATA_ROOT (e.g. ../shared/data)}
cd "$(dirname "$0")/.."
STORE=report/sample-runs
CKPT=${TMPDIR:-/tmp}/study-sample-checkpoints  # checkpoints are large: kept out of the store
COMMON=(paper epochs=3 train_limit=2000 test_limit=1000 precise_bn=1000 seed=0 gallery=8
        "data_root=$DATA_ROOT" "checkpoint_dir=$CKPT")
for dataset in mnist cifar10 tiny_imagenet; do
    if [ "$dataset" = tiny_imagenet ]; then size=64; else size=32; fi
    study run with "${COMMON[@]}" model=vgg16 dataset=$dataset image_size=$size -F $STORE
    study run with "${COMMON[@]}" model=resnet50 dataset=$dataset image_size=$size -F $STORE
    # Without its auxiliary head Inception-V3 takes 75 px and more (299 with it).
    study run with "${COMMON[@]}" model=inception_v3 dataset=$dataset image_size=80 \
        aux_logits=False -F $STORE
done
study report --runs $STORE --out report/sample.pdf --title "study: the seed comparison, CPU-sized"
