"""Hypothesis strategies for the bundled SDEs: parameters valid by construction, times, shapes."""

from __future__ import annotations

from hypothesis import strategies as st

import sdeplug

EVENT_SHAPES = [(1,), (2,), (5,), (1, 3, 3), (3, 2, 2)]


@st.composite
def ve_options(draw):
    sigma_min = draw(st.floats(0.005, 0.1))
    return {"sigma_min": sigma_min, "sigma_max": sigma_min * draw(st.floats(10.0, 5000.0))}


@st.composite
def beta_options(draw):
    beta_min = draw(st.floats(0.05, 1.0))
    return {"beta_min": beta_min, "beta_max": beta_min + draw(st.floats(0.0, 25.0))}


SDE_OPTIONS = {"ve": ve_options(), "vp": beta_options(), "subvp": beta_options()}


@st.composite
def sdes(draw, names=tuple(SDE_OPTIONS)):
    """A bundled SDE with drawn parameters."""
    name = draw(st.sampled_from(names))
    return sdeplug.create("sde", name, **draw(SDE_OPTIONS[name]))


def times(sde, low=None):
    """Times in [eps, T]."""
    return st.floats(sde.default_eps if low is None else low, sde.T)


event_shapes = st.sampled_from(EVENT_SHAPES)
seeds = st.integers(0, 2**31 - 1)
