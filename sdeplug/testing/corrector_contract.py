"""The corrector contract: the balance of drift and noise in one step, and invariance of p_t."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from sdeplug.interfaces import (
    SDE,
    LinearSDE,
)
from sdeplug.stats import assert_same_law, energy_null
from sdeplug.testing import probes
from sdeplug.testing.exact import (
    _check_cases,
    _check_identity,
    _check_step_interface,
    _check_times,
    _exact_samples,
    _gaussian_marginal,
    _gaussian_score,
    _kit_grid,
    _probe_step,
)
from sdeplug.testing.kit_base import ContractReport, _fail, _mixture_and_null, _unit_gaussian_score

F64 = torch.float64


def check_corrector(
    spec: Any,
    *,
    sdes: Sequence[Any] | None = None,
    sweeps: int = 50,
    options: dict[str, Any] | None = None,
    local_sdes: Sequence[Any] = (),
) -> ContractReport:
    """Shapes and dtypes, seeded determinism, the balance of drift and noise in one step (at
    whatever step size the corrector takes), and invariance: exact samples of p_t stay
    distributed as p_t after ``sweeps`` steps with the exact score; for its options as given,
    or else its defaults and each set its ``example_options()`` declares."""
    return _check_cases(
        "corrector", spec, sdes, options, local_sdes, functools.partial(_check_corrector_on, sweeps=sweeps)
    )


def _check_corrector_on(
    name: str,
    cls: type,
    options: dict[str, Any],
    sde: SDE,
    label: str,
    report: ContractReport,
    *,
    sweeps: int,
    local_only: bool = False,
) -> None:
    mixture, null = _mixture_and_null()
    corrector = cls(sde, mixture.score_model(sde), **options).for_grid(_kit_grid(sde))
    gaussian = cls(sde, _unit_gaussian_score(sde), **options).for_grid(_kit_grid(sde))  # any event shape
    where = f"corrector {name!r} with {label}"
    _check_step_interface(sde, lambda x, t, g, part=gaussian: part.step(x, t, g), where)
    if getattr(gaussian, "identity", False):
        _check_identity(lambda x, t, part=gaussian: part.step(x, t), f"corrector {name!r}")
        report.passed.append(f"{label}: shapes, dtypes, leaves x unchanged (declared identity)")
        return
    probes.check_moves(lambda x, t, g, part=gaussian: part.step(x, t, g), sde.T, where)
    _probe_step(lambda x, t, g, part=gaussian: part.step(x, t, g), gaussian, sde, where, label, report)
    judged = _check_balance(cls, sde, options, where)
    if judged:
        report.passed.append(f"{label}: one step's noise adds the variance its drift removes (at t = {judged})")
    else:
        report.skipped.append(f"{label}: balance of drift and noise (the step moves x too little to judge)")
    if local_only:
        return
    t = 0.3 * sde.T
    g = torch.Generator().manual_seed(2)
    x = mixture.sample(null.n, g, sde, t)
    tt = torch.full((null.n,), t, dtype=F64)
    for _ in range(sweeps):
        x = corrector.step(x, tt, g)

    def sample_p_t(k, gen, sde=sde, t=t):
        return mixture.sample(k, gen, sde, t)

    try:
        assert_same_law(x, sample_p_t, null=energy_null(sample_p_t, null.n))
    except AssertionError as exc:
        _fail(
            f"{where} does not leave p_t invariant: after {sweeps} steps at t = {t:g} "
            f"from exact samples of p_t, with the exact score, {exc}. Its drift and noise balance on Gaussian p_t "
            "(checked), so the fault shows only on a non-Gaussian law: the step does not follow the score it is "
            "given (a Gaussian or batch-statistics shortcut, clipping), or a step size tied to the batch."
        )
    report.passed.append(f"{label}: shapes, dtypes, seeded determinism, leaves p_t invariant ({sweeps} steps)")


#: Samples (pairs) of the balance check, and how far its ratio may stray.
BALANCE_SAMPLES, BALANCE_TOLERANCE = 50_000, 0.2


class BalanceStatistics(NamedTuple):
    """One step from exact samples of p_t: its contraction slope b, the variance share its drift
    removes (1 - b^2), the output's variance over the input's, and its mean's shift in stds of p_t."""

    slope: float
    removed: float
    ratio: float
    shift: float

    @property
    def rho(self) -> float:
        """The excess of the noise over what the drift removes, in units of the latter."""
        return (self.ratio - 1) / self.removed


def _balance_statistics(cls: type, sde: LinearSDE, options: dict[str, Any]) -> dict[float, BalanceStatistics]:
    """The balance statistics of one step at each check time t."""
    score = _gaussian_score(sde)
    corrector = cls(sde, score, **options).for_grid(_kit_grid(sde))
    statistics = {}
    for t in _check_times(sde):
        mean, var = _gaussian_marginal(sde, t)
        x = _exact_samples(sde, t, BALANCE_SAMPLES)
        tt = torch.full((BALANCE_SAMPLES,), t, dtype=F64)
        y = corrector.step(x, tt, torch.Generator().manual_seed(3))
        y_mirror = corrector.step(2 * mean - x, tt, torch.Generator().manual_seed(3))
        xs, ys = torch.cat([x, 2 * mean - x]) - mean, torch.cat([y, y_mirror])
        spread = (xs**2).mean()  # the input's own variance: its rounding must not pass for a step's effect
        slope = float((xs * (ys - ys.mean())).mean() / spread)
        ratio, shift = float(ys.var(correction=0) / spread), (float(ys.mean()) - mean) / math.sqrt(var)
        statistics[t] = BalanceStatistics(slope, 1 - slope**2, ratio, shift)
    return statistics


def balance_band(contraction: float) -> tuple[float, float]:
    """The accepted range of the balance statistic rho for a step contracting x by ``contraction``."""
    return -BALANCE_TOLERANCE, BALANCE_TOLERANCE + contraction


def _check_balance(cls: type, sde: LinearSDE, options: dict[str, Any], where: str) -> str:
    """One corrector step from exact samples of p_t = N(m, v) (Gaussian data, exact score).

    Its drift pulls x towards m by a factor b (the regression slope of the output on the
    input), removing (1 - b^2) v of variance; its noise must add it back. The statistic
    rho = (var(x') / v - 1) / (1 - b^2) is the excess of noise over that, in units of what
    the drift removes: 0 for an exact MCMC step, c / (2 - c) for unadjusted Langevin with
    c = 1 - b, -1/2 for noise sqrt(eps) instead of sqrt(2 eps), +1 for a halved drift,
    whatever the step size. Each sample is paired with its mirror image 2m - x under the
    same seed, so the sampling noise of the cross terms cancels and the check keeps its
    power at small steps. Returns the times judged (none if x hardly moves)."""
    judged = []
    for t, statistics in _balance_statistics(cls, sde, options).items():
        slope, removed, ratio, shift = statistics
        mean, var = _gaussian_marginal(sde, t)
        at = f"t = {t:.4g} (p_t = N({mean:.3g}, {var:.3g}), exact score, {2 * BALANCE_SAMPLES} samples)"
        if slope > 1 + 1e-9:
            _fail(
                f"{where}: step() pushes x away from the mode of p_t at {at}: one step multiplies the distance "
                f"to the mean by {slope:.6g}; its drift must follow the score (is its sign flipped?)"
            )
        contraction = 1 - slope
        if abs(ratio - 1) < 1e-12 and contraction < 1e-9:
            continue  # x hardly moves: nothing to judge at this t
        noise = math.sqrt(max(removed, 1e-300) / BALANCE_SAMPLES)
        if abs(shift) > 6 * noise + BALANCE_TOLERANCE * contraction * max(abs(mean) / math.sqrt(var), 1.0):
            _fail(
                f"{where}: one step of step() from exact samples of p_t at {at} moves their mean by {shift:+.3g} "
                f"of its std, while its drift contracts x by {contraction:.3g}: the drift does not point to the "
                "mode of p_t (a score for another time or data, or a wrong offset)"
            )
        rho = statistics.rho
        low, high = balance_band(contraction)
        if not low <= rho <= high:
            side = (
                "too little noise for its drift: noise sqrt(eps) where Langevin needs sqrt(2 eps) for a drift "
                "eps * score, or a drift weighted too much"
                if rho < 0
                else "too much noise for its drift: a drift weighted too little (eps/2 * score with noise "
                "sqrt(2 eps)), or noise too large"
            )
            _fail(
                f"{where}: step() does not balance drift and noise at {at}: its drift removes {removed:.3g} of the "
                f"variance of p_t, its noise adds {removed + ratio - 1:.3g} ({1 + rho:.3g} times as much; p_t is "
                f"kept only if they are equal, up to the step's own bias): {side}. The step moves x by "
                f"{contraction:.3g} of its distance to the mean, whatever its step size."
            )
        judged.append(f"{t:.4g}")
    return ", ".join(judged)
