"""Test problems shared by several test modules."""

from __future__ import annotations

import torch

import sdeplug


class TanhSDE(sdeplug.SDE):
    """A non-linear SDE, dx = -tanh(x) dt + dw, with no closed-form marginals."""

    def drift(self, x, t):
        return -torch.tanh(x)

    def diffusion(self, t):
        return torch.ones_like(t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return sdeplug.randn(shape, generator, device, dtype)

    def prior_logp(self, z):
        return torch.zeros(z.shape[0])
