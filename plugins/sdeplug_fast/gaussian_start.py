"""A free first step: from T to the grid's second time along the exact probability flow of a
Gaussian with the data's mean and covariance, then any predictor for the rest of the grid.

Near T the score is close to that Gaussian's, so the first step costs no score evaluation
and loses little; a grid of K + 1 steps then spends K evaluations (with UniPC), and a tuned
grid places the free step's end too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import DataMoments, LinearSDE, OptionError, Predictor, ScoreFn, SdeplugWarning, resolve


class StandardMomentsWarning(SdeplugWarning):
    """gaussian_start was given no data moments and assumes standardised data."""


def _to_moments(value: Any) -> DataMoments:
    """None: standardised data; a path: a file written by DataMoments.save; or DataMoments."""
    if value is None:
        warnings.warn(  # one location: Python shows it once per process
            "gaussian_start without moments assumes standardised data (mean 0, unit variance); give the data's "
            "moments (sdeplug moments CONFIG, or DataMoments.from_samples) for the step it is meant to take",
            StandardMomentsWarning,
            stacklevel=1,
        )
        return DataMoments.standard()
    if isinstance(value, DataMoments):
        return value
    if isinstance(value, (str, Path)):
        return DataMoments.load(value)
    raise ValueError(
        f"moments must be the path of a data-moments file (DataMoments.save), a DataMoments, or None for "
        f"standardised data; got {type(value).__name__}"
    )


@attrs.frozen
class GaussianStartState:
    """Whether the free step is still to come, and the state of the predictor after it."""

    then: Any = None
    started: bool = False


@attrs.define
class GaussianStart(Predictor):
    """The first step by the Gaussian flow with the data's ``moments`` (no score call), then
    ``then`` (a registered predictor, with ``then_options``) from the grid's second time on.

    ``moments``: the path of a file from ``sdeplug.DataMoments.save`` (or a DataMoments);
    the default, None, is mean 0 and unit variance (standardised data). No order is
    claimed: the free step is exact for Gaussian data with these moments only, and for
    other data its error is first order in its length (small where it starts, at T).
    """

    name = "gaussian_start"
    sde_types = (LinearSDE,)

    sde: LinearSDE
    score: ScoreFn
    moments: DataMoments = attrs.field(default=None, kw_only=True, converter=_to_moments)
    then: str = attrs.field(default="unipc", kw_only=True, validator=v.instance_of(str))
    then_options: dict = attrs.field(factory=dict, kw_only=True, validator=v.instance_of(dict))
    _then: Predictor = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.then == self.name:
            raise ValueError(f"then must be another predictor than {self.name!r}")
        self._then = resolve("predictor", self.then, self.sde, self.score, options=self.then_options)

    @classmethod
    def example_options(cls) -> list[dict]:
        return [
            {"then": "dpmpp_2m"},
            {"then": "reverse_diffusion", "then_options": {"probability_flow": True}},
            {"moments": DataMoments(torch.tensor(0.3), torch.tensor(0.25))},
        ]

    def init(self, x: Tensor, grid: Tensor) -> GaussianStartState:
        if not self.moments.fits(tuple(x.shape[1:])):
            raise OptionError(
                "predictor",
                "gaussian_start",
                f"the data moments are for samples of shape {tuple(self.moments.mean.shape)}, not "
                f"{tuple(x.shape[1:])}: compute them on this data (sdeplug moments)",
            )
        # a one-step grid is the free step alone: the other predictor never steps
        return GaussianStartState(then=self._then.init(x, grid[1:]) if grid.numel() > 2 else None)

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: GaussianStartState,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, GaussianStartState]:
        if not state.started:
            return self.moments.flow(self.sde, x, t, t_next), GaussianStartState(state.then, started=True)
        x, then = self._then.step(x, t, t_next, state.then, generator, jumped=jumped)
        return x, GaussianStartState(then, started=True)
