"""An example third-party plugin: a model and a data set, registered like the built-in ones."""

from pathlib import Path

import numpy as np
from torch import nn

import study
from study.errors import CorruptData, MissingData


def build_tinynet(options: study.ModelOptions) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(options.in_channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 16, options.num_classes),
    )


@study.hookimpl
def study_models():
    return [
        study.ModelSpec(
            name="tinynet",
            factory=build_tinynet,
            description="A one-conv network from a third-party plugin",
            display_name="TinyNet",  # how the report names it
            input_size={"paper": None, "fast": None},  # None: the data set's native size
            min_input_size=4,
            in_channels=None,  # None: takes the data's own channels
            normalises_activations=True,  # it has BatchNorm: `fast` gives it the full lr
        )
    ]


def find_shapes(root: Path) -> list[Path]:
    """The files to read under data_root, or MissingData naming what was expected."""
    path = Path(root) / "shapes.npz"
    if not path.is_file():
        raise MissingData("shapes", root, ["shapes.npz"])
    return [path]


def decode_shapes(files: list[Path], workers: int = 0) -> study.Decoded:
    """uint8 images (N, 16, 16, 1) and integer labels; a bad file is one CorruptData line."""
    try:
        with np.load(files[0], allow_pickle=False) as arrays:  # arrays only, never objects
            train_x, train_y, test_x, test_y = (
                arrays[k] for k in ("train_x", "train_y", "test_x", "test_y")
            )
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptData(files[0], f"is not a shapes archive ({exc})") from None
    return study.Decoded(
        study.Split(train_x, train_y), study.Split(test_x, test_y), ["circle", "square"]
    )


@study.hookimpl
def study_datasets():
    return [
        study.DatasetSpec(
            name="shapes",
            num_classes=2,
            class_names=["circle", "square"],
            image_size=16,
            channels=1,
            train_size=200,  # the official split sizes
            test_size=50,
            find=find_shapes,
            decode=decode_shapes,
            description="Circles and squares, 16x16 grey",
            display_name="Shapes",
            paper_epochs=5,  # the epochs of the seed's `paper` protocol
            mirror_invariant=True,  # a mirrored circle is a circle: `fast` may flip
        )
    ]
