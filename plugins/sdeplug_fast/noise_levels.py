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

from sdeplug import LinearSDE


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


@attrs.frozen
class GridNoise:
    """alpha, sigma and lam at every time of a run's grid: 1-D float64 tensors on the CPU,
    from which predictors compute their per-step coefficients once per run."""

    alpha: Tensor
    sigma: Tensor
    lam: Tensor

    @classmethod
    def of(cls, sde: LinearSDE, grid: Tensor) -> GridNoise:
        level = NoiseLevel.at(sde, grid.detach().to(device="cpu", dtype=torch.float64))
        return cls(level.alpha, level.sigma, level.lam)

    def tweedie_rows(self) -> tuple[tuple[float, float], ...]:
        """(sigma^2, 1 / alpha) at each time: D = (x + sigma^2 score) / alpha."""
        return tuple(zip((self.sigma**2).tolist(), (1 / self.alpha).tolist()))


def tweedie_from_row(x: Tensor, score: Tensor, row: tuple[float, float]) -> Tensor:
    """Tweedie's D = (x + sigma^2 score) / alpha with (sigma^2, 1 / alpha) computed beforehand."""
    sigma_sq, inv_alpha = row
    return torch.add(x, score, alpha=sigma_sq).mul_(inv_alpha)
