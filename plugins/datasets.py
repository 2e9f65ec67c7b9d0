"""Built-in datasets (placeholder, being written)."""

from study import hookimpl


@hookimpl
def study_datasets():
    return []
