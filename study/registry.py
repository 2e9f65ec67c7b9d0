"""The plugin registry: a pluggy PluginManager fed from the ``study.plugins`` entry points.

Built-in and third-party plugins are found the same way. Every spec remembers the plugin
(distribution and entry point) that provided it, so errors and ``study list`` can name it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points

import pluggy

from study import hookspecs
from study.errors import PluginError, UnknownName
from study.specs import DatasetSpec, ModelSpec


@dataclass(frozen=True)
class Provided:
    spec: ModelSpec | DatasetSpec
    plugin: str  # "distribution:entry-point", e.g. "study:study-models"


class Registry:
    def __init__(self, plugin_manager: pluggy.PluginManager):
        self.pm = plugin_manager
        self.models: dict[str, Provided] = self._collect("study_models", ModelSpec, "model")
        self.datasets: dict[str, Provided] = self._collect("study_datasets", DatasetSpec, "dataset")

    def _collect(self, hook_name: str, spec_type: type, kind: str) -> dict[str, Provided]:
        found: dict[str, Provided] = {}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                specs = impl.function() or []
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name} failed in {hook_name}(): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"plugin {impl.plugin_name} returned {type(spec).__name__} from "
                        f"{hook_name}(); expected study.specs.{spec_type.__name__}"
                    )
                if spec.name in found:
                    raise PluginError(
                        f"{kind} {spec.name!r} is registered by two plugins: "
                        f"{found[spec.name].plugin} and {impl.plugin_name}; "
                        "uninstall one of them or rename the model"
                    )
                found[spec.name] = Provided(spec, impl.plugin_name)
        return dict(sorted(found.items()))

    def model(self, name: str) -> ModelSpec:
        return self._lookup(self.models, name, "model").spec  # type: ignore[return-value]

    def dataset(self, name: str) -> DatasetSpec:
        return self._lookup(self.datasets, name, "dataset").spec  # type: ignore[return-value]

    @staticmethod
    def _lookup(table: dict[str, Provided], name: str, kind: str) -> Provided:
        try:
            return table[name]
        except (KeyError, TypeError):
            known = ", ".join(table) or "(none: is study installed?)"
            raise UnknownName(f"unknown {kind} {name!r}; registered {kind}s: {known}") from None


def plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            name = f"{dist}:{ep.name}"
            if pm.has_plugin(name):  # the same distribution seen twice on sys.path
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {name} ({ep.value}) failed to import: {type(exc).__name__}: {exc}"
                ) from exc
            pm.register(plugin, name=name)
    return pm


@functools.cache
def registry() -> Registry:
    """The registry of everything installed (built once per process)."""
    return Registry(plugin_manager())
