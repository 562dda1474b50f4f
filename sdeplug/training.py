"""The continuous-time denoising score-matching loss: a plain callable for any training loop.

    loss = E_t E_x0 E_z [ lambda(t) || s(x_t, t) - grad log p_0t(x_t | x_0) ||^2 ]

with t ~ U(eps, T), x_t = mean(x_0, t) + std(t) z and grad log p_0t = -z / std. The
default weighting lambda = std^2 turns the summand into ||std s + z||^2 (the paper's
choice); ``weighting="likelihood"`` takes lambda = g(t)^2, which makes the loss a bound
on the negative log-likelihood (Song et al. 2021, "Maximum likelihood training").
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug.interfaces import SDE, ScoreFn
from sdeplug.tensors import per_sample, randn_like


@attrs.frozen
class DenoisingScoreMatching:
    """``loss(score_model, x0, generator=None) -> scalar``; needs only the SDE's marginal_prob.

    ``reduction`` combines the entries of one sample ("mean", as the paper's default
    ``reduce_mean=True``, or "sum"); samples are always averaged.
    """

    sde: SDE
    eps: float = attrs.field(default=1e-5, converter=float)
    weighting: Literal["sigma2", "likelihood"] = attrs.field(
        default="sigma2", validator=v.in_(("sigma2", "likelihood"))
    )
    reduction: Literal["mean", "sum"] = attrs.field(default="mean", validator=v.in_(("mean", "sum")))

    def __attrs_post_init__(self) -> None:
        if type(self.sde).marginal_prob is SDE.marginal_prob:
            raise TypeError(
                f"denoising score matching needs the perturbation kernel p_0t(x_t | x_0); "
                f"{type(self.sde).__name__} has no marginal_prob. Give the SDE a closed-form "
                "marginal_prob (a LinearSDE has one) or train with another objective"
            )
        if not 0 <= self.eps < self.sde.T:
            raise ValueError(f"eps must lie in [0, T) = [0, {self.sde.T}); got {self.eps}")

    def __call__(self, score: ScoreFn, x0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        batch = x0.shape[0]
        u = torch.rand(batch, generator=generator, device=x0.device, dtype=x0.dtype)
        t = self.eps + (self.sde.T - self.eps) * u
        z = randn_like(x0, generator)
        mean, std = self.sde.marginal_prob(x0, t)
        xt = mean + per_sample(std, x0) * z
        s = score(xt, t)
        if self.weighting == "sigma2":
            residual = (per_sample(std, x0) * s + z) ** 2
            weight = None
        else:
            residual = (s + z / per_sample(std, x0)) ** 2
            weight = self.sde.diffusion(t) ** 2
        per_example = residual.reshape(batch, -1)
        per_example = per_example.mean(1) if self.reduction == "mean" else per_example.sum(1)
        if weight is not None:
            per_example = per_example * weight
        return per_example.mean()
