"""Time grids that need no more than an SDE's time span: uniform and quadratic in t."""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import SDE, TimeGrid
from sdeplug.grids import uniform_grid


@attrs.frozen
class UniformGrid(TimeGrid):
    """Evenly spaced in t: every step is (T - eps) / steps (the paper's grid, stepped exactly)."""

    name = "uniform"

    def times(self, sde: SDE, steps: int, eps: float, device=None, dtype=None) -> Tensor:
        return uniform_grid(sde.T, eps, steps, device=device, dtype=dtype)


@attrs.frozen
class QuadraticGrid(TimeGrid):
    """t = eps + (T - eps) u^power with u evenly spaced from 1 to 0: steps shrink towards the data.

    ``power = 2`` is the quadratic spacing of DDIM's "quad" schedule.
    """

    name = "quadratic"
    power: float = attrs.field(default=2.0, kw_only=True, validator=[v.instance_of((int, float)), v.gt(0)])

    def times(self, sde: SDE, steps: int, eps: float, device=None, dtype=None) -> Tensor:
        u = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        times = eps + (float(sde.T) - eps) * u**self.power
        return times.to(device=device, dtype=dtype)
