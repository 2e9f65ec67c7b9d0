"""What a run trains with, built from its resolved config: the model (through its plugin,
checked against the plugin contract before any work), the optimizer and the per-step learning-
rate schedule. study.experiment wires these into a run; benchmarks and tests build them alone."""

from __future__ import annotations

from study import protocols
from study.errors import ConfigError
from study.specs import ModelOptions


def model_options(config: dict, num_classes: int, in_channels: int) -> ModelOptions:
    return ModelOptions(
        num_classes=num_classes,
        image_size=config["image_size"],
        in_channels=in_channels,
        pretrained=config["pretrained"],
        head=config["head"],
        aux_logits=config["aux_logits"],
        protocol=config["protocol"],
        zero_init_residual=config["zero_init_residual"],
        dropout=config["dropout"],
    )


def build_model(config: dict, model_spec, data):
    """The plugin's model for this config; whatever the plugin raises becomes one line."""
    from torch import nn

    from study.errors import PluginError, StudyError
    from study.registry import registry

    plugin = registry().models[model_spec.name].plugin
    try:
        model = model_spec.factory(
            model_options(config, data.num_classes, input_channels(model_spec, data))
        )
    except StudyError:
        raise
    except Exception as exc:
        raise PluginError(
            f"model {model_spec.name} (plugin {plugin}) failed to build: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"model {model_spec.name} (plugin {plugin}): its factory returned "
            f"{type(model).__name__}, not a torch.nn.Module"
        )
    return model


def check_model(config: dict, model_spec, data, device) -> None:
    """The plugin contract, checked on the meta device before any work: one logit per class
    (and an auxiliary output of the same shape where the model has one), and one image's
    activations within the device's memory."""
    import torch

    from study import loader
    from study.engine import split_outputs
    from study.errors import PluginError
    from study.modelstats import forward_on_meta

    model = build_model(config, model_spec, data)
    size, channels = config["image_size"], input_channels(model_spec, data)
    try:
        outputs, elements = forward_on_meta(model, 2, size, channels)
    except Exception:  # an op without a meta kernel: the run itself will tell
        return
    classes = data.num_classes
    for what, out in zip(("output", "auxiliary output"), split_outputs(outputs), strict=True):
        if out is not None and tuple(out.shape) != (2, classes):
            raise PluginError(
                f"model {model_spec.name}: its {what} for a batch of 2 images has shape "
                f"{tuple(out.shape)}, expected (2, {classes}): one logit per class of "
                f"{data.name} (ModelOptions.num_classes)"
            )
    # fp32 activations kept for backward, at batch 1; the weights, gradients and optimizer
    # state come on top. A rough bound, but it turns an allocation of terabytes into a line.
    need = elements * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = loader.available_host_memory()
    if need > free:
        fits = int(size * (free / need) ** 0.5)
        raise ConfigError(
            f"image_size={size}: one image through {model_spec.name} needs an estimated "
            f"{need / 2**30:.1f} GiB of activations, more than the {free / 2**30:.1f} GiB free "
            f"on {device}; about {fits} px or less would fit"
        )


def input_channels(model_spec, data) -> int:
    """What the model is built for: its own channel count, or the data's when it takes any."""
    return data.channels if model_spec.in_channels is None else model_spec.in_channels


def make_optimizer(config: dict, model, fused: bool = False):
    """Adam, AdamW or SGD (Nesterov when momentum > 0); torch's fused kernels on CUDA. Without
    decay_norm_bias, normalisation and bias parameters (every 1-d tensor) are not decayed."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = config["weight_decay"]
    if decay and not config["decay_norm_bias"]:
        groups = [
            {"params": [p for p in params if p.ndim > 1]},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
        ]
        params = [g for g in groups if g["params"]]
    fused = fused or None  # None: torch's default implementation
    if config["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=config["lr"], weight_decay=decay, fused=fused)
    if config["optimizer"] == "adamw":  # decoupled weight decay (Loshchilov & Hutter 2019)
        return torch.optim.AdamW(params, lr=config["lr"], weight_decay=decay, fused=fused)
    return torch.optim.SGD(
        params,
        lr=config["lr"],
        momentum=config["momentum"],
        weight_decay=decay,
        nesterov=config["momentum"] > 0,
        fused=fused,
    )


def schedule_warmup(config: dict, steps_per_epoch: int) -> int:
    """Steps of the linear warm-up of this run's schedule."""
    total = max(1, config["epochs"] * steps_per_epoch)
    return protocols.warmup_steps(total, config["warmup"], config["warmup_min_steps"])


def make_scheduler(config: dict, optimizer, steps_per_epoch: int):
    """A per-step learning-rate schedule over the whole run (None: constant, no warm-up):
    the linear warm-up, then constant (constant), a cosine decay to 0 (onecycle), or, for
    cosine, torch's cosine annealing over every step (no warm-up: as before warm-up existed)."""
    import functools

    import torch

    total = max(1, config["epochs"] * steps_per_epoch)
    warmup = schedule_warmup(config, steps_per_epoch)
    if config["schedule"] == "cosine" and not warmup:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if config["schedule"] == "constant" and not warmup:
        return None
    schedule = "constant" if config["schedule"] == "constant" else "cosine"
    # A partial of a module-level function: the scheduler's state_dict stays plain data.
    factor = functools.partial(
        protocols.lr_factor, total_steps=total, warmup=warmup, schedule=schedule
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
