"""DPM-Solver++ multistep samplers (Lu et al. 2022), second and third order, and the
stochastic SDE-DPM-Solver++(2M), written against alpha(t) and sigma(t) of any LinearSDE.

Each step costs one score evaluation: the data predictions of the last steps are kept in
the run's explicit state (``MultistepState``) and combined into a higher-order step of the
exponential integrator in lam = -log(sigma/alpha). The first steps of a run use lower
orders until enough history exists (the usual warm-up). Formulas follow k-diffusion's
``sample_dpmpp_2m``, ``sample_dpmpp_3m_sde`` (eta = 0) and ``sample_dpmpp_2m_sde``
(midpoint), with x / alpha in place of x.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, Predictor, ScoreFn, randn_like
from sdeplug_fast.noise_levels import GridNoise, NoiseLevel, grid_levels, tweedie_from_row

#: Runs with fewer steps than this lower the order of their final steps (diffusers' rule).
LOWER_ORDER_FINAL_BELOW = 15

History = tuple[tuple[Tensor | None, Tensor], ...]
"""(lam, D) of earlier steps, newest first (lam is None for predictors without ``uses_levels``)."""

Rows = tuple[tuple[tuple[float, ...] | None, ...], ...]
"""A predictor's coefficients, computed once per run: rows[i][k] for step i using k earlier
predictions (None where step i cannot have k of them)."""


def combine_rows(x: Tensor, denoised: Tensor, older: History, row: tuple[float, ...]) -> Tensor:
    """row[0] x + row[1] D + sum_l row[1 + l] D_{i-l}: a step of a multistep predictor whose
    coefficients were computed once per run (one row of its ``Rows``)."""
    out = torch.add(x * row[0], denoised, alpha=row[1])
    for coefficient, (_, d) in zip(row[2:], older):
        out.add_(d, alpha=coefficient)
    return out


@attrs.frozen
class MultistepState:
    """What a multistep predictor carries from one step of a run to the next."""

    #: The noise levels at every time of the run's grid, computed once by ``init`` (empty
    #: for predictors that step with precomputed ``rows`` alone).
    levels: tuple[NoiseLevel, ...]
    #: The step about to be taken: it goes from levels[index] to levels[index + 1].
    index: int = 0
    history: History = ()
    #: What a predictor's own corrector needs of the last step (UniPC), if anything.
    previous: Any = None
    #: (sigma^2, 1 / alpha) at every time of the grid, for Tweedie's formula.
    tweedie: tuple[tuple[float, float], ...] = ()
    #: The predictor's own per-step coefficients (see ``Rows``), if it computes them.
    rows: Rows = ()


@attrs.define
class _Multistep(Predictor):
    """Shared bookkeeping of the multistep predictors: the history of (lam, D) in the state.

    ``on_jump`` says what a step does when the sampler reports that a corrector or a
    constraint moved x since the previous step. ``"restart"`` (the default) drops the
    history: the earlier predictions no longer lie on the trajectory, and extrapolating
    them amplifies a corrector's noise; with a corrector after every step the predictor is
    then the first-order exponential integrator, which is consistent. ``"keep"`` goes on
    with the history: right when the move is small or leaves the predicted directions alone
    (inpainting keeps the order of the unknown part this way).
    """

    sde_types = (LinearSDE,)
    #: How many earlier data predictions a step uses.
    memory: ClassVar[int] = 1
    #: Whether steps read the NoiseLevel of their ends (else only the precomputed rows).
    uses_levels: ClassVar[bool] = True

    sde: LinearSDE
    score: ScoreFn
    lower_order_final: bool = attrs.field(default=True, kw_only=True, validator=v.instance_of(bool))
    on_jump: Literal["restart", "keep"] = attrs.field(
        default="restart", kw_only=True, validator=v.in_(("restart", "keep"))
    )

    def init(self, x: Tensor, grid: Tensor) -> MultistepState:
        noise = GridNoise.of(self.sde, grid)
        return MultistepState(
            grid_levels(self.sde, grid) if self.uses_levels else (),
            tweedie=noise.tweedie_rows(),
            rows=self._coefficient_rows(noise),
        )

    def _coefficient_rows(self, noise: GridNoise) -> Rows:
        """Per-step coefficients of the whole grid (see ``Rows``); none by default."""
        return ()

    def _continued(self, state: MultistepState, jumped: bool) -> MultistepState:
        """The state this step builds on: without history after a jump, unless told to keep it."""
        if jumped and self.on_jump == "restart":
            return attrs.evolve(state, history=(), previous=None)
        return state

    def _usable(self, state: MultistepState) -> History:
        """The earlier predictions this step may use: all of them, except on the last steps
        of a run shorter than LOWER_ORDER_FINAL_BELOW steps with ``lower_order_final``,
        where the order drops to 1 at the last step (2 at the one before). Extrapolating
        over the large final steps of a short run is what makes multistep solvers unstable
        there (Lu et al.'s fix, diffusers' ``lower_order_final``)."""
        run_length = len(state.tweedie) - 1
        if not self.lower_order_final or run_length >= LOWER_ORDER_FINAL_BELOW:
            return state.history
        remaining = run_length - state.index
        return state.history[: max(remaining - 1, 0)]

    def _next(
        self, state: MultistepState, lam: Tensor | None, denoised: Tensor, previous: Any = None
    ) -> MultistepState:
        history = ((lam, denoised), *state.history)[: self.memory]
        return MultistepState(state.levels, state.index + 1, history, previous, state.tweedie, state.rows)

    def _begin(self, x: Tensor, t: Tensor, state: MultistepState, jumped: bool):
        """(state to build on, level here, level there, data prediction here)."""
        state = self._continued(state, jumped)
        here, there = (state.levels[state.index], state.levels[state.index + 1]) if state.levels else (None, None)
        return state, here, there, tweedie_from_row(x, self.score(x, t), state.tweedie[state.index])


@attrs.define
class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M): x/alpha <- e^-h x/alpha + (1 - e^-h) [(1 + 1/2r) D - (1/2r) D_prev].

    A step is x' = c_x x + c_D D (+ c_prev D_prev), with the c's computed once per run.
    """

    name = "dpmpp_2m"
    ode_order = 2.0
    memory = 1
    uses_levels = False

    def _coefficient_rows(self, noise: GridNoise) -> Rows:
        alpha, sigma, lam = noise.alpha, noise.sigma, noise.lam
        h = lam[1:] - lam[:-1]
        scale_x = sigma[1:] / sigma[:-1]
        scale_d = -alpha[1:] * torch.expm1(-h)  # DDIM's weight of D
        half_inv_r = torch.cat([h.new_zeros(1), h[1:] / h[:-1] / 2])  # (lam' - lam) / (lam - lam_prev) / 2
        first = zip(scale_x.tolist(), scale_d.tolist())
        second = zip(scale_x.tolist(), (scale_d * (1 + half_inv_r)).tolist(), (-scale_d * half_inv_r).tolist())
        return tuple((row_1, row_2 if i else None) for i, (row_1, row_2) in enumerate(zip(first, second)))

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
        past = self._usable(state)
        x_next = combine_rows(x, denoised, past, state.rows[state.index][len(past)])
        return x_next, self._next(state, None, denoised)


@attrs.define
class DPMSolverPP3M(_Multistep):
    """DPM-Solver++(3M): the exponential integrator with the first and second divided
    differences of the last three data predictions (phi_2 and phi_3 terms).

    The second difference d2 approximates h^2 D''/2, so third order needs 2 phi_3 d2;
    the reference implementations (dpm-solver, diffusers, k-diffusion) take phi_3 d2,
    which leaves the method second order (docs/few-step.md; tests/test_fast_samplers.py
    measures both). The first two steps have less history and lower order; near T the
    data prediction hardly moves with lam, so this costs nothing measurable.
    """

    name = "dpmpp_3m"
    ode_order = 3.0
    memory = 2

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
        h = there.lam - here.lam
        scaled = torch.exp(-h) * (x / here.alpha) - torch.expm1(-h) * denoised
        past = self._usable(state)
        if past:
            phi_2 = torch.expm1(-h) / h + 1
            lam_1, denoised_1 = past[0]
            r0 = (here.lam - lam_1) / h
            d1_0 = (denoised - denoised_1) / r0
            if len(past) == 2:
                lam_2, denoised_2 = past[1]
                r1 = (lam_1 - lam_2) / h
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h - 0.5
                scaled = scaled + phi_2 * d1 - self.second_difference_weight * phi_3 * d2
            else:
                scaled = scaled + phi_2 * d1_0
        return there.alpha * scaled, self._next(state, here.lam, denoised)

    #: 2 for third order; 1 reproduces the reference implementations (kept for comparison).
    second_difference_weight: ClassVar[float] = 2.0


@attrs.define
class SDEDPMSolverPP2M(_Multistep):
    """SDE-DPM-Solver++(2M): the reverse SDE solved with the same exponential integrator.

    ``eta`` scales the injected noise: 1 is the reverse SDE (the ancestral/posterior step
    at first order), 0 is DPM-Solver++(2M)'s ODE with the midpoint correction.
    """

    name = "sde_dpmpp_2m"
    memory = 1
    eta: float = attrs.field(default=1.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0)])

    @property
    def weak_order(self) -> float | None:  # type: ignore[override]
        """First order on the reverse SDE; eta = 0 draws no noise."""
        return 1.0 if self.eta > 0 else None

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
        h = there.lam - here.lam
        decay = -torch.expm1(-(1 + self.eta) * h)  # 1 - e^{-(1 + eta) h}
        scaled = torch.exp(-(1 + self.eta) * h) * (x / here.alpha) + decay * denoised
        past = self._usable(state)
        if past:
            lam_prev, denoised_prev = past[0]
            inv_r = h / (here.lam - lam_prev)
            scaled = scaled + 0.5 * decay * inv_r * (denoised - denoised_prev)
        x_next = there.alpha * scaled
        if self.eta != 0:
            x_next = x_next + there.sigma * torch.sqrt(-torch.expm1(-2 * self.eta * h)) * randn_like(x, generator)
        return x_next, self._next(state, here.lam, denoised)
