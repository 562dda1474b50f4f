"""Training objectives as plain callables for any training loop: the continuous-time
denoising score-matching loss, and the noisy cross-entropy of a time-dependent classifier.

    loss = E_t E_x0 E_z [ lambda(t) || s(x_t, t) - grad log p_0t(x_t | x_0) ||^2 ]

with t ~ U(eps, T), x_t = mean(x_0, t) + std(t) z and grad log p_0t = -z / std. The
default weighting lambda = std^2 turns the summand into ||std s + z||^2 (the paper's
choice); ``weighting="likelihood"`` takes lambda = g(t)^2, which makes the loss a bound
on the negative log-likelihood (Song et al. 2021, "Maximum likelihood training");
``weighting="velocity"`` (a LinearSDE) takes lambda = sigma^2 (alpha^2 + sigma^2)^2 / alpha^2,
which is ||v_hat - v||^2 for a network predicting the velocity v = alpha z - sigma x_0.

The classifier that guidance needs is trained on the same perturbed inputs x_t with
cross-entropy, so that classifier(x_t, t) approximates p_t(y | x_t).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, ScoreFn
from sdeplug.tensors import per_sample, randn_like

#: The loss weightings lambda(t) (see the module docstring).
WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood", "velocity")


def _check_perturbable(sde: SDE, eps: float, what: str) -> None:
    if not sde.has_marginals():
        raise TypeError(
            f"{what} needs the perturbation kernel p_0t(x_t | x_0); "
            f"{type(sde).__name__} has no marginal_prob. Give the SDE a closed-form "
            "marginal_prob (a LinearSDE has one) or train with another objective"
        )
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}); got {eps}")


#: The noise of a batch: u ~ U(0, 1) per sample (the time) and z ~ N(0, I) like the batch.
Noise = tuple[Tensor, Tensor]


def draw_noise(x0: Tensor, generator: torch.Generator | None = None) -> Noise:
    """(u, z) for the batch ``x0``, drawn as ``perturb`` draws them; drawing a large batch once
    and slicing it gives every part the noise it would get in the whole batch."""
    u = torch.rand(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)
    return u, randn_like(x0, generator)


def perturb(sde: SDE, eps: float, x0: Tensor, generator: torch.Generator | None = None, noise: Noise | None = None):
    """t ~ U(eps, T) per sample and x_t = mean(x0, t) + std(t) z, from ``noise`` = (u, z) if
    given, else drawn from ``generator``; returns (x_t, t, z, std)."""
    u, z = draw_noise(x0, generator) if noise is None else noise
    t = eps + (sde.T - eps) * u
    mean, std = sde.marginal_prob(x0, t)
    return mean + per_sample(std, x0) * z, t, z, std


@attrs.frozen
class DenoisingScoreMatching:
    """``loss(score_model, x0, generator=None, noise=None, labels=None) -> scalar``; needs only
    the SDE's marginal_prob. ``noise`` = (u, z) from ``draw_noise`` replaces drawing from
    ``generator``; ``labels`` (batch,) go to a conditional model as ``score(x_t, t, labels)``.

    ``reduction`` combines the entries of one sample ("mean", as the paper's default
    ``reduce_mean=True``, or "sum"); samples are always averaged.
    """

    sde: SDE
    eps: float = attrs.field(default=1e-5, converter=float)
    weighting: Literal["sigma2", "likelihood", "velocity"] = attrs.field(default="sigma2", validator=v.in_(WEIGHTINGS))
    reduction: Literal["mean", "sum"] = attrs.field(default="mean", validator=v.in_(("mean", "sum")))

    def __attrs_post_init__(self) -> None:
        _check_perturbable(self.sde, self.eps, "denoising score matching")
        if self.weighting == "velocity" and not isinstance(self.sde, LinearSDE):
            raise TypeError(
                f"the 'velocity' weighting needs a LinearSDE (alpha(t), sigma(t)); got {type(self.sde).__name__}"
            )

    def __call__(
        self,
        score: ScoreFn,
        x0: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: Noise | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        batch = x0.shape[0]
        xt, t, z, std = perturb(self.sde, self.eps, x0, generator, noise)
        if labels is None:
            s = score(xt, t)
        else:
            if labels.shape != (batch,):
                raise ValueError(f"labels must have shape (batch,) = ({batch},); got {tuple(labels.shape)}")
            s = score(xt, t, labels)
        if self.weighting == "sigma2":
            residual = (per_sample(std, x0) * s + z) ** 2
            weight = None
        elif self.weighting == "velocity":  # std s + z = -alpha (v_hat - v) / (alpha^2 + sigma^2)
            alpha = self.sde.alpha(t)
            scale = per_sample((alpha**2 + std**2) / alpha, x0)
            residual = ((per_sample(std, x0) * s + z) * scale) ** 2
            weight = None
        else:
            residual = (s + z / per_sample(std, x0)) ** 2
            weight = self.sde.diffusion(t) ** 2
        per_example = residual.reshape(batch, -1)
        per_example = per_example.mean(1) if self.reduction == "mean" else per_example.sum(1)
        if weight is not None:
            per_example = per_example * weight
        return per_example.mean()


@attrs.frozen
class NoisyCrossEntropy:
    """``loss(classifier, x0, labels, generator=None) -> scalar``: the cross-entropy of
    ``classifier(x_t, t)`` (logits) against the labels of x0, with t ~ U(eps, T) and x_t from
    the perturbation kernel; its minimiser is the time-dependent posterior p_t(y | x_t)."""

    sde: SDE
    eps: float = attrs.field(default=1e-5, converter=float)

    def __attrs_post_init__(self) -> None:
        _check_perturbable(self.sde, self.eps, "training a time-dependent classifier")

    def __call__(
        self,
        classifier,
        x0: Tensor,
        labels: Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: Noise | None = None,
    ) -> Tensor:
        if labels.shape != (x0.shape[0],):
            raise ValueError(f"labels must have shape (batch,) = ({x0.shape[0]},); got {tuple(labels.shape)}")
        xt, t, _, _ = perturb(self.sde, self.eps, x0, generator, noise)
        return torch.nn.functional.cross_entropy(classifier(xt, t), labels)
