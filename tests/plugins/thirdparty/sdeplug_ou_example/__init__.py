"""A third-party plugin written against sdeplug's public API only."""

import math

import torch

import sdeplug
from sdeplug import hookimpl, per_sample, randn, randn_like, sum_except_batch


class OrnsteinUhlenbeck(sdeplug.LinearSDE):
    """dx = -theta x dt + sqrt(2 theta) dw: alpha = e^{-theta t}, sigma^2 = 1 - e^{-2 theta t}."""

    name = "ou"

    def __init__(self, theta: float = 4.0, T: float = 1.0):
        if not theta > 0:
            raise ValueError(f"theta must be positive; got {theta}")
        self.theta, self.T = float(theta), float(T)

    def alpha(self, t):
        return torch.exp(-self.theta * t)

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(-2 * self.theta * t))

    def drift(self, x, t):
        return -self.theta * x

    def diffusion(self, t):
        return torch.full_like(t, math.sqrt(2 * self.theta))

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return randn(shape, generator, device, dtype)

    def prior_logp(self, z):
        return -0.5 * z[0].numel() * math.log(2 * math.pi) - 0.5 * sum_except_batch(z**2)


class StochasticHeun(sdeplug.Predictor):
    """Heun's method for the reverse SDE with additive noise: two score evaluations per step."""

    name = "stochastic_heun"

    def __init__(self, sde, score, probability_flow: bool = False):
        self.sde, self.score = sde, score
        self.reverse = sde.reverse(score, probability_flow)

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        dt = t_next - t
        noise = per_sample(self.reverse.diffusion(t) * torch.sqrt(-dt), x) * randn_like(x, generator)
        d1 = self.reverse.drift(x, t)
        x_pred = x + d1 * per_sample(dt, x) + noise
        return x + 0.5 * (d1 + self.reverse.drift(x_pred, t_next)) * per_sample(dt, x) + noise, None


@hookimpl
def register_sdes(register):
    register(OrnsteinUhlenbeck)


@hookimpl
def register_predictors(register):
    register(StochasticHeun)
