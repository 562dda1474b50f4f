"""DPM-Solver++ multistep samplers (Lu et al. 2022), second and third order, and the
stochastic SDE-DPM-Solver++(2M), written against alpha(t) and sigma(t) of any LinearSDE.

Each step costs one score evaluation: the data predictions of the last steps are kept
and combined into a higher-order step of the exponential integrator in lam = -log(sigma/alpha).
The first steps of a run use lower orders until enough history exists (the usual
warm-up); ``reset`` clears the history and the samplers call it before every run.
Formulas follow k-diffusion's ``sample_dpmpp_2m``, ``sample_dpmpp_3m_sde`` (eta = 0)
and ``sample_dpmpp_2m_sde`` (midpoint), with x / alpha in place of x.
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, Predictor, ScoreFn, per_sample, randn_like
from sdeplug_fast.noise_levels import LevelCache, NoiseLevel, data_prediction


#: Runs with fewer steps than this lower the order of their final steps (diffusers' rule).
LOWER_ORDER_FINAL_BELOW = 15


@attrs.define
class _Multistep(Predictor):
    """Shared state of the multistep predictors: (lam, D) of the most recent steps."""

    sde_types = (LinearSDE,)
    #: How many earlier data predictions a step uses.
    history: ClassVar[int] = 1

    sde: LinearSDE
    score: ScoreFn
    lower_order_final: bool = attrs.field(default=True, kw_only=True, validator=v.instance_of(bool))
    _past: list[tuple[Tensor, Tensor]] = attrs.field(factory=list, init=False, repr=False)
    _run_length: int | None = attrs.field(default=None, init=False, repr=False)
    _taken: int = attrs.field(default=0, init=False, repr=False)
    _last_output: Tensor | None = attrs.field(default=None, init=False, repr=False)
    _levels_seen: LevelCache = attrs.field(factory=LevelCache, init=False, repr=False)

    def reset(self, steps: int | None = None) -> None:
        self._past.clear()
        self._levels_seen.clear()
        self._run_length, self._taken, self._last_output = steps, 0, None

    def _was_moved(self, x: Tensor) -> bool:
        """Whether x is not what the last step returned (a corrector moved it)."""
        return self._last_output is not None and x is not self._last_output

    def _continues(self, x: Tensor) -> None:
        """Forget the history when a corrector moved x: the earlier predictions no longer
        lie on its trajectory (extrapolating them amplifies the corrector's noise). With a
        corrector after every step the predictor is then the first-order exponential
        integrator, which is consistent."""
        if self._was_moved(x):
            self._past.clear()

    def _returning(self, x_next: Tensor) -> Tensor:
        self._last_output = x_next
        return x_next

    def _usable_history(self) -> list[tuple[Tensor, Tensor]]:
        """The earlier predictions this step may use: all of them, except on the last steps
        of a run shorter than LOWER_ORDER_FINAL_BELOW steps with ``lower_order_final``,
        where the order drops to 1 at the last step (2 at the one before). Extrapolating
        over the large final steps of a short run is what makes multistep solvers unstable
        there (Lu et al.'s fix, diffusers' ``lower_order_final``)."""
        self._taken += 1
        if not self.lower_order_final or self._run_length is None or self._run_length >= LOWER_ORDER_FINAL_BELOW:
            return self._past
        remaining = self._run_length - self._taken + 1
        return self._past[: max(remaining - 1, 0)]

    def _remember(self, lam: Tensor, denoised: Tensor) -> None:
        self._past.insert(0, (lam, denoised))
        del self._past[self.history :]

    def _levels(self, x: Tensor, t: Tensor, t_next: Tensor) -> tuple[NoiseLevel, NoiseLevel, Tensor, Tensor]:
        self._continues(x)
        here, there = self._levels_seen.at(self.sde, t), NoiseLevel.at(self.sde, t_next)
        self._levels_seen.keep(t_next, there)
        denoised = data_prediction(self.score, x, t, here)
        return here, there, denoised, there.lam - here.lam


@attrs.define
class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M): x/alpha <- e^-h x/alpha + (1 - e^-h) [(1 + 1/2r) D - (1/2r) D_prev]."""

    name = "dpmpp_2m"
    ode_order = 2.0
    history = 1

    def step(self, x: Tensor, t: Tensor, t_next: Tensor, generator: torch.Generator | None = None):
        here, there, denoised, h = self._levels(x, t, t_next)
        combined, past = denoised, self._usable_history()
        if past:
            lam_prev, denoised_prev = past[0]
            half_inv_r = per_sample(h / (here.lam - lam_prev), x) / 2
            combined = (1 + half_inv_r) * denoised - half_inv_r * denoised_prev
        self._remember(here.lam, denoised)
        x_next = per_sample(there.sigma / here.sigma, x) * x - per_sample(there.alpha * torch.expm1(-h), x) * combined
        return self._returning(x_next), x_next


@attrs.define
class DPMSolverPP3M(_Multistep):
    """DPM-Solver++(3M): the exponential integrator with the first and second divided
    differences of the last three data predictions (phi_2 and phi_3 terms).

    The second difference d2 approximates h^2 D''/2, so third order needs 2 phi_3 d2;
    the reference implementations (dpm-solver, diffusers, k-diffusion) take phi_3 d2,
    which leaves the method second order (docs/user-guide.md; tests/test_fast_samplers.py
    measures both). The first two steps have less history and lower order; near T the
    data prediction hardly moves with lam, so this costs nothing measurable.
    """

    name = "dpmpp_3m"
    ode_order = 3.0
    history = 2

    def step(self, x: Tensor, t: Tensor, t_next: Tensor, generator: torch.Generator | None = None):
        here, there, denoised, h = self._levels(x, t, t_next)
        hx = per_sample(h, x)
        scaled = torch.exp(-hx) * (x / per_sample(here.alpha, x)) - torch.expm1(-hx) * denoised
        past = self._usable_history()
        if past:
            phi_2 = torch.expm1(-hx) / hx + 1
            lam_1, denoised_1 = past[0]
            r0 = per_sample((here.lam - lam_1) / h, x)
            d1_0 = (denoised - denoised_1) / r0
            if len(past) == 2:
                lam_2, denoised_2 = past[1]
                r1 = per_sample((lam_1 - lam_2) / h, x)
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / hx - 0.5
                scaled = scaled + phi_2 * d1 - self.second_difference_weight * phi_3 * d2
            else:
                scaled = scaled + phi_2 * d1_0
        self._remember(here.lam, denoised)
        x_next = per_sample(there.alpha, x) * scaled
        return self._returning(x_next), x_next

    #: 2 for third order; 1 reproduces the reference implementations (kept for comparison).
    second_difference_weight: ClassVar[float] = 2.0


@attrs.define
class SDEDPMSolverPP2M(_Multistep):
    """SDE-DPM-Solver++(2M): the reverse SDE solved with the same exponential integrator.

    ``eta`` scales the injected noise: 1 is the reverse SDE (the ancestral/posterior step
    at first order), 0 is DPM-Solver++(2M)'s ODE with the midpoint correction.
    """

    name = "sde_dpmpp_2m"
    weak_order = 1.0
    history = 1
    eta: float = attrs.field(default=1.0, kw_only=True, validator=[v.instance_of((int, float)), v.ge(0)])

    def step(self, x: Tensor, t: Tensor, t_next: Tensor, generator: torch.Generator | None = None):
        here, there, denoised, h = self._levels(x, t, t_next)
        hx = per_sample(h, x)
        decay = -torch.expm1(-(1 + self.eta) * hx)  # 1 - e^{-(1 + eta) h}
        scaled = torch.exp(-(1 + self.eta) * hx) * (x / per_sample(here.alpha, x)) + decay * denoised
        past = self._usable_history()
        if past:
            lam_prev, denoised_prev = past[0]
            inv_r = per_sample(h / (here.lam - lam_prev), x)
            scaled = scaled + 0.5 * decay * inv_r * (denoised - denoised_prev)
        self._remember(here.lam, denoised)
        x_mean = per_sample(there.alpha, x) * scaled
        if self.eta == 0:
            return self._returning(x_mean), x_mean
        noise_std = there.sigma * torch.sqrt(-torch.expm1(-2 * self.eta * h))
        return self._returning(x_mean + per_sample(noise_std, x) * randn_like(x, generator)), x_mean
