"""Turning what a network predicts (score, noise or clean data) into a score.

For a LinearSDE, x_t = alpha x_0 + sigma z, so a network that predicts the noise z or
the clean data x_0 gives the score by
    s = -z_hat / sigma              (noise, "eps")
    s = (alpha x0_hat - x) / sigma^2 (data, "x0")
and the denoising loss of sdeplug.losses on the resulting score is, per sample,
||z_hat - z||^2 for noise prediction, as in DDPM. The samplers see a ScoreModel either way.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, ScoreModel
from sdeplug.tensors import per_sample

Parameterization = Literal["score", "noise", "data"]
PARAMETERIZATIONS: tuple[str, ...] = ("score", "noise", "data")


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
        self.network, self.sde, self.parameterization = network, sde, parameterization

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.network(x, t)
        if self.parameterization == "score":
            return out
        sigma = per_sample(self.sde.sigma(t), x)
        if self.parameterization == "noise":
            return -out / sigma
        return (per_sample(self.sde.alpha(t), x) * out - x) / sigma**2
