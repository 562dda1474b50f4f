"""Shared parts of the testing kit: the error and report types, how a part and its option sets
and SDEs are resolved, and the reference mixture with its energy-distance null.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from sdeplug.errors import SdeplugError, error_text
from sdeplug.interfaces import (
    SDE,
    LinearSDE,
)
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.registry import get_registry, part_name, part_options
from sdeplug.stats import EnergyNull, energy_null
from sdeplug.tensors import per_sample
from sdeplug.testing.strategies import option_sets

F64 = torch.float64


class ContractError(AssertionError):
    """A part broke its contract; the message says which method and how."""


class ContractSkipWarning(UserWarning):
    """Checks of a part's contract that did not apply to it, and why (shown by pytest)."""


@attrs.define
class ContractReport:
    """What a contract check verified, and what did not apply to the part."""

    part: str
    passed: list[str] = attrs.field(factory=list)
    skipped: list[str] = attrs.field(factory=list)

    def __str__(self) -> str:
        lines = [f"{self.part}: {len(self.passed)} checks passed"]
        lines += [f"  ok    {p}" for p in self.passed]
        lines += [f"  skip  {s}" for s in self.skipped]
        return "\n".join(lines)


def _resolve(kind: str, spec: Any, options: dict[str, Any] | None = None) -> tuple[str, type, dict[str, Any]]:
    """(name, class, every option) of a part given as a name, a class or a built part."""
    return get_registry().identify(kind, spec, options)


def _fail(message: str) -> None:
    raise ContractError(message)


def _hypothesis(examples: int):
    # No shrinking: each example is a costly simulation, and the first failure already
    # says which method is wrong and with which parameters.
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
    )


@functools.cache
def _mixture_and_null(name: str = "mixture3", n: int = 2000) -> tuple[GaussianMixture, EnergyNull]:
    mixture = preset(name)
    return mixture, energy_null(lambda k, g: mixture.sample(k, g), n)


def _default_sdes() -> list[SDE]:
    """Every registered LinearSDE (the bundled ones and every plugin's, a plugin's own
    included), built with its defaults: the oracle's exact scores need alpha(t) and sigma(t).
    A name two plugins claim is left out here; ``sdeplug plugins`` reports it."""
    registry = get_registry()
    built = []
    for name in registry.names("sde"):
        try:
            if issubclass(registry.get("sde", name).cls, LinearSDE):
                built.append(registry.create("sde", name))
        except SdeplugError:
            continue
    return built


def _example_sdes(plugin: str) -> list[SDE]:
    """The LinearSDEs a plugin registers, each built with one set of its ``example_options()``
    that differs from its defaults (the first drawn), so that the plugin's predictors and
    correctors are also checked away from its SDEs' defaults."""
    registry = get_registry()
    built = []
    for info in registry.parts():
        if info.kind != "sde" or info.plugin != plugin or not issubclass(info.cls, LinearSDE):
            continue
        declared = option_sets(info.cls.example_options())
        for example in _draw(declared, 4):
            example = {k: v for k, v in example.items() if k not in info.fixed}
            if example and _with_defaults(info.cls, example) != _with_defaults(info.cls, {}):
                built.append(registry.create("sde", info.name, **example))
                break
    return built


def _as_sdes(sdes: Sequence[Any] | None) -> list[SDE] | None:
    """``sdes=`` given as registered names, classes or instances, built."""
    if sdes is None:
        return None
    if isinstance(sdes, (str, SDE)) or isinstance(sdes, type):
        sdes = [sdes]
    return [get_registry().resolve("sde", spec) for spec in sdes]


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _start(
    kind: str, spec: Any, sdes: Sequence[Any] | None, options: dict[str, Any] | None, *, oracle: bool = True
) -> tuple[str, type, list[dict[str, Any]], ContractReport, list[SDE]]:
    """Name, class, the option sets to check, an empty report and the SDEs to check a part
    with. A contract that would check nothing fails: a pass without a check would say nothing."""
    name, cls, defaults = _resolve(kind, spec, options)
    report = ContractReport(f"{kind} {name!r}")
    candidates = _as_sdes(sdes)
    given = candidates is not None
    candidates = _default_sdes() if candidates is None else candidates
    targets = _accepted(cls, candidates, oracle)
    accepted = getattr(cls, "sde_types", (SDE,))
    if not targets:
        wanted = " or ".join(c.__name__ for c in accepted)
        offered = ", ".join(f"{part_name(s)} ({type(s).__name__})" for s in candidates) or "none"
        needs = " with closed-form marginals (LinearSDE, which the exact scores need)" if oracle else ""
        _fail(
            f"{kind} {name!r} was checked against no SDE, so its contract would check nothing: it accepts "
            f"sde_types = {wanted}, and the {'SDEs given' if given else 'registered SDEs'}{needs} are: {offered}. "
            "Register an SDE it accepts in your plugin (register_sdes), or pass sdes=[...] (registered names, "
            "classes or instances)."
        )
    sets = [defaults] if options is not None else _option_sets(kind, name, cls, spec, defaults)
    for options in sets[1:]:  # each declared set is built once, so a bad one is named as such
        supplied = (targets[0], _unit_gaussian_score(targets[0])) if kind != "time_grid" else ()
        try:
            get_registry().resolve(kind, cls, *supplied, options=options)
        except SdeplugError as exc:
            _fail(f"{kind} {name!r}: example_options() declares {options!r}, which is refused: {error_text(exc)}")
    return name, cls, sets, report, targets


def _accepted(cls: type, sdes: Sequence[SDE], oracle: bool = True) -> list[SDE]:
    """The SDEs a part accepts (``sde_types``), LinearSDEs only where the checks need exact scores."""
    accepted = getattr(cls, "sde_types", (SDE,))
    return [s for s in sdes if isinstance(s, accepted) and (isinstance(s, LinearSDE) or not oracle)]


#: How many option sets the kit draws from an example_options() strategy of a predictor or corrector.
EXAMPLE_DRAWS = 3


def observed_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """The least-squares slope of -log2(error) against log2(steps), on the errors' envelope.

    Each error is first raised to the largest error at any finer step count: an error
    that crosses zero between two step counts (a lucky cancellation at a coarse grid)
    would otherwise pass for accuracy the method does not have. An inconsistent or
    lower-order method keeps its flat or shallow envelope and still fails.
    """
    envelope = [max(errors[i:]) for i in range(len(errors))]
    logs = torch.log2(torch.tensor(envelope, dtype=F64))
    levels = torch.log2(torch.tensor(list(steps), dtype=F64))
    slope = float(((levels - levels.mean()) * (logs - logs.mean())).sum() / ((levels - levels.mean()) ** 2).sum())
    return -slope


def order_mark(declared: float) -> float:
    """The least observed order that passes a claim of order ``declared``: p - max(1/2, p/5).

    It lies above one order less (p - 1) for claims up to 4, so a step one order lower than
    claimed fails; and at least 15% below what correct parts measure on the kit's step
    counts, where a claim of order 1 falls short by up to 0.3 (coarse steps, and the Monte
    Carlo error of a stochastic step) and higher claims by up to 5%.
    """
    return declared - max(0.5, declared / 5)


def _draw(strategy, count: int) -> list[Any]:
    """``count`` examples of a hypothesis strategy, the same on every run."""
    drawn: list[Any] = []

    @_hypothesis(count)
    @given(strategy)
    def collect(example):
        drawn.append(example)

    collect()
    return drawn


def _option_sets(kind: str, name: str, cls: type, spec: Any, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The part's options as given (its defaults, or a preset's fixed ones) and each set its
    ``example_options()`` declares (a list, or ``EXAMPLE_DRAWS`` draws of a strategy), each
    checked like a user's options; duplicates once."""
    declared = getattr(cls, "example_options", lambda: ())()
    if not isinstance(declared, st.SearchStrategy) and not (
        isinstance(declared, (list, tuple)) and all(isinstance(d, Mapping) for d in declared)
    ):
        _fail(
            f"{kind} {name!r}: example_options() must return a list of option dicts or a hypothesis strategy of "
            f"them; got {type(declared).__name__} {declared!r:.100}"
        )
    if not isinstance(declared, st.SearchStrategy) and not declared:
        return [defaults]
    examples = _draw(option_sets(declared), EXAMPLE_DRAWS) if isinstance(declared, st.SearchStrategy) else declared
    by_name_or_class = isinstance(spec, (str, type))
    fixed = get_registry().get(kind, spec).fixed if isinstance(spec, str) else {}
    sets: list[dict[str, Any]] = []
    for example in [{}, *examples]:
        example = {k: v for k, v in dict(example).items() if k not in fixed}  # a preset keeps its own
        try:
            base, given = (spec, example) if by_name_or_class else (cls, {**defaults, **example})
            _, _, options = _resolve(kind, base, given)
        except SdeplugError as exc:
            _fail(f"{kind} {name!r}: example_options() declares {example!r}, which is refused: {error_text(exc)}")
        if all(_with_defaults(cls, options) != _with_defaults(cls, seen) for seen in sets):
            sets.append(options)
    return sets


def _with_defaults(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options with every default of the constructor filled in: equal sets compare equal."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return options
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **options}


def _label(sde: SDE, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The SDE (with its options that differ from its defaults), and the part's options that
    differ from the part's defaults."""
    changed = {k: v for k, v in options.items() if defaults is None or defaults.get(k, _MISSING) != v}
    return _sde_label(sde) + (f", options {changed}" if changed else "")


def _sde_label(sde: SDE) -> str:
    accepted = part_options(type(sde)) or {}
    own = {}
    for option, default in accepted.items():
        value = getattr(sde, option, getattr(sde, f"_{option}", default))
        if default is not inspect.Parameter.empty and value != default:
            own[option] = value
    return type(sde).__name__ + (f"({', '.join(f'{k}={v!r}' for k, v in own.items())})" if own else "")


_MISSING = object()


def _unit_gaussian_score(sde: SDE):
    """The exact score of p_t for N(0, I) data under a LinearSDE (-x for others): any shape."""

    def score(x, t):
        if isinstance(sde, LinearSDE):
            return -x / per_sample(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, x)
        return -x

    return score
