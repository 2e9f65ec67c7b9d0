"""An example third-party plugin: one new architecture, registered like the built-in ones."""

from torch import nn

import study


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
            input_size={"paper": None, "fast": None},
            min_input_size=4,
            in_channels=None,
        )
    ]
