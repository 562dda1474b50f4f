"""UniPC (Zhao et al. 2023): a multistep predictor (UniP) plus a corrector (UniC) that
reuses the next step's score evaluation, so the corrected step is one order higher at no
extra cost. Data prediction with B(h) = e^h - 1 ("bh2") or h ("bh1"), for any LinearSDE.

The step from t_i to t_{i+1} first corrects the state at t_i (the previous step's output)
with the data prediction just evaluated there, then predicts t_{i+1}. When the sampler
reports a jump (a corrector or a constraint moved the state in between), the correction
is skipped, since it would undo that move, and the history is dropped or kept as
``on_jump`` says, as for every multistep predictor here.
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug_fast.multistep import History, MultistepState, _Multistep
from sdeplug_fast.noise_levels import NoiseLevel, exponential_euler


@attrs.frozen
class _Previous:
    """What the corrector needs of the step just taken: where it started and what it used."""

    x: Tensor
    here: NoiseLevel
    denoised: Tensor
    older: History  # (lam, D) of the steps before, newest first

    @property
    def order(self) -> int:
        return len(self.older) + 1


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
class UniPC(_Multistep):
    """UniPC-p with UniC: ``order`` 1-3 for the predictor, one more after correction."""

    name = "unipc"

    order: int = attrs.field(default=2, kw_only=True, validator=v.in_((1, 2, 3)))
    variant: Literal["bh1", "bh2"] = attrs.field(default="bh2", kw_only=True, validator=v.in_(("bh1", "bh2")))

    @property
    def ode_order(self) -> float:  # type: ignore[override]
        """The corrected step is one order above the predictor's."""
        return float(self.order + 1)

    @property
    def memory(self) -> int:  # type: ignore[override]
        """Earlier predictions a step of this order uses."""
        return self.order - 1

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: MultistepState,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, MultistepState]:
        state, here, there, denoised = self._begin(x, t, state, jumped)
        if state.previous is not None and not jumped:
            x = self._correct(state.previous, here, denoised)
        older = self._usable(state)[: self.memory]
        x_next = self._predict(x, here, there, denoised, older)
        return x_next, self._next(state, here.lam, denoised, _Previous(x, here, denoised, older))

    @staticmethod
    def _ratios(here: NoiseLevel, h: Tensor, older: History, denoised: Tensor):
        ratios = [(lam - here.lam) / h for lam, _ in older]
        diffs = [(d - denoised) / r for r, (_, d) in zip(ratios, older)]
        return ratios, diffs

    def _predict(self, x, here: NoiseLevel, there: NoiseLevel, denoised, older: History) -> Tensor:
        x_next = exponential_euler(x, here, there, denoised)
        if not older:
            return x_next
        h = there.lam - here.lam
        ratios, diffs = self._ratios(here, h, older, denoised)
        R, b, b_h = _coefficients(h, ratios, self.variant)
        if len(older) == 1:
            rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
        else:
            rhos = torch.linalg.solve_ex(R[:-1, :-1], b[:-1]).result  # solve_ex: no host sync
        correction = sum(rho * d for rho, d in zip(rhos, diffs))
        return x_next - (there.alpha * b_h) * correction

    def _correct(self, previous: _Previous, there: NoiseLevel, denoised_there: Tensor) -> Tensor:
        """UniC: redo the last step with the data prediction now known at its end point."""
        x, here, denoised = previous.x, previous.here, previous.denoised
        h = there.lam - here.lam
        ratios, diffs = self._ratios(here, h, previous.older, denoised)
        R, b, b_h = _coefficients(h, ratios, self.variant)
        if previous.order == 1:
            rhos = torch.full((1,), 0.5, dtype=x.dtype, device=x.device)
        else:
            rhos = torch.linalg.solve_ex(R, b).result
        x_base = exponential_euler(x, here, there, denoised)
        correction = sum(rho * d for rho, d in zip(rhos[:-1], diffs)) + rhos[-1] * (denoised_there - denoised)
        return x_base - (there.alpha * b_h) * correction
