"""Time grids tuned to a model, an SDE and a deterministic predictor from a few pilot solves.

A tuned grid places its K + 1 times where the K-step solution lands closest to a
high-accuracy solve of the same probability-flow ODE from the same prior draws (the aim
of Sabour et al.'s "Align Your Steps" and Chen et al.'s GITS; the method here is ours):
coordinate descent over the interior times, each moved in log-SNR between its neighbours,
a move kept only when it lowers the pilot error. The ends stay at T and eps.

A grid is stored as the fractions of the log-SNR range its times sit at (0 at T, 1 at
eps; ``sdeplug.grids.save_grid_file``), so the registered ``tuned`` TimeGrid reproduces
it at its own step count and stretches it, piecewise linearly, to any other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import Tensor

from sdeplug.errors import NonFiniteError
from sdeplug.grids import GridSpec, check_steps, end_time, fractions_of, grid_from_fractions, resolve_grid
from sdeplug.interfaces import LinearSDE, ScoreFn
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.tensors import check_seed

F64 = torch.float64


@attrs.frozen(eq=False)
class TuningResult:
    """What ``tune_grid`` found, and what it cost."""

    #: The tuned times, T to eps (float64, CPU), and their log-SNR fractions.
    times: Tensor
    fractions: tuple[float, ...]
    #: The grid the search started from.
    start: Tensor
    #: RMS distance (per coordinate) to the reference solve, on the pilot draws and on fresh ones.
    pilot_error_start: float
    pilot_error: float
    fresh_error_start: float
    fresh_error: float
    #: Score evaluations (each on the whole pilot batch), the reference solves included.
    score_evaluations: int
    pilot: int
    seconds: float
    sweeps: int


class _Counted:
    def __init__(self, score: ScoreFn) -> None:
        self.score, self.calls = score, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score(x, t)


def tune_grid(
    sde: LinearSDE,
    score: ScoreFn,
    event_shape: tuple[int, ...],
    steps: int,
    *,
    predictor: Any = "dpmpp_2m",
    predictor_options: Mapping[str, Any] | None = None,
    start: GridSpec = "logsnr",
    start_options: Mapping[str, Any] | None = None,
    eps: float | None = None,
    denoise: bool = False,
    pilot: int = 256,
    seed: int = 0,
    reference_tolerance: float = 1e-6,
    sweeps: int = 4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = F64,
    progress: Callable[[str], None] | None = None,
) -> TuningResult:
    """Tune the ``steps`` + 1 times of a deterministic ``predictor`` for this SDE and score.

    ``pilot`` prior draws are solved once with dopri5 at ``reference_tolerance``; the
    grid's interior times then move, one at a time and in log-SNR between their
    neighbours, to where the ``steps``-step solution is closest to those solves (RMS over
    samples and coordinates). A sweep visits every interior time; the search stops after
    ``sweeps`` sweeps or when one gains less than 0.5%. The result is never worse than
    ``start`` on the pilot draws; ``fresh_error`` measures it on ``pilot`` new draws.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"tuned grids need a LinearSDE (alpha, sigma and log-SNR); got {type(sde).__name__}")
    steps = check_steps(steps)
    if isinstance(pilot, bool) or not isinstance(pilot, int) or pilot < 2:
        raise ValueError(f"pilot must be an integer >= 2 (prior draws); got {pilot!r}")
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps < 0:
        raise ValueError(f"sweeps must be an integer >= 0 (0 keeps the start grid); got {sweeps!r}")
    check_seed(seed)
    tolerance_is_number = isinstance(reference_tolerance, (int, float)) and not isinstance(reference_tolerance, bool)
    if not tolerance_is_number or not 0 < reference_tolerance < math.inf:
        raise ValueError(
            f"reference_tolerance must be a positive number (dopri5's rtol and atol for the reference solves); "
            f"got {reference_tolerance!r}"
        )
    began = time.perf_counter()
    eps = end_time(sde, eps)
    counted = _Counted(score)
    say = progress or (lambda message: None)

    def draws(offset: int) -> tuple[Tensor, Tensor]:
        generator = torch.Generator(device or "cpu").manual_seed(seed + offset)
        x_T = sde.prior_sampling((pilot, *event_shape), generator, device, dtype)
        reference = sample_ode(
            sde,
            counted,
            x_init=x_T,
            solver="dopri5",
            solver_options={"rtol": reference_tolerance, "atol": reference_tolerance},
            eps=eps,
            denoise=denoise,
        ).x
        return x_T, reference

    def solve(times: Tensor, x_T: Tensor, noise_seed: int = 0) -> Tensor:
        return sample_pc(
            sde,
            counted,
            predictor=predictor,
            predictor_options=predictor_options,
            corrector="none",
            grid=times,
            denoise=denoise,
            x_init=x_T,
            generator=torch.Generator(x_T.device).manual_seed(noise_seed),
        ).x

    def error(times: Tensor, x_T: Tensor, reference: Tensor) -> float:
        try:
            out = solve(times, x_T)
        except NonFiniteError:
            return math.inf
        return float(torch.sqrt(((out - reference).to(F64) ** 2).mean()))

    first = resolve_grid(sde, start, steps, eps, grid_options=start_options, dtype=F64).cpu()
    first[0], first[-1] = float(sde.T), float(eps)
    _check_deterministic(solve, first, sde, event_shape, device, dtype)
    say("solving the pilot draws accurately")
    x_T, reference = draws(0)
    fractions = fractions_of(sde, first)
    current = error(first, x_T, reference)
    start_error, done_sweeps = current, 0

    def times_at(fractions: list[float]) -> Tensor:
        return grid_from_fractions(sde, fractions, steps, eps)

    for sweep in range(sweeps):
        before = current
        for i in range(1, steps):
            fractions, current = _tune_one(i, fractions, current, lambda f: error(times_at(f), x_T, reference))
        done_sweeps = sweep + 1
        say(f"sweep {done_sweeps}: pilot RMS error {current:.4g} (start {start_error:.4g})")
        if not current < before * 0.995:
            break
    if current < start_error:
        tuned = times_at(fractions)
    else:  # nothing helped: the start, exactly
        tuned, fractions, current = first, fractions_of(sde, first), start_error
    say("checking on fresh draws")
    fresh_x, fresh_reference = draws(1)
    return TuningResult(
        times=tuned,
        fractions=tuple(fractions),
        start=first,
        pilot_error_start=start_error,
        pilot_error=current,
        fresh_error_start=error(first, fresh_x, fresh_reference),
        fresh_error=error(tuned, fresh_x, fresh_reference),
        score_evaluations=counted.calls,
        pilot=pilot,
        seconds=time.perf_counter() - began,
        sweeps=done_sweeps,
    )


#: Where a coordinate is first tried, as fractions of the gap between its neighbours.
COARSE = tuple(k / 8 for k in range(1, 8))
#: Golden-section steps that refine the best coarse position.
REFINE = 6


def _tune_one(
    i: int, fractions: list[float], current: float, error: Callable[[list[float]], float]
) -> tuple[list[float], float]:
    """Move fraction i between its neighbours to the position of least error (kept only if it
    lowers ``current``): a coarse scan, then golden-section refinement around the best."""
    low, high = fractions[i - 1], fractions[i + 1]

    def at(position: float) -> list[float]:
        moved = list(fractions)
        moved[i] = low + position * (high - low)
        return moved

    tried = {(fractions[i] - low) / (high - low): current}
    for position in COARSE:
        tried[position] = error(at(position))
    best = min(tried, key=tried.get)
    a, b = max(best - 1 / 8, 1e-3), min(best + 1 / 8, 1 - 1e-3)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = error(at(c)), error(at(d))
    for _ in range(REFINE):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = error(at(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = error(at(d))
    tried.update({c: fc, d: fd})
    best = min(tried, key=tried.get)
    if tried[best] < current:
        return at(best), tried[best]
    return fractions, current


def _check_deterministic(solve, times: Tensor, sde: LinearSDE, event_shape, device, dtype) -> None:
    """Refuse a predictor whose solution depends on the noise it is given: a grid tuned for one
    draw of its noise would say nothing."""
    x_T = sde.prior_sampling((4, *event_shape), torch.Generator(device or "cpu").manual_seed(12345), device, dtype)
    if not torch.equal(solve(times, x_T, 0), solve(times, x_T, 1)):
        raise ValueError(
            "tuning a grid needs a deterministic predictor (one that draws no noise, e.g. dpmpp_2m, unipc, "
            "edm_heun, or reverse_diffusion with probability_flow = true); this one adds noise"
        )
