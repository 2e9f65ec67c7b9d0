"""study: reproducible image-classification studies."""

from study.hookspecs import hookimpl
from study.specs import DatasetSpec, Decoded, Download, ModelOptions, ModelSpec, Split

__version__ = "0.1.0"

__all__ = [
    "DatasetSpec",
    "Decoded",
    "Download",
    "ModelOptions",
    "ModelSpec",
    "Split",
    "__version__",
    "hookimpl",
]
