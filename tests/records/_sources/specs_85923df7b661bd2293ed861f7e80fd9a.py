"""The small public types a plugin needs: what a model or a data set is, to the core.

Plugins import only this module (and, for convenience, ``study.errors``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and numpy are imported lazily so `study list` stays fast
    import numpy as np
    from torch import nn

PROTOCOLS = ("paper", "fast")


@dataclass(frozen=True)
class ModelOptions:
    """Everything a model factory is told about the model it must build."""

    num_classes: int
    image_size: int
    in_channels: int = 3
    # False: random init. True: torchvision's ImageNet weights (downloaded as torchvision does).
    # A string: a local file holding those weights (a state dict).
    pretrained: bool | str = False
    # "replace": the last layer is swapped for one with num_classes outputs.
    # "append": the 1000-way ImageNet head is kept and one Linear(1000, num_classes) follows
    # (the seed study's choice).
    head: str = "replace"
    aux_logits: bool = False
    protocol: str = "paper"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    factory: Callable[[ModelOptions], nn.Module]
    description: str
    # Input size in pixels per protocol; None means "the data set's native size".
    input_size: Mapping[str, int | None]
    min_input_size: int
    # A protocol whose variant of the model takes smaller inputs (e.g. a small-image stem).
    min_input_size_per_protocol: Mapping[str, int] = field(default_factory=dict)
    # The model has an auxiliary classifier (trained with loss = main + aux_weight * aux).
    aux_logits: bool = False
    aux_min_input_size: int | None = None
    aux_weight: float = 0.4
    # A model that can only take single-channel or RGB input says so; None means any is fine
    # (the core expands greyscale to 3 channels for models that need RGB).
    in_channels: int | None = 3
    # How the report names it ("ResNet-50"); empty: its name.
    display_name: str = ""
    # Pretrained ImageNet weights the factory can load for `pretrained=True` (a weights file
    # path is always accepted); without them `pretrained=True` is refused before the run.
    pretrained_weights: bool = False
    # The factory builds a 1000-way ImageNet head first, so `head=append` (the seed's extra
    # layer after it) is possible; without one only `head=replace` is.
    imagenet_head: bool = False

    @property
    def title(self) -> str:
        return self.display_name or self.name

    def default_input_size(self, protocol: str, native_size: int) -> int:
        size = self.input_size.get(protocol)
        return native_size if size is None else int(size)

    def minimum_size(self, aux_logits: bool, protocol: str = "paper") -> int:
        if aux_logits and self.aux_min_input_size:
            return self.aux_min_input_size
        return self.min_input_size_per_protocol.get(protocol, self.min_input_size)


@dataclass(frozen=True)
class Download:
    """One file of a data set's official distribution."""

    url: str
    filename: str  # where it lands, relative to data_root
    md5: str | None = None


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int64, (N,)


@dataclass
class Decoded:
    """What a data set plugin's decoder returns: both splits, decoded once."""

    train: Split
    test: Split
    class_names: list[str]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    num_classes: int
    class_names: Sequence[str]
    image_size: int  # native, square
    channels: int
    # The official split sizes; what is on disk may hold fewer, and the run records what it used.
    train_size: int
    test_size: int
    # find(data_root) -> the files to read; raises study.errors.MissingData when absent.
    find: Callable[[Path], list[Path]]
    # decode(files, workers) -> Decoded; raises study.errors.CorruptData naming a bad file.
    decode: Callable[[list[Path], int], Decoded]
    downloads: Sequence[Download] = ()
    description: str = ""
    # How the report names it ("CIFAR-10"); empty: its name.
    display_name: str = ""
    # Epochs of the seed's `paper` protocol on this data set; None: `paper` needs `epochs=`.
    paper_epochs: int | None = None
    # A mirrored image keeps its class, so `fast` may flip it: a claim its author makes (a
    # mirrored digit or letter is another character, so the default is no).
    mirror_invariant: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return self.display_name or self.name
