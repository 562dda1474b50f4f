"""The ODE-solver contract: exactly solvable ODEs both ways, orders, dense output, stability."""

from __future__ import annotations

import math
from typing import Any

import torch

from sdeplug.registry import part_options
from sdeplug.testing.kit_base import ContractReport, _devices, _fail, _resolve, observed_order, order_mark

F64 = torch.float64


def check_ode_solver(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Exactly solvable ODEs forwards and backwards in float32 and float64, the function
    evaluations it reports, and for fixed-step solvers the order the built solver declares."""
    name, cls, options = _resolve("ode_solver", spec, options)
    report = ContractReport(f"ode_solver {name!r}")
    solver = cls(**options)
    order, adaptive = getattr(solver, "order", None), bool(getattr(solver, "adaptive", False))
    accepted = part_options(cls) or {}
    for device in _devices():
        for dtype in (torch.float32, F64):
            tuned = solver
            tunable = adaptive and {"rtol", "atol"} <= accepted.keys()
            if tunable:
                tuned = cls(**{**options, "rtol": ADAPTIVE_TOL[dtype], "atol": ADAPTIVE_TOL[dtype]})
            errors = [
                _check_known_ode(tuned, name, order, adaptive, dtype, device, t0, t1)
                for t0, t1 in ((0.0, 1.5), (1.5, 0.2))
            ]
            if tunable and dtype == F64:
                loose = cls(**{**options, "rtol": ADAPTIVE_LOOSE_TOL, "atol": ADAPTIVE_LOOSE_TOL})
                _check_convergence(loose, errors[0], name, device)
            for t0, t1 in ((0.0, 1.0), (1.0, 0.0)):
                _check_stable_decay(solver, name, adaptive, dtype, device, t0, t1)
            if getattr(tuned, "dense_output", False):
                for t0, t1 in ((0.0, 1.5), (1.5, 0.2)):
                    _check_dense_output(tuned, name, dtype, device, t0, t1)
    report.passed.append(
        "dy/dt = -t y forwards and backwards, float32 and float64, with its NFE"
        + (
            f" (adaptive: within {ADAPTIVE_ERROR[F64]:g} at rtol = atol = {ADAPTIVE_TOL[F64]:g} in float64, and "
            f"{ADAPTIVE_GAIN:g}x closer than at {ADAPTIVE_LOOSE_TOL:g})"
            if adaptive
            else ""
        )
    )
    if getattr(solver, "dense_output", False):
        report.passed.append("dense output: accepted steps from t0 to t1, and the states within them, with their NFE")
    else:
        report.skipped.append("dense output: not offered")
    report.passed.append("stable on a decaying ODE (rate 5, 100 steps) forwards and backwards")
    if not adaptive and order is not None:
        observed = _observed_order(solver)
        if observed < order_mark(order):
            _fail(
                f"ode_solver {name!r}: observed order {observed:.2f} on dy/dt = cos(t) y "
                f"({', '.join(map(str, SOLVER_ORDER_STEPS))} steps) is below {order_mark(order):.2f}, the pass mark "
                f"of its declared order {order}"
            )
        report.passed.append(f"observed order {observed:.2f} (declared {order})")
    else:
        report.skipped.append("order of convergence: adaptive, or no order declared")
    return report


#: An adaptive solver's tolerances (rtol = atol) in the accuracy checks, per dtype, and the error
#: allowed there: a thousand times the tolerance, what error control per step leaves of the global
#: error on a smooth problem. The accuracy contract is in float64; float32 only has to keep its
#: dtype and stay sane.
ADAPTIVE_TOL = {torch.float32: 1e-5, F64: 1e-7}
ADAPTIVE_ERROR = {torch.float32: 1e-2, F64: 1e-4}
#: The looser float64 tolerance the tight one is compared with, and the least factor by which the
#: error must shrink from it: a hundredfold tighter tolerance leaves an error proportional to it
#: (or to its power p / (p + 1) for order p) about 20 to 100 times smaller; a solver whose error
#: control does nothing leaves the same error.
ADAPTIVE_LOOSE_TOL, ADAPTIVE_GAIN = 1e-5, 5.0


def _check_convergence(loose, tight_error: float, name, device) -> None:
    """The end state's error on dy/dt = -t y from 0 to 1.5 must shrink as rtol and atol tighten a
    hundredfold (unless it is at float64 rounding already); ``tight_error`` is the tight solve's."""
    F = _KnownODE(F64, device)
    y = loose.solve(F, F.y0, 0.0, 1.5).y
    exact = F.y0 * math.exp(-(1.5**2) / 2)
    errors = [float(((y - exact).abs() / exact.abs()).max()), tight_error]
    if errors[1] > max(errors[0] / ADAPTIVE_GAIN, 1e-12):
        _fail(
            f"ode_solver {name!r} on {device}: tightening rtol = atol from {ADAPTIVE_LOOSE_TOL:g} to "
            f"{ADAPTIVE_TOL[F64]:g} took the relative error on dy/dt = -t y from {errors[0]:.2e} to {errors[1]:.2e} "
            f"(it must shrink at least {ADAPTIVE_GAIN:g}x): the step-size control does not follow the tolerances"
        )


class _KnownODE:
    """dy/dt = -t y from a fixed y0, counting its calls: y(t) = y0 exp((t0^2 - t^2) / 2)."""

    def __init__(self, dtype, device) -> None:
        self.y0 = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=dtype, device=device)
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -t * y


def _check_known_ode(solver, name, order, adaptive, dtype, device, t0, t1) -> float:
    """The solve from t0 to t1 against the closed form: shape, dtype, NFE and accuracy; returns its
    relative error."""
    F = _KnownODE(dtype, device)
    y0 = F.y0
    grid = None if adaptive else torch.linspace(t0, t1, 401, dtype=dtype, device=device)
    solution = solver.solve(F, y0, t0, t1, grid=grid)
    exact = y0 * math.exp((t0**2 - t1**2) / 2)
    where = f"ode_solver {name!r} from t = {t0} to {t1} in {dtype} on {device}"
    if solution.y.shape != y0.shape or solution.y.dtype != dtype or solution.y.device.type != torch.device(device).type:
        _fail(
            f"{where}: solution of shape {tuple(solution.y.shape)}, {solution.y.dtype} for y0 of shape "
            f"{tuple(y0.shape)}, {dtype}"
        )
    if solution.nfe != F.calls:
        _fail(f"{where}: reported nfe = {solution.nfe} but F was called {F.calls} times")
    if adaptive:
        tol = ADAPTIVE_ERROR[dtype]
    else:
        tol = max(1e-3 if (order or 1) >= 2 else 2e-2, 1e-4 if dtype == torch.float32 else 0)
    error = float(((solution.y - exact).abs() / exact.abs()).max())
    if error > tol:
        _fail(
            f"{where}: relative error {error:.2e} against the exact solution y0 exp((t0^2 - t1^2) / 2) "
            f"(allowed {tol:g}{', 400 steps' if not adaptive else ''})"
        )
    return error


def _check_dense_output(solver, name, dtype, device, t0, t1) -> None:
    """solve_dense: the same end state as an exact solution, its accepted steps running from t0
    to t1, and states at the steps' midpoints (and t1) that match the exact solution."""
    F = _KnownODE(dtype, device)
    y0 = F.y0
    where = f"ode_solver {name!r} solve_dense from t = {t0} to {t1} in {dtype} on {device}"
    solution = solver.solve_dense(F, y0, t0, t1)
    if solution.nfe != F.calls:
        _fail(f"{where}: reported nfe = {solution.nfe} but F was called {F.calls} times")
    tol = ADAPTIVE_ERROR[dtype] if getattr(solver, "adaptive", False) else (1e-2 if dtype == torch.float32 else 1e-5)
    exact_end = y0 * math.exp((t0**2 - t1**2) / 2)
    end_error = float(((solution.y - exact_end).abs() / exact_end.abs()).max())
    if end_error > tol:
        _fail(f"{where}: relative error {end_error:.2e} of the end state against the exact solution (allowed {tol:g})")
    steps = solution.steps.detach().to("cpu", F64)
    direction = 1.0 if t1 > t0 else -1.0
    if (
        steps.dim() != 1
        or steps.numel() < 2
        or abs(float(steps[0]) - t0) > 1e-6
        or abs(float(steps[-1]) - t1) > 1e-6
        or not bool(((steps[1:] - steps[:-1]) * direction > 0).all())
    ):
        _fail(f"{where}: steps must run strictly from t0 to t1, both included; got {steps.tolist()}")
    times = torch.cat([(steps[:-1] + steps[1:]) / 2, steps[-1:]]).to(device=device, dtype=dtype)
    before = F.calls
    states, nfe = solution.states_at(times)
    if nfe != F.calls - before:
        _fail(f"{where}: states_at reported nfe = {nfe} but F was called {F.calls - before} times")
    if tuple(states.shape) != (times.numel(), *y0.shape):
        _fail(f"{where}: states_at gave shape {tuple(states.shape)} for {times.numel()} times and y0 {tuple(y0.shape)}")
    exact = y0 * torch.exp((t0**2 - times.to(F64) ** 2) / 2).to(dtype)[:, None, None]
    error = float(((states - exact).abs() / exact.abs()).max())
    if error > tol:
        _fail(f"{where}: states_at at the steps' midpoints is off by {error:.2e} relative (allowed {tol:g})")


def _check_stable_decay(solver, name, adaptive, dtype, device, t0, t1) -> None:
    """y decays by exp(-5) from t0 to t1 at rate 5 per unit time, as the probability flow's
    stiff directions do near t = 0; 100 steps (lambda h = 0.05) must not blow it up."""
    rate = 5.0 if t1 > t0 else -5.0
    y0 = torch.tensor([[1.0, -2.0]], dtype=dtype, device=device)
    grid = None if adaptive else torch.linspace(t0, t1, 101, dtype=dtype, device=device)
    y1 = solver.solve(lambda t, y: -rate * y, y0, t0, t1, grid=grid).y
    decay = float((y1 / y0).max()), float((y1 / y0).min())
    exact = math.exp(-5.0)
    if not (0.5 * exact <= decay[1] and decay[0] <= 1.5 * exact):
        _fail(
            f"ode_solver {name!r} from t = {t0} to {t1} in {dtype} on {device}: unstable on dy/dt = {-rate:g} y "
            f"with 100 steps; y(t1) / y(t0) = {decay[0]:.3g}, exactly exp(-5) = {exact:.3g}. A stiff direction "
            f"like this one is what the probability flow has near t = 0."
        )


#: Step counts over [0, 2] at which a fixed-step solver's order is measured: fine enough that
#: fourth-order methods are within a few percent of their order, coarse enough that their
#: float64 errors stay far above rounding.
SOLVER_ORDER_STEPS: tuple[int, ...] = (64, 128, 256, 512)


def _observed_order(solver) -> float:
    """The least-squares order of the error at t = 2 of dy/dt = cos(t) y, y(0) = 1 (exact: e^sin t)."""

    def error(steps: int) -> float:
        grid = torch.linspace(0.0, 2.0, steps + 1, dtype=F64)
        y = solver.solve(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=F64), 0.0, 2.0, grid=grid).y
        return abs(float(y) - math.exp(math.sin(2.0)))

    return observed_order(SOLVER_ORDER_STEPS, [error(k) for k in SOLVER_ORDER_STEPS])
