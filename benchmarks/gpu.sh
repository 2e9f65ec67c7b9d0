#!/usr/bin/env bash
# The GPU check of issue 12, in one go on a lent H100 or H200 (every part has its own time limit,
# so one slow part cannot take the others' time; at most 9.5 minutes, expected about 6 on a fresh
# machine): study's training step against the seed-style pipeline (fp32 and bf16) and timm's
# step for the three seed networks at batch 100, the host-device syncs of each step with their
# source lines, the CUDA tests, issue 19's protocol check of the seed networks (real MNIST,
# `fast`, 300 steps of batch 128: top-1, health flags, GMACs), and the `fast` sizes. Limits are sized from a fresh H200
# (2026-11-27), where the first network's part took over 70 s (cuDNN's first plans, the
# kernels' first load) and 51 s once warm. PAPER_BATCHES=100,256 adds batch 256 (about 30 s
# more per network); COMPILE=1 adds ResNet-50 under torch.compile (49 s to compile on an H100,
# over 80 s on a fresh H200), each when the device time allows.
#
# Here:   benchmarks/gpu-prepare.sh ../shared/data      (wheels, build-site, MNIST; git-ignored)
# There:  carry .whl, build-site and .gpu-data, then
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/build-site bash benchmarks/gpu.sh .gpu-data "$OUT"
# DEVICE=cpu runs the same script on the CPU with tiny sizes (a check of the script itself).
# CELLS=1 runs instead, in its own call, issue 19's nine seed cells under `fast` (VGG-16,
# ResNet-50, Inception-V3 on MNIST and on gpu-prepare's CIFAR-10 and Tiny-ImageNet subsets, 300
# steps of batch 128 each): top-1, health flags and GMACs per cell, about 4 minutes on an H200.
# SAMPLE=DATASET (mnist, cifar10, tiny_imagenet; or `stage`) runs instead one data set's sweep of
# the sample study (report/make_sample.sh) into .gpu-sample-runs/, seeded from
# report/sample-next/, and copies that store to OUT/sample-runs. DATA_ROOT is `.gpu-sample`:
# the pieces gpu-prepare.sh --sample cut, carried one or two a call, are moved into
# .gpu-sample-root/ (git-ignored, so kept between calls while the machine stays warm) and
# checked against their SHA256SUMS; `stage` only does that. A cell cut by a call's limit
# resumes from its checkpoint in the next call on the same machine. SAMPLE_ROOT and SAMPLE_RUNS
# put the data root and the store elsewhere; SAMPLE_FROM names the store to start from (empty:
# none). Here, afterwards:
#   rm -rf report/sample-next && cp -r FILES_AT/sample-runs report/sample-next
set -uo pipefail
if [ -n "${SAMPLE:-}" ]; then
    set -e
    USAGE="usage: SAMPLE=DATASET benchmarks/gpu.sh .gpu-sample OUT_DIR"
    PIECES=$(cd "${1:?$USAGE}" && pwd)
    OUT=$(mkdir -p "${2:?$USAGE}" && cd "$2" && pwd)
    cd "$(dirname "$0")/.."
    ROOT=${SAMPLE_ROOT:-.gpu-sample-root} STORE=${SAMPLE_RUNS:-.gpu-sample-runs}
    mkdir -p "$ROOT"
    for piece in "$PIECES"/*/; do
        [ -d "$piece" ] || continue
        cp -rf "$piece". "$ROOT"/
        echo "staged $piece"
    done
    part="$ROOT/tiny-imagenet-200.zip.part"
    if [ -f "$part-a" ] && [ -f "$part-b" ]; then
        cat "$part-a" "$part-b" >"$ROOT/tiny-imagenet-200.zip" && rm "$part-a" "$part-b"
    fi
    # Every whole file here must be the one gpu-prepare.sh hashed (one still to come is fine).
    present=$(cd "$ROOT" && while read -r sum file; do
        if [ -f "$file" ]; then echo "$sum  $file"; fi
    done <SHA256SUMS)
    if [ -n "$present" ]; then (cd "$ROOT" && sha256sum --check --quiet - <<<"$present"); fi
    ls -l "$ROOT" | tee "$OUT/sample-data.log"
    [ "$SAMPLE" = stage ] && exit 0
    FROM=${SAMPLE_FROM-report/sample-next}  # the committed runs a first call goes on from
    if [ ! -d "$STORE" ] && [ -n "$FROM" ] && [ -d "$FROM" ]; then cp -r "$FROM" "$STORE"; fi
    export PYTHONUNBUFFERED=1 STUDY_CACHE_DIR=${STUDY_CACHE_DIR:-/tmp/study-gpu-cache}
    export STUDY_SAMPLE_CHECKPOINTS=/tmp/study-sample-checkpoints STUDY=${STUDY:-python3 -m study}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null \
        | tee "$OUT/sample.log" || true
    rc=0
    timeout "${SAMPLE_LIMIT:-540}" bash report/make_sample.sh "$ROOT" "$STORE" "$SAMPLE" \
        2>&1 | tee -a "$OUT/sample.log" || rc=$?
    rm -rf "$OUT/sample-runs"
    cp -r "$STORE" "$OUT/sample-runs"
    echo "== sample $SAMPLE: exit $rc ($(date +%T))"
    exit "$rc"
fi
DATA_ROOT=$(cd "${1:?usage: benchmarks/gpu.sh DATA_ROOT OUT_DIR}" && pwd)
OUT=$(mkdir -p "${2:?usage: benchmarks/gpu.sh DATA_ROOT OUT_DIR}" && cd "$2" && pwd)
MACHINE=${MACHINE:-h100}
DEVICE=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 STUDY_CACHE_DIR=${STUDY_CACHE_DIR:-/tmp/study-gpu-cache}
RUNS=/tmp/study-gpu-runs
# part LIMIT_SECONDS NAME COMMAND...: run with a time limit; its output goes to OUT/NAME.log too.
part() {
    local limit=$1 name=$2; shift 2
    echo "== $name ($(date +%T), limit ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 0 ] || echo "FAILED ($rc): $name"
}
BENCH=(python3 benchmarks/benchmark.py --machine "$MACHINE" --out "$OUT" --device "$DEVICE")
if [ "$DEVICE" = cpu ]; then
    SIZES=(--steps 1 --warmup 0 --baseline-steps 1 --baseline-warmup 0 --workers 1 --image-size 64)
    MODELS=resnet18 PAPER_BATCHES=4,8 FAST_BATCH=8
    RUN_MODELS=small_cnn CHECK=(--steps 2 --batch-size 8 --test-limit 100) CHECK_LIMIT=120
else
    SIZES=(--steps 30 --warmup 10 --baseline-steps 20 --baseline-warmup 5 --workers 16)
    MODELS=resnet50,vgg16,inception_v3 PAPER_BATCHES=${PAPER_BATCHES:-100} FAST_BATCH=512
    RUN_MODELS=vgg16,resnet50,inception_v3 CHECK=(--steps 300) CHECK_LIMIT=180
fi
if [ "${CELLS:-0}" = 1 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/cells.log"
    for dataset in mnist cifar10 tiny_imagenet; do
        rm -rf "$RUNS"
        part $((CHECK_LIMIT * 3 / 2)) cells python3 benchmarks/protocol_check.py \
            --data-root "$DATA_ROOT" --dataset "$dataset" --device "$DEVICE" \
            --models "$RUN_MODELS" --machine "$MACHINE" --out "$OUT" --store "$RUNS" "${CHECK[@]}"
    done
    echo "== done ($(date +%T))"
    exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/paper.log"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/paper.log"

# 1. Throughput at the seed's sizes, a part per network so that a slow one cannot take the
#    others' time: batch 100 (the seed's; PAPER_BATCHES adds others); seed-style fp32 and
#    bf16 and timm beside batch 100; the syncs of study's step listed under every record.
# Inception-V3 at 299 px needs longer: it ran past 80 s on a fresh H200 (2026-12-04), 55 s warm.
limit() { [ "$1" = inception_v3 ] && echo "$2" || echo "$3"; }
for model in ${MODELS//,/ }; do
    part "$(limit "$model" 110 80)" paper "${BENCH[@]}" --model "$model" --dataset cifar10 --protocol paper \
        --data synthetic --batch-size "$PAPER_BATCHES" --baseline-batch "${PAPER_BATCHES%%,*}" \
        "${SIZES[@]}"
done
# 2. The CUDA tests (sync-free step, compile, resume, checkpoint across devices, host path).
[ "$DEVICE" = cpu ] || part 50 tests python3 -m pytest -q -m cuda -p no:cacheprovider \
    tests/test_gpu_path.py
# 3. Does `fast` train the seed networks? benchmarks/protocol_check.py: each one a real
#    `study run` on real MNIST, 300 steps of batch 128 (issue 19's target: top-1 >= 0.97, no
#    health flag), its top-1, flags and GMACs to OUT/<date>-<machine>-protocol-check.jsonl.
#    Its exit status is 1 when a model misses the target ("FAILED (1): runs").
rm -rf "$RUNS"
part "$CHECK_LIMIT" runs python3 benchmarks/protocol_check.py --data-root "$DATA_ROOT" \
    --device "$DEVICE" --models "$RUN_MODELS" --machine "$MACHINE" --out "$OUT" \
    --store "$RUNS" "${CHECK[@]}"
# 4. The fast protocol's sizes (the data set's own, small-image stems) at batch 512.
for model in ${MODELS//,/ }; do
    part "$(limit "$model" 70 45)" fast "${BENCH[@]}" --model "$model" --dataset cifar10 --protocol fast \
        --data synthetic --batch-size "$FAST_BATCH" --baseline fp32 --baseline-batch "$FAST_BATCH" \
        --no-timm "${SIZES[@]}"
done
# 5. With COMPILE=1: torch.compile (mode default) of ResNet-50 at 224 px, batch 256: compile
#    time and rate.
[ "$DEVICE" = cpu ] || [ "${COMPILE:-0}" = 0 ] || part 120 compile "${BENCH[@]}" --model resnet50 --dataset cifar10 \
    --protocol paper --data synthetic --batch-size 256 --compile on --baseline none --no-timm \
    "${SIZES[@]}"
echo "== done ($(date +%T))"
