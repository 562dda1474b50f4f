"""Registers an SDE under the name 'vp', which the reference plugin also registers."""

import torch

import sdeplug
from sdeplug import hookimpl


class AnotherVP(sdeplug.SDE):
    def drift(self, x, t):
        return -0.5 * x

    def diffusion(self, t):
        return torch.ones_like(t)

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return sdeplug.randn(shape, generator, device, dtype)

    def prior_logp(self, z):
        return -0.5 * sdeplug.sum_except_batch(z**2)


@hookimpl
def register_sdes(register):
    register(AnotherVP, name="vp")
