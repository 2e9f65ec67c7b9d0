"""Hook specifications: the whole plugin interface of study, in one place.

A plugin is a module (or object) registered under the ``study.plugins`` entry-point group that
implements any of these hooks with ``@study.hookimpl``. The built-in models and data sets are
plugins of exactly this kind (see ``study/plugins/``).
"""

from __future__ import annotations

import pluggy

PROJECT = "study"
ENTRY_POINT_GROUP = "study.plugins"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def study_models() -> list:
    """Return the ``study.specs.ModelSpec`` objects this plugin provides."""


@hookspec
def study_datasets() -> list:
    """Return the ``study.specs.DatasetSpec`` objects this plugin provides."""


@hookspec
def study_model_families() -> list:
    """Return ``study.specs.ModelFamily`` objects: a prefix under which this plugin provides
    models by name, on demand (``model=timm:resnet10t``), for a library of hundreds of
    architectures that would be slow to list at every start."""
