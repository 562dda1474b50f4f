"""The variables exponential integrators work in, for any LinearSDE.

With x_t = alpha(t) x_0 + sigma(t) z, write s(t) = sigma(t) / alpha(t) (the noise
level of the scaled state x / alpha, EDM's sigma) and lam(t) = -log s(t) (half the
log-SNR, DPM-Solver's lambda). The data prediction is Tweedie's formula
D(x, t) = (x + sigma^2 score(x, t)) / alpha. In these variables the probability-flow
ODE is d(x/alpha)/ds = (x/alpha - D) / s, for every LinearSDE alike.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from sdeplug import LinearSDE, ScoreFn, per_sample, tweedie


@attrs.frozen
class NoiseLevel:
    """alpha, sigma, s = sigma / alpha and lam = -log s at one time (0-dim) or per sample (batch,)."""

    alpha: Tensor
    sigma: Tensor
    s: Tensor
    lam: Tensor

    @classmethod
    def at(cls, sde: LinearSDE, t: Tensor) -> NoiseLevel:
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        s = sigma / alpha
        return cls(alpha, sigma, s, -torch.log(s))


def grid_levels(sde: LinearSDE, grid: Tensor) -> tuple[NoiseLevel, ...]:
    """The NoiseLevel at every time of a run's grid, computed once (in float64, then in the
    grid's dtype) as 0-dim tensors that broadcast against any state."""
    level = NoiseLevel.at(sde, grid.to(torch.float64))
    parts = [v.to(grid.dtype).unbind() for v in (level.alpha, level.sigma, level.s, level.lam)]
    return tuple(NoiseLevel(*values) for values in zip(*parts))


def data_prediction(score: ScoreFn, x: Tensor, t: Tensor, level: NoiseLevel) -> Tensor:
    """Tweedie's D(x, t) = (x + sigma^2 score(x, t)) / alpha, the posterior mean of x_0."""
    if level.alpha.ndim == 0:
        return tweedie(x, score(x, t), level.alpha, level.sigma)
    return tweedie(x, score(x, t), per_sample(level.alpha, x), per_sample(level.sigma, x))


def exponential_euler(x: Tensor, here: NoiseLevel, there: NoiseLevel, denoised: Tensor) -> Tensor:
    """The first-order exponential-integrator step (DDIM) from ``here`` to ``there`` with data
    prediction ``denoised``: sigma' / sigma x - alpha' (e^{-h} - 1) D, h = lam' - lam."""
    h = there.lam - here.lam
    return (there.sigma / here.sigma) * x - (there.alpha * torch.expm1(-h)) * denoised
