"""timm's architectures as `model=timm:NAME` (e.g. `timm:resnet10t`), through the plugin
interface like any other: the model family `timm`, active where timm is installed
(`pip install '.[timm]'`).

Nothing imports timm until a run names one of its models (`study list` and every command's start
stay as fast as without it). A spec is made from timm's own metadata: its pretrained
configuration gives the paper-protocol input size and whether ImageNet weights exist; the
network, built once on the meta device (no memory, no arithmetic), says whether it normalises
its activations (what the `fast` protocol's learning-rate rule asks). timm's classifier is built
with one output per class, so `head=replace` is the only head.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util

from study import hookimpl
from study.errors import ConfigError
from study.specs import ModelFamily, ModelOptions, ModelSpec

PREFIX = "timm"
# The smallest input a timm network is given here: most downsample 32x, so 32 px leaves them
# one feature-map pixel (the contract check refuses, in one line, a model that needs more).
MIN_INPUT = 32
WEIGHTS_HINT = "pretrained=/path/to/weights.safetensors (or .pth)"


def timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


@functools.cache
def _all_names() -> tuple[str, ...]:
    import timm

    return tuple(timm.list_models())


def build(arch: str, options: ModelOptions):
    import timm

    if options.head != "replace":
        raise ConfigError(
            f"timm:{arch}: head={options.head!r}; timm builds its classifier with one output per "
            "class, so head=replace is the only head"
        )
    if options.aux_logits:
        raise ConfigError(f"timm:{arch}: aux_logits=True; set aux_logits=False")
    kwargs = {"num_classes": options.num_classes, "in_chans": options.in_channels}
    if isinstance(options.pretrained, str):  # a local weights file, read by timm (tensors only)
        kwargs["pretrained_cfg_overlay"] = {"file": options.pretrained}
    return timm.create_model(arch, pretrained=bool(options.pretrained), **kwargs)


def spec_for(arch: str) -> ModelSpec | None:
    if arch not in _all_names():
        return None
    import timm
    import torch
    from torch import nn

    cfg = timm.get_pretrained_cfg(arch)
    cfg = cfg.to_dict() if cfg is not None else {}
    paper_size = int(cfg.get("input_size", (3, 224, 224))[-1])
    with torch.device("meta"):
        net = timm.create_model(arch, num_classes=2)
    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    return ModelSpec(
        name=arch,  # the registry names it timm:<arch>
        factory=functools.partial(build, arch),
        description=f"timm {timm.__version__}'s {arch}",
        display_name=f"{arch} (timm)",
        input_size={"paper": paper_size, "fast": None},
        min_input_size=MIN_INPUT,
        in_channels=None,  # timm adapts its first convolution to the data's channels
        pretrained_weights=bool(cfg.get("url") or cfg.get("hf_hub_id") or cfg.get("file")),
        normalises_activations=any(isinstance(m, norms) for m in net.modules()),
    )


def suggest(arch: str) -> list[str]:
    return difflib.get_close_matches(arch, _all_names(), n=3)


@hookimpl
def study_model_families() -> list[ModelFamily]:
    if not timm_available():
        return []
    return [
        ModelFamily(
            prefix=PREFIX,
            description="any of timm's architectures, e.g. timm:resnet10t",
            spec_for=spec_for,
            names=_all_names,
            suggest=suggest,
        )
    ]
