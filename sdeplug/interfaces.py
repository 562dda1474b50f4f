"""The seven kinds of part: SDE (and LinearSDE), ScoreModel, Predictor, Corrector, ODESolver,
TimeGrid and TimeClassifier.

Conventions (see docs/concepts.md): time runs from data at t = 0 to the prior at
t = T; ``x`` has shape (batch, *event_shape) and ``t`` shape (batch,); randomness
comes from an explicit ``torch.Generator`` when the caller passes one.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import attrs
import torch
from torch import Tensor

from sdeplug.tensors import per_sample, randn, tweedie


def _time_derivative(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """d fn / dt at t (shape (batch,)) by autograd in float64, returned in t's dtype and device."""
    with torch.enable_grad():
        s = t.detach().to(torch.float64).requires_grad_(True)
        value = fn(s)
        if not value.requires_grad:  # constant in t (a VE's alpha)
            return torch.zeros_like(t)
        (derivative,) = torch.autograd.grad(value.sum(), s, allow_unused=True)
    return torch.zeros_like(t) if derivative is None else derivative.to(dtype=t.dtype)


ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score(x, t) -> tensor like x``, an approximation of grad_x log p_t(x)."""

ODEFunc = Callable[[Tensor, Tensor], Tensor]
"""``F(t, y) -> dy/dt`` with ``t`` a 0-dim tensor, as torchdiffeq expects."""


class SDE(abc.ABC):
    """A forward SDE dx = f(x, t) dt + g(t) dw on [0, T], carrying data to a prior."""

    name: ClassVar[str | None] = None
    #: The end time of the diffusion.
    T: float = 1.0
    #: Where sampling stops (the paper: 1e-3 for VP and sub-VP, 1e-5 for VE). Likelihoods
    #: start at 1e-5 for every SDE, as the paper's do (``sdeplug.likelihood.LIKELIHOOD_EPS``).
    default_eps: float = 1e-3

    @abc.abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x, t), a tensor like x."""

    @abc.abstractmethod
    def diffusion(self, t: Tensor) -> Tensor:
        """g(t), shape (batch,)."""

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (like x0) and std (shape (batch,)) of the perturbation kernel p_0t(x_t | x_0)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form perturbation kernel (marginal_prob); "
            "parts that need one (denoising score matching, annealed Langevin, the oracle) "
            "cannot use it"
        )

    @classmethod
    def has_marginals(cls) -> bool:
        """Whether the SDE has a closed-form perturbation kernel (it overrides ``marginal_prob``);
        denoising score matching, annealed Langevin and the oracle need one."""
        return cls.marginal_prob is not SDE.marginal_prob

    @abc.abstractmethod
    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Samples of the prior p_T, shape (batch, *event_shape)."""

    @abc.abstractmethod
    def prior_logp(self, z: Tensor) -> Tensor:
        """log p_T(z) per sample, shape (batch,)."""

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """(f, G) of the forward step from t - dt to t: x_t = x_{t-dt} + f + G z.

        The default is Euler-Maruyama, f = f(x, t) dt and G = g(t) sqrt(dt); ``dt`` has
        shape (batch,) and is positive. G has shape (batch,).
        """
        f = self.drift(x, t) * per_sample(dt, x)
        G = self.diffusion(t) * torch.sqrt(dt)
        return f, G

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """The factor alpha_i in the Langevin step size eps = 2 alpha (snr |z| / |s|)^2.

        The paper's code takes 1 for VE and 1 - beta_i of the DDPM chain for VP, and no
        value at all for sub-VP; here every SDE has one, 1 unless it says otherwise.
        """
        return torch.ones_like(t)

    def reverse(self, score: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or the probability-flow ODE) for this SDE and a score."""
        return ReverseSDE(self, score, probability_flow)

    @classmethod
    def example_options(cls) -> Any:
        """Valid option dicts for the testing kit: a hypothesis strategy of them, or a list
        (default: the defaults alone)."""
        return ({},)


class LinearSDE(SDE):
    """An SDE whose marginals are x_t = alpha(t) x_0 + sigma(t) z with z ~ N(0, I).

    This gives closed-form perturbation kernels, exact oracle scores for Gaussian
    mixtures, and what exponential-integrator samplers need. ``alpha`` and ``sigma`` are
    all an author must write: the drift f(t) x with f = d log(alpha)/dt, the diffusion
    g^2 = d(sigma^2)/dt - 2 f sigma^2 and the prior N(0, sigma(T)^2 I) follow from them
    (derivatives by autograd in float64); a closed form may override any of them.
    """

    @abc.abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """The mean scale alpha(t) > 0, shape (batch,); alpha(0) = 1 and decreasing or flat."""

    @abc.abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """The marginal std sigma(t) > 0 for t > 0, shape (batch,), with alpha/sigma decreasing in t."""

    def marginal_prob(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return per_sample(self.alpha(t), x0) * x0, self.sigma(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """f(t) x, with f from ``drift_coefficient``."""
        return per_sample(self.drift_coefficient(t), x) * x

    def drift_coefficient(self, t: Tensor) -> Tensor:
        """f(t) in the drift f(x, t) = f(t) x, shape (batch,); every LinearSDE's drift has this form.

        A subclass that writes ``drift`` has it read off at x = 1; otherwise it is
        d log(alpha)/dt. Samplers use it to compute a grid's step coefficients once per run.
        """
        if type(self).drift is not LinearSDE.drift:
            return self.drift(torch.ones(t.shape[0], 1, dtype=t.dtype, device=t.device), t)[:, 0]
        return _time_derivative(lambda s: torch.log(self.alpha(s)), t)

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t) = sqrt(d(sigma^2)/dt - 2 f(t) sigma^2): what keeps the marginals' variance."""
        growth = _time_derivative(lambda s: self.sigma(s) ** 2, t)
        g2 = growth - 2 * self.drift_coefficient(t) * self.sigma(t) ** 2
        return torch.sqrt(torch.clamp(g2, min=0))

    def prior_sampling(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """N(0, sigma(T)^2 I): the marginal at T when alpha(T) x_0 is negligible."""
        return self._prior_std() * randn(shape, generator, device, dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, sigma(T)^2 I) per sample, summed in the log domain (no overflow)."""
        std = self._prior_std()
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * (flat / std).pow(2).sum(1) - flat.shape[1] * (math.log(std) + 0.5 * math.log(2 * math.pi))

    def _prior_std(self) -> float:
        return float(self.sigma(torch.tensor([float(self.T)], dtype=torch.float64))[0])

    def data_prediction(self, x: Tensor, t: Tensor, score: Tensor) -> Tensor:
        """Tweedie's E[x_0 | x_t = x] = (x + sigma(t)^2 score) / alpha(t), from the score's value at (x, t)."""
        return tweedie(x, score, per_sample(self.alpha(t), x), per_sample(self.sigma(t), x))

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Scale a and variance v of the exact kernel from s to t > s: x_t = a x_s + sqrt(v) z.

        ``s`` and ``t`` have shape (batch,), 0 <= s < t <= T; a and v have shape (batch,).

        It follows from the marginals alone: a = alpha(t)/alpha(s), v = sigma(t)^2 - a^2 sigma(s)^2.
        Subclasses may override it to avoid cancellation in v for small steps.
        """
        a = self.alpha(t) / self.alpha(s)
        return a, self.sigma(t) ** 2 - (a * self.sigma(s)) ** 2

    def log_snr(self, t: Tensor) -> Tensor:
        """log(alpha(t)^2 / sigma(t)^2), decreasing in t."""
        return 2.0 * (torch.log(self.alpha(t)) - torch.log(self.sigma(t)))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """The time in [0, T] at which log_snr(t) takes the given values (the inverse of log_snr).

        ``log_snr`` has any shape and lies in [log_snr(T), log_snr(0)] (values beyond map to
        the nearer end); the times have its shape and dtype.

        The default bisects in float64 to the last bit (log_snr must decrease in t);
        subclasses with a closed form may override it. Used to build log-SNR and EDM
        grids and by samplers that step to a given noise level.
        """
        target = log_snr.to(torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.full_like(target, float(self.T))
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            too_early = self.log_snr(mid) > target
            lo, hi = torch.where(too_early, mid, lo), torch.where(too_early, hi, mid)
        return (0.5 * (lo + hi)).to(log_snr.dtype)


@attrs.define(frozen=True)
class ReverseSDE:
    """The reverse-time SDE dx = [f - g^2 s] dt + g dw_bar (dt < 0) of an SDE and a score.

    With ``probability_flow`` it is the probability-flow ODE dx = [f - g^2 s / 2] dt.
    ``drift`` is expressed in forward time: a step from t to t + dt with dt < 0 moves x
    by drift * dt.
    """

    sde: SDE
    score: ScoreFn
    probability_flow: bool = False

    @property
    def _score_weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        g2 = per_sample(self.sde.diffusion(t) ** 2, x)
        return self.sde.drift(x, t) - g2 * self.score(x, t) * self._score_weight

    def diffusion(self, t: Tensor) -> Tensor:
        g = self.sde.diffusion(t)
        return torch.zeros_like(g) if self.probability_flow else g

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """(rev_f, rev_G) for the step from t back to t - dt: x_{t-dt} = x_t - rev_f + rev_G z."""
        f, G = self.sde.discretize(x, t, dt)
        rev_f = f - per_sample(G**2, x) * self.score(x, t) * self._score_weight
        rev_G = torch.zeros_like(G) if self.probability_flow else G
        return rev_f, rev_G


class ScoreModel(torch.nn.Module, abc.ABC):
    """A network (or closed form) with ``forward(x, t) -> score``, approximating grad_x log p_t(x).

    A network made for one SDE (a paper preset) names it in ``sde_name``, the registered SDE
    name; the command line then refuses a config whose [sde] names another.
    """

    name: ClassVar[str | None] = None
    sde_name: str | None = None
    #: The classes of a conditional model, None for an unconditional one. A conditional model's
    #: forward takes the labels too, ``forward(x, t, labels)``: one integer per sample in
    #: [0, num_classes), or ``sdeplug.NULL_LABEL`` (-1) for the unconditional score. Samplers
    #: see it through ``sdeplug.Conditioned`` or a guidance (see ``sdeplug.conditioning``).
    num_classes: int | None = None

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The score at (x, t), a tensor like x."""


class TimeClassifier(torch.nn.Module, abc.ABC):
    """A time-dependent classifier: ``forward(x, t) -> logits`` of shape (batch, classes),
    trained on noisy x_t ~ p_0t(x_t | x_0) so that it approximates p_t(y | x_t) for guidance.

    Built as ``cls(event_shape=..., num_classes=..., **options)``.
    """

    name: ClassVar[str | None] = None
    num_classes: int

    @abc.abstractmethod
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Logits of the classes at (x, t), shape (batch, num_classes)."""


class FeatureExtractor(torch.nn.Module, abc.ABC):
    """Features of data for sample-quality metrics (FID, KID, precision/recall):
    ``forward(x) -> (batch, dim)`` for x of shape (batch, *event_shape) in the data's own range.

    Built as ``cls(event_shape=..., **options)``. ``identity()`` says what the features are and
    how inputs are preprocessed; statistics are comparable only when their identities are
    equal. ``comparable_with_published`` is True only for the features published numbers
    use (Inception-v3 pool features for FID).
    """

    name: ClassVar[str | None] = None
    comparable_with_published: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Features of each sample, shape (batch, dim)."""

    def identity(self) -> dict:
        """What makes two sets of features comparable: the extractor's name and its settings."""
        return {"name": self.name}


class Predictor(abc.ABC):
    """One step of the reverse SDE (or the probability-flow ODE) from t to t_next < t.

    Built as ``cls(sde, score, **options)``. A run is explicit about what carries over
    from step to step (as torchsde's extra solver state and diffrax's solver state are)::

        state = predictor.init(x, grid)
        for i in range(len(grid) - 1):
            x, state = predictor.step(x, t_i, t_next_i, state, generator, jumped=moved)

    ``jumped`` is True when something else (a corrector, a constraint) moved x since the
    previous step, so a multistep predictor knows its history no longer lies on the path.
    """

    name: ClassVar[str | None] = None
    sde_types: ClassVar[tuple[type, ...]] = (SDE,)
    #: Weak order of convergence in the step size, if the predictor claims one (the testing
    #: kit checks the observed order against it). May depend on options: read it from the
    #: built part.
    weak_order: float | None = None
    #: Order of the global error of a deterministic predictor on the probability-flow ODE, if
    #: it claims one (the testing kit checks it against the exact flow of Gaussian data). May
    #: depend on options: read it from the built part.
    ode_order: float | None = None
    #: True for a part that deliberately leaves x unchanged (the "none" parts).
    identity: ClassVar[bool] = False
    #: True for a part whose step for one sample depends on the other samples of the batch
    #: (the testing kit checks that it does not, unless declared). May depend on options.
    batch_coupled: bool = False
    sde: SDE
    score: ScoreFn

    def init(self, x: Tensor, grid: Tensor) -> Any:
        """The state a run starts from, given the initial x and the whole decreasing grid of
        times (1-D, x's device and dtype); step i then goes from grid[i] to grid[i + 1].
        Single-step predictors keep no state: the default is None."""
        return None

    @classmethod
    def example_options(cls) -> Any:
        """Option sets the testing kit checks besides the defaults: a list of option dicts, or
        a hypothesis strategy of them (default: none). Declare every code path an option opens."""
        return ()

    @abc.abstractmethod
    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: Any,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, Any]:
        """Move x from time t to t_next (both shape (batch,)); return the new x and state."""


class Corrector(abc.ABC):
    """MCMC steps at a fixed time t that move x towards p_t (Langevin and friends).

    Built as ``cls(sde, score, **options)``.
    """

    name: ClassVar[str | None] = None
    sde_types: ClassVar[tuple[type, ...]] = (SDE,)
    #: True for a part that deliberately leaves x unchanged (the "none" parts).
    identity: ClassVar[bool] = False
    #: True for a part whose step for one sample depends on the other samples of the batch
    #: (the paper's Langevin step size uses batch-mean norms); the testing kit checks that it
    #: does not, unless declared. May depend on options.
    batch_coupled: bool = False
    sde: SDE
    score: ScoreFn

    @classmethod
    def example_options(cls) -> Any:
        """Option sets the testing kit checks besides the defaults: a list of option dicts, or
        a hypothesis strategy of them (default: none)."""
        return ()

    def for_grid(self, times: Tensor) -> Corrector:
        """This corrector for a run on ``times`` (the decreasing sampling grid), called once per
        run before the first step. A corrector whose step depends on the grid's spacing
        returns a copy that knows it; the default is the corrector itself."""
        return self

    @abc.abstractmethod
    def step(self, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Correct x at time t (shape (batch,)); return the corrected x."""


@attrs.frozen
class ODESolution:
    """What an ODESolver returns: the state at t1 and the number of function evaluations."""

    y: Tensor
    nfe: int


@attrs.frozen
class DenseODESolution:
    """An adaptive solve that keeps its accepted steps and can give the states within them.

    ``steps``: the accepted step boundaries, t0 first and t1 last, 1-D. ``states_at(times)``:
    the states at ``times`` (1-D, strictly monotone from t0 towards t1, inside (t0, t1]),
    stacked on a new first dimension, and the function evaluations that took. They agree with
    the solve to its tolerance, so a quadrature on the steps follows the same path.
    """

    y: Tensor
    nfe: int
    steps: Tensor
    states_at: Callable[[Tensor], tuple[Tensor, int]]


class ODESolver(abc.ABC):
    """Integrates dy/dt = F(t, y) from t0 to t1 (either direction). Built as ``cls(**options)``."""

    name: ClassVar[str | None] = None
    #: Order of convergence of the global error in the step size (None: not claimed). May
    #: depend on options: read it from the built part.
    order: int | None = None
    #: Whether it chooses its own steps (then ``grid`` only gives the end points).
    adaptive: bool = False
    #: Whether ``solve_dense`` is offered (may depend on options: read it from the built part).
    dense_output: bool = False

    @abc.abstractmethod
    def solve(self, F: ODEFunc, y0: Tensor, t0: float, t1: float, grid: Tensor | None = None) -> ODESolution:
        """Solve from y0 at t0 to t1. Fixed-step solvers step through ``grid`` when given
        (grid[0] = t0, grid[-1] = t1), otherwise through their own uniform grid."""

    def solve_dense(self, F: ODEFunc, y0: Tensor, t0: float, t1: float) -> DenseODESolution:
        """Solve as ``solve`` does and keep the accepted steps and the states within them (for
        quadratures along the path, as the exact likelihood's divergence integral). Optional:
        a solver that offers it sets ``dense_output``."""
        raise NotImplementedError(f"{type(self).__name__} has no dense output (its dense_output is False)")


class TimeGrid(abc.ABC):
    """A rule that places the sampling times: ``steps`` + 1 decreasing times from T to eps.

    Built as ``cls(**options)``; ``sde_types`` names the SDEs it can handle (log-SNR
    and EDM grids need a LinearSDE).
    """

    name: ClassVar[str | None] = None
    sde_types: ClassVar[tuple[type, ...]] = (SDE,)

    @abc.abstractmethod
    def times(
        self,
        sde: SDE,
        steps: int,
        eps: float,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """A 1-D tensor of ``steps`` + 1 strictly decreasing times, first T, last eps."""
