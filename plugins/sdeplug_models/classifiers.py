"""Time-dependent classifiers for guidance: an MLP for vectors, a small CNN for images.

Each reads (x_t, t) and returns logits of p_t(y | x_t). The CNN is the downsampling half
of the U-Net (residual blocks with the time embedding, strided convolutions) followed by
global average pooling and a linear head, as the paper's classifier for CIFAR-10.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from sdeplug import TimeClassifier
from sdeplug_models.checks import (
    check_channels,
    check_dropout,
    check_embed_dim,
    check_event_shape,
    check_sizes,
)
from sdeplug_models.embedding import FourierTime
from sdeplug_models.mlp import MLPBlock
from sdeplug_models.unet import ResBlock, _norm


def _check_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
    return num_classes


class MLPClassifier(TimeClassifier):
    """Residual MLP with a Fourier time embedding, for vector data."""

    name = "mlp_classifier"

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        num_classes: int = 3,
        width: int = 128,
        depth: int = 3,
        embed_dim: int = 64,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        check_sizes(width=(width, 1), depth=(depth, 1))
        check_embed_dim(embed_dim)
        self.event_shape, self.num_classes = check_event_shape(event_shape), _check_classes(num_classes)
        # kept under their own names, so a built network says how it was built
        self.width, self.depth, self.embed_dim, self.fourier_scale = width, depth, embed_dim, fourier_scale
        self.embed = FourierTime(embed_dim, fourier_scale)
        self.inp = nn.Linear(math.prod(self.event_shape), width)
        self.blocks = nn.ModuleList(MLPBlock(width, embed_dim) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, self.num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t)
        h = self.inp(x.reshape(x.shape[0], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)


class ConvClassifier(TimeClassifier):
    """For images (C, H, W): residual blocks per level, strided downsampling, pooled head."""

    name = "conv_classifier"

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        embed_dim: int = 128,
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.event_shape = check_event_shape(event_shape, image=True)
        self.num_classes = _check_classes(num_classes)
        channel_mult = check_channels(channels, channel_mult)
        check_sizes(num_res_blocks=(num_res_blocks, 1))
        check_embed_dim(embed_dim)
        check_dropout(dropout)
        # kept under their own names, so a built network says how it was built
        self.channels, self.channel_mult, self.num_res_blocks = channels, channel_mult, num_res_blocks
        self.embed_dim, self.dropout, self.fourier_scale = embed_dim, dropout, fourier_scale
        self.embed = FourierTime(embed_dim, fourier_scale)
        self.inp = nn.Conv2d(self.event_shape[0], channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        c = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(c, channels * mult, embed_dim, dropout))
                c = channels * mult
            if level < len(channel_mult) - 1:
                self.blocks.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.head = nn.Sequential(
            _norm(c), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, self.num_classes)
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        emb = self.embed(t)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.head(h)
