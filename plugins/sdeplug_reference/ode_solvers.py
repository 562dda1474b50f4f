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
    """The loop of every fixed-step solver, in one place: step through the grid (or ``steps``
    uniform steps), counting evaluations of F; subclasses give one step."""

    steps: int = attrs.field(default=100, kw_only=True, validator=[v.instance_of(int), v.ge(1)])

    def solve(self, F: ODEFunc, y0: Tensor, t0: float, t1: float, grid: Tensor | None = None) -> ODESolution:
        if grid is None:
            times = uniform_grid(t0, t1, self.steps, device=y0.device, dtype=y0.dtype)
        else:
            times = grid.to(device=y0.device, dtype=y0.dtype)
        calls = 0

        def counted(t: Tensor, y: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return F(t, y)

        hs = times.diff()
        y = y0
        for i in range(len(hs)):
            y = self.step(counted, times[i], times[i + 1], hs[i], y)
        return ODESolution(y=y, nfe=calls)

    def step(self, F: ODEFunc, t: Tensor, t_next: Tensor, h: Tensor, y: Tensor) -> Tensor:
        """y at t_next from y at t, h = t_next - t."""
        raise NotImplementedError


@attrs.frozen
class Euler(_FixedStep):
    """y <- y + h F(t, y); one evaluation per step."""

    name = "euler"
    order = 1

    def step(self, F: ODEFunc, t: Tensor, t_next: Tensor, h: Tensor, y: Tensor) -> Tensor:
        return y + h * F(t, y)


@attrs.frozen
class Heun(_FixedStep):
    """Heun's method (explicit trapezoid): two evaluations per step, second order."""

    name = "heun"
    order = 2

    def step(self, F: ODEFunc, t: Tensor, t_next: Tensor, h: Tensor, y: Tensor) -> Tensor:
        k1 = F(t, y)
        k2 = F(t_next, y + h * k1)
        return y + 0.5 * h * (k1 + k2)
