"""ODE solvers backed by torchdiffeq: dopri5 and its other methods, in either time direction.

Registered as ``torchdiffeq`` (choose ``method``) and, for methods whose names no other
bundled solver uses, as a preset under the method's own name (``dopri5``, ``rk4``, ...):
the same class with ``method`` fixed.
"""

from __future__ import annotations

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import DenseODESolution, ODESolution, ODESolver, hookimpl
from sdeplug.grids import uniform_grid
from sdeplug.interfaces import ODEFunc


def _torchdiffeq():
    """torchdiffeq, imported when a solver first runs: it loads scipy, which every command that
    lists or builds parts (and never solves with torchdiffeq) would otherwise pay for."""
    import torchdiffeq

    return torchdiffeq


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
        return self.method in DENSE and _midpoint_weights(self.method) is not None

    def solve_dense(self, F: ODEFunc, y0: Tensor, t0: float, t1: float) -> DenseODESolution:
        """The adaptive solve, keeping on each accepted step what torchdiffeq fits its dense
        output to (from the accept-step callback and the stages' derivatives).

        ``states_at`` evaluates that interpolant (dopri5's is fourth order within a step) at
        the requested times without calling F again.
        """
        mid = _midpoint_weights(self.method) if self.dense_output else None
        if mid is None:
            raise NotImplementedError(f"torchdiffeq method {self.method!r} has no dense output; use {sorted(DENSE)}")
        ends = uniform_grid(t0, t1, 1, device=y0.device, dtype=y0.dtype)
        options = {**self._method_options(), "step_t": ends[-1:]}
        direction = 1.0 if t1 >= t0 else -1.0
        recorder = _StepRecorder(F, mid, direction)
        ys = _torchdiffeq().odeint(
            recorder, y0, ends, rtol=self.rtol, atol=self.atol, method=self.method, options=options
        )
        steps = torch.stack([*recorder.starts, ends[-1]]) if recorder.starts else ends
        interpolant = _Interpolant(steps.detach().to("cpu", torch.float64), recorder, ys[-1], direction)

        def states_at(times: Tensor) -> tuple[Tensor, int]:
            times = times.detach().to("cpu", torch.float64).reshape(-1)
            grid = torch.cat([ends[:1].to("cpu", torch.float64), times])
            if times.numel() == 0 or not bool(((grid[1:] - grid[:-1]) * direction > 0).all()):
                raise ValueError(f"states_at needs times strictly monotone from t0 = {t0} towards t1 = {t1}")
            if bool(((times - float(ends[-1])) * direction > 0).any()):
                raise ValueError(f"states_at needs times inside (t0, t1] = ({t0}, {t1})")
            return interpolant(times), 0

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
        ys = _torchdiffeq().odeint(
            counted, y0, ends, rtol=self.rtol, atol=self.atol, method=self.method, options=options
        )
        return ODESolution(y=ys[-1], nfe=calls)


def _midpoint_weights(method: str) -> list[float] | None:
    """torchdiffeq's weights of a step's stage derivatives for the state at the step's midpoint
    (its dense output is the quartic through both ends, their slopes and that state); None if
    the installed torchdiffeq keeps them elsewhere (then no dense output is offered)."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS  # not public: read once, checked by the tests

        return [float(w) for w in SOLVERS[method].mid]
    except (ImportError, KeyError, AttributeError, TypeError):
        return None


class _StepRecorder:
    """F for torchdiffeq, counting its calls and keeping, for every accepted step, its start,
    start state, first and last stage derivatives and midpoint state.

    The stages are torchdiffeq's calls between its step and accept callbacks; the first stage
    of a step is the last of the step before (or F at the start), as torchdiffeq reuses it.
    """

    def __init__(self, F: ODEFunc, mid: list[float], direction: float) -> None:
        self.F, self.mid, self.direction, self.calls = F, mid, direction, 0
        self.first: Tensor | None = None
        self.stages: list[Tensor] = []
        self.starts: list[Tensor] = []
        self.states: list[Tensor] = []
        self.slopes_start: list[Tensor] = []
        self.slopes_end: list[Tensor] = []
        self.midpoints: list[Tensor] = []

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        f = self.F(t, y)
        if self.first is None:
            self.first = f  # torchdiffeq's first call: F(t0, y0)
        else:
            self.stages.append(f)
        return f

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.stages = []

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        if self.first is None or len(self.stages) != len(self.mid) - 1:
            raise RuntimeError(
                f"torchdiffeq took {len(self.stages)} stages in a step where its midpoint weights expect "
                f"{len(self.mid) - 1}: this torchdiffeq's dense output is not supported"
            )
        width = (dt * self.direction).to(y0.dtype)  # a decreasing solve runs forwards in -t
        slopes = [self.first, *self.stages]
        weighted = sum((w * f for w, f in zip(self.mid, slopes) if w != 0.0), torch.zeros_like(y0))
        self.starts.append(t0.detach().clone())
        self.states.append(y0.detach())
        self.slopes_start.append(self.first.detach())
        self.slopes_end.append(self.stages[-1].detach())
        self.midpoints.append((y0 + width * weighted).detach())
        self.first = self.stages[-1]


class _Interpolant:
    """torchdiffeq's dense output on recorded steps: on each, the quartic in the step fraction x
    that takes the start and end states at x = 0 and 1, the midpoint state at x = 1/2, and the
    slopes (times the width) at both ends."""

    def __init__(self, steps: Tensor, recorder: _StepRecorder, y_end: Tensor, direction: float) -> None:
        self.steps, self.recorder, self.direction = steps, recorder, direction
        self.ends = [*recorder.states[1:], y_end.detach()]

    def __call__(self, times: Tensor) -> Tensor:
        rec, steps = self.recorder, self.steps
        along = (steps - steps[0]) * self.direction
        index = torch.searchsorted(along[1:], (times - steps[0]) * self.direction).clamp(max=len(rec.states) - 1)
        y0 = rec.states[0]
        out = y0.new_empty((times.numel(), *y0.shape))
        for step in index.unique().tolist():
            chosen = (index == step).nonzero().squeeze(1)
            width = steps[step + 1] - steps[step]
            x = ((times[chosen] - steps[step]) / width).to(device=y0.device, dtype=y0.dtype)
            x = x.reshape(-1, *([1] * y0.dim()))
            start, end, middle = rec.states[step], self.ends[step], rec.midpoints[step]
            d0 = float(width) * rec.slopes_start[step]
            d1 = float(width) * rec.slopes_end[step]
            a = 2 * (d1 - d0) - 8 * (end + start) + 16 * middle
            b = 5 * d0 - 3 * d1 + 18 * start + 14 * end - 32 * middle
            c = d1 - 4 * d0 - 11 * start - 5 * end + 16 * middle
            out[chosen.to(y0.device)] = start + x * (d0 + x * (c + x * (b + x * a)))
        return out


#: The methods registered as presets under their own names.
PRESETS = [m for m in METHODS if m not in _TAKEN]


@hookimpl
def register_ode_solvers(register):
    register(Torchdiffeq)
    for method in PRESETS:
        register(Torchdiffeq, name=method, method=method)
