"""Resampling with a finite-impulse-response filter (StyleGAN2's upfirdn2d), in plain torch.

NCSN++ up- and down-samples with the separable filter [1, 3, 3, 1] instead of nearest
neighbours or average pooling. Every function takes images (batch, channels, H, W) and a
normalised 2-D filter from ``fir_filter``; the filter is a tensor the caller keeps on the
images' device and dtype, so nothing is allocated from Python lists per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F


def fir_filter(taps: Sequence[float]) -> Tensor:
    """The 2-D filter of separable ``taps`` (or of a 2-D list), normalised to sum to one."""
    k = torch.as_tensor(taps, dtype=torch.float64)
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or not torch.isfinite(k).all() or k.sum() == 0:
        raise ValueError(f"fir_kernel must be a list of taps (or a square 2-D list) with a non-zero sum; got {taps!r}")
    return (k / k.sum()).float()


def upfirdn2d(x: Tensor, kernel: Tensor, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Insert ``up - 1`` zeros between pixels, pad by ``pad`` (before, after) on both axes,
    convolve each channel with ``kernel`` and keep every ``down``-th pixel."""
    b, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip(0, 1).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=c)


def upsample(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """Upsample by ``factor``, interpolating with the filter (gain 1 on constant images)."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel * factor**2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample(x: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """Low-pass with the filter, then keep every ``factor``-th pixel."""
    p = kernel.shape[0] - factor
    return upfirdn2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv(x: Tensor, weight: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """``upsample`` followed by a 'same' convolution with ``weight`` (out, in, k, k), fused:
    a strided transposed convolution, then the filter."""
    k = weight.shape[-1]
    p = (kernel.shape[0] - factor) - (k - 1)
    flipped = weight.flip(-1, -2).transpose(0, 1)  # (in, out, k, k), as conv_transpose2d takes it
    x = F.conv_transpose2d(x, flipped, stride=factor)
    return upfirdn2d(x, kernel * factor**2, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample(x: Tensor, weight: Tensor, kernel: Tensor, factor: int = 2) -> Tensor:
    """The filter, then a convolution with ``weight`` (out, in, k, k) at stride ``factor``, fused."""
    k = weight.shape[-1]
    p = (kernel.shape[0] - factor) + (k - 1)
    return F.conv2d(upfirdn2d(x, kernel, pad=((p + 1) // 2, p // 2)), weight, stride=factor)


def naive_upsample(x: Tensor, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling (each pixel repeated ``factor`` x ``factor`` times)."""
    return torch.repeat_interleave(torch.repeat_interleave(x, factor, dim=-2), factor, dim=-1)


def naive_downsample(x: Tensor, factor: int = 2) -> Tensor:
    """The mean of each ``factor`` x ``factor`` block."""
    return F.avg_pool2d(x, factor)
