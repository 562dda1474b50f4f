"""Time and class embeddings shared by the networks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sdeplug import NULL_LABEL


class FourierTime(nn.Module):
    """Random Fourier features of t (Gaussian Fourier projection, as in NCSN++), then an MLP."""

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(dim // 2, generator=torch.Generator().manual_seed(0)) * scale)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor, extra: Tensor | None = None) -> Tensor:
        """The embedding of t; ``extra`` (batch, dim), a class embedding, is added to the features
        before the MLP, as EDM adds its class embedding to the noise embedding."""
        angles = 2 * math.pi * t[:, None] * self.freqs.to(t.dtype)
        features = torch.cat([angles.sin(), angles.cos()], dim=-1)
        return self.mlp(features if extra is None else features + extra.to(features.dtype))


class ClassEmbedding(nn.Module):
    """A learned vector per class and one more for "no class" (``NULL_LABEL``, or no labels at
    all), which a conditional network adds to its time embedding."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor | None, batch: int) -> Tensor:
        """(batch, dim): row ``num_classes`` of the table is the null class."""
        if labels is None:
            index = torch.full((batch,), self.num_classes, device=self.table.weight.device)
        else:
            if labels.shape != (batch,):
                raise ValueError(f"labels must have shape (batch,) = ({batch},); got {tuple(labels.shape)}")
            index = torch.where(labels == NULL_LABEL, self.num_classes, labels)
        return self.table(index)
