"""Turning what a network predicts (score, noise or clean data) into a score.

For a LinearSDE, x_t = alpha x_0 + sigma z, so a network that predicts the noise z or
the clean data x_0 gives the score by
    s = -z_hat / sigma              (noise, "eps")
    s = (alpha x0_hat - x) / sigma^2 (data, "x0")
and the denoising loss of sdeplug.losses on the resulting score is, per sample,
||z_hat - z||^2 for noise prediction, as in DDPM. The samplers see a ScoreModel either way.

A network is fed sdeplug's t unless it declares another ``time_input``: "sigma" (the noise
level sigma(t), as NCSN++'s VE models and EDM-style networks take it) or "999t" (the
score_sde_pytorch convention for continuous-time VP and sub-VP models).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, ScoreModel
from sdeplug.tensors import per_sample

Parameterization = Literal["score", "noise", "data"]
PARAMETERIZATIONS: tuple[str, ...] = ("score", "noise", "data")
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
    """A network's output read as score, noise or data prediction, exposed as a score."""

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

    def network_input(self, t: Tensor) -> Tensor:
        """What the network is conditioned on at times t."""
        if self.time_input == "sigma":
            return self.sde.sigma(t)
        return 999 * t if self.time_input == "999t" else t

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.network(x, self.network_input(t))
        if self.parameterization == "score":
            return out
        sigma = per_sample(self.sde.sigma(t), x)
        if self.parameterization == "noise":
            return -out / sigma
        return (per_sample(self.sde.alpha(t), x) * out - x) / sigma**2
