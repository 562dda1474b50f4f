"""DDIM (Song, Meng & Ermon 2021) for any LinearSDE: the step of diffusers' DDIMScheduler,
written on the score.

From x at t to s < t, with x0_hat = (x + sigma_t^2 score) / alpha_t and eps_hat = -sigma_t score:

    x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
    c^2 = eta^2 sigma_s^2 (1 - (alpha_t sigma_s / (alpha_s sigma_t))^2),

c^2 / eta^2 being the variance of x_s given x_t and x_0. eta = 0 is deterministic, a first-order
solver of the probability-flow ODE; eta = 1 is ancestral sampling (DDPM's posterior step).
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, Predictor, ScoreFn, per_sample, randn_like


@attrs.frozen
class DDIM(Predictor):
    """One score evaluation per step; ``eta`` in [0, 1] scales the fresh noise."""

    name = "ddim"
    sde_types = (LinearSDE,)

    sde: LinearSDE
    score: ScoreFn
    eta: float = attrs.field(default=0.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0), v.le(1)])

    @classmethod
    def example_options(cls) -> list[dict]:
        return [{"eta": 1.0}]  # the noisy path; the default (eta = 0) is the deterministic one

    @property
    def ode_order(self) -> float | None:  # type: ignore[override]
        """Deterministic DDIM is the exponential-integrator Euler step of the flow (order 1)."""
        return 1.0 if self.eta == 0 else None

    @property
    def weak_order(self) -> float | None:  # type: ignore[override]
        """With noise, a weak first-order sampler of the reverse SDE."""
        return 1.0 if self.eta > 0 else None

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
        alpha_t, sigma_t = per_sample(self.sde.alpha(t), x), per_sample(self.sde.sigma(t), x)
        alpha_s, sigma_s = per_sample(self.sde.alpha(t_next), x), per_sample(self.sde.sigma(t_next), x)
        score = self.score(x, t)
        eps = -sigma_t * score
        x0 = (x - sigma_t * eps) / alpha_t
        if self.eta == 0:
            return alpha_s * x0 + sigma_s * eps, None
        ratio = (alpha_t * sigma_s) / (alpha_s * sigma_t)
        c = self.eta * sigma_s * torch.sqrt((1 - ratio**2).clamp(min=0))
        direction = torch.sqrt((sigma_s**2 - c**2).clamp(min=0))
        return alpha_s * x0 + direction * eps + c * randn_like(x, generator), None
