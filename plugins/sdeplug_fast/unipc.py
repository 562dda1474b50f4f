"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) plus a corrector (UniC) that
reuses the next step's score evaluation, so the corrected step is one order higher at no
extra cost. Data prediction with B(h) = e^h - 1 ("bh2") or h ("bh1"), for any LinearSDE.

The step from t_i to t_{i+1} first corrects the state at t_i (the previous step's output)
with the data prediction just evaluated there, then predicts t_{i+1}. The correction is
skipped when something else (a corrector of the PC sampler) changed the state in between,
so UniPC composes with correctors like any predictor.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, Predictor, ScoreFn, per_sample
from sdeplug_fast.multistep import LOWER_ORDER_FINAL_BELOW
from sdeplug_fast.noise_levels import LevelCache, NoiseLevel, data_prediction


@attrs.frozen
class _Previous:
    """What the corrector needs of the step just taken: where it started and what it used."""

    x: Tensor
    here: NoiseLevel
    denoised: Tensor
    older: list[tuple[Tensor, Tensor]]  # (lam, D) of the steps before, newest first
    order: int
    output: Tensor


def _coefficients(h: Tensor, ratios: list[Tensor], variant: str) -> tuple[Tensor, Tensor, Tensor]:
    """(R, b, B(h)) of UniPC: R[i, j] = r_j^i over the ratios r_j and 1, b from the phi-recursion."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rks = [*ratios, torch.ones_like(h)]
    order = len(rks)
    R = torch.stack([torch.stack([r**i for r in rks]) for i in range(order)])
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return R, torch.stack(b), b_h


@attrs.define
class UniPC(Predictor):
    """UniPC-p with UniC: ``order`` 1-3 for the predictor, one more after correction."""

    name = "unipc"
    sde_types = (LinearSDE,)
    ode_order: ClassVar[float] = 3.0

    sde: LinearSDE
    score: ScoreFn
    order: int = attrs.field(default=2, kw_only=True, validator=v.in_((1, 2, 3)))
    variant: Literal["bh1", "bh2"] = attrs.field(default="bh2", kw_only=True, validator=v.in_(("bh1", "bh2")))
    lower_order_final: bool = attrs.field(default=True, kw_only=True, validator=v.instance_of(bool))
    _past: list[tuple[Tensor, Tensor]] = attrs.field(factory=list, init=False, repr=False)
    _previous: _Previous | None = attrs.field(default=None, init=False, repr=False)
    _run_length: int | None = attrs.field(default=None, init=False, repr=False)
    _taken: int = attrs.field(default=0, init=False, repr=False)
    _levels_seen: LevelCache = attrs.field(factory=LevelCache, init=False, repr=False)

    def reset(self, steps: int | None = None) -> None:
        self._past, self._previous, self._run_length, self._taken = [], None, steps, 0
        self._levels_seen.clear()

    def _this_order(self) -> int:
        order = min(self.order, len(self._past) + 1)
        self._taken += 1
        if self.lower_order_final and self._run_length is not None and self._run_length < LOWER_ORDER_FINAL_BELOW:
            order = min(order, self._run_length - self._taken + 1)
        return max(order, 1)

    def step(self, x: Tensor, t: Tensor, t_next: Tensor, generator: torch.Generator | None = None):
        here, there = self._levels_seen.at(self.sde, t), NoiseLevel.at(self.sde, t_next)
        self._levels_seen.keep(t_next, there)
        denoised = data_prediction(self.score, x, t, here)
        previous = self._previous
        if previous is not None and previous.output is x:  # x is what the last step returned
            x = self._correct(previous, here, denoised)
        self._past.insert(0, (here.lam, denoised))
        order = self._this_order()
        older = self._past[1:order]
        x_next = self._predict(x, here, there, denoised, older)
        del self._past[max(self.order, 1):]
        self._previous = _Previous(x, here, denoised, older, order, x_next)
        return x_next, x_next

    def _ratios(self, here: NoiseLevel, h: Tensor, older: list[tuple[Tensor, Tensor]], denoised: Tensor, x: Tensor):
        ratios = [((lam - here.lam) / h)[0] for lam, _ in older]
        diffs = [(d - denoised) / per_sample((lam - here.lam) / h, x) for lam, d in older]
        return ratios, diffs

    def _predict(self, x, here: NoiseLevel, there: NoiseLevel, denoised, older) -> Tensor:
        h = there.lam - here.lam
        x_next = per_sample(there.sigma / here.sigma, x) * x - per_sample(there.alpha * torch.expm1(-h), x) * denoised
        if not older:
            return x_next
        ratios, diffs = self._ratios(here, h, older, denoised, x)
        R, b, b_h = _coefficients(h[0], ratios, self.variant)
        if len(older) == 1:
            rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
        else:
            rhos = torch.linalg.solve_ex(R[:-1, :-1], b[:-1]).result  # solve_ex: no host sync
        correction = sum(rho * d for rho, d in zip(rhos, diffs))
        return x_next - per_sample(there.alpha * b_h, x) * correction

    def _correct(self, previous: _Previous, there: NoiseLevel, denoised_there: Tensor) -> Tensor:
        """UniC: redo the last step with the data prediction now known at its end point."""
        x, here, denoised = previous.x, previous.here, previous.denoised
        h = there.lam - here.lam
        ratios, diffs = self._ratios(here, h, previous.older, denoised, x)
        R, b, b_h = _coefficients(h[0], ratios, self.variant)
        if previous.order == 1:
            rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
        else:
            rhos = torch.linalg.solve_ex(R, b).result
        x_base = per_sample(there.sigma / here.sigma, x) * x - per_sample(there.alpha * torch.expm1(-h), x) * denoised
        correction = sum(rho * d for rho, d in zip(rhos[:-1], diffs)) + rhos[-1] * (denoised_there - denoised)
        return x_base - per_sample(there.alpha * b_h, x) * correction
