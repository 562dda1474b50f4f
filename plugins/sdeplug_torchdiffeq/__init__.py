"""ODE solvers backed by torchdiffeq: dopri5 and its other methods, in either time direction.

Registered as ``torchdiffeq`` (choose ``method``) and, for methods whose names no other
bundled solver uses, as a preset under the method's own name (``dopri5``, ``rk4``, ...):
the same class with ``method`` fixed.
"""

from __future__ import annotations

import attrs
import torch
import torchdiffeq
from attrs import validators as v
from torch import Tensor

from sdeplug import DenseODESolution, ODESolution, ODESolver, hookimpl
from sdeplug.grids import uniform_grid
from sdeplug.interfaces import ODEFunc

#: torchdiffeq's methods: (order, adaptive). scipy_solver is left out on purpose: it
#: round-trips through numpy on the host at every evaluation.
METHODS: dict[str, tuple[int, bool]] = {
    "dopri5": (5, True),
    "dopri8": (8, True),
    "bosh3": (3, True),
    "fehlberg2": (2, True),
    "adaptive_heun": (2, True),
    "euler": (1, False),
    "midpoint": (2, False),
    "heun2": (2, False),
    "heun3": (3, False),
    "rk4": (4, False),
    "explicit_adams": (3, False),  # at the default max_order (see below)
    "implicit_adams": (4, False),
}
#: Adaptive methods whose dense output (torchdiffeq's interpolation within a step) is as
#: accurate as their steps: bosh3's is not (off by 5e-5 relative at rtol = atol = 1e-8).
DENSE = {"dopri5", "dopri8", "fehlberg2", "adaptive_heun"}
#: Names the reference plugin already uses for its own solvers.
_TAKEN = {"euler", "heun2"}
#: explicit_adams keeps max_order - 1 past derivatives: it is Adams-Bashforth of order
#: max_order - 1 (after an RK4 start). torchdiffeq's own default, 12, makes it order 11,
#: unstable at the step sizes sampling uses: on dy/dt = -2 y with 100 steps it ends at -4e7
#: instead of 0.135, and float32 probability-flow sampling of a 2-D mixture ends at
#: |x| = 1500. At 4 it is AB3, stable up to rate x step = 0.2; at 6 and above it fails there.
#: (implicit_adams keeps torchdiffeq's default: its Adams-Moulton corrector is stable.)
DEFAULT_MAX_ORDER = 4


def _check_max_order(value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 4 <= value <= 12:
        raise ValueError(f"max_order must be an integer from 4 to 12; got {value!r}")


def _tolerance():
    return attrs.field(default=1e-5, kw_only=True, converter=float, validator=v.gt(0.0))


@attrs.frozen
class Torchdiffeq(ODESolver):
    """torchdiffeq.odeint between two times, with any of its methods (``method``, default
    dopri5). Adaptive methods use rtol and atol (the paper's RK45 used 1e-5 for both;
    torchdiffeq's own defaults of 1e-7 / 1e-9 are far stricter than sampling needs).
    Fixed-step methods step through the grid, or ``steps`` uniform steps. ``max_order``
    is for explicit_adams (Adams-Bashforth of order max_order - 1, from 4 to 12)."""

    name = "torchdiffeq"

    method: str = attrs.field(default="dopri5", kw_only=True, validator=v.in_(tuple(METHODS)))
    rtol: float = _tolerance()
    atol: float = _tolerance()
    steps: int = attrs.field(default=100, kw_only=True, validator=[v.instance_of(int), v.ge(1)])
    max_order: int | None = attrs.field(default=None, kw_only=True)

    @max_order.validator
    def _only_for_explicit_adams(self, attribute, value) -> None:
        if value is None:
            return
        if self.method != "explicit_adams":
            raise ValueError(f"max_order is an option of method 'explicit_adams', not of {self.method!r}")
        _check_max_order(value)

    def _method_options(self) -> dict:
        """torchdiffeq's options for the method: explicit_adams gets its max_order."""
        if self.method != "explicit_adams":
            return {}
        return {"max_order": DEFAULT_MAX_ORDER if self.max_order is None else self.max_order}

    @property
    def order(self) -> int:  # type: ignore[override]
        options = self._method_options()
        return options["max_order"] - 1 if options else METHODS[self.method][0]

    @property
    def adaptive(self) -> bool:  # type: ignore[override]
        return METHODS[self.method][1]

    @property
    def dense_output(self) -> bool:  # type: ignore[override]
        return self.method in DENSE

    def solve_dense(self, F: ODEFunc, y0: Tensor, t0: float, t1: float) -> DenseODESolution:
        """The adaptive solve, with the accepted steps (torchdiffeq's accept-step callback).

        ``states_at`` solves again with the same steps and reads torchdiffeq's dense output
        (dopri5's is fourth order within a step) at the requested times.
        """
        if not self.dense_output:
            raise NotImplementedError(f"torchdiffeq method {self.method!r} has no dense output; use {sorted(DENSE)}")
        ends = uniform_grid(t0, t1, 1, device=y0.device, dtype=y0.dtype)
        options = {**self._method_options(), "step_t": ends[-1:]}
        recorder = _AcceptedSteps(F)
        ys = torchdiffeq.odeint(recorder, y0, ends, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        steps = torch.stack([*recorder.starts, ends[-1]]) if recorder.starts else ends
        direction = 1.0 if t1 >= t0 else -1.0

        def states_at(times: Tensor) -> tuple[Tensor, int]:
            times = times.to(device=y0.device, dtype=y0.dtype).reshape(-1)
            grid = torch.cat([ends[:1], times])
            if times.numel() == 0 or not bool(((grid[1:] - grid[:-1]) * direction > 0).all()):
                raise ValueError(f"states_at needs times strictly monotone from t0 = {t0} towards t1 = {t1}")
            if bool(((times - ends[-1]) * direction > 0).any()):
                raise ValueError(f"states_at needs times inside (t0, t1] = ({t0}, {t1})")
            counted = _AcceptedSteps(F)
            out = torchdiffeq.odeint(
                counted, y0, grid, rtol=self.rtol, atol=self.atol, method=self.method, options=options
            )
            return out[1:], counted.calls

        return DenseODESolution(y=ys[-1], nfe=recorder.calls, steps=steps, states_at=states_at)

    def solve(self, F: ODEFunc, y0: Tensor, t0: float, t1: float, grid: Tensor | None = None) -> ODESolution:
        calls = 0

        def counted(t: Tensor, y: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return F(t, y)

        options = self._method_options()
        if not self.adaptive:
            # Built in y0's dtype: a float32 grid cast up has steps unequal by 1e-9, and
            # explicit_adams (Adams-Bashforth up to order 11) amplifies that into divergence.
            if grid is None:
                times = uniform_grid(t0, t1, self.steps, device=y0.device, dtype=y0.dtype)
            else:
                times = grid.to(device=y0.device, dtype=y0.dtype)
            options["grid_constructor"] = lambda func, y, t: times
        else:
            times = uniform_grid(t0, t1, 1, device=y0.device, dtype=y0.dtype)
            # Adaptive steps may run past t1 and interpolate back; SDE schedules need not
            # exist beyond [0, T] (VP's sigma(t)^2 < 0 for t < 0), so end a step exactly at t1.
            options["step_t"] = times[-1:]
        ends = times[[0, -1]]
        ys = torchdiffeq.odeint(counted, y0, ends, rtol=self.rtol, atol=self.atol, method=self.method, options=options)
        return ODESolution(y=ys[-1], nfe=calls)


class _AcceptedSteps:
    """F for torchdiffeq, counting its calls and keeping the start time of every accepted step."""

    def __init__(self, F: ODEFunc) -> None:
        self.F, self.calls, self.starts = F, 0, []

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.F(t, y)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.starts.append(t0.detach().clone())


#: The methods registered as presets under their own names.
PRESETS = [m for m in METHODS if m not in _TAKEN]


@hookimpl
def register_ode_solvers(register):
    register(Torchdiffeq)
    for method in PRESETS:
        register(Torchdiffeq, name=method, method=method)
