"""Reference predictors: Euler-Maruyama, reverse diffusion, ancestral sampling, and none.

Each takes one step of the reverse SDE (or probability-flow ODE) from t to t_next < t
over any grid; none keeps state between steps (``init`` returns None).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import (
    SDE,
    LinearSDE,
    Predictor,
    ReverseSDE,
    ScoreFn,
    per_sample,
    randn_like,
    tweedie,
)


@attrs.frozen
class _ReverseSDEPredictor(Predictor):
    """Shared fields of predictors that step the reverse SDE (or the probability-flow ODE)."""

    sde: SDE
    score: ScoreFn
    probability_flow: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    _reverse: ReverseSDE = attrs.field(init=False)

    @_reverse.default
    def _make_reverse(self) -> ReverseSDE:
        return self.sde.reverse(self.score, self.probability_flow)

    @property
    def weak_order(self) -> float | None:  # type: ignore[override]
        """First order on the reverse SDE; on the probability-flow ODE the step draws no noise."""
        return None if self.probability_flow else 1.0


@attrs.frozen
class GridCoefficients:
    """A single-step predictor's numbers for every step of a run's grid, computed once by
    ``init``: step ``index`` uses ``rows[index]``."""

    rows: tuple[tuple[float, ...], ...]
    index: int = 0

    def advanced(self) -> GridCoefficients:
        return GridCoefficients(self.rows, self.index + 1)


@attrs.frozen
class EulerMaruyama(_ReverseSDEPredictor):
    """x <- x + [f - g^2 s] dt + g sqrt(|dt|) z with dt = t_next - t < 0 (the exact grid step).

    On a LinearSDE, where f(x, t) = f(t) x, ``init`` computes the step's three numbers
    (1 + f dt, -g^2 dt, g sqrt(-dt)) for the whole grid at once, in float64, so a step is
    three tensor operations besides the score; other SDEs evaluate f and g at every step.
    """

    name = "euler_maruyama"

    def init(self, x: Tensor, grid: Tensor) -> GridCoefficients | None:
        if not isinstance(self.sde, LinearSDE):
            return None
        times = grid.detach().to(device="cpu", dtype=torch.float64)
        t, dt = times[:-1], times[1:] - times[:-1]
        g = self.sde.diffusion(t)
        weight = 0.5 if self.probability_flow else 1.0
        scale_x = 1 + self.sde.drift_coefficient(t) * dt
        scale_score = -weight * g * g * dt
        noise = torch.zeros_like(g) if self.probability_flow else g * torch.sqrt(-dt)
        return GridCoefficients(tuple(zip(scale_x.tolist(), scale_score.tolist(), noise.tolist())))

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: GridCoefficients | None,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, GridCoefficients | None]:
        if state is not None:
            scale_x, scale_score, noise = state.rows[state.index]
            x_next = torch.add(x * scale_x, self.score(x, t), alpha=scale_score)
            if not self.probability_flow:
                x_next.add_(randn_like(x, generator), alpha=noise)
            return x_next, state.advanced()
        dt = per_sample(t_next - t, x)
        g = per_sample(self.sde.diffusion(t), x)  # once, for the drift's g^2 and the noise
        weight = 0.5 if self.probability_flow else 1.0
        mean = x + (self.sde.drift(x, t) - (weight * g * g) * self.score(x, t)) * dt
        if self.probability_flow:
            return mean, None
        return mean + (g * torch.sqrt(-dt)) * randn_like(x, generator), None


@attrs.frozen
class ReverseDiffusion(_ReverseSDEPredictor):
    """Runs the SDE's own discretisation backwards: x <- x - f + G^2 s + G z.

    With the VE SDE this is the SMLD chain, with VP the DDPM chain; others fall back
    to their discretize (Euler-Maruyama by default).
    """

    name = "reverse_diffusion"

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: None,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, None]:
        rev_f, rev_G = self._reverse.discretize(x, t, t - t_next)
        mean = x - rev_f
        if self.probability_flow:
            return mean, None
        return mean + per_sample(rev_G, x) * randn_like(x, generator), None


@attrs.frozen
class AncestralSampling(Predictor):
    """Ancestral sampling from the Gaussian posterior of the exact kernel between grid points.

    With x_t = a x_s + sqrt(v) z the kernel from s = t_next to t, the mean is Tweedie's
    (x + v s(x, t)) / a. This is the paper's SMLD rule for VE and DDPM's rule for VP.
    ``variance="posterior"`` takes sigma_s^2 v / sigma_t^2 (the paper's VE rule, DDPM's
    beta-tilde); ``variance="transition"`` takes v (the paper's VP rule, DDPM's beta).
    Works for every LinearSDE.
    """

    name = "ancestral"
    weak_order = 1.0
    sde_types = (LinearSDE,)

    sde: LinearSDE
    score: ScoreFn
    probability_flow: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    variance: Literal["posterior", "transition"] = attrs.field(
        default="posterior", kw_only=True, validator=v.in_(("posterior", "transition"))
    )

    def __attrs_post_init__(self) -> None:
        if self.probability_flow:
            raise ValueError("ancestral sampling has no probability-flow form; use reverse_diffusion or euler_maruyama")

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: None,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, None]:
        a, var = self.sde.transition(t_next, t)
        mean = tweedie(x, self.score(x, t), per_sample(a, x), per_sample(torch.sqrt(var), x))
        if self.variance == "posterior":
            var = var * (self.sde.sigma(t_next) / self.sde.sigma(t)) ** 2
        return mean + per_sample(torch.sqrt(var), x) * randn_like(x, generator), None


@attrs.frozen
class NoPredictor(Predictor):
    """Leaves x unchanged (for corrector-only sampling, e.g. annealed Langevin dynamics)."""

    name = "none"
    identity = True

    sde: SDE
    score: ScoreFn
    probability_flow: bool = attrs.field(default=False, kw_only=True)

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: None,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, None]:
        return x, None
