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

from sdeplug_fast.multistep import History, MultistepState, Rows, _Multistep, combine_rows
from sdeplug_fast.noise_levels import GridNoise


@attrs.frozen
class _Previous:
    """What the corrector needs of the step just taken: where it started, what it used, and
    the coefficients of its correction."""

    x: Tensor
    denoised: Tensor
    older: History  # (lam, D) of the steps before, newest first
    correction: tuple[float, ...]


def _phi_weights(h: Tensor, order: int, variant: str) -> tuple[Tensor, Tensor]:
    """UniPC's b_1..b_order (one row per step) from the phi-recursion, and B(h), for steps h."""
    hh = -h
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(b, dim=-1), b_h


def _rhos(ratios: Tensor, b: Tensor) -> Tensor:
    """Solve sum_j rho_j r_j^p = b_{p+1} for p = 0..n-1 (one system per step): ratios (steps, n)."""
    n = ratios.shape[1]
    if n == 1:
        return torch.full_like(ratios, 0.5)  # UniPC's fixed rho for the lowest orders
    vandermonde = torch.stack([ratios**p for p in range(n)], dim=1)  # [p, j] = r_j^p
    return torch.linalg.solve(vandermonde, b[:, :n])


@attrs.define
class UniPC(_Multistep):
    """UniPC-p with UniC: ``order`` 1-3 for the predictor, one more after correction.

    Every step and every correction is a fixed linear combination of the state and the
    data predictions; its coefficients are computed for the whole grid once per run.
    """

    name = "unipc"
    uses_levels = False

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

    def _coefficient_rows(self, noise: GridNoise) -> Rows:
        """rows[i][k] = (predictor, corrector) for step i with k earlier predictions.

        The predictor gives x_{i+1} = c_x x_i + c_D D_i + sum_l c_l D_{i-l}; the corrector,
        applied once D_{i+1} is known, gives x_{i+1} = c_x x_i + c_D D_i + sum_l c_l D_{i-l}
        + c_new D_{i+1}.
        """
        alpha, sigma, lam = noise.alpha, noise.sigma, noise.lam
        steps = len(lam) - 1
        h = lam[1:] - lam[:-1]
        b, b_h = _phi_weights(h, self.order, self.variant)
        scale_x = sigma[1:] / sigma[:-1]
        ddim_d = -alpha[1:] * torch.expm1(-h)
        weight = -alpha[1:] * b_h  # times sum_l rho_l (D_{i-l} - D_i) / r_l
        rows: list[list] = [[None] * self.order for _ in range(steps)]
        for k in range(min(self.order, steps)):  # k earlier predictions: steps k..steps-1 can have them
            i = torch.arange(k, steps)
            ratios = torch.stack([(lam[i - back] - lam[i]) / h[i] for back in range(1, k + 1)], dim=1) if k else None
            w = weight[i]
            predictor = [scale_x[i], ddim_d[i]]
            if k:
                rhos = _rhos(ratios, b[i])
                per_older = w[:, None] * rhos / ratios
                predictor = [scale_x[i], ddim_d[i] - per_older.sum(1), *per_older.unbind(1)]
            with_new = torch.cat([ratios, torch.ones_like(w)[:, None]], dim=1) if k else torch.ones_like(w)[:, None]
            rhos = _rhos(with_new, b[i])
            per_older = w[:, None] * rhos[:, :k] / with_new[:, :k]
            new = w * rhos[:, k]
            corrector = [scale_x[i], ddim_d[i] - per_older.sum(1) - new, *per_older.unbind(1), new]
            for j, p_row, c_row in zip(
                i.tolist(), zip(*(c.tolist() for c in predictor)), zip(*(c.tolist() for c in corrector))
            ):
                rows[j][k] = (p_row, c_row)
        return tuple(tuple(r) for r in rows)

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
        state, _, _, denoised = self._begin(x, t, state, jumped)
        if state.previous is not None and not jumped:
            x = combine_rows(state.previous.x, state.previous.denoised, state.previous.older, state.previous.correction)
            x.add_(denoised, alpha=state.previous.correction[-1])
        older = self._usable(state)[: self.memory]
        predictor, corrector = state.rows[state.index][len(older)]
        x_next = combine_rows(x, denoised, older, predictor)
        return x_next, self._next(state, None, denoised, _Previous(x, denoised, older, corrector))
