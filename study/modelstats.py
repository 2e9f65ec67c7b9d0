"""Model statistics for the run record: size on disk/in memory and compute per image."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_stats(model: nn.Module, image_size: int, in_channels: int = 3) -> dict[str, Any]:
    """Parameter counts, weight size and multiply-accumulates of one forward pass.

    MACs are counted for one image of image_size x image_size in eval mode (so an auxiliary
    classifier, used only in training, is not counted), from FlopCounterMode's FLOPs / 2.
    """
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    nbytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    macs = count_macs(model, image_size, in_channels)
    # Whether `dropout` did anything to this model (the report lists it only then).
    dropouts = sum(isinstance(m, nn.modules.dropout._DropoutNd) for m in model.modules())
    return {
        "dropout_layers": dropouts,
        "params": params,
        "trainable_params": trainable,
        "weight_mb": nbytes / 2**20,
        "macs_per_image": macs,
        "gmacs_per_image": macs / 1e9,
    }


def count_macs(model: nn.Module, image_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one eval-mode forward pass on one image."""
    was_training = model.training
    model.eval()
    try:
        try:
            return _count_on_meta(model, image_size, in_channels)
        except Exception:  # an op without a meta kernel: count for real, on one image
            return _count_on_device(model, image_size, in_channels)
    finally:
        model.train(was_training)


def _count_on_meta(model: nn.Module, image_size: int, in_channels: int) -> int:
    # Shape-only stand-ins for the weights: no copy of the model and no arithmetic is done.
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    x = torch.empty(1, in_channels, image_size, image_size, device="meta", dtype=_dtype(model))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        torch.func.functional_call(model, meta, (x,), tie_weights=True, strict=False)
    return counter.get_total_flops() // 2


def _count_on_device(model: nn.Module, image_size: int, in_channels: int) -> int:
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    x = torch.zeros(1, in_channels, image_size, image_size, device=device, dtype=_dtype(model))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _dtype(model: nn.Module) -> torch.dtype:
    first = next(model.parameters(), None)
    return first.dtype if first is not None and first.is_floating_point() else torch.float32


def forward_on_meta(model: nn.Module, batch: int, image_size: int, in_channels: int = 3):
    """(outputs, activation elements per image) of one training-mode forward pass on the meta
    device: shapes only, no arithmetic and no memory, whatever the image size. Activation
    elements are the outputs of every leaf module, roughly what backward keeps."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    x = torch.empty(batch, in_channels, image_size, image_size, device="meta", dtype=_dtype(model))
    elements = 0

    def count(module, inputs, output):
        nonlocal elements
        for t in output if isinstance(output, tuple | list) else (output,):
            if isinstance(t, torch.Tensor):
                elements += t.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    was_training = model.training
    model.train()
    try:
        outputs = torch.func.functional_call(model, meta, (x,), tie_weights=True, strict=False)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return outputs, elements // batch
