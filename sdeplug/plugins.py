"""The plugin manager and the registry of parts.

Every concrete part reaches sdeplug through a pluggy plugin found under the
``sdeplug`` entry-point group (the bundled ones too). Entry points are loaded one
by one, so a plugin that fails to import is reported with its distribution and
error while the others keep working. ``SDEPLUG_LOAD_PLUGINS`` (a comma-separated
list of entry-point names; empty for none) limits which are loaded.
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
import pluggy

from sdeplug import hookspecs
from sdeplug.errors import (
    DuplicatePartError,
    OptionError,
    RegistrationError,
    SdeplugError,
    UnknownPartError,
)
from sdeplug.interfaces import (
    SDE,
    Corrector,
    ODESolver,
    Predictor,
    ScoreModel,
    TimeClassifier,
    TimeGrid,
    check_sde_compatible,
)

ENTRY_POINT_GROUP = "sdeplug"
LOAD_PLUGINS_ENV = "SDEPLUG_LOAD_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the others still work."""


@attrs.frozen
class Kind:
    """A kind of part: its name, the hook that registers it, its base class and how it is built."""

    name: str
    hook: str
    base: type
    #: Positional arguments the toolkit supplies when it builds the part (not user options).
    supplied: tuple[str, ...] = ()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("sde", "register_sdes", SDE),
        Kind("predictor", "register_predictors", Predictor, ("sde", "score")),
        Kind("corrector", "register_correctors", Corrector, ("sde", "score")),
        Kind("ode_solver", "register_ode_solvers", ODESolver),
        Kind("score_model", "register_score_models", ScoreModel),
        Kind("time_grid", "register_time_grids", TimeGrid),
        Kind("classifier", "register_classifiers", TimeClassifier),
    )
}


@attrs.frozen
class PartInfo:
    """One registered part and where it came from."""

    kind: str
    name: str
    cls: type
    plugin: str
    distribution: str


@attrs.frozen
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    distribution: str
    error: str

    def __str__(self) -> str:
        return f'Error importing plugin "{self.plugin}" from {self.distribution}: {self.error}'


def _distribution_label(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def _default_part_name(cls: type) -> str:
    declared = getattr(cls, "name", None)
    if isinstance(declared, str) and declared:
        return declared
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", cls.__name__).lower()


def _selected(ep_name: str) -> bool:
    wanted = os.environ.get(LOAD_PLUGINS_ENV)
    if wanted is None:
        return True
    return ep_name in {n.strip() for n in wanted.split(",") if n.strip()}


def _unspecified_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return [hc.name for hc in pm.get_hookcallers(plugin) or [] if not hc.has_spec()]


class PluginHost:
    """Builds the pluggy manager: bundled and third-party plugins from entry points, plus in-process ones."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.distributions: dict[str, str] = {}
        self.failures: list[PluginFailure] = []

    def add(self, plugin: object, name: str, distribution: str) -> None:
        """Register one plugin object; a misspelt hook or bad signature is recorded, not raised."""
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy raises ValueError and PluginValidationError
            self._fail(name, distribution, exc)
            return
        unknown = _unspecified_hooks(self.pm, plugin)
        if unknown:
            self.pm.unregister(plugin)
            known = ", ".join(sorted(k.hook for k in KINDS.values()))
            self._fail(name, distribution, f"unknown hook(s) {', '.join(unknown)}; sdeplug's hooks are {known}")
            return
        self.distributions[name] = distribution

    def load_entry_points(self, eps: Iterable[EntryPoint] | None = None) -> None:
        """Load every selected ``sdeplug`` entry point, one at a time."""
        for ep in eps if eps is not None else entry_points(group=ENTRY_POINT_GROUP):
            if not _selected(ep.name):
                continue
            if self.pm.has_plugin(ep.name):
                self._fail(ep.name, _distribution_label(ep), "another plugin of this name is already loaded")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(ep.name, _distribution_label(ep), exc)
                continue
            self.add(plugin, ep.name, _distribution_label(ep))

    def _fail(self, plugin: str, distribution: str, error: object) -> None:
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        failure = PluginFailure(plugin, distribution, str(error))
        self.failures.append(failure)
        warnings.warn(str(failure), PluginLoadWarning, stacklevel=3)

    def collect(self) -> Registry:
        """Call every registration hook, plugin by plugin, and build the registry."""
        registry = Registry(failures=self.failures)
        for kind in KINDS.values():
            for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():
                plugin = impl.plugin_name
                dist = self.distributions.get(plugin, "an unknown distribution")

                def register(cls: type, name: str | None = None, *, _kind=kind, _plugin=plugin, _dist=dist) -> None:
                    registry.add(_kind, cls, name, _plugin, _dist)

                try:
                    impl.function(register=register)
                except Exception as exc:
                    self._fail(plugin, dist, f"{kind.hook} raised {type(exc).__name__}: {exc}")
        registry.failures = list(self.failures)
        return registry


class Registry:
    """Every registered part, by kind and name, with the plugin and distribution it came from."""

    def __init__(self, failures: Iterable[PluginFailure] = ()) -> None:
        self._parts: dict[str, dict[str, list[PartInfo]]] = {k: {} for k in KINDS}
        self.failures: list[PluginFailure] = list(failures)

    def add(self, kind: Kind, cls: type, name: str | None, plugin: str, distribution: str) -> None:
        """Add one part; called through the ``register`` callback the hooks receive."""
        if not (isinstance(cls, type) and issubclass(cls, kind.base)):
            raise RegistrationError(
                f"plugin {plugin!r} registered {cls!r} through {kind.hook}, but it is not a "
                f"subclass of sdeplug.{kind.base.__name__}"
            )
        if inspect.isabstract(cls):
            raise RegistrationError(f"plugin {plugin!r} registered the abstract class {cls.__name__} as a {kind.name}")
        part_name = name if name is not None else _default_part_name(cls)
        if not isinstance(part_name, str) or not part_name:
            raise RegistrationError(f"plugin {plugin!r}: a part name must be a non-empty string; got {part_name!r}")
        self._parts[kind.name].setdefault(part_name, []).append(
            PartInfo(kind.name, part_name, cls, plugin, distribution)
        )

    def _kind(self, kind: str) -> Kind:
        if kind not in KINDS:
            raise UnknownPartError("kind of part", kind, KINDS)
        return KINDS[kind]

    def names(self, kind: str) -> list[str]:
        """The names registered for a kind, sorted."""
        return sorted(self._parts[self._kind(kind).name])

    def parts(self) -> list[PartInfo]:
        """Every registration (duplicates included), ordered by kind then name."""
        return [info for kind in KINDS for name in sorted(self._parts[kind]) for info in self._parts[kind][name]]

    def duplicates(self) -> list[DuplicatePartError]:
        """One error for each name claimed by more than one plugin."""
        return [
            DuplicatePartError(kind, name, [f"plugin {i.plugin!r} ({i.distribution})" for i in infos])
            for kind, by_name in self._parts.items()
            for name, infos in sorted(by_name.items())
            if len(infos) > 1
        ]

    def get(self, kind: str, name: str) -> PartInfo:
        """The part of this kind and name; clear errors for unknown or ambiguous names."""
        by_name = self._parts[self._kind(kind).name]
        infos = by_name.get(name)
        if not infos:
            raise UnknownPartError(kind, name, by_name, [str(f) for f in self.failures])
        if len(infos) > 1:
            raise DuplicatePartError(kind, name, [f"plugin {i.plugin!r} ({i.distribution})" for i in infos])
        return infos[0]

    def options(self, kind: str, name: str) -> dict[str, Any] | None:
        """The options a part accepts with their defaults (``inspect._empty`` if required); None if any."""
        return part_options(self.get(kind, name).cls, self._kind(kind).supplied)

    def check_options(self, kind: str, name: str, options: Mapping[str, Any]) -> PartInfo:
        """Raise UnknownPartError or OptionError unless ``name`` exists and takes every option given."""
        info = self.get(kind, name)
        accepted = part_options(info.cls, self._kind(kind).supplied)
        if accepted is not None:
            for option in options:
                if option not in accepted:
                    raise OptionError.unknown_option(kind, name, option, accepted)
        return info

    def create(self, kind: str, name: str, *supplied: Any, **options: Any) -> Any:
        """Build a part by name: ``cls(*supplied, **options)``, with its options checked first."""
        spec = self._kind(kind)
        info = self.check_options(kind, name, options)
        accepted = part_options(info.cls, spec.supplied)
        if spec.supplied and supplied and kind in ("predictor", "corrector"):
            check_sde_compatible(kind, name, info.cls, supplied[0])
        try:
            return info.cls(*supplied, **options)
        except SdeplugError:
            raise
        except (TypeError, ValueError) as exc:
            raise OptionError(kind, name, f"{exc} (accepted options: {_describe(accepted)})") from exc


def part_options(cls: type, supplied: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Options of ``cls.__init__`` beyond the supplied arguments; None if it takes **kwargs."""
    params = list(inspect.signature(cls).parameters.values())
    options: dict[str, Any] = {}
    for param in params[len(supplied) :]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            options[param.name] = param.default
    return options


def _describe(accepted: dict[str, Any] | None) -> str:
    if accepted is None:
        return "any"
    return ", ".join(
        name if default is inspect.Parameter.empty else f"{name}={default!r}" for name, default in accepted.items()
    ) or "(none)"


_registry: Registry | None = None
_extra_plugins: list[tuple[object, str]] = []


def build_registry(load_entry_points: bool = True, extra: Iterable[tuple[object, str]] = ()) -> Registry:
    """A fresh registry from the entry points and in-process plugins (no caching)."""
    host = PluginHost()
    if load_entry_points:
        host.load_entry_points()
    for plugin, name in extra:
        host.add(plugin, name, "registered in-process")
    return host.collect()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry(extra=_extra_plugins)
    return _registry


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Add an in-process plugin (a module or object with hookimpls), e.g. from a notebook or a test."""
    global _registry
    _extra_plugins.append((plugin, name or getattr(plugin, "__name__", type(plugin).__name__)))
    _registry = None


def unregister_plugin(plugin: object) -> None:
    """Remove an in-process plugin added with ``register_plugin``."""
    global _registry
    _extra_plugins[:] = [(p, n) for p, n in _extra_plugins if p is not plugin]
    _registry = None


def reset_registry() -> None:
    """Forget the cached registry so the next use re-reads the entry points."""
    global _registry
    _registry = None


def create(kind: str, name: str, *supplied: Any, **options: Any) -> Any:
    """Build a registered part by kind and name with ``options`` (see Registry.create)."""
    return get_registry().create(kind, name, *supplied, **options)
