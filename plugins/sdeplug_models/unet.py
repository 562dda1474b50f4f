"""A small U-Net score network for images, in the style of NCSN++/DDPM++.

Residual blocks with GroupNorm and the time embedding added in the middle, self-attention
at low resolution, skip connections from the way down to the way up, and a final
convolution initialised at zero (so training starts from a zero output).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sdeplug import ScoreModel
from sdeplug_models.checks import (
    check_channels,
    check_dropout,
    check_embed_dim,
    check_event_shape,
    check_num_classes,
    check_sizes,
)
from sdeplug_models.embedding import ClassEmbedding, FourierTime


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, embed_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(embed_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        return (self.skip(x) + h) / 2**0.5


class Attention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return (x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))) / 2**0.5


class UNet(ScoreModel):
    """U-Net for images of shape (C, H, W); H and W divisible by 2^(levels - 1)."""

    name = "unet"

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 8, 8),
        channels: int = 32,
        channel_mult: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_resolutions: Sequence[int] = (4,),
        embed_dim: int = 128,
        dropout: float = 0.0,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = check_event_shape(event_shape, image=True)
        self.num_classes = check_num_classes(num_classes)
        channel_mult = check_channels(channels, channel_mult)
        check_sizes(num_res_blocks=(num_res_blocks, 1))
        check_embed_dim(embed_dim)
        check_dropout(dropout)
        c_img, height, width = self.event_shape
        levels = len(channel_mult)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ValueError(f"height and width must be divisible by {2 ** (levels - 1)} for {levels} levels")
        if isinstance(attention_resolutions, (str, bytes)) or not isinstance(attention_resolutions, Sequence):
            raise ValueError(f"attention_resolutions must be a sequence of heights; got {attention_resolutions!r}")
        # kept under their own names, so a built network says how it was built
        self.channels, self.channel_mult, self.num_res_blocks = channels, channel_mult, num_res_blocks
        self.attention_resolutions, self.embed_dim = tuple(attention_resolutions), embed_dim
        self.dropout, self.fourier_scale = dropout, fourier_scale
        self.embed = FourierTime(embed_dim, fourier_scale)
        self.classes = ClassEmbedding(self.num_classes, embed_dim) if self.num_classes else None
        self.inp = nn.Conv2d(c_img, channels, 3, padding=1)
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skips, c, res = [channels], channels, height
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                block = nn.ModuleList([ResBlock(c, channels * mult, embed_dim, dropout)])
                c = channels * mult
                if res in attention_resolutions:
                    block.append(Attention(c))
                self.down.append(block)
                skips.append(c)
            if level < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(c, c, embed_dim, dropout), Attention(c), ResBlock(c, c, embed_dim, dropout)])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                block = nn.ModuleList([ResBlock(c + skips.pop(), channels * mult, embed_dim, dropout)])
                c = channels * mult
                if res in attention_resolutions:
                    block.append(Attention(c))
                self.up.append(block)
            if level > 0:
                self.up.append(
                    nn.ModuleList([nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)])
                )
                res *= 2
        self.out_norm = _norm(c)
        self.out = nn.Conv2d(c, c_img, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(block: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for layer in block:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        emb = self.embed(t, None if self.classes is None else self.classes(labels, x.shape[0]))
        h = self.inp(x)
        hs = [h]
        for block in self.down:
            h = self._run(block, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for block in self.up:
            if isinstance(block[0], ResBlock):
                h = torch.cat([h, hs.pop()], dim=1)
            h = self._run(block, h, emb)
        return self.out(nn.functional.silu(self.out_norm(h)))
