"""An MLP score network for vector data."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from sdeplug import ScoreModel
from sdeplug_models.checks import check_embed_dim, check_event_shape, check_num_classes, check_sizes
from sdeplug_models.embedding import ClassEmbedding, FourierTime


class MLPBlock(nn.Module):
    """Linear -> SiLU with the time embedding added, and a residual connection."""

    def __init__(self, width: int, embed_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.time = nn.Linear(embed_dim, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.linear(nn.functional.silu(self.norm(h) + self.time(emb)))


class MLP(ScoreModel):
    """Residual MLP with a Fourier time embedding; its output is read by the training
    parameterization (noise prediction by default). ``num_classes`` makes it class-conditional
    (a class embedding added to the time embedding; off by default)."""

    name = "mlp"

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        width: int = 256,
        depth: int = 4,
        embed_dim: int = 64,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_sizes(width=(width, 1), depth=(depth, 1))
        self.num_classes = check_num_classes(num_classes)
        check_embed_dim(embed_dim)
        self.event_shape = check_event_shape(event_shape)
        # kept under their own names, so a built network says how it was built
        self.width, self.depth, self.embed_dim, self.fourier_scale = width, depth, embed_dim, fourier_scale
        dim = math.prod(self.event_shape)
        self.embed = FourierTime(embed_dim, fourier_scale)
        self.classes = ClassEmbedding(self.num_classes, embed_dim) if self.num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(MLPBlock(width, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(t, None if self.classes is None else self.classes(labels, x.shape[0]))
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h).reshape(x.shape)
