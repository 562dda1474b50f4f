"""Hypothesis strategies for sdeplug's objects, valid by construction.

hypothesis seeds ``random`` and numpy only, so strategies that need torch randomness
draw a ``seed`` and the test makes a ``torch.Generator`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hypothesis import strategies as st

from sdeplug.interfaces import SDE
from sdeplug.oracle import GaussianMixture, random_mixture
from sdeplug.registry import get_registry

seeds = st.integers(0, 2**31 - 1)
batch_sizes = st.integers(1, 16)
EVENT_SHAPES: tuple[tuple[int, ...], ...] = ((1,), (2,), (5,), (1, 3, 3), (3, 2, 2))
event_shapes = st.sampled_from(EVENT_SHAPES)


def sde_classes(names: Sequence[str] | None = None) -> st.SearchStrategy[type[SDE]]:
    """Registered SDE classes (all of them unless ``names`` is given)."""
    registry = get_registry()
    names = list(names) if names is not None else registry.names("sde")
    return st.sampled_from([registry.get("sde", n).cls for n in names])


@st.composite
def sdes(draw, names: Sequence[str] | None = None) -> SDE:
    """A registered SDE built with options drawn from its ``example_options()``."""
    cls = draw(sde_classes(names))
    return cls(**draw(option_sets(cls.example_options())))


def option_sets(declared: Any) -> st.SearchStrategy[dict]:
    """A part's ``example_options()`` as a strategy: a strategy as it is, a list sampled from."""
    if isinstance(declared, st.SearchStrategy):
        return declared
    if not (isinstance(declared, (list, tuple)) and all(isinstance(options, Mapping) for options in declared)):
        raise TypeError(
            "example_options() must return a list of option dicts or a hypothesis strategy of them; "
            f"got {type(declared).__name__} {declared!r:.100}"
        )
    declared = [dict(options) for options in declared]
    return st.sampled_from(declared) if declared else st.just({})


def times(sde: SDE, low: float | None = None, high: float | None = None) -> st.SearchStrategy[float]:
    """Times in [eps, T] (or [low, high])."""
    return st.floats(sde.default_eps if low is None else low, sde.T if high is None else high)


@st.composite
def mixtures(draw, dims: Sequence[int] = (1, 2, 3, 5), max_components: int = 4) -> GaussianMixture:
    """A random Gaussian mixture with its oracle: unequal weights, anisotropic components."""
    dim = draw(st.sampled_from(list(dims)))
    k = draw(st.integers(1, max_components))
    return random_mixture(dim, k, seed=draw(seeds), full_covariance=draw(st.booleans()))


@st.composite
def time_grids(draw, sde: SDE, min_steps: int = 1, max_steps: int = 50) -> torch.Tensor:
    """A strictly decreasing grid from T to eps: uniform, or with random positive spacings."""
    steps = draw(st.integers(min_steps, max_steps))
    if draw(st.booleans()):
        return torch.linspace(sde.T, sde.default_eps, steps + 1, dtype=torch.float64)
    widths = torch.tensor(draw(st.lists(st.floats(0.05, 1.0), min_size=steps, max_size=steps)), dtype=torch.float64)
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), widths.cumsum(0) / widths.sum()])
    return sde.T - cumulative * (sde.T - sde.default_eps)
