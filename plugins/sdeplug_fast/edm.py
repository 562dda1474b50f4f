"""The EDM sampler (Karras et al. 2022, Algorithm 2): Heun's method on the probability-flow
ODE in the noise level s = sigma / alpha, with optional "churn" noise, for any LinearSDE.

In the scaled state y = x / alpha the flow is dy/ds = (y - D) / s = -sigma(t) score(x, t),
nearly straight for data near its mean; Heun's second-order step follows it with two
score evaluations per step.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, Predictor, ScoreFn, randn_like
from sdeplug_fast.noise_levels import NoiseLevel, grid_levels


@attrs.frozen
class EDMHeun(Predictor):
    """Heun in s = sigma / alpha; with ``churn`` > 0, Karras' stochastic sampler.

    ``churn`` is EDM's gamma per step (S_churn / N, at most sqrt(2) - 1): before the step
    the noise level is raised from s to s (1 + churn) by fresh noise (scaled by
    ``s_noise``), only while s_tmin <= s <= s_tmax.
    """

    name = "edm_heun"
    ode_order = 2.0
    sde_types = (LinearSDE,)

    sde: LinearSDE
    score: ScoreFn
    churn: float = attrs.field(
        default=0.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0), v.le(2**0.5 - 1)]
    )
    s_noise: float = attrs.field(default=1.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0)])
    s_tmin: float = attrs.field(default=0.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0)])
    s_tmax: float = attrs.field(default=float("inf"), kw_only=True, validator=[v.instance_of((int, float))])

    def init(self, x: Tensor, grid: Tensor) -> EDMState:
        return EDMState(grid_levels(self.sde, grid))

    def _slope(self, y: Tensor, t: Tensor, level: NoiseLevel) -> Tensor:
        """dy/ds = -sigma(t) score(alpha y, t)."""
        return -level.sigma * self.score(level.alpha * y, t)

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: EDMState,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, EDMState]:
        here, there = state.levels[state.index], state.levels[state.index + 1]
        y = x / here.alpha
        if self.churn > 0:
            t, here, y = self._churn(y, t, here, generator)
        ds = there.s - here.s
        slope = self._slope(y, t, here)
        y_euler = y + ds * slope
        y_next = y + ds * 0.5 * (slope + self._slope(y_euler, t_next, there))
        return there.alpha * y_next, EDMState(state.levels, state.index + 1)

    def _churn(self, y: Tensor, t: Tensor, here: NoiseLevel, generator):
        """Raise the noise level from s to s (1 + gamma) with fresh noise; return the new time."""
        active = (here.s >= self.s_tmin) & (here.s <= self.s_tmax)
        gamma = torch.where(active, torch.full_like(here.s, float(self.churn)), torch.zeros_like(here.s))
        s_hat = here.s * (1 + gamma)
        y = y + (torch.sqrt(s_hat**2 - here.s**2) * self.s_noise) * randn_like(y, generator)
        t_hat = torch.clamp(self.sde.t_from_log_snr(2 * torch.log(1 / s_hat)), max=self.sde.T)
        level = NoiseLevel.at(self.sde, t_hat)
        return t_hat.expand(t.shape), level, y


@attrs.frozen
class EDMState:
    """The noise levels of the run's grid (computed once) and the step about to be taken."""

    levels: tuple[NoiseLevel, ...]
    index: int = 0
