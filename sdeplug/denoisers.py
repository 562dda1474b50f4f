"""Denoisers D(x, sigma) in the convention of EDM and k-diffusion, as sdeplug scores, and back.

A denoiser takes x = x_0 + sigma n (n ~ N(0, I)) and the noise level sigma, and returns an
estimate of E[x_0 | x]. A LinearSDE's x_t = alpha(t) x_0 + sigma(t) z is the same thing
scaled: x_t / alpha(t) = x_0 + (sigma(t) / alpha(t)) z. So at time t the denoiser sees
x_t / alpha(t) at the level sigma(t) / alpha(t), and Tweedie's formula links it to the score:

    score(x_t, t) = (alpha(t) D(x_t / alpha(t), sigma(t) / alpha(t)) - x_t) / sigma(t)^2.

The level at time t is fixed by the SDE, so one denoiser serves every LinearSDE (VE, VP,
sub-VP, a third party's) as long as the levels the sampler visits are ones it was trained on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sdeplug.interfaces import LinearSDE, ScoreModel
from sdeplug.tensors import batch_time, per_sample

Denoiser = Callable[[Tensor, Tensor], Tensor]


def noise_level(sde: LinearSDE, t: Tensor) -> Tensor:
    """The denoiser's noise level sigma(t) / alpha(t) at time t (shape (batch,))."""
    return sde.sigma(t) / sde.alpha(t)


class DenoiserScore(ScoreModel):
    """The score of a LinearSDE from a denoiser ``denoiser(x, sigma) -> E[x_0 | x]`` (x = x_0 +
    sigma n, sigma of shape (batch,)): an EDM or k-diffusion model sampled by sdeplug."""

    def __init__(self, denoiser: Denoiser, sde: LinearSDE) -> None:
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(
                f"a denoiser defines the score of a LinearSDE (alpha(t), sigma(t)); got {type(sde).__name__}"
            )
        self.denoiser, self.sde = denoiser, sde

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = batch_time(t, x)
        alpha_t, sigma_t = self.sde.alpha(t), self.sde.sigma(t)  # (batch,), each computed once
        alpha, sigma = per_sample(alpha_t, x), per_sample(sigma_t, x)
        denoised = self.denoiser(x / alpha, sigma_t / alpha_t)
        return (alpha * denoised - x) / sigma**2


class ScoreDenoiser(torch.nn.Module):
    """Any sdeplug score of a LinearSDE as a denoiser ``D(x, sigma)`` (EDM / k-diffusion
    convention), so sdeplug models run in other toolkits' samplers. A noise level the SDE
    does not reach in [t_min, T] is a ValueError naming the range."""

    def __init__(self, score: ScoreModel | Callable[[Tensor, Tensor], Tensor], sde: LinearSDE, t_min: float = 0.0):
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"a denoiser needs a LinearSDE (alpha(t), sigma(t)); got {type(sde).__name__}")
        self.score, self.sde = score, sde
        ends = torch.tensor([t_min, sde.T], dtype=torch.float64)
        low, high = noise_level(sde, ends).tolist()
        self.sigma_min, self.sigma_max = low, high

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        sigma = batch_time(sigma, x)
        low, high = float(sigma.min()), float(sigma.max())  # one host read per call: a range check
        tolerance = 1e-6 * self.sigma_max
        if not (low >= self.sigma_min - tolerance and high <= self.sigma_max + tolerance and low > 0):
            raise ValueError(
                f"noise level sigma in [{low:g}, {high:g}] lies outside what {type(self.sde).__name__} reaches "
                f"between t_min and T: [{self.sigma_min:g}, {self.sigma_max:g}] (sigma must be positive)"
            )
        t = self.sde.t_from_log_snr(-2 * torch.log(sigma.to(torch.float64))).to(x.dtype)
        alpha, sigma_t = per_sample(self.sde.alpha(t), x), per_sample(self.sde.sigma(t), x)
        x_t = alpha * x
        return (x_t + sigma_t**2 * self.score(x_t, t)) / alpha
