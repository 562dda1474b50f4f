"""The predictor contract: one short step from exact samples, the law of a mixture with the exact
score, and the declared weak and probability-flow orders.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sdeplug.grids import log_snr_grid
from sdeplug.interfaces import (
    SDE,
    LinearSDE,
    Predictor,
)
from sdeplug.oracle import GaussianMixture
from sdeplug.sampling import sample_pc
from sdeplug.stats import assert_same_law
from sdeplug.testing.exact import (
    _check_cases,
    _check_identity,
    _check_step_interface,
    _check_times,
    _exact_samples,
    _gaussian_marginal,
    _gaussian_score,
    _probe_step,
)
from sdeplug.testing.kit_base import (
    ContractReport,
    _fail,
    _mixture_and_null,
    _unit_gaussian_score,
    observed_order,
    order_mark,
)

F64 = torch.float64


def check_predictor(
    spec: Any,
    *,
    sdes: Sequence[Any] | None = None,
    steps: int = 500,
    options: dict[str, Any] | None = None,
    local_sdes: Sequence[Any] = (),
) -> ContractReport:
    """Shapes and dtypes, the explicit state, seeded determinism, one short step that carries
    p_t to p_t_next, the right law with the exact score, and the orders the built part
    declares (``weak_order``, ``ode_order``) on Gaussian problems with a known solution; for
    its options as given, or else its defaults and each set its ``example_options()`` declares."""
    return _check_cases(
        "predictor", spec, sdes, options, local_sdes, functools.partial(_check_predictor_on, steps=steps)
    )


def _check_predictor_on(
    name: str,
    cls: type,
    options: dict[str, Any],
    sde: SDE,
    label: str,
    report: ContractReport,
    *,
    steps: int,
    local_only: bool = False,
) -> None:
    mixture, null = _mixture_and_null()
    score = mixture.score_model(sde)
    gaussian = cls(sde, _unit_gaussian_score(sde), **options)  # any event shape
    where = f"predictor {name!r} with {label}"
    _check_step_interface(sde, lambda x, t, g, part=gaussian, at=where: _first_step(part, x, t, g, at), where)
    if getattr(gaussian, "identity", False):
        _check_identity(lambda x, t, part=gaussian, at=where: _first_step(part, x, t, None, at), f"predictor {name!r}")
        report.passed.append(f"{label}: shapes, dtypes, leaves x unchanged (declared identity)")
        return
    _probe_step(
        lambda x, t, g, part=gaussian, at=where: _first_step(part, x, t, g, at), gaussian, sde, where, label, report
    )
    _check_one_step(cls, sde, options, where)
    report.passed.append(f"{label}: one short step carries p_t to p_t_next (mean and variance within 5%)")
    if isinstance(sde, LinearSDE):
        _check_score_times(cls, sde, options, where)
        report.passed.append(
            f"{label}: over {SCORE_TIME_STEPS} large steps, never evaluates the score of the x it was given at a "
            "time below x's own"
        )
    if local_only:
        return
    # From exact samples of p_T, not prior_sampling: the predictor is on trial, and an SDE
    # built with example options need not make its prior match p_T of this data.
    generator = torch.Generator().manual_seed(0)
    result = sample_pc(
        sde,
        score,
        predictor=cls,
        predictor_options=options,
        corrector="none",
        steps=steps,
        x_init=mixture.sample(null.n, generator, sde, sde.T),
        generator=generator,
        dtype=F64,
    )
    try:
        assert_same_law(result.x, lambda k, g: mixture.sample(k, g), null=null)
    except AssertionError as exc:
        _fail(
            f"{where}, {steps} steps and the exact score does not recover the data "
            f"law: {exc}. Its step does not follow the reverse SDE from t to t_next."
        )
    report.passed.append(f"{label}: shapes, dtypes, seeded determinism, recovers the data law in {steps} steps")
    declared = getattr(gaussian, "weak_order", None)
    if declared is not None:
        observed, errors = weak_order(cls, sde, options)
        if observed < order_mark(declared):
            _fail(
                f"{where}: observed weak order {observed:.2f} is below {order_mark(declared):.2f}, the pass mark "
                f"of its declared weak_order {declared:g} (relative errors {', '.join(f'{e:.2e}' for e in errors)} at "
                f"{', '.join(map(str, WEAK_ORDER_STEPS))} steps): the step is of a lower order than claimed, "
                "or inconsistent"
            )
        report.passed.append(f"{label}: observed weak order {observed:.2f} (declared {declared:g})")
    else:
        report.skipped.append(f"{label}: weak order (none declared)")
    declared = getattr(gaussian, "ode_order", None)
    if declared is not None:
        observed, errors = ode_order(cls, sde, options)
        if observed < order_mark(declared):
            _fail(
                f"{where}: observed order {observed:.2f} on the probability-flow ODE is below "
                f"{order_mark(declared):.2f}, the pass mark of its declared ode_order {declared:g} (largest errors "
                f"against the exact flow {', '.join(f'{e:.2e}' for e in errors)} at "
                f"{', '.join(map(str, ODE_ORDER_STEPS))} steps uniform in log-SNR): a term of the step is "
                "missing or mis-weighted"
            )
        report.passed.append(
            f"{label}: observed order {observed:.2f} on the probability-flow ODE (declared {declared:g})"
        )


#: Samples, length in log-SNR and tolerance of the one-step check.
ONE_STEP_SAMPLES, ONE_STEP_LOG_SNR, ONE_STEP_TOLERANCE = 100_000, 0.1, 0.05


def _check_one_step(cls: type, sde: LinearSDE, options: dict[str, Any], where: str) -> None:
    """One step, over a grid of that step alone, from exact samples of p_t for Gaussian data to
    t_next (log-SNR 0.1 higher): mean and variance of p_t_next within 5%. Consistent steps are
    within a fraction of a percent; a wrong noise scale or a score at the wrong time is off by
    tens of percent, even where the multi-step checks average it away."""
    for t, t_next, ratio, shift in one_step_errors(cls, sde, options):
        if not (abs(ratio - 1) <= ONE_STEP_TOLERANCE and abs(shift) <= ONE_STEP_TOLERANCE):
            _fail(
                f"{where}: one step of step() from exact samples of p_t at t = {t:.4g} to t_next = {t_next:.4g} "
                f"(Gaussian data, exact score, {ONE_STEP_SAMPLES} samples) gives variance {ratio:.3g} times "
                f"that of p_t_next and a mean {shift:+.3g} of its std off (a correct step is within "
                f"{ONE_STEP_TOLERANCE:.0%}): check the scale of the noise the step adds (a std, not a variance) "
                "and the time at which it evaluates the score (the noise level x has when it is evaluated)"
            )


def one_step_errors(
    cls: type, sde: LinearSDE, options: dict[str, Any] | None = None, seed: int = 1
) -> list[tuple[float, float, float, float]]:
    """The one-step check's measurements at each of its times: (t, t_next, the variance after the
    step over p_t_next's, the mean's offset in p_t_next's stds); ``seed`` seeds the step's noise."""
    score = _gaussian_score(sde)
    rows = []
    for t in _check_times(sde):
        log_snr = sde.log_snr(torch.tensor([t], dtype=F64))
        t_next = float(sde.t_from_log_snr(log_snr + ONE_STEP_LOG_SNR))
        if not 0 < t_next < t:  # log-SNR 0.1 higher lies beyond t = 0
            t_next = 0.5 * t
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options or {},
            corrector="none",
            grid=torch.tensor([t, t_next], dtype=F64),
            denoise=False,
            x_init=_exact_samples(sde, t, ONE_STEP_SAMPLES),
            generator=torch.Generator().manual_seed(seed),
            dtype=F64,
        ).x
        mean, var = _gaussian_marginal(sde, t_next)
        rows.append((t, t_next, float(x.var()) / var, (float(x.mean()) - mean) / math.sqrt(var)))
    return rows


#: Steps of the grid, uniform in log-SNR over [eps, T], on which the score's times are watched.
SCORE_TIME_STEPS = 5


def _check_score_times(cls: type, sde: LinearSDE, options: dict[str, Any], where: str) -> None:
    """Over a few large steps, the score of the very x a step was given is never evaluated at a
    time below t, the noise level x is at: that is the score at t_next (an off-by-one in time),
    which small steps hide and large steps pay for many times over. Evaluations at other points
    (a stage's intermediate x, x with churn noise added) may be at any time."""
    exact = _gaussian_score(sde)
    calls: list[tuple[Tensor, Tensor]] = []

    def watched(x: Tensor, t: Tensor) -> Tensor:
        calls.append((x.detach().clone(), torch.as_tensor(t).detach().clone()))
        return exact(x, t)

    part = cls(sde, watched, **options)
    grid = log_snr_grid(sde, SCORE_TIME_STEPS, sde.default_eps).to(F64)
    x = _exact_samples(sde, float(grid[0]), 64)
    state = part.init(x, grid)
    generator = torch.Generator().manual_seed(0)
    for k in range(SCORE_TIME_STEPS):
        t, t_next = grid[k].expand(len(x)), grid[k + 1].expand(len(x))
        calls.clear()
        x_next, state = part.step(x, t, t_next, state, generator, jumped=False)
        below = t - 1e-3 * (t - t_next)  # a time within rounding of t (T - (T - t)) is t
        for at_x, at_t in calls:
            if at_x.shape == x.shape and torch.equal(at_x, x) and bool((at_t.to(F64) < below).any()):
                _fail(
                    f"{where}: step {k + 1} of {SCORE_TIME_STEPS} (a grid uniform in log-SNR), from "
                    f"t = {float(t[0]):.4g} to t_next = {float(t_next[0]):.4g}, evaluates the score of the x it was "
                    f"given at t = {float(at_t.reshape(-1)[0]):.4g}, below t: x is at noise level t, so its score is "
                    "score(x, t); score(x, t_next) is the time off by one step"
                )
        x = x_next


def _first_step(part: Predictor, x: Tensor, t: Tensor, generator, where: str) -> Tensor:
    """One step from t to t - 0.01 through the explicit-state protocol: init, then step."""
    t_next = t - 0.01
    state = part.init(x, torch.stack([t[0], t_next[0]]))
    out = part.step(x, t, t_next, state, generator, jumped=False)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
        _fail(
            f"{where}: step(x, t, t_next, state, generator, jumped=...) must return (x, state); got "
            f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}"
        )
    return out[0]


#: Step counts at which weak_order measures the error.
WEAK_ORDER_STEPS: tuple[int, ...] = (8, 16, 32, 64)


def weak_order(
    cls: type[Predictor],
    sde: SDE,
    options: dict[str, Any] | None = None,
    steps: Sequence[int] = WEAK_ORDER_STEPS,
    n: int = 100_000,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """Observed weak order on Gaussian data: from exact samples of p_T down to t = 0.2, the
    relative error of the mean and variance against the exact p_0.2; the order is ``observed_order``."""
    data = GaussianMixture([1.0], [[0.3]], stds=[0.5])
    score = data.score_model(sde)
    t_end = _weak_order_end(sde)
    tt = torch.tensor([t_end], dtype=F64)
    alpha, sigma = (float(sde.alpha(tt)), float(sde.sigma(tt))) if isinstance(sde, LinearSDE) else (None, None)
    exact_mean, exact_var = alpha * 0.3, alpha**2 * 0.25 + sigma**2
    errors = []
    # Common to every step count, and moment-matched to p_T exactly: what remains is the
    # discretisation error (plus the noise a stochastic step injects).
    x_T = data.sample(n, torch.Generator().manual_seed(seed), sde, sde.T)
    t_T = torch.tensor([sde.T], dtype=F64)
    alpha_T, sigma_T = float(sde.alpha(t_T)), float(sde.sigma(t_T))
    x_T = (x_T - x_T.mean()) / x_T.std() * math.sqrt(alpha_T**2 * 0.25 + sigma_T**2) + alpha_T * 0.3
    for k in steps:
        g = torch.Generator().manual_seed(seed * 1000 + k)
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options or {},
            corrector="none",
            steps=k,
            eps=t_end,
            denoise=False,
            x_init=x_T,
            generator=g,
            dtype=F64,
        ).x
        errors.append(abs(float(x.var()) / exact_var - 1) + abs(float(x.mean()) - exact_mean) / math.sqrt(exact_var))
    return observed_order(steps, errors), errors


def _weak_order_end(sde: SDE) -> float:
    """Where the weak-order runs stop: at 0.2 T, or earlier where the noise std has fallen to
    the signal's scale (sigma = alpha), so that the data's part of p_t is not lost in noise
    (for sigma(t) = t up to T = 80, 0.2 T would stop where p_t is the prior to 1e-3)."""
    if not isinstance(sde, LinearSDE):
        return 0.2 * sde.T
    equal = float(sde.t_from_log_snr(torch.zeros(1, dtype=F64)))
    return min(0.2 * sde.T, equal)


#: Step counts at which ode_order measures the error.
ODE_ORDER_STEPS: tuple[int, ...] = (32, 64, 128, 256)


def ode_order(
    cls: type[Predictor], sde: SDE, options: dict[str, Any] | None = None, steps: Sequence[int] = ODE_ORDER_STEPS
) -> tuple[float, list[float]]:
    """Observed order of a deterministic predictor on the probability-flow ODE of Gaussian
    data N(0.3, 0.5^2), whose flow is known exactly: x_t = a_t m + (S_t / S_T)(x_T - a_T m)
    with S_t^2 = a_t^2 v + sigma_t^2. From 65 points spread over p_T down to the SDE's eps,
    on grids uniform in log-SNR; the largest error per step count, the order by ``observed_order``."""
    if not isinstance(sde, LinearSDE):
        raise TypeError("ode_order needs a LinearSDE: the exact flow comes from alpha(t) and sigma(t)")
    mean, var = 0.3, 0.25
    data = GaussianMixture([1.0], [[mean]], stds=[math.sqrt(var)])
    score = data.score_model(sde)
    t_end = sde.default_eps

    def spread(t: float) -> tuple[float, float]:
        tt = torch.tensor([t], dtype=F64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        return a, math.sqrt(a**2 * var + s**2)

    (a_T, S_T), (a_end, S_end) = spread(sde.T), spread(t_end)
    x_T = a_T * mean + S_T * torch.linspace(-3, 3, 65, dtype=F64)[:, None]
    exact = a_end * mean + (S_end / S_T) * (x_T - a_T * mean)
    errors = []
    for k in steps:
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options or {},
            corrector="none",
            grid=log_snr_grid(sde, k, t_end),
            denoise=False,
            x_init=x_T,
            dtype=F64,
        ).x
        errors.append(float((x - exact).abs().max() / S_end))
    return observed_order(steps, errors), errors
