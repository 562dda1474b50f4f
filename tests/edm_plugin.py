"""A third-party plugin as a new user writes it from the plugin guide: an EDM-style SDE
(sigma(t) = t, T = 80), EDM's stochastic "churn" sampler (Karras et al. 2022, Algorithm 2)
and a fixed-step Langevin corrector. The testing kit's own tests check that it passes the
one-line contract test, and that each planted bug below fails it, naming the method.
"""

from __future__ import annotations

import math

import torch

import sdeplug
from sdeplug import hookimpl, per_sample, randn, randn_like, sum_except_batch


class KarrasVESDE(sdeplug.LinearSDE):
    """x_t = x_0 + t z: dx = sqrt(2t) dw, the noise level is the time (EDM's parametrisation)."""

    name = "karras_ve"
    default_eps = 0.002

    def __init__(self, T: float = 80.0) -> None:
        if not T > 0:
            raise ValueError(f"T must be positive; got {T}")
        self.T = float(T)

    @classmethod
    def example_options(cls):
        from hypothesis import strategies as st

        return st.fixed_dictionaries({"T": st.floats(10.0, 160.0)})

    def alpha(self, t):
        return torch.ones_like(t)

    def sigma(self, t):
        return t

    def t_from_log_snr(self, log_snr):
        return torch.exp(-0.5 * log_snr)  # log_snr = -2 log t

    def drift(self, x, t):
        return torch.zeros_like(x)

    def diffusion(self, t):
        return torch.sqrt(2 * t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return self.T * randn(shape, generator, device, dtype)

    def prior_logp(self, z):
        d = z[0].numel()
        return -0.5 * d * math.log(2 * math.pi * self.T**2) - sum_except_batch(z**2) / (2 * self.T**2)


class EDMChurn(sdeplug.Predictor):
    """EDM's stochastic sampler: raise the noise level from t to t_hat = (1 + gamma) t by adding
    fresh noise, then a Heun step of the probability-flow ODE from t_hat to t_next, with
    gamma = min(s_churn / steps, sqrt(2) - 1) for t in [s_tmin, s_tmax] and 0 elsewhere."""

    name = "edm_churn"
    sde_types = (KarrasVESDE,)

    def __init__(
        self, sde, score, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0
    ) -> None:
        if not s_churn >= 0:
            raise ValueError(f"s_churn must be >= 0; got {s_churn}")
        self.sde, self.score = sde, score
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = float(s_churn), float(s_tmin), float(s_tmax), s_noise

    @classmethod
    def example_options(cls):
        return [{"s_churn": 0.0}, {"s_churn": 40.0}, {"s_churn": 80.0, "s_tmin": 0.05, "s_tmax": 50.0}]

    @property
    def ode_order(self):
        return 2.0 if self.s_churn == 0 else None  # without churn: Heun on the probability flow

    @property
    def weak_order(self):
        return 1.0 if self.s_churn > 0 else None

    def init(self, x, grid):
        return min(self.s_churn / (len(grid) - 1), math.sqrt(2) - 1)  # gamma, fixed for the run

    def raise_noise(self, x, t, t_hat, generator):
        return x + per_sample(torch.sqrt(t_hat**2 - t**2), x) * self.s_noise * randn_like(x, generator)

    def slope(self, x, t_hat, t):
        return -per_sample(t_hat, x) * self.score(x, t_hat)  # dx/dt = -t score on the flow

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        gamma = state
        t_hat = t
        if gamma > 0:
            churned = (t >= self.s_tmin) & (t <= self.s_tmax)
            t_hat = t * (1 + gamma * churned.to(t.dtype))
            x = self.raise_noise(x, t, t_hat, generator)
        d = self.slope(x, t_hat, t)
        h = per_sample(t_next - t_hat, x)
        x_euler = x + h * d
        d_next = -per_sample(t_next, x) * self.score(x_euler, t_next)
        return x + h * (d + d_next) / 2, state


class FixedStepLangevin(sdeplug.Corrector):
    """Unadjusted Langevin at fixed t: x + eps score + sqrt(2 eps) z, with a fixed step eps."""

    name = "fixed_langevin"

    def __init__(self, sde, score, step_size: float = 1e-3) -> None:
        if not step_size > 0:
            raise ValueError(f"step_size must be positive; got {step_size}")
        self.sde, self.score, self.step_size = sde, score, float(step_size)

    def drift(self, x, t):
        return self.step_size * self.score(x, t)

    def noise(self, x, generator):
        return math.sqrt(2 * self.step_size) * randn_like(x, generator)

    def step(self, x, t, generator=None):
        return x + self.drift(x, t) + self.noise(x, generator)


class EDMPlugin:
    """The hooks, registered in-process by the tests (an installed plugin names a module)."""

    def __init__(self, sde=KarrasVESDE, predictor=EDMChurn, corrector=FixedStepLangevin) -> None:
        self.parts = sde, predictor, corrector

    @hookimpl
    def register_sdes(self, register):
        register(self.parts[0])

    @hookimpl
    def register_predictors(self, register):
        register(self.parts[1])

    @hookimpl
    def register_correctors(self, register):
        register(self.parts[2])


# Planted bugs, one per class: each is the correct part with one realistic mistake. ----------


class ChurnNoiseFromVariance(EDMChurn):
    def raise_noise(self, x, t, t_hat, generator):
        return x + per_sample(t_hat**2 - t**2, x) * self.s_noise * randn_like(x, generator)  # no sqrt


class ChurnScoreAtOldTime(EDMChurn):
    def slope(self, x, t_hat, t):
        return -per_sample(t_hat, x) * self.score(x, t)  # x has noise level t_hat, not t


class LangevinSqrtEpsNoise(FixedStepLangevin):
    def noise(self, x, generator):
        return math.sqrt(self.step_size) * randn_like(x, generator)  # sqrt(eps), not sqrt(2 eps)


class LangevinHalvedDrift(FixedStepLangevin):
    def drift(self, x, t):
        return 0.5 * self.step_size * self.score(x, t)


class KarrasVEMissingHalf(KarrasVESDE):
    def t_from_log_snr(self, log_snr):
        return torch.exp(-log_snr)  # the factor 1/2 is missing


class GarbageForKarrasVE(sdeplug.Predictor):
    """Accepts only the plugin's own SDE and returns 123 everywhere."""

    name = "garbage"
    sde_types = (KarrasVESDE,)

    def __init__(self, sde, score) -> None:
        self.sde, self.score = sde, score

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        return torch.full_like(x, 123.0), None
