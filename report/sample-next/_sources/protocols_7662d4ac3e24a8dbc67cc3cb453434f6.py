"""The training protocols, as data and rules: `paper` (the seed study's) and `fast`.

A protocol decides every training setting a run leaves null (`null` is the default of each key
listed in PROTOCOL_KEYS). `study.experiment.resolve_config` asks it once, the resolved values
go into the run's config (so `reproduce`, the report and the departures record see them), and
any one of them can be overridden with `with KEY=VALUE`.

`fast` is a rule, not a list of constants: AdamW at a peak learning rate scaled with the batch
size (Goyal et al. 2017) from a base the model's spec declares or implies (a network without
normalisation layers needs about a tenth), with a linear warm-up, gradient-norm clipping, no
weight decay on normalisation and bias parameters and fixed batch shapes.

Why AdamW and not SGD, and why residual branches do not start at zero (measured on real MNIST,
batch 128, 2-core CPU, 2026-12-04; the training batch's top-1 after 40 steps): SGD with Nesterov
momentum at 0.1 left ResNet-18 at 0.21 and ResNet-50 at 0.19 with zero-initialised residual
branches (the branches stay near zero, so the network starts as a shallow one and learns
slowly); without them ResNet-18 reached 0.80 but ResNet-50's gradient norm was 20-40 and its loss
rose to 6.6. AdamW at 1e-3 without zero-init: ResNet-50 0.83 and falling loss; Adam at 1e-3
with zero-init: ResNet-18 0.57 against 0.91 without. Plain VGG-16: AdamW 1e-4 0.36, SGD 0.03
0.21. (300-step top-1 on the test split: benchmarks/protocol_check.py.) Dropout: see FAST_DROPOUT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.specs import DatasetSpec, ModelSpec

# `fast`'s base (AdamW) learning rate per 256 images, for a model whose spec gives none
# (base_lr): with normalisation layers (BatchNorm), and without (plain VGG-16).
BASE_LR_NORMALISED = 0.002
BASE_LR_PLAIN = 0.0002
LR_REFERENCE_BATCH = 256
# `fast`'s epochs where `epochs` is not given (`paper`: the data set's own).
FAST_EPOCHS = 10
# `fast`'s dropout before the classifier's layers: none. Regularising a schedule of a few epochs
# only slows it, and plain VGG-16 most (its 4096-wide layers at half their width learn nothing
# for longer). Measured on Tiny-ImageNet's local 20,000 training images at 32 px, 3 epochs, fp32,
# 2-core AVX2 EPYC, 2026-12-06: test top-1 0.033 (top-5 0.119, training loss 4.97, not flagged)
# against 0.0105 (0.048; 5.18, flagged stuck and collapsed) with torchvision's 0.5.
FAST_DROPOUT = 0.0
# Training images that re-estimate BatchNorm's statistics before each evaluation under `fast`.
FAST_PRECISE_BN = 2000
# `fast` removes the ImageNet stem's early 2x downsamplings for images up to this size, and keeps
# one per doubling above it, so a 64 px image costs no more than the model at its paper size.
FAST_STEM_SIDE = 32


@dataclass(frozen=True)
class Protocol:
    name: str
    summary: str  # one line, for `study help` and the report
    optimizer: str
    batch_size: int
    momentum: float
    weight_decay: float
    schedule: str
    label_smoothing: float
    dropout: float  # before the classifier's layers (VGG's two, Inception-V3's one)
    # bf16 autocast: False trains in fp32 everywhere (the seed did), "auto" on CUDA only.
    amp: bool | str
    warmup: float  # linear warm-up: this share of the schedule's steps...
    warmup_min_steps: int  # ...and at least this many (at most half the schedule)
    grad_clip: float  # the gradients' global norm is clipped to this; 0: never
    zero_init_residual: bool  # residual branches start as identities (Goyal et al. 2017)
    decay_norm_bias: bool  # weight decay on normalisation and bias parameters too
    drop_last: bool  # the epoch's last, smaller batch is dropped: one shape, one cuDNN plan
    precise_bn: int
    fixed_lr: float | None  # None: the batch-scaled rule (lr_for)


PAPER = Protocol(
    name="paper",
    summary="the seed study's: Adam at 2e-4, batch 100, fp32, no augmentation, 224/299 px, "
    "the ImageNet head kept with one layer appended, 6 / 25 / 30 epochs",
    optimizer="adam",
    batch_size=100,
    momentum=0.9,
    weight_decay=0.0,
    schedule="constant",
    label_smoothing=0.0,
    dropout=0.5,  # torchvision's VGG-16 and Inception-V3, as the seed trained them
    amp=False,
    warmup=0.0,
    warmup_min_steps=0,
    grad_clip=0.0,
    zero_init_residual=False,
    decay_norm_bias=True,
    drop_last=False,
    precise_bn=0,
    fixed_lr=0.0002,
)

FAST = Protocol(
    name="fast",
    summary="native resolution with a small-image stem, AdamW at a batch-scaled lr, linear "
    "warm-up then cosine decay, label smoothing, random crop (and flip)",
    optimizer="adamw",
    batch_size=128,
    momentum=0.9,
    weight_decay=0.05,  # decoupled (AdamW's): a share of the weights per unit of lr
    schedule="onecycle",
    label_smoothing=0.1,
    dropout=FAST_DROPOUT,
    amp="auto",
    warmup=0.1,
    warmup_min_steps=30,
    grad_clip=2.0,
    zero_init_residual=False,  # measured: slows short schedules (module docstring)
    decay_norm_bias=False,
    drop_last=True,
    precise_bn=FAST_PRECISE_BN,
    fixed_lr=None,
)

PROTOCOLS = {p.name: p for p in (PAPER, FAST)}

# Config keys whose null a protocol resolves (besides epochs, image_size, head, augment,
# aux_logits and lr, which depend on the model or the data set too).
PROTOCOL_KEYS = (
    "optimizer",
    "batch_size",
    "momentum",
    "weight_decay",
    "schedule",
    "label_smoothing",
    "dropout",
    "amp",
    "warmup",
    "warmup_min_steps",
    "grad_clip",
    "zero_init_residual",
    "decay_norm_bias",
    "drop_last",
    "precise_bn",
)


def base_lr(model: ModelSpec) -> float:
    """`fast`'s learning rate per 256 images for `model`: its spec's own, else by whether it
    normalises its activations."""
    if model.base_lr is not None:
        return float(model.base_lr)
    return BASE_LR_NORMALISED if model.normalises_activations else BASE_LR_PLAIN


def lr_for(protocol: Protocol, model: ModelSpec, batch_size: int) -> float:
    """The peak learning rate: the protocol's fixed one, or base x batch / 256."""
    if protocol.fixed_lr is not None:
        return protocol.fixed_lr
    return base_lr(model) * batch_size / LR_REFERENCE_BATCH


def warmup_steps(total_steps: int, share: float, min_steps: int) -> int:
    """Steps of linear warm-up in a schedule of `total_steps`: `share` of them, at least
    `min_steps`, at most half."""
    if share <= 0 and min_steps <= 0:
        return 0
    return min(max(math.ceil(share * total_steps), min_steps), total_steps // 2)


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """The learning rate of step `step` (0-based) as a share of the peak: linear warm-up over
    `warmup` steps, then constant or a cosine decay to 0 at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def resolve(protocol: Protocol, model: ModelSpec, data: DatasetSpec, config: dict) -> dict:
    """The protocol's value of every key `config` leaves null."""
    out = {k: getattr(protocol, k) for k in PROTOCOL_KEYS if config.get(k) is None}
    batch = config.get("batch_size") or protocol.batch_size
    if config.get("lr") is None:
        out["lr"] = lr_for(protocol, model, batch)
    if config.get("head") is None:  # the seed's extra layer where there is an ImageNet head
        out["head"] = "append" if protocol is PAPER and model.imagenet_head else "replace"
    if config.get("augment") is None:  # flip only where a mirror image keeps its class
        if protocol is PAPER:
            out["augment"] = "none"
        else:
            out["augment"] = "crop-flip" if data.mirror_invariant else "crop"
    if config.get("aux_logits") is None:  # Inception-V3's auxiliary head needs 299 px
        out["aux_logits"] = model.aux_logits and protocol is PAPER
    if config.get("epochs") is None:
        out["epochs"] = data.paper_epochs if protocol is PAPER else FAST_EPOCHS
    return out


def stem_downsamplings(image_size: int, available: int) -> int:
    """How many of a stem's `available` early 2x downsamplings `fast` keeps for images of
    `image_size` px: none up to FAST_STEM_SIDE, then one per doubling."""
    kept, side = 0, image_size
    while side > FAST_STEM_SIDE and kept < available:
        side, kept = math.ceil(side / 2), kept + 1
    return kept
