"""Built-in models (placeholder, being written)."""

from study import hookimpl


@hookimpl
def study_models():
    return []
