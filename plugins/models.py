"""Built-in models: the seed study's three torchvision networks, ResNet-18 and a small CNN.

Every factory builds the network with its 1000-way ImageNet head first, loads weights into it
when asked (so a torchvision checkpoint fits unchanged), then fits the head to num_classes:
``head="replace"`` swaps the last layer, ``head="append"`` keeps it and adds one
Linear(1000, num_classes) after it, as the seed study did.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from study import hookimpl
from study.errors import ConfigError
from study.specs import ModelOptions, ModelSpec

HEADS = ("replace", "append")
IMAGENET_CLASSES = 1000
LOCAL_HINT = "pass a local file path instead: pretrained=/path/to/file.pth"


# --- shared checks and weight loading ---------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _check_options(name: str, options: ModelOptions, *, has_aux: bool = False) -> None:
    if options.head not in HEADS:
        raise ConfigError(f"{name}: unknown head {options.head!r}; valid heads: {', '.join(HEADS)}")
    if options.num_classes < 1:
        raise ConfigError(f"{name}: num_classes={options.num_classes}; it must be at least 1")
    if options.aux_logits and not has_aux:
        raise ConfigError(
            f"{name}: aux_logits=True but {name} has no auxiliary classifier; "
            "set aux_logits=False (only inception_v3 has one)"
        )


def _check_rgb(name: str, options: ModelOptions) -> None:
    # The ImageNet networks take RGB; the core expands greyscale before it reaches them.
    if options.in_channels != 3:
        raise ConfigError(
            f"{name}: in_channels={options.in_channels}; {name} takes 3 (RGB) channels"
        )


def _wants_weights(pretrained: bool | str | os.PathLike | None) -> bool:
    return pretrained not in (False, None, "")


def _download_weights(name: str) -> dict:
    """torchvision's ImageNet weights for `name`, through its normal download and cache."""
    from torchvision.models import get_model_weights

    # IMAGENET1K_V1: the original torchvision weights, the ones the seed study could have used.
    weights = get_model_weights(name).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except Exception as exc:
        raise ConfigError(
            f"{name}: cannot download the ImageNet weights from {weights.url} "
            f"({_one_line(exc)}); {LOCAL_HINT}"
        ) from exc


def _read_weights_file(name: str, pretrained: str | os.PathLike) -> dict:
    import torch

    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"pretrained={path}: file not found; pass an existing state-dict file "
            "or pretrained=True to download torchvision's ImageNet weights"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"pretrained={path}: cannot read weights ({_one_line(exc)}); "
            "expected a state dict saved with torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(
            f"pretrained={path}: holds a {type(state).__name__}, not a state dict; "
            "expected a state dict saved with torch.save(model.state_dict(), path)"
        )
    return state


def _load_weights(name: str, model, pretrained, *, drop_prefix: str | None = None) -> None:
    """Load ImageNet weights (downloaded or from a local file) into `model`, ImageNet head on."""
    if pretrained is True:
        state, source = _download_weights(name), "ImageNet weights"
    else:
        state, source = _read_weights_file(name, pretrained), f"pretrained={pretrained}"
    if drop_prefix:  # parts of the checkpoint this model was built without (Inception's aux)
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix)}

    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected)):
        if items:
            problems.append(f"{len(items)} {label} keys (e.g. {', '.join(items[:3])})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {wrong_shape[0]})")
    if problems:
        raise ConfigError(
            f"{source}: weights do not fit {name}: {'; '.join(problems)}; expected a "
            f"torchvision {name} state dict with the {IMAGENET_CLASSES}-class ImageNet head"
        )
    model.load_state_dict(state)


def _fit_head(parent, attr: str, options: ModelOptions) -> None:
    """Fit the ImageNet head `parent.<attr>` (an nn.Linear) to options.num_classes."""
    from torch import nn

    old = getattr(parent, attr)
    if options.head == "replace":
        setattr(parent, attr, nn.Linear(old.in_features, options.num_classes))
    else:  # "append": the seed's extra fully connected layer, straight after the 1000 logits
        setattr(parent, attr, nn.Sequential(old, nn.Linear(old.out_features, options.num_classes)))


def _small_image_stem(name: str, model, image_size: int) -> None:
    """The `fast` protocol's variant for small images: the ImageNet stem's early 2x
    downsamplings removed for images up to 32 px (as CIFAR-style networks do, so a 32 px image
    is not reduced to 1 px before the network has seen it), and one kept per doubling above
    that (study.protocols.stem_downsamplings), so that a 64 px image costs no more than the
    model at its paper size. Its first layers are freshly initialised."""
    from torch import nn

    from study.protocols import stem_downsamplings

    if name.startswith("resnet"):
        # Two downsamplings: conv1's stride and the max-pool; 3x3 stride-1 conv1 in any case.
        kept = stem_downsamplings(image_size, 2)
        stride = 2 if kept > 1 else 1
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if kept == 0:
            model.maxpool = nn.Identity()
    elif name.startswith("vgg16"):
        # The five poolings leave 1x1 at 32 px: pool whatever is left, and size the first
        # layer to it.
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier[0] = nn.Linear(512, model.classifier[0].out_features)
        # torchvision's initialisation (fan-out convolutions, a 0.01 standard deviation in the
        # classifier) shrinks a 32 px input's signal about 300-fold by the logits: plain VGG-16
        # then sits at chance (loss ln C) for hundreds of steps. He et al.'s fan-in
        # initialisation keeps the signal's scale through every layer.
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                last = module is model.classifier[-1]
                nn.init.kaiming_normal_(
                    module.weight, mode="fan_in", nonlinearity="linear" if last else "relu"
                )
                nn.init.zeros_(module.bias)
    elif name == "inception_v3":
        # Three downsamplings: Conv2d_1a's stride and the two max-pools.
        kept = stem_downsamplings(image_size, 3)
        model.Conv2d_1a_3x3.conv.stride = (2, 2) if kept > 2 else (1, 1)
        if kept < 1:
            model.maxpool1 = nn.Identity()
        if kept < 2:
            model.maxpool2 = nn.Identity()


# --- one factory per architecture -------------------------------------------------------------


def _vgg(name: str):
    """VGG-16 as the seed ran it, or with BatchNorm after each convolution (vgg16_bn), which
    trains from scratch in far fewer steps: plain VGG-16 stayed at chance (loss ln 200) on
    Tiny-ImageNet for 160 steps of Adam at 1e-4 and 2e-4 and 64 of SGD on a 2-core CPU."""

    def factory(options: ModelOptions):
        import torchvision

        _check_options(name, options)
        _check_rgb(name, options)
        model = getattr(torchvision.models, name)(
            weights=None, num_classes=IMAGENET_CLASSES, dropout=options.dropout
        )
        if _wants_weights(options.pretrained):
            _load_weights(name, model, options.pretrained)
        if options.protocol == "fast":
            _small_image_stem(name, model, options.image_size)
        _fit_head(model.classifier, "6", options)
        return model

    factory.__name__ = f"_{name}"
    return factory


def _resnet(name: str):
    def factory(options: ModelOptions):
        import torchvision

        _check_options(name, options)
        _check_rgb(name, options)
        builder = getattr(torchvision.models, name)
        model = builder(
            weights=None,
            num_classes=IMAGENET_CLASSES,
            zero_init_residual=options.zero_init_residual,
        )
        if _wants_weights(options.pretrained):
            _load_weights(name, model, options.pretrained)
        if options.protocol == "fast":
            _small_image_stem(name, model, options.image_size)
        _fit_head(model, "fc", options)
        return model

    factory.__name__ = f"_{name}"
    return factory


def _inception_v3(options: ModelOptions):
    import torchvision

    _check_options("inception_v3", options, has_aux=True)
    _check_rgb("inception_v3", options)
    # transform_input=False: the core normalises the input itself, as for the other models.
    model = torchvision.models.inception_v3(
        weights=None,
        num_classes=IMAGENET_CLASSES,
        aux_logits=options.aux_logits,
        transform_input=False,
        init_weights=True,
        dropout=options.dropout,
    )
    if _wants_weights(options.pretrained):
        # torchvision's checkpoint carries the aux classifier; a model without one skips it.
        drop = None if options.aux_logits else "AuxLogits."
        _load_weights("inception_v3", model, options.pretrained, drop_prefix=drop)
    if options.protocol == "fast":
        _small_image_stem("inception_v3", model, options.image_size)
    _fit_head(model, "fc", options)
    if options.aux_logits:
        _fit_head(model.AuxLogits, "fc", options)
    return model


def _small_cnn(options: ModelOptions):
    from torch import nn

    _check_options("small_cnn", options)
    if _wants_weights(options.pretrained):
        raise ConfigError(
            "small_cnn: pretrained weights do not exist (no ImageNet checkpoint); "
            "use pretrained=False, or an ImageNet model: vgg16, vgg16_bn, resnet18, resnet50, "
            "inception_v3"
        )
    if options.head != "replace":
        raise ConfigError(
            f"small_cnn: head={options.head!r} needs a 1000-way ImageNet head and small_cnn "
            "has none; valid heads for small_cnn: replace"
        )

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    # Two 2x poolings then a global average pool: 8 px in leaves a 2x2 map, anything larger works.
    return nn.Sequential(
        *block(options.in_channels, 32),
        *block(32, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        *block(64, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, options.num_classes),
    )


# --- the plugin hook --------------------------------------------------------------------------

# The fast protocol trains at the data set's native size with a small-image stem
# (_small_image_stem), so the ImageNet networks take 28-64 px images.
FAST = {"fast": None}


@hookimpl
def study_models() -> list[ModelSpec]:
    return [
        ModelSpec(
            name="vgg16",
            display_name="VGG-16",
            pretrained_weights=True,
            imagenet_head=True,
            factory=_vgg("vgg16"),
            description="VGG-16 (Simonyan & Zisserman 2014), torchvision, 138M parameters",
            input_size={"paper": 224, **FAST},
            min_input_size=32,
            min_input_size_per_protocol={"fast": 32},
        ),
        ModelSpec(
            name="vgg16_bn",
            normalises_activations=True,
            display_name="VGG-16-BN",
            pretrained_weights=True,
            imagenet_head=True,
            factory=_vgg("vgg16_bn"),
            description="VGG-16 with BatchNorm after each convolution, torchvision, 138M "
            "parameters",
            input_size={"paper": 224, **FAST},
            min_input_size=32,
            min_input_size_per_protocol={"fast": 32},
        ),
        ModelSpec(
            name="resnet50",
            normalises_activations=True,
            display_name="ResNet-50",
            pretrained_weights=True,
            imagenet_head=True,
            factory=_resnet("resnet50"),
            description="ResNet-50 (He et al. 2015), torchvision, 25.6M parameters",
            input_size={"paper": 224, **FAST},
            min_input_size=32,
            min_input_size_per_protocol={"fast": 8},
        ),
        ModelSpec(
            name="inception_v3",
            normalises_activations=True,
            display_name="Inception-V3",
            pretrained_weights=True,
            imagenet_head=True,
            factory=_inception_v3,
            description="Inception-V3 (Szegedy et al. 2015), torchvision, with auxiliary head",
            input_size={"paper": 299, **FAST},
            min_input_size=75,
            min_input_size_per_protocol={"fast": 28},
            aux_logits=True,
            aux_min_input_size=299,
        ),
        ModelSpec(
            name="resnet18",
            normalises_activations=True,
            display_name="ResNet-18",
            pretrained_weights=True,
            imagenet_head=True,
            factory=_resnet("resnet18"),
            description="ResNet-18 (He et al. 2015), torchvision, 11.7M parameters",
            input_size={"paper": 224, **FAST},
            min_input_size=32,
            min_input_size_per_protocol={"fast": 8},
        ),
        ModelSpec(
            name="small_cnn",
            normalises_activations=True,
            # A shallow net takes 3x the deep ones' AdamW rate: the README's first command
            # (100 steps) measured 0.977 top-1 at it against 0.955 at 0.002 (2-core CPU).
            base_lr=0.006,
            display_name="Small CNN",
            factory=_small_cnn,
            description="Small 5-conv CNN with BN and global average pooling, for quick CPU runs",
            input_size={"paper": None, **FAST},
            min_input_size=8,
            in_channels=None,
        ),
    ]
