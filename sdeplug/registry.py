"""The plugin manager and the registry of parts.

Every concrete part reaches sdeplug through a pluggy plugin found under the
``sdeplug`` entry-point group (the bundled ones too). Entry points are loaded one
by one, so a plugin that fails to import is reported with its distribution and
error while the others keep working. ``SDEPLUG_LOAD_PLUGINS`` (a comma-separated
list of entry-point names; empty for none) limits which are loaded.
"""

from __future__ import annotations

import functools
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
    IncompatiblePartError,
    OptionError,
    PluginError,
    RegistrationError,
    SdeplugError,
    UnknownPartError,
    error_text,
)
from sdeplug.interfaces import (
    SDE,
    Corrector,
    FeatureExtractor,
    ODESolver,
    Predictor,
    ScoreModel,
    TimeClassifier,
    TimeGrid,
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
    #: Keyword options the toolkit fills in from the data when the user gives none.
    filled_in: tuple[str, ...] = ()
    #: Whether the part declares ``sde_types`` and is checked against the SDE it is used with.
    checks_sde: bool = False

    def signature(self) -> str:
        """How the toolkit calls the class, as the hook docstrings and the plugin guide write it."""
        args = [*self.supplied, *(f"{name}=..." for name in self.filled_in), "**options"]
        return f"cls({', '.join(args)})"


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("sde", "register_sdes", SDE),
        Kind("predictor", "register_predictors", Predictor, ("sde", "score"), checks_sde=True),
        Kind("corrector", "register_correctors", Corrector, ("sde", "score"), checks_sde=True),
        Kind("ode_solver", "register_ode_solvers", ODESolver),
        Kind("score_model", "register_score_models", ScoreModel, filled_in=("event_shape",)),
        Kind("time_grid", "register_time_grids", TimeGrid, checks_sde=True),
        Kind("classifier", "register_classifiers", TimeClassifier, filled_in=("event_shape", "num_classes")),
        Kind("feature_extractor", "register_feature_extractors", FeatureExtractor, filled_in=("event_shape",)),
    )
}


def part_name(part: object) -> str:
    """How errors and reports name a part given as a name, a class or an instance."""
    if isinstance(part, str):
        return part
    cls = part if isinstance(part, type) else type(part)
    declared = getattr(cls, "name", None)
    return declared if isinstance(declared, str) and declared else cls.__name__


def check_sde_compatible(kind: str, part: object, sde: SDE) -> None:
    """IncompatiblePartError unless the part (a class or an instance) lists the SDE's type in ``sde_types``."""
    accepted = getattr(part, "sde_types", (SDE,))
    if not isinstance(sde, accepted):
        wanted = " or ".join(c.__name__ for c in accepted)
        raise IncompatiblePartError(
            f"{kind} {part_name(part)!r} needs an SDE of type {wanted}; got {type(sde).__name__}"
            + (f" ({sde.name!r})" if getattr(sde, "name", None) else "")
        )


@attrs.frozen
class PartInfo:
    """One registered part and where it came from."""

    kind: str
    name: str
    cls: type
    plugin: str
    distribution: str
    #: Options fixed by the registration (a configured preset, e.g. torchdiffeq's dopri5).
    fixed: Mapping[str, Any] = attrs.field(factory=dict)


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

                def register(
                    cls: type, name: str | None = None, *, _kind=kind, _plugin=plugin, _dist=dist, **fixed: Any
                ) -> None:
                    registry.add(_kind, cls, name, _plugin, _dist, fixed)

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

    def add(
        self,
        kind: Kind,
        cls: type,
        name: str | None,
        plugin: str,
        distribution: str,
        fixed: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one part; called through the ``register`` callback the hooks receive. ``fixed``
        options make a configured preset of ``cls`` (they need a ``name``)."""
        if not (isinstance(cls, type) and issubclass(cls, kind.base)):
            raise RegistrationError(
                f"plugin {plugin!r} registered {cls!r} through {kind.hook}, but it is not a "
                f"subclass of sdeplug.{kind.base.__name__}"
            )
        if inspect.isabstract(cls):
            raise RegistrationError(f"plugin {plugin!r} registered the abstract class {cls.__name__} as a {kind.name}")
        registered = name if name is not None else _default_part_name(cls)
        if not isinstance(registered, str) or not registered:
            raise RegistrationError(f"plugin {plugin!r}: a part name must be a non-empty string; got {registered!r}")
        _check_option_names_free(kind, cls, plugin)
        fixed = dict(fixed or {})
        if fixed:
            if name is None:
                raise RegistrationError(
                    f"plugin {plugin!r}: a preset of {cls.__name__} with fixed options "
                    f"{sorted(fixed)} needs its own name: register(cls, name=..., **options)"
                )
            accepted = part_options(cls, kind.supplied)
            unknown = [o for o in fixed if accepted is not None and o not in accepted]
            if unknown:
                raise RegistrationError(
                    f"plugin {plugin!r}: preset {registered!r} fixes {unknown}, which "
                    f"{cls.__name__} does not accept ({_describe(accepted)})"
                )
        self._parts[kind.name].setdefault(registered, []).append(
            PartInfo(kind.name, registered, cls, plugin, distribution, fixed)
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
        """The options a part accepts with their defaults (``inspect._empty`` if required); None if any.
        A preset's fixed options are not among them."""
        info = self.get(kind, name)
        accepted = part_options(info.cls, self._kind(kind).supplied)
        return None if accepted is None else {k: d for k, d in accepted.items() if k not in info.fixed}

    def check_options(self, kind: str, name: str, options: Mapping[str, Any]) -> PartInfo:
        """Raise UnknownPartError or OptionError unless ``name`` exists and takes every option given."""
        info = self.get(kind, name)
        _check_option_names(self._kind(kind), name, info.cls, options, info.fixed)
        return info

    def create(self, kind: str, name: str, *supplied: Any, **options: Any) -> Any:
        """Build a registered part by name: ``cls(*supplied, **options)``, with every check of ``resolve``."""
        return self.resolve(kind, name, *supplied, options=options)

    def identify(self, kind: str, spec: Any, options: Mapping[str, Any] | None = None) -> tuple[str, type, dict]:
        """(display name, class, every option) of a part given as a registered name, a class or
        a built instance, with the options checked against the class; nothing is built."""
        spec_kind = self._kind(kind)
        options = dict(options or {})
        if isinstance(spec, str):
            info = self.get(kind, spec)
            _check_option_names(spec_kind, spec, info.cls, options, info.fixed)
            return spec, info.cls, {**info.fixed, **options}
        if isinstance(spec, type) and issubclass(spec, spec_kind.base):
            _check_option_names(spec_kind, part_name(spec), spec, options, {})
            return part_name(spec), spec, options
        if isinstance(spec, spec_kind.base):
            label = part_name(spec)
            if options:
                raise OptionError(
                    kind,
                    label,
                    f"options {sorted(options)} are for a part given by name or class; this one is already built",
                )
            return label, type(spec), _own_options(spec_kind, spec)
        what = f"the class {spec.__name__}" if isinstance(spec, type) else f"{type(spec).__name__} {spec!r}"[:200]
        raise TypeError(
            f"a {kind} must be a registered name, a subclass of sdeplug.{spec_kind.base.__name__} "
            f"or an instance of one; got {what}"
        )

    def resolve(
        self, kind: str, spec: Any, *supplied: Any, options: Mapping[str, Any] | None = None, sde: SDE | None = None
    ) -> Any:
        """A built part of ``kind`` from a registered name, a class or an instance, with the same checks.

        ``supplied`` are the arguments the toolkit passes (see ``Kind.supplied``); ``options``
        the user's. The SDE a part is used with (``sde``, or the first supplied argument) is
        checked against its ``sde_types`` for kinds that declare them. A built instance is
        used as it is, except for kinds built with supplied arguments: it is rebuilt with the
        ones given here and its own options (it must have been built for the same SDE).
        """
        spec_kind = self._kind(kind)
        target = sde if sde is not None else (supplied[0] if supplied else None)
        if isinstance(spec, spec_kind.base) and not isinstance(spec, type):
            if spec_kind.checks_sde and target is not None:
                check_sde_compatible(kind, spec, target)
            if not supplied and not options:
                return spec
            if spec_kind.supplied[:1] == ("sde",) and getattr(spec, "sde", supplied[0]) != supplied[0]:
                raise IncompatiblePartError(
                    f"{kind} {part_name(spec)!r} was built for {spec.sde!r}, but it is used "
                    f"with {supplied[0]!r}; build it with the same SDE, or pass its name or class"
                )
        label, cls, all_options = self.identify(kind, spec, options)
        if spec_kind.checks_sde and target is not None:
            check_sde_compatible(kind, cls, target)
        return _build(spec_kind, label, cls, supplied, all_options)


def _check_option_names(
    kind: Kind, label: str, cls: type, options: Mapping[str, Any], fixed: Mapping[str, Any]
) -> None:
    accepted = part_options(cls, kind.supplied)
    for option in options:
        if option in fixed:
            raise OptionError(
                kind.name,
                label,
                f"option {option!r} is fixed to {fixed[option]!r} by this preset; "
                f"use the general part {part_name(cls)!r} to choose it",
            )
        if accepted is not None and option not in accepted:
            raise OptionError.unknown_option(kind.name, label, option, [a for a in accepted if a not in fixed])


def _raised_by_attrs(exc: BaseException) -> bool:
    """Whether an error came from an attrs validator, converter or generated __init__ (a bad option value)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename if tb is not None else ""
    return filename.startswith("<attrs generated") or f"{os.sep}attr{os.sep}" in filename


def _build(kind: Kind, label: str, cls: type, supplied: tuple, options: dict[str, Any]) -> Any:
    """``cls(*supplied, **options)``: a missing or bad option is an OptionError, an error of the
    plugin's own code a PluginError (never blamed on the user's options)."""
    accepted = part_options(cls, kind.supplied)
    try:
        _signature(cls).bind(*supplied, **options)
    except TypeError as exc:
        raise OptionError(kind.name, label, f"{exc} (accepted options: {_describe(accepted)})") from exc
    try:
        return cls(*supplied, **options)
    except SdeplugError:
        raise
    except (ValueError, ArithmeticError) as exc:  # a refused value, or one too large (int(inf))
        raise OptionError(kind.name, label, f"{error_text(exc)} (accepted options: {_describe(accepted)})") from exc
    except TypeError as exc:
        if _raised_by_attrs(exc):
            raise OptionError(kind.name, label, f"{error_text(exc)} (accepted options: {_describe(accepted)})") from exc
        raise PluginError(
            f"{kind.name} {label!r} failed inside its own constructor with TypeError: {exc}. "
            "This is a bug of the plugin that provides it, not of the options given."
        ) from exc


def _check_option_names_free(kind: Kind, cls: type, plugin: str) -> None:
    """Refuse an option named like a method of the kind's base class (or ``name``): a built part's
    options are read back from its attributes, and the method would be read instead."""
    accepted = part_options(cls, kind.supplied) or {}
    taken = [o for o in accepted if o == "name" or callable(getattr(kind.base, o, None))]
    if taken:
        raise RegistrationError(
            f"plugin {plugin!r}: {kind.name} {cls.__name__} has option(s) {taken} named like "
            f"sdeplug.{kind.base.__name__}'s own {'attribute' if taken == ['name'] else 'method'}(s); rename them "
            f"(e.g. {taken[0]}_size)"
        )


def _own_options(kind: Kind, part: Any) -> dict[str, Any]:
    """The options a built part was made with, read back from its attributes (``name`` or ``_name``)."""
    accepted = part_options(type(part), kind.supplied)
    if accepted is None:
        raise OptionError(
            kind.name,
            part_name(part),
            "a built part whose class takes **options cannot be rebuilt; pass its name or class with options instead",
        )
    own = {}
    for option in accepted:
        for attribute in (option, f"_{option}"):
            if hasattr(part, attribute):
                own[option] = getattr(part, attribute)
                break
        else:
            raise OptionError(
                kind.name,
                part_name(part),
                f"cannot read option {option!r} back from the built part "
                "to rebuild it; pass its name or class with options instead",
            )
    return own


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    """A class's constructor signature, read once: sampling resolves its parts on every run."""
    return inspect.signature(cls)


def part_options(cls: type, supplied: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Options of ``cls.__init__`` beyond the supplied arguments; None if it takes **kwargs."""
    params = list(_signature(cls).parameters.values())
    options: dict[str, Any] = {}
    for param in params[len(supplied) :]:
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY):
            options[param.name] = _factory_default(cls, param.name, param.default)
    return options


def _factory_default(cls: type, name: str, default: Any) -> Any:
    """An attrs field's default made by a factory (shown as NOTHING in the signature): the value it makes."""
    if default is not attrs.NOTHING or not attrs.has(cls):
        return default
    for field in attrs.fields(cls):
        if (field.alias or field.name) == name and isinstance(field.default, attrs.Factory):
            return default if field.default.takes_self else field.default.factory()
    return default


def _describe(accepted: dict[str, Any] | None) -> str:
    if accepted is None:
        return "any"
    return (
        ", ".join(
            name if default is inspect.Parameter.empty else f"{name}={default!r}" for name, default in accepted.items()
        )
        or "(none)"
    )


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
    """Build a registered part by kind and name with ``options`` (see Registry.resolve)."""
    return get_registry().create(kind, name, *supplied, **options)


def resolve(
    kind: str, spec: Any, *supplied: Any, options: Mapping[str, Any] | None = None, sde: SDE | None = None
) -> Any:
    """Build a part from a registered name, a class or an instance (see Registry.resolve)."""
    return get_registry().resolve(kind, spec, *supplied, options=options, sde=sde)
