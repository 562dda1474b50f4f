"""Turning what a network predicts (score, noise, clean data or velocity) into a score.

For a LinearSDE, x_t = alpha x_0 + sigma z, so a network that predicts the noise z, the
clean data x_0 or the velocity v = alpha z - sigma x_0 (Salimans & Ho 2022) gives the score by
    s = -z_hat / sigma                                        (noise, "eps")
    s = (alpha x0_hat - x) / sigma^2                          (data, "x0")
    s = -(sigma x + alpha v_hat) / (sigma (alpha^2 + sigma^2))  (velocity, "v")
and the denoising loss of sdeplug.losses on the resulting score is, per sample,
||z_hat - z||^2 for noise prediction, as in DDPM (and ||v_hat - v||^2 for velocity with the
"velocity" weighting). The samplers see a ScoreModel either way.

A network is fed sdeplug's t unless it declares another ``time_input``: "sigma" (the noise
level sigma(t), as NCSN++'s VE models and EDM-style networks take it) or "999t" (the
score_sde_pytorch convention for continuous-time VP and sub-VP models).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sdeplug.conditioning import num_classes
from sdeplug.interfaces import SDE, LinearSDE, ScoreModel
from sdeplug.tensors import per_sample

Parameterization = Literal["score", "noise", "data", "velocity"]
PARAMETERIZATIONS: tuple[str, ...] = ("score", "noise", "data", "velocity")
TIME_INPUTS: tuple[str, ...] = ("t", "sigma", "999t")


def declared_time_input(network: torch.nn.Module) -> str:
    """The ``time_input`` a network declares ("t" when none), looking through DDP and
    torch.compile wrappers."""
    for wrapped in ("_orig_mod", "module"):  # torch.compile's, then DDP's
        inner = network._modules.get(wrapped)
        if inner is not None and not hasattr(network, "time_input"):
            network = inner
    time_input = getattr(network, "time_input", "t")
    if time_input not in TIME_INPUTS:
        raise ValueError(f"time_input must be one of {', '.join(map(repr, TIME_INPUTS))}; got {time_input!r}")
    return time_input


class ParameterizedScore(ScoreModel):
    """A network's output read as score, noise, data or velocity prediction, exposed as a score.

    A conditional network (one with ``num_classes``) makes a conditional score model: it is
    called as ``network(x, t_in, labels)``, and without labels as an unconditional one.
    """

    def __init__(self, network: torch.nn.Module, sde: SDE, parameterization: Parameterization = "noise") -> None:
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(
                f"parameterization must be one of {', '.join(map(repr, PARAMETERIZATIONS))}; got {parameterization!r}"
            )
        if parameterization != "score" and not isinstance(sde, LinearSDE):
            raise TypeError(
                f"the {parameterization!r} parameterization needs a LinearSDE (alpha(t), sigma(t)); "
                f"got {type(sde).__name__}; use parameterization 'score'"
            )
        self.time_input = declared_time_input(network)
        if self.time_input == "sigma" and not isinstance(sde, LinearSDE):
            raise TypeError(f"a network conditioned on sigma(t) needs a LinearSDE; got {type(sde).__name__}")
        self.network, self.sde, self.parameterization = network, sde, parameterization
        self.num_classes = num_classes(network)

    def network_input(self, t: Tensor) -> Tensor:
        """What the network is conditioned on at times t."""
        if self.time_input == "sigma":
            return self.sde.sigma(t)
        return 999 * t if self.time_input == "999t" else t

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is None:
            out = self.network(x, self.network_input(t))
        else:
            if self.num_classes is None:
                raise ValueError("class labels were given to an unconditional network (it sets no num_classes)")
            out = self.network(x, self.network_input(t), labels)
        if self.parameterization == "score":
            return out
        sigma = per_sample(self.sde.sigma(t), x)
        if self.parameterization == "noise":
            return -out / sigma
        alpha = per_sample(self.sde.alpha(t), x)
        if self.parameterization == "data":
            return (alpha * out - x) / sigma**2
        return -(sigma * x + alpha * out) / (sigma * (alpha**2 + sigma**2))
