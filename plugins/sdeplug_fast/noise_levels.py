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

from sdeplug import LinearSDE, ScoreFn, per_sample


@attrs.frozen
class NoiseLevel:
    """alpha, sigma, s = sigma / alpha and lam = -log s at one time, each shape (batch,)."""

    alpha: Tensor
    sigma: Tensor
    s: Tensor
    lam: Tensor

    @classmethod
    def at(cls, sde: LinearSDE, t: Tensor) -> NoiseLevel:
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        s = sigma / alpha
        return cls(alpha, sigma, s, -torch.log(s))


def data_prediction(score: ScoreFn, x: Tensor, t: Tensor, level: NoiseLevel) -> Tensor:
    """Tweedie's D(x, t) = (x + sigma^2 score(x, t)) / alpha, the posterior mean of x_0."""
    return (x + per_sample(level.sigma**2, x) * score(x, t)) / per_sample(level.alpha, x)


class LevelCache:
    """Remembers the NoiseLevel of the last t_next so the next step, which starts there,
    does not recompute it. The cached time tensor is kept alive, so no other tensor can
    share its memory; a hit needs the same memory, shape, strides, dtype and version."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._held: Tensor | None = None
        self._level: NoiseLevel | None = None

    @staticmethod
    def _key_of(t: Tensor) -> tuple:
        return (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, t._version)

    def at(self, sde: LinearSDE, t: Tensor) -> NoiseLevel:
        if self._held is not None and self._key == self._key_of(t):
            return self._level
        return NoiseLevel.at(sde, t)

    def keep(self, t: Tensor, level: NoiseLevel) -> None:
        self._held, self._key, self._level = t, self._key_of(t), level

    def clear(self) -> None:
        self._key = self._held = self._level = None
