"""study: reproducible image-classification studies."""

import warnings
from pkgutil import extend_path

# `python -m study` in a source checkout imports this folder rather than the installed package,
# and study.plugins / study.templates live elsewhere in the checkout (they are installed into
# the package): let the installed copy of the package complete this one.
__path__ = extend_path(__path__, __name__)

# Sacred 0.8.7 imports pkg_resources, which warns on every import; not ours to fix, and it
# would otherwise greet every `study` command.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


from study.hookspecs import hookimpl  # noqa: E402
from study.specs import DatasetSpec, Decoded, Download, ModelOptions, ModelSpec, Split  # noqa: E402

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
