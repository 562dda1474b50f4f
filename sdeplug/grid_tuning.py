"""Time grids tuned to a model, an SDE and a deterministic predictor from a few pilot solves.

A tuned grid places its K + 1 times where the K-step solution lands closest to a
high-accuracy solve of the same probability-flow ODE from the same prior draws (the aim
of Sabour et al.'s "Align Your Steps" and Chen et al.'s GITS; the method here is ours):
coordinate descent over the interior times, each moved in log-SNR between its neighbours,
from several starting grids, on one set of prior draws (the pilot). The candidates, the
starting grids among them, are then judged on other draws (the validation set), and the
best there is returned, so a grid fitted to the pilot's quirks loses to one that
generalises. The ends stay at T and eps; no step is shorter than ``min_gap`` of the mean.

A grid is stored as the fractions of the log-SNR range its times sit at (0 at T, 1 at
eps; ``sdeplug.grids.save_grid_file``), so the registered ``tuned`` TimeGrid reproduces
it at its own step count and stretches it, piecewise linearly, to any other.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from sdeplug.errors import NonFiniteError, SdeplugWarning
from sdeplug.grids import GridSpec, check_steps, end_time, fractions_of, grid_from_fractions, resolve_grid
from sdeplug.interfaces import LinearSDE, ScoreFn
from sdeplug.registry import part_name
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.tensors import check_seed

F64 = torch.float64

#: What a grid is tuned to minimise, per sample the distance d_i between the K-step solution and
#: the reference solve of the same prior draw (divided by sqrt of the dimension):
#: "distance" is mean(d_i), an upper bound on the Wasserstein-1 distance between the two sample
#: sets (so on half their energy distance); "rms" is sqrt(mean(d_i^2)), which a few draws that
#: land in another mode dominate.
OBJECTIVES = ("distance", "rms")


class BudgetOrderWarning(SdeplugWarning):
    """A grid tuned for more steps is worse on the validation draws than one tuned for fewer."""


@attrs.frozen
class Candidate:
    """One grid the tuner judged: where it came from, its fractions and its errors."""

    name: str
    fractions: tuple[float, ...]
    pilot_error: float
    validation_error: float


@attrs.frozen(eq=False)
class TuningResult:
    """What ``tune_grid`` found, what it was tuned for, and what it cost.

    Passed as a sampler's ``grid`` it is its ``times``.
    """

    #: The tuned times, T to eps (float64, CPU), their log-SNR fractions and their step count.
    times: Tensor
    fractions: tuple[float, ...]
    steps: int
    #: The grid the search started from.
    start: Tensor
    #: Which candidate won on the validation draws ("start" when none beat it), and every candidate.
    won: str
    candidates: tuple[Candidate, ...]
    objective: str
    #: The objective on the pilot draws and on the validation draws, for the start and the result.
    pilot_error_start: float
    pilot_error: float
    validation_error_start: float
    validation_error: float
    #: Score evaluations (each on a batch of pilot or validation draws), the reference solves included.
    score_evaluations: int
    pilot: int
    validation: int
    seconds: float
    sweeps: int
    #: What the grid is for: the predictor's name and options, and eps.
    predictor: str
    predictor_options: dict[str, Any]
    eps: float
    min_gap: float


class _Counted:
    def __init__(self, score: ScoreFn) -> None:
        self.score, self.calls, self.samples = score, 0, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        self.samples += x.shape[0]
        return self.score(x, t)


def _check_count(value: Any, name: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({meaning}); got {value!r}")
    return value


def _check_event_shape(event_shape: Any) -> tuple[int, ...]:
    """An int d is the shape (d,); otherwise a sequence of positive ints."""
    if isinstance(event_shape, int) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    shape = tuple(event_shape) if isinstance(event_shape, (tuple, list, torch.Size)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(
            f"event_shape must be one sample's shape: a positive int (a vector's length) or a tuple of them; "
            f"got {event_shape!r:.80}"
        )
    return shape


class _Tuner:
    """The pilot and validation draws with their reference solves, shared by every budget tuned."""

    def __init__(
        self,
        sde,
        score,
        event_shape,
        *,
        predictor,
        predictor_options,
        eps,
        denoise,
        pilot,
        validation,
        seed,
        reference_tolerance,
        objective,
        min_gap,
        device,
        dtype,
        progress,
    ) -> None:
        self.sde, self.eps, self.denoise = sde, eps, denoise
        self.predictor, self.predictor_options = predictor, dict(predictor_options or {})
        self.objective, self.min_gap, self.device, self.dtype = objective, min_gap, device, dtype
        self.counted = _Counted(score)
        self.say = progress or (lambda message: None)
        self.event_shape, self.seed, self.tolerance = event_shape, seed, reference_tolerance
        self.pilot_count, self.validation_count = pilot, validation
        self._draws: dict[str, tuple[Tensor, Tensor]] = {}

    def draws(self, which: str) -> tuple[Tensor, Tensor]:
        """Prior draws and their reference solves; the pilot and validation draws never overlap."""
        if which not in self._draws:
            self.say(f"solving the {which} draws accurately")
            count, offset = (self.pilot_count, 0) if which == "pilot" else (self.validation_count, 1)
            generator = torch.Generator(self.device or "cpu").manual_seed(self.seed + offset)
            x_T = self.sde.prior_sampling((count, *self.event_shape), generator, self.device, self.dtype)
            reference = sample_ode(
                self.sde,
                self.counted,
                x_init=x_T,
                solver="dopri5",
                solver_options={"rtol": self.tolerance, "atol": self.tolerance},
                eps=self.eps,
                denoise=self.denoise,
            ).x
            self._draws[which] = (x_T, reference)
        return self._draws[which]

    def solve(self, times: Tensor, x_T: Tensor, noise_seed: int = 0) -> Tensor:
        return sample_pc(
            self.sde,
            self.counted,
            predictor=self.predictor,
            predictor_options=self.predictor_options,
            corrector="none",
            grid=times,
            denoise=self.denoise,
            x_init=x_T,
            generator=torch.Generator(x_T.device).manual_seed(noise_seed),
        ).x

    def error(self, fractions: Sequence[float], which: str) -> float:
        x_T, reference = self.draws(which)
        try:
            times = grid_from_fractions(self.sde, fractions, len(fractions) - 1, self.eps)
            out = self.solve(times, x_T)
        except (NonFiniteError, ValueError):
            return math.inf
        per_sample = ((out - reference).to(F64) ** 2).reshape(len(out), -1).mean(1)
        if self.objective == "rms":
            return float(torch.sqrt(per_sample.mean()))
        return float(torch.sqrt(per_sample).mean())

    def gap(self, steps: int) -> float:
        """The shortest step allowed, as a fraction of the log-SNR range."""
        return self.min_gap / steps

    def search(self, fractions: list[float], current: float, sweeps: int) -> tuple[list[float], float, int]:
        """Coordinate descent on the pilot draws from ``fractions`` (whose pilot error is
        ``current``); (fractions, pilot error, sweeps done)."""
        done = 0
        gap = self.gap(len(fractions) - 1)
        for sweep in range(sweeps):
            before = current
            for i in range(1, len(fractions) - 1):
                fractions, current = _tune_one(i, fractions, current, gap, lambda f: self.error(f, "pilot"))
            done = sweep + 1
            if not current < before * 0.995:
                break
        return fractions, current, done


def stretch(fractions: Sequence[float], steps: int) -> list[float]:
    """Fractions for ``steps`` steps, interpolated piecewise linearly in the step index (as the
    ``tuned`` TimeGrid places a grid at another step count)."""
    tuned = len(fractions) - 1
    placed = np.interp(np.arange(steps + 1) * tuned / steps, np.arange(tuned + 1), list(fractions)).tolist()
    placed[0], placed[-1] = 0.0, 1.0
    return placed


def _splits(fractions: Sequence[float]) -> list[list[float]]:
    """The grid with one more step: each of its steps in turn cut in two at its log-SNR midpoint."""
    f = list(fractions)
    return [f[: i + 1] + [0.5 * (f[i] + f[i + 1])] + f[i + 1 :] for i in range(len(f) - 1)]


def _respects_gap(fractions: Sequence[float], gap: float) -> bool:
    return all(b - a >= gap * (1 - 1e-9) for a, b in zip(fractions, fractions[1:]))


def tune_grid(
    sde: LinearSDE,
    score: ScoreFn,
    event_shape: tuple[int, ...] | int,
    steps: int,
    *,
    predictor: Any = "dpmpp_2m",
    predictor_options: Mapping[str, Any] | None = None,
    start: GridSpec = "logsnr",
    start_options: Mapping[str, Any] | None = None,
    eps: float | None = None,
    denoise: bool = False,
    pilot: int = 256,
    validation: int | None = None,
    seed: int = 0,
    reference_tolerance: float = 1e-6,
    sweeps: int = 4,
    objective: str = "distance",
    min_gap: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = F64,
    progress: Callable[[str], None] | None = None,
) -> TuningResult:
    """Tune the ``steps`` + 1 times of a deterministic ``predictor`` for this SDE and score.

    ``pilot`` prior draws and ``validation`` others (as many by default) are solved once with
    dopri5 at ``reference_tolerance``. From ``start`` and from the log-SNR grid, the interior
    times move one at a time, in log-SNR between their neighbours and never closer than
    ``min_gap`` / ``steps`` of the range, to where the ``steps``-step solution is closest to
    the pilot's solves (``objective``: see ``OBJECTIVES``). Every start and every search's
    end is then judged on the validation draws and the best returned, the start winning ties:
    the result is never worse than ``start`` there. ``tune_grids`` tunes several budgets at once.
    """
    return tune_grids(
        sde,
        score,
        event_shape,
        [steps],
        predictor=predictor,
        predictor_options=predictor_options,
        start=start,
        start_options=start_options,
        eps=eps,
        denoise=denoise,
        pilot=pilot,
        validation=validation,
        seed=seed,
        reference_tolerance=reference_tolerance,
        sweeps=sweeps,
        objective=objective,
        min_gap=min_gap,
        device=device,
        dtype=dtype,
        progress=progress,
    )[0]


def tune_grids(
    sde: LinearSDE,
    score: ScoreFn,
    event_shape: tuple[int, ...] | int,
    budgets: Sequence[int],
    *,
    predictor: Any = "dpmpp_2m",
    predictor_options: Mapping[str, Any] | None = None,
    start: GridSpec = "logsnr",
    start_options: Mapping[str, Any] | None = None,
    eps: float | None = None,
    denoise: bool = False,
    pilot: int = 256,
    validation: int | None = None,
    seed: int = 0,
    reference_tolerance: float = 1e-6,
    sweeps: int = 4,
    objective: str = "distance",
    min_gap: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = F64,
    progress: Callable[[str], None] | None = None,
) -> list[TuningResult]:
    """Tune a grid for each step count in ``budgets`` (in increasing order), one result each.

    The draws and their reference solves are shared. Each budget also starts from the
    grid tuned at the budget below, stretched and with one step cut in two, so a grid with
    more steps is not worse on the validation draws than one with fewer; where it still is,
    a ``BudgetOrderWarning`` says so. Options as for ``tune_grid``.
    """
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"tuned grids need a LinearSDE (alpha, sigma and log-SNR); got {type(sde).__name__}")
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Sequence) or not budgets:
        raise ValueError(f"budgets must be a non-empty list of step counts; got {budgets!r:.80}")
    budgets = sorted({check_steps(b) for b in budgets})
    event_shape = _check_event_shape(event_shape)
    pilot = _check_count(pilot, "pilot", 2, "prior draws the grid is fitted to")
    validation = pilot if validation is None else validation
    validation = _check_count(validation, "validation", 2, "prior draws the candidates are judged on")
    sweeps = _check_count(sweeps, "sweeps", 0, "0 keeps the start grid")
    check_seed(seed)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(map(repr, OBJECTIVES))}; got {objective!r}")
    if isinstance(min_gap, bool) or not isinstance(min_gap, (int, float)) or not 0 <= min_gap < 1:
        raise ValueError(f"min_gap must be a number in [0, 1) (the shortest step over the mean one); got {min_gap!r}")
    tolerance_is_number = isinstance(reference_tolerance, (int, float)) and not isinstance(reference_tolerance, bool)
    if not tolerance_is_number or not 0 < reference_tolerance < math.inf:
        raise ValueError(
            f"reference_tolerance must be a positive number (dopri5's rtol and atol for the reference solves); "
            f"got {reference_tolerance!r}"
        )
    eps = end_time(sde, eps)
    tuner = _Tuner(
        sde,
        score,
        event_shape,
        predictor=predictor,
        predictor_options=predictor_options,
        eps=eps,
        denoise=denoise,
        pilot=pilot,
        validation=validation,
        seed=seed,
        reference_tolerance=reference_tolerance,
        objective=objective,
        min_gap=float(min_gap),
        device=device,
        dtype=dtype,
        progress=progress,
    )
    _check_deterministic(tuner, budgets[0], event_shape)
    results: list[TuningResult] = []
    for steps in budgets:
        began, calls = time.perf_counter(), tuner.counted.calls
        first = resolve_grid(sde, start, steps, eps, grid_options=start_options, dtype=F64).cpu()
        first[0], first[-1] = float(sde.T), float(eps)
        seeds = {"start": fractions_of(sde, first)}
        if not isinstance(start, str) or start != "logsnr" or start_options:
            seeds["logsnr"] = np.linspace(0.0, 1.0, steps + 1).tolist()
        if results:
            below = results[-1]
            seeds[f"stretched from {below.steps} steps"] = stretch(below.fractions, steps)
            if below.steps == steps - 1:
                splits = _splits(below.fractions)
                seeds[f"{below.steps} steps, one cut in two"] = min(splits, key=lambda f: tuner.error(f, "pilot"))
        results.append(_tune_budget(tuner, steps, first, seeds, sweeps, began, calls))
        if len(results) > 1 and results[-1].validation_error > results[-2].validation_error:
            warnings.warn(
                f"the grid tuned for {steps} steps is worse on the validation draws "
                f"({results[-1].validation_error:.4g}) than the one for {results[-2].steps} "
                f"({results[-2].validation_error:.4g})",
                BudgetOrderWarning,
                stacklevel=2,
            )
    return results


def _tune_budget(
    tuner: _Tuner, steps: int, first: Tensor, seeds: dict[str, list[float]], sweeps: int, began: float, calls: int
) -> TuningResult:
    """Search from every seed on the pilot draws; judge seeds and searches on the validation draws."""
    gap = tuner.gap(steps)
    tried = [
        Candidate(name, tuple(f), tuner.error(f, "pilot"), tuner.error(f, "validation")) for name, f in seeds.items()
    ]
    # Search from the start and from the best other seed on the pilot draws.
    others = sorted(tried[1:], key=lambda c: c.pilot_error)[:1]
    done_sweeps = 0
    for seed in [tried[0], *others] if steps > 1 and sweeps > 0 else []:
        tuner.say(f"{steps} steps: searching from {seed.name} (pilot error {seed.pilot_error:.4g})")
        found, found_error, done = tuner.search(list(seed.fractions), seed.pilot_error, sweeps)
        done_sweeps = max(done_sweeps, done)
        if found != list(seed.fractions) and _respects_gap(found, gap):
            tried.append(
                Candidate(f"tuned from {seed.name}", tuple(found), found_error, tuner.error(found, "validation"))
            )
    best = min(tried, key=lambda c: c.validation_error)  # the first (the start) wins ties
    start = tried[0]
    tuner.say(
        f"{steps} steps: {best.name} wins, validation error {best.validation_error:.4g} "
        f"(start {start.validation_error:.4g})"
    )
    times = first if best is start else grid_from_fractions(tuner.sde, best.fractions, steps, tuner.eps)
    return TuningResult(
        times=times,
        fractions=tuple(fractions_of(tuner.sde, times)) if best is start else best.fractions,
        steps=steps,
        start=first,
        won="start" if best is start else best.name,
        candidates=tuple(tried),
        objective=tuner.objective,
        pilot_error_start=start.pilot_error,
        pilot_error=best.pilot_error,
        validation_error_start=start.validation_error,
        validation_error=best.validation_error,
        score_evaluations=tuner.counted.calls - calls,
        pilot=tuner.pilot_count,
        validation=tuner.validation_count,
        seconds=time.perf_counter() - began,
        sweeps=done_sweeps,
        predictor=part_name(tuner.predictor),
        predictor_options=dict(tuner.predictor_options),
        eps=tuner.eps,
        min_gap=tuner.min_gap,
    )


#: Where a coordinate is first tried, as fractions of the room between its neighbours.
COARSE = tuple(k / 6 for k in range(1, 6))
#: Golden-section steps that refine the best coarse position.
REFINE = 5


def _tune_one(
    i: int, fractions: list[float], current: float, gap: float, error: Callable[[list[float]], float]
) -> tuple[list[float], float]:
    """Move fraction i between its neighbours (at least ``gap`` from each) to the position of
    least error, kept only if it lowers ``current``: a coarse scan, then golden-section
    refinement around the best."""
    low, high = fractions[i - 1] + gap, fractions[i + 1] - gap
    if high <= low:
        return fractions, current

    def at(position: float) -> list[float]:
        moved = list(fractions)
        moved[i] = low + position * (high - low)
        return moved

    tried = {}
    if low <= fractions[i] <= high:
        tried[(fractions[i] - low) / (high - low)] = current
    for position in COARSE:
        tried[position] = error(at(position))
    best = min(tried, key=tried.get)
    a, b = max(best - 1 / 6, 0.0), min(best + 1 / 6, 1.0)
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


def _check_deterministic(tuner: _Tuner, steps: int, event_shape) -> None:
    """Refuse a predictor whose solution depends on the noise it is given: a grid tuned for one
    draw of its noise would say nothing."""
    sde = tuner.sde
    times = grid_from_fractions(sde, np.linspace(0.0, 1.0, steps + 1).tolist(), steps, tuner.eps)
    generator = torch.Generator(tuner.device or "cpu").manual_seed(12345)
    x_T = sde.prior_sampling((4, *event_shape), generator, tuner.device, tuner.dtype)
    if not torch.equal(tuner.solve(times, x_T, 0), tuner.solve(times, x_T, 1)):
        raise ValueError(
            "tuning a grid needs a deterministic predictor (one that draws no noise, e.g. dpmpp_2m, unipc, "
            "edm_heun, or reverse_diffusion with probability_flow = true); this one adds noise"
        )
