"""Fixed-step ODE solvers: Euler (order 1) and Heun (order 2) over any grid."""

from __future__ import annotations

import attrs
from attrs import validators as v
from torch import Tensor

from sdeplug import ODESolution, ODESolver
from sdeplug.grids import uniform_grid
from sdeplug.interfaces import ODEFunc


@attrs.frozen
class _FixedStep(ODESolver):
    steps: int = attrs.field(default=100, kw_only=True, validator=[v.instance_of(int), v.ge(1)])

    def _times(self, y0: Tensor, t0: float, t1: float, grid: Tensor | None) -> Tensor:
        if grid is None:
            return uniform_grid(t0, t1, self.steps, device=y0.device, dtype=y0.dtype)
        return grid.to(device=y0.device, dtype=y0.dtype)


@attrs.frozen
class Euler(_FixedStep):
    """y <- y + h F(t, y); one evaluation per step."""

    name = "euler"
    order = 1

    def solve(self, F: ODEFunc, y0: Tensor, t0: float, t1: float, grid: Tensor | None = None) -> ODESolution:
        times = self._times(y0, t0, t1, grid)
        steps = times.diff()
        y = y0
        for i in range(len(steps)):
            y = y + steps[i] * F(times[i], y)
        return ODESolution(y=y, nfe=len(steps))


@attrs.frozen
class Heun(_FixedStep):
    """Heun's method (explicit trapezoid): two evaluations per step, second order."""

    name = "heun"
    order = 2

    def solve(self, F: ODEFunc, y0: Tensor, t0: float, t1: float, grid: Tensor | None = None) -> ODESolution:
        times = self._times(y0, t0, t1, grid)
        steps = times.diff()
        y = y0
        for i in range(len(steps)):
            h = steps[i]
            k1 = F(times[i], y)
            k2 = F(times[i + 1], y + h * k1)
            y = y + 0.5 * h * (k1 + k2)
        return ODESolution(y=y, nfe=2 * len(steps))
