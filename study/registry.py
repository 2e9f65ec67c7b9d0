"""The plugin registry: a pluggy PluginManager fed from the ``study.plugins`` entry points.

Built-in and third-party plugins are found the same way. Every spec remembers the plugin
(distribution and entry point) that provided it, so errors and ``study list`` can name it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from study import hookspecs
from study.errors import PluginError, UnknownName
from study.specs import DatasetSpec, ModelFamily, ModelSpec


@dataclass(frozen=True)
class Provided:
    spec: ModelSpec | DatasetSpec
    plugin: str  # "distribution:entry-point", e.g. "study:study-models"


class ModelTable(dict):
    """The registered models by name, and, looked up on demand, those of a model family
    (`timm:resnet10t`): `in`, `[]` and `.get` reach both; iterating lists the registered ones."""

    def __init__(self, found: dict[str, Provided], families: dict[str, tuple[ModelFamily, str]]):
        super().__init__(found)
        self.families = families  # prefix -> (family, plugin)

    def family_member(self, name) -> Provided | None:
        if not isinstance(name, str) or ":" not in name:
            return None
        prefix, _, rest = name.partition(":")
        if prefix not in self.families or not rest:
            return None
        family, plugin = self.families[prefix]
        spec = family.spec_for(rest)
        if spec is None:
            return None
        provided = Provided(dataclasses.replace(spec, name=name), plugin)
        dict.__setitem__(self, name, provided)  # built once per process
        return provided

    def __missing__(self, name):
        provided = self.family_member(name)
        if provided is None:
            raise KeyError(name)
        return provided

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or self.family_member(name) is not None

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


class Registry:
    def __init__(self, plugin_manager: pluggy.PluginManager):
        self.pm = plugin_manager
        self.families = self._families()
        self.models: dict[str, Provided] = ModelTable(
            self._collect("study_models", ModelSpec, "model"), self.families
        )
        self.datasets: dict[str, Provided] = self._collect("study_datasets", DatasetSpec, "dataset")

    def _families(self) -> dict[str, tuple[ModelFamily, str]]:
        found: dict[str, tuple[ModelFamily, str]] = {}
        for impl in self.pm.hook.study_model_families.get_hookimpls():
            try:
                families = impl.function() or []
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name} failed in study_model_families(): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for family in families:
                if not isinstance(family, ModelFamily):
                    raise PluginError(
                        f"plugin {impl.plugin_name} returned {type(family).__name__} from "
                        "study_model_families(); expected study.specs.ModelFamily"
                    )
                if family.prefix in found:
                    raise PluginError(
                        f"model family {family.prefix!r} is registered by two plugins: "
                        f"{found[family.prefix][1]} and {impl.plugin_name}"
                    )
                found[family.prefix] = (family, impl.plugin_name)
        return found

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
            if isinstance(specs, spec_type):  # one spec rather than a list of one
                specs = [specs]
            if not isinstance(specs, list | tuple):
                raise PluginError(
                    f"plugin {impl.plugin_name} returned {type(specs).__name__} from "
                    f"{hook_name}(); expected a list of study.specs.{spec_type.__name__}"
                )
            for spec in specs:
                if not isinstance(spec, spec_type):
                    raise PluginError(
                        f"plugin {impl.plugin_name} returned {type(spec).__name__} from "
                        f"{hook_name}(); expected study.specs.{spec_type.__name__}"
                    )
                if isinstance(spec, DatasetSpec) and len(spec.class_names) != spec.num_classes:
                    raise PluginError(
                        f"plugin {impl.plugin_name}: dataset {spec.name!r} declares "
                        f"num_classes={spec.num_classes} but {len(spec.class_names)} class names; "
                        "they must agree"
                    )
                if spec.name in found:
                    raise PluginError(
                        f"{kind} {spec.name!r} is registered by two plugins: "
                        f"{found[spec.name].plugin} and {impl.plugin_name}; "
                        f"uninstall one of them, rename the {kind}, or switch one plugin off "
                        f"with {DISABLE_VARIABLE}"
                    )
                found[spec.name] = Provided(spec, impl.plugin_name)
        return dict(sorted(found.items()))

    def model(self, name: str) -> ModelSpec:
        return self._lookup(self.models, name, "model").spec  # type: ignore[return-value]

    def dataset(self, name: str) -> DatasetSpec:
        return self._lookup(self.datasets, name, "dataset").spec  # type: ignore[return-value]

    def _lookup(self, table: dict[str, Provided], name: str, kind: str) -> Provided:
        try:
            return table[name]
        except (KeyError, TypeError):
            prefix = name.partition(":")[0] if isinstance(name, str) and ":" in name else None
            if kind == "model" and prefix in self.families:
                family = self.families[prefix][0]
                close = list(family.suggest(name.partition(":")[2]))[:3]
                hint = (
                    f"; did you mean {', '.join(f'{prefix}:{c}' for c in close)}?" if close else ""
                )
                raise UnknownName(
                    f"unknown model {name!r}: {prefix} has no such architecture{hint} "
                    f"(`study list {prefix}` lists them)"
                ) from None
            known = ", ".join(table) or "(none: is study installed?)"
            families = "".join(f", or {p}:NAME" for p in self.families) if kind == "model" else ""
            raise UnknownName(
                f"unknown {kind} {name!r}; registered {kind}s: {known}{families}"
            ) from None


# Plugins to leave out, comma separated: "distribution:entry-point" as `study list` names them,
# or a distribution's name for all of its plugins. A broken plugin need not be uninstalled.
DISABLE_VARIABLE = "STUDY_DISABLE_PLUGINS"
HOOK_NAMES = tuple(n for n in dir(hookspecs) if n.startswith("study_"))


# The distribution's names before a rename, with the name that replaced each: runs record
# plugins as "distribution:entry-point", and a run recorded as "study:study-models" must
# still name the plugin installed today (`study reproduce`, STUDY_DISABLE_PLUGINS).
RENAMED_DISTRIBUTIONS = {"study": "archstudy"}  # "study" was taken on PyPI


def current_plugin_name(name: str) -> str:
    """A plugin ("distribution:entry-point") or distribution name under today's distribution
    names: "study:study-models" -> "archstudy:study-models"."""
    dist, colon, entry = name.partition(":")
    return RENAMED_DISTRIBUTIONS.get(dist, dist) + colon + entry


def disabled_plugins() -> set[str]:
    names = os.environ.get(DISABLE_VARIABLE, "").split(",")
    return {current_plugin_name(p.strip()) for p in names if p.strip()}


def plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        disabled = disabled_plugins()
        for ep in entry_points(group=hookspecs.ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            name = f"{dist}:{ep.name}"
            if pm.has_plugin(name) or name in disabled or dist in disabled:
                continue  # seen twice on sys.path, or switched off
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # sys.exit() at import: a failure too
                raise PluginError(
                    f"plugin {name} ({ep.value}) failed to import: {type(exc).__name__}: {exc}; "
                    f"switch it off with {DISABLE_VARIABLE}={name}"
                ) from exc
            _check_hook_names(plugin, name)
            other = pm.get_name(plugin)
            if other is not None:  # one module, two distributions: an old install left behind
                dists = sorted({dist, other.partition(":")[0]})
                old = [d for d in dists if d in RENAMED_DISTRIBUTIONS]
                raise PluginError(
                    f"plugin {name} ({ep.value}) is also installed as {other}: two installed "
                    "distributions provide the same code; "
                    + (
                        f"{old[0]} is {RENAMED_DISTRIBUTIONS[old[0]]}'s old name: "
                        f"pip uninstall {old[0]}"
                        if old
                        else f"uninstall one of them: {' or '.join(dists)}"
                    )
                )
            pm.register(plugin, name=name)
    return pm


def _check_hook_names(plugin, name: str) -> None:
    """A function named like a hook but not one (`study_model`) would be silently ignored."""
    for attr in dir(plugin):
        if attr.startswith("study_") and attr not in HOOK_NAMES and callable(getattr(plugin, attr)):
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise PluginError(
                f"plugin {name} defines {attr}(), which is no study hook{hint}; "
                f"the hooks are {', '.join(HOOK_NAMES)}"
            )


@functools.cache
def registry() -> Registry:
    """The registry of everything installed (built once per process)."""
    return Registry(plugin_manager())


def source_digest(module) -> str:
    """The source of every module in the package that holds `module` (or of the lone module),
    hashed: what a plugin's code was, whatever version its distribution claims. "" when the
    source cannot be found (a compiled or zipped module)."""
    try:
        source = Path(inspect.getsourcefile(module) or "")
    except TypeError:  # a built-in module
        return ""
    if not source.is_file():
        return ""
    is_package_member = bool(module.__package__) and module.__package__ != module.__name__
    files = [source]
    if is_package_member or source.name == "__init__.py":
        files = sorted(source.parent.glob("*.py"))
    h = hashlib.sha256()
    for file in files:
        h.update(file.name.encode() + b"\0" + file.read_bytes())
    return h.hexdigest()[:16]


def plugin_code(plugin: str) -> str | None:
    """source_digest of a registered plugin ("distribution:entry-point"); None if unknown."""
    module = registry().pm.get_plugin(plugin)
    return source_digest(module) if module is not None else None
