"""Predictor-corrector and probability-flow ODE sampling over any time grid.

What the samplers do, exactly (see docs/sampling.md, "Samplers"):

- The grid is decreasing from T to eps; by default ``uniform_grid(T, eps, steps)``, so
  every predictor step has the true spacing (T - eps) / steps. ``grid`` takes a tensor
  of times or a registered TimeGrid by name (``"logsnr"``, ``"edm"``, ...).
- ``order="predictor_first"`` (the paper's Algorithm 1): at each step the predictor
  moves from t_i to t_{i+1}, then the corrector runs at t_{i+1}.
  ``order="corrector_first"`` (the paper's code): the corrector runs at t_i, then the
  predictor moves to t_{i+1}.
- ``denoise=True`` ends with the paper's final denoising step at eps: for a LinearSDE
  Tweedie's formula x0 = (x + sigma^2 s(x, eps)) / alpha, otherwise one noise-free
  reverse-diffusion step from eps to 0.
- Predictors carry their state explicitly: ``state = predictor.init(x, grid)`` once per
  run, then ``x, state = predictor.step(..., state, generator, jumped=...)``, with
  ``jumped=True`` when a corrector or a constraint moved x since the previous step.
- ``callback``, if given, is called once per step as k-diffusion's samplers call theirs:
  ``callback({"x": x, "i": i, "t": t, "denoised": denoised})`` with the state x at
  t = grid[i] that step i starts from and the data prediction (Tweedie's formula, for a
  LinearSDE; None otherwise) of the step's first score evaluation, at no extra cost.
- The non-finite check costs no host-device sync per step: one sum of the state per
  check stays on the device and the sums are tested once at the end; the error says at
  which step, time and part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import attrs
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sdeplug.conditioning import evaluations_per_call, num_classes
from sdeplug.errors import NonFiniteError, PluginError, SdeplugError
from sdeplug.grids import GridSpec, end_time, resolve_grid
from sdeplug.interfaces import SDE, Corrector, LinearSDE, ODESolver, Predictor, ScoreFn
from sdeplug.registry import get_registry, part_name, resolve

Callback = Callable[[dict[str, Any]], None]
"""``callback({"x", "i", "t", "denoised"})``, called once per step (see the module docstring)."""


class Constraint(Protocol):
    """Applied by ``sample_pc`` after every update, at the time the state is at (e.g.
    ``sdeplug.guidance.Replacement``); ``final`` after the last denoising step."""

    def __call__(self, x: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor: ...

    def final(self, x: Tensor) -> Tensor: ...


@attrs.frozen
class SampleResult:
    """Samples, the number of score evaluations spent on them, and the grid used.

    ``network_evaluations`` counts the network's forward passes per sample: ``nfe`` times the
    score's cost per call (2 for a guided score, whose evaluations share one batch).
    """

    x: Tensor
    nfe: int
    grid: Tensor | None = None
    network_evaluations: int | None = None


def check_unbound(score: ScoreFn) -> None:
    """Refuse a conditional model passed without its labels: samplers call score(x, t)."""
    classes = num_classes(score)
    if classes is not None:
        raise ValueError(
            f"the score model is conditional ({classes} classes) and needs labels: pass "
            "sdeplug.Conditioned(model, labels), a guidance such as sdeplug.classifier_free_guidance(model, "
            "labels, w), or Conditioned(model, sdeplug.NULL_LABEL) for the unconditional score"
        )


class CountingScore:
    """Wraps a score function: counts calls, checks the first output's shape and, when asked
    (``watch``), keeps the first evaluation after each ``watch`` for a callback's ``denoised``."""

    def __init__(self, score: ScoreFn) -> None:
        self.score = score
        self.calls = 0
        self.per_call = evaluations_per_call(score)
        self.watching = False
        self.first: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def evaluations(self) -> int:
        """Network evaluations per sample so far."""
        return self.calls * self.per_call

    def watch(self) -> None:
        """Keep the next evaluation's (x, t, score)."""
        self.watching, self.first = True, None

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        try:
            out = self.score(x, t)
        except Exception as exc:  # the score's own error, not the part's that called it
            exc.sdeplug_raised_by_score = True  # type: ignore[attr-defined]
            raise
        if self.calls == 0 and getattr(out, "shape", None) != x.shape:
            wrong = ValueError(
                f"the score function returned shape {tuple(getattr(out, 'shape', ()))} for x of shape "
                f"{tuple(x.shape)}; a score must have the shape of x"
            )
            wrong.sdeplug_raised_by_score = True  # type: ignore[attr-defined]
            raise wrong
        self.calls += 1
        if self.watching:
            self.watching, self.first = False, (x, t, out)
        return out

    def denoised(self, sde: SDE) -> Tensor | None:
        """Tweedie's data prediction of the kept evaluation (a LinearSDE only), else None."""
        if self.first is None or not isinstance(sde, LinearSDE):
            return None
        x, t, out = self.first
        return sde.data_prediction(x, t, out)


class FiniteMonitor:
    """Finds the first check at which the state was non-finite, with one host read at the end.

    Each check costs one reduction on the device: the sum of x, which is NaN or inf
    whenever any entry is (a sum of finite values overflowing would need entries near
    1e35). The sums are stacked and tested once in ``raise_if_bad``.
    """

    def __init__(self, parts: tuple[str, ...], enabled: bool = True, state: str = "the sampling state") -> None:
        self.parts, self.enabled, self.state = parts, enabled, state
        self._sums: list[Tensor] = []
        self._where: list[tuple[int, int, Tensor | float]] = []

    def check(self, x: Tensor, index: int, part: int, t: Tensor | float) -> None:
        if self.enabled:
            self._sums.append(x.sum())
            self._where.append((index, part, t))

    def raise_if_bad(self, describe_index) -> None:
        """One sync: raise NonFiniteError naming where, when and after which part."""
        if not self.enabled or not self._sums:
            return
        finite = torch.isfinite(torch.stack(self._sums))
        if bool(finite.all()):
            return
        index, part, t = self._where[int((~finite).nonzero()[0, 0])]
        raise NonFiniteError(describe_index(index), float(t), self.parts[part], self.state)


def describe_part(kind: str, part: object) -> str:
    """``kind 'name'`` with the plugin and distribution that registered the part, for errors."""
    registered = [info for info in get_registry().parts() if info.kind == kind and info.cls is type(part)]
    named = [info for info in registered if info.name == part_name(part)] or registered
    if named:
        return f"{kind} {named[0].name!r} (plugin {named[0].plugin!r}, {named[0].distribution})"
    cls = type(part)
    return f"{kind} {part_name(part)!r} ({cls.__module__}.{cls.__qualname__}, not registered)"


def raise_as_part_failure(exc: Exception, kind: str, part: object, method: str, t: Tensor | float) -> None:
    """Raise a PluginError naming the part and its plugin if ``exc`` is the part's own failure;
    return (for the caller to re-raise) if it is sdeplug's, or the score function's own error."""
    if isinstance(exc, SdeplugError) or getattr(exc, "sdeplug_raised_by_score", False):
        return
    raise PluginError(
        f"{describe_part(kind, part)} failed in {method}() at t = {float(t):.6g} with "
        f"{type(exc).__name__}: {exc}. This is a bug of that plugin or a limit of the part, not of sdeplug"
    ) from exc


def _check_tuned_for(grid: Any, predictor: Any) -> None:
    """A tuning result given as the grid is used with the predictor it was tuned for; its
    ``times`` tensor may be passed instead to use it with another."""
    tuned_for = getattr(grid, "predictor", None)
    if isinstance(tuned_for, str) and isinstance(getattr(grid, "times", None), Tensor):
        if tuned_for != part_name(predictor):
            raise ValueError(
                f"this grid was tuned for predictor {tuned_for!r}, not {part_name(predictor)!r}: tune one for it, "
                "or pass grid=result.times to use it anyway"
            )


def _make_grid(sde: SDE, steps: int, eps: float | None, grid: GridSpec, grid_options, device, dtype) -> Tensor:
    end = end_time(sde, eps) if not isinstance(grid, Tensor) else 0.0
    return resolve_grid(sde, grid, steps, end, grid_options=grid_options, device=device, dtype=dtype)


def _initial_state(sde, shape, x_init, generator, device, dtype) -> Tensor:
    if x_init is not None:
        if not bool(torch.isfinite(x_init).all()):
            raise ValueError("x_init contains NaN or inf")
        return x_init.to(device=device, dtype=dtype)
    if shape is None:
        raise ValueError("give the sample shape (batch, *event_shape) or x_init")
    return sde.prior_sampling(tuple(shape), generator, device, dtype)


def denoise_step(sde: SDE, score: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    """The final noise-free step at t = eps: Tweedie's formula for a LinearSDE, else reverse diffusion to 0."""
    if isinstance(sde, LinearSDE):
        return sde.data_prediction(x, t, score(x, t))
    rev_f, _ = sde.reverse(score).discretize(x, t, t)
    return x - rev_f


def check_generator(generator: object, device: torch.device | None = None) -> None:
    """A generator must be None or a torch.Generator, on the samples' ``device`` when it is given."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None; got {type(generator).__name__} {generator!r:.40}. "
            "For a seed, pass torch.Generator(device).manual_seed(seed)"
        )
    gen = generator.device
    if device is None:
        return
    if gen.type != device.type or (gen.index is not None and device.index is not None and gen.index != device.index):
        raise ValueError(
            f"the generator is on {gen} but the samples are on {device}; make it with torch.Generator({str(device)!r})"
        )


def check_real_floating(dtype: torch.dtype, what: str = "dtype") -> None:
    """Sampling and likelihoods need real floating-point numbers."""
    if not dtype.is_floating_point:
        raise TypeError(f"{what} must be a real floating-point dtype (float32, float64, ...); got {dtype}")


def check_batch(x: object, what: str) -> None:
    """``x`` must be a tensor of real floating-point numbers with at least one sample."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a tensor of shape (batch, *event_shape); got {type(x).__name__}")
    check_real_floating(x.dtype, f"{what}'s dtype")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{what} must hold at least one sample, shape (batch >= 1, *event_shape); got {tuple(x.shape)}"
        )


def _defaults(device, dtype, generator, x_init) -> tuple[torch.device, torch.dtype]:
    """The device and dtype of a run, from the arguments or what they follow, checked."""
    check_generator(generator)  # its type, before its device is read
    if device is None:
        device = x_init.device if x_init is not None else (generator.device if generator is not None else "cpu")
    if dtype is None:
        dtype = x_init.dtype if x_init is not None else torch.get_default_dtype()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {device!r} is not a torch device: {exc}") from None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype; got {dtype!r}")
    check_real_floating(dtype)
    check_generator(generator, device)
    return device, dtype


def _check_shape(shape: tuple[int, ...] | None, x_init: Tensor | None) -> None:
    """``shape`` is (batch >= 1, *event_shape) of non-negative ints, and agrees with ``x_init``."""
    if x_init is not None:
        check_batch(x_init, "x_init")
    if shape is None:
        return
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or not shape
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in shape)
        or shape[0] < 1
    ):
        raise ValueError(f"shape must be (batch, *event_shape) with batch >= 1 and sizes >= 0; got {shape!r}")
    if x_init is not None and tuple(shape) != tuple(x_init.shape):
        raise ValueError(f"shape {tuple(shape)} disagrees with x_init of shape {tuple(x_init.shape)}; give one of them")


@torch.no_grad()
def sample_pc(
    sde: SDE,
    score: ScoreFn,
    shape: tuple[int, ...] | None = None,
    *,
    predictor: str | type[Predictor] | Predictor = "reverse_diffusion",
    corrector: str | type[Corrector] | Corrector = "langevin",
    predictor_options: Mapping[str, Any] | None = None,
    corrector_options: Mapping[str, Any] | None = None,
    steps: int = 1000,
    eps: float | None = None,
    grid: GridSpec = None,
    grid_options: Mapping[str, Any] | None = None,
    order: Literal["predictor_first", "corrector_first"] = "predictor_first",
    denoise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x_init: Tensor | None = None,
    progress: bool = False,
    check_finite: bool = True,
    constraint: Constraint | None = None,
    callback: Callback | None = None,
) -> SampleResult:
    """Predictor-corrector sampling of the reverse SDE from the prior at T down to eps.

    ``predictor`` and ``corrector`` are registered names, classes or built parts; options
    for a name or class go in ``predictor_options`` and ``corrector_options``. ``grid`` is
    a registered TimeGrid (name, class or instance; options in ``grid_options``) placing
    ``steps`` + 1 times from T to eps, or a decreasing tensor of times that overrides
    ``steps`` and ``eps``. ``constraint`` (inpainting, linear measurements) is applied to
    the state after every update; ``callback`` is called once per step.
    """
    if order not in ("predictor_first", "corrector_first"):
        raise ValueError(f"order must be 'predictor_first' or 'corrector_first'; got {order!r}")
    _check_shape(shape, x_init)
    check_unbound(score)
    device, dtype = _defaults(device, dtype, generator, x_init)
    counted = CountingScore(score)
    pred = resolve("predictor", predictor, sde, counted, options=predictor_options)
    corr = resolve("corrector", corrector, sde, counted, options=corrector_options)
    _check_tuned_for(grid, pred)
    times = _make_grid(sde, steps, eps, grid, grid_options, device, dtype)
    corr = corr.for_grid(times)
    x = _initial_state(sde, shape, x_init, generator, device, dtype)
    n_steps, batch = len(times) - 1, x.shape[0]
    if constraint is not None:
        x = constraint(x, times[0].expand(batch), generator)
    monitor = FiniteMonitor(
        (f"predictor {part_name(pred)!r}", f"corrector {part_name(corr)!r}", "final denoising step"),
        check_finite,
    )
    corrector_first = order == "corrector_first"
    corrects = not getattr(corr, "identity", False)  # an identity corrector leaves x as it was checked
    state = pred.init(x, times)
    jumped = False  # whether a corrector or a constraint moved x since the last predictor step

    def correct(x: Tensor, t: Tensor) -> Tensor:
        try:
            x = corr.step(x, t, generator)
        except Exception as exc:
            raise_as_part_failure(exc, "corrector", corr, "step", t[0])
            raise
        return x if constraint is None else constraint(x, t, generator)

    points = times.unbind()
    batch_times = [t.expand(batch) for t in points]  # views, made once per run
    steps_taken = tqdm(range(n_steps), desc="sampling", leave=False) if progress else range(n_steps)
    for i in steps_taken:
        t, t_next = batch_times[i], batch_times[i + 1]
        if corrector_first and corrects:
            x, jumped = correct(x, t), True
            monitor.check(x, i, 1, points[i])
        if callback is not None:
            x_start = x
            counted.watch()
        try:
            x, state = pred.step(x, t, t_next, state, generator, jumped=jumped)
        except Exception as exc:
            raise_as_part_failure(exc, "predictor", pred, "step", times[i])
            raise
        counted.watching = False  # the predictor's evaluations only: None if it made none
        jumped = constraint is not None
        if constraint is not None:
            x = constraint(x, t_next, generator)
        monitor.check(x, i + 1, 0, points[i + 1])
        if not corrector_first and corrects:
            x, jumped = correct(x, t_next), True
            monitor.check(x, i + 1, 1, points[i + 1])
        if callback is not None:
            callback({"x": x_start, "i": i, "t": times[i], "denoised": counted.denoised(sde)})
    if denoise:
        x = denoise_step(sde, counted, x, times[-1].expand(batch))
        monitor.check(x, n_steps, 2, times[-1])
    if constraint is not None:
        x = constraint.final(x)
    monitor.raise_if_bad(lambda i: f"step {i} of {n_steps}")
    return SampleResult(x=x, nfe=counted.calls, grid=times, network_evaluations=counted.evaluations)


def probability_flow(sde: SDE, score: ScoreFn, batch: int):
    """F(t, x) = f(x, t) - g(t)^2 s(x, t) / 2 with t a 0-dim tensor, for an ODESolver."""
    reverse = sde.reverse(score, probability_flow=True)

    def F(t: Tensor, x: Tensor) -> Tensor:
        return reverse.drift(x, t.expand(batch))

    return F


@torch.no_grad()
def sample_ode(
    sde: SDE,
    score: ScoreFn,
    shape: tuple[int, ...] | None = None,
    *,
    solver: str | type[ODESolver] | ODESolver = "heun",
    solver_options: Mapping[str, Any] | None = None,
    steps: int | None = None,
    eps: float | None = None,
    grid: GridSpec = None,
    grid_options: Mapping[str, Any] | None = None,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x_init: Tensor | None = None,
    check_finite: bool = True,
    callback: Callback | None = None,
) -> SampleResult:
    """Sample by integrating the probability-flow ODE from T down to eps with an ODESolver.

    ``solver`` is a registered name, a class or a built solver. Fixed-step solvers step
    through ``grid`` (a tensor, or a TimeGrid placing ``steps`` times, by default the
    solver's own ``steps`` option), or through ``uniform_grid(T, eps, steps)`` when only
    ``steps`` is given, or their own uniform grid; adaptive ones choose their own steps
    between the grid's ends. ``callback`` is called at every evaluation of the flow, with
    ``i`` the evaluation's number (an adaptive solver's rejected trials included).
    """
    _check_shape(shape, x_init)
    check_unbound(score)
    device, dtype = _defaults(device, dtype, generator, x_init)
    ode_solver = resolve("ode_solver", solver, options=solver_options)
    counted = CountingScore(score)
    x = _initial_state(sde, shape, x_init, generator, device, dtype)
    batch = x.shape[0]
    if grid is not None and not isinstance(grid, Tensor) and steps is None:
        steps = getattr(ode_solver, "steps", None)
        if steps is None:
            raise ValueError(f"a grid given by name ({grid!r}) needs steps, and this solver has no steps option")
    times = (
        _make_grid(sde, steps, eps, grid, grid_options, device, dtype)
        if (grid is not None or steps is not None)
        else None
    )
    t0, t1 = (float(times[0]), float(times[-1])) if times is not None else (sde.T, end_time(sde, eps))
    monitor = FiniteMonitor(
        (f"ODE solver {part_name(solver if isinstance(solver, str) else ode_solver)!r}", "final denoising step"),
        check_finite,
    )
    flow = probability_flow(sde, counted, batch)

    def F(t: Tensor, y: Tensor) -> Tensor:
        monitor.check(y, counted.calls, 0, t)
        if callback is None:
            return flow(t, y)
        i = counted.calls
        counted.watch()
        dy = flow(t, y)
        callback({"x": y, "i": i, "t": t, "denoised": counted.denoised(sde)})
        return dy

    try:
        x = ode_solver.solve(F, x, t0, t1, grid=times).y
    except Exception as exc:  # e.g. torchdiffeq's "underflow in dt" after the state went non-finite
        monitor.raise_if_bad(lambda i: f"score evaluation {i}")
        raise_as_part_failure(exc, "ode_solver", ode_solver, "solve", t0)
        raise
    monitor.check(x, counted.calls, 0, torch.as_tensor(t1))
    if denoise:
        x = denoise_step(sde, counted, x, torch.full((batch,), t1, device=device, dtype=dtype))
        monitor.check(x, counted.calls, 1, torch.as_tensor(t1))
    monitor.raise_if_bad(lambda i: f"score evaluation {i}")
    return SampleResult(x=x, nfe=counted.calls, grid=times, network_evaluations=counted.evaluations)


def steps_for_budget(
    sde: SDE,
    nfe: int,
    event_shape: tuple[int, ...],
    *,
    predictor: Any = "reverse_diffusion",
    predictor_options: Mapping[str, Any] | None = None,
    corrector: Any = "langevin",
    corrector_options: Mapping[str, Any] | None = None,
    denoise: bool = True,
    eps: float | None = None,
) -> int:
    """The most steps ``sample_pc`` can take with these parts within ``nfe`` score evaluations
    per sample: corrector steps, the final denoising step and a free first step counted as
    they are spent. Found by sampling one draw of a unit Gaussian at a few step counts."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer (score evaluations per sample); got {nfe!r}")

    def spent(steps: int) -> int:
        return sample_pc(
            sde, lambda x, t: -x, (1, *event_shape), predictor=predictor, predictor_options=predictor_options,
            corrector=corrector, corrector_options=corrector_options, steps=steps, denoise=denoise, eps=eps,
            generator=torch.Generator().manual_seed(0), dtype=torch.float64, check_finite=False,
        ).nfe  # fmt: skip

    per_step = spent(3) - spent(2)
    if per_step < 1:
        raise ValueError(
            f"predictor {part_name(predictor)!r} spends no score evaluation per step; nfe cannot set its steps"
        )
    fixed = spent(2) - 2 * per_step
    steps = (nfe - fixed) // per_step
    while steps >= 1 and spent(steps) > nfe:  # a predictor whose cost is not linear in the steps
        steps -= 1
    if steps < 1:
        raise ValueError(
            f"nfe = {nfe} is too few for these parts: one step spends {spent(1)} score evaluations per sample"
        )
    return int(steps)
