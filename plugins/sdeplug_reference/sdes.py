"""The paper's three SDEs: VE (SMLD), VP (DDPM) and sub-VP, with the paper's defaults; and
DDPM's discrete chain as an SDE (``ddpm``), for models trained on its discrete schedule."""

from __future__ import annotations

import math

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, per_sample, randn, sum_except_batch


def _positive(_inst, attribute, value: float) -> None:
    if not 0 < value < math.inf:
        raise ValueError(f"{attribute.name} must be a finite positive number; got {value!r}")


def _whole(value: object) -> int:
    """An integer option given as an int (or a float with no fraction), never truncated."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"N must be a positive integer; got {value!r}")
    return int(value)


def _normal_logp(z: Tensor, std: float) -> Tensor:
    """log N(z; 0, std^2 I) per sample."""
    d = z[0].numel()
    return -0.5 * d * math.log(2 * math.pi * std**2) - sum_except_batch(z**2) / (2 * std**2)


@attrs.frozen(kw_only=True)
class VESDE(LinearSDE):
    """Variance exploding: dx = sqrt(d sigma^2/dt) dw, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Marginals x_t = x_0 + sigma(t) z (note sigma(0) = sigma_min, as in the paper).
    """

    name = "ve"
    default_eps = 1e-5

    sigma_min: float = attrs.field(default=0.01, converter=float, validator=_positive)
    sigma_max: float = attrs.field(default=50.0, converter=float, validator=_positive)
    T: float = attrs.field(default=1.0, converter=float, validator=_positive)

    @classmethod
    def example_options(cls):
        from hypothesis import strategies as st

        return st.builds(
            lambda lo, ratio: {"sigma_min": lo, "sigma_max": lo * ratio}, st.floats(0.005, 0.1), st.floats(10.0, 5000.0)
        )

    def __attrs_post_init__(self) -> None:
        if not self.sigma_max > self.sigma_min:
            raise ValueError(
                f"sigma_max must exceed sigma_min; got sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """log_snr = -2 log sigma(t), solved for t (in float64; beyond the ends, the nearer end)."""
        t = (-0.5 * log_snr.to(torch.float64) - math.log(self.sigma_min)) / self._log_ratio
        return t.clamp(0.0, self.T).to(log_snr.dtype)

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # sigma_t^2 - sigma_s^2, written to keep its precision for small steps.
        return torch.ones_like(t), self.sigma(t) ** 2 * -torch.expm1(-2 * (t - s) * self._log_ratio)

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """The SMLD chain: f = 0, G = sqrt(sigma(t)^2 - sigma(t - dt)^2), exact for this SDE."""
        _, var = self.transition(t - dt, t)
        return torch.zeros_like(x), torch.sqrt(var)

    def prior_sampling(self, shape, generator=None, device=None, dtype=None) -> Tensor:
        return randn(shape, generator, device, dtype) * self.sigma_max

    def prior_logp(self, z: Tensor) -> Tensor:
        return _normal_logp(z, self.sigma_max)


class _MeanDecay:
    """alpha(t) = exp(log_mean_coeff(t)), drift -beta(t) x / 2 and a standard normal prior:
    what VP, sub-VP and DDPM's chain share, given their ``log_mean_coeff`` and ``beta``."""

    __slots__ = ()

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_mean_coeff(t))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -0.5 * per_sample(self.beta(t), x) * x

    def prior_sampling(self, shape, generator=None, device=None, dtype=None) -> Tensor:
        return randn(shape, generator, device, dtype)

    def prior_logp(self, z: Tensor) -> Tensor:
        return _normal_logp(z, 1.0)


class _VariancePreserving:
    """sigma(t)^2 = 1 - alpha(t)^2 and g(t) = sqrt(beta(t)), with exact kernels: VP and DDPM's chain."""

    __slots__ = ()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(2 * self.log_mean_coeff(t)))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_a = self.log_mean_coeff(t) - self.log_mean_coeff(s)
        return torch.exp(log_a), -torch.expm1(2 * log_a)

    def discretize(self, x: Tensor, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        """The DDPM chain x_t = sqrt(1 - beta_i) x + sqrt(beta_i) z with 1 - beta_i = (alpha(t)/alpha(t-dt))^2.

        This is the exact transition of the SDE over the step; for VP the paper's code takes
        beta_i = beta(t) / N, its first-order approximation on its own grid.
        """
        a, var = self.transition(t - dt, t)
        return per_sample(a - 1.0, x) * x, torch.sqrt(var)


@attrs.frozen(kw_only=True)
class _BetaSchedule(_MeanDecay, LinearSDE):
    """The linear schedule beta(t) = beta_min + t (beta_max - beta_min) shared by VP and sub-VP."""

    default_eps = 1e-3

    beta_min: float = attrs.field(default=0.1, converter=float, validator=_positive)
    beta_max: float = attrs.field(default=20.0, converter=float, validator=_positive)
    T: float = attrs.field(default=1.0, converter=float, validator=_positive)
    #: Steps of the paper's discrete chain; used only for alpha in the Langevin step rule.
    N: int = attrs.field(default=1000, converter=_whole, validator=v.gt(0))

    @classmethod
    def example_options(cls):
        from hypothesis import strategies as st

        return st.builds(
            lambda lo, span: {"beta_min": lo, "beta_max": lo + span}, st.floats(0.05, 1.0), st.floats(0.0, 25.0)
        )

    def __attrs_post_init__(self) -> None:
        if not self.beta_max >= self.beta_min:
            raise ValueError(
                f"beta_max must be at least beta_min; got beta_min={self.beta_min}, beta_max={self.beta_max}"
            )

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log alpha(t) = -int_0^t beta / 2."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """1 - beta_i of the paper's N-step chain, beta_i = beta(t) T / N."""
        return 1.0 - self.beta(t) * self.T / self.N

    def _t_from_decay(self, decay: Tensor, dtype: torch.dtype) -> Tensor:
        """The t at which -2 log alpha(t) = beta_min t + (beta_max - beta_min) t^2 / 2 equals
        ``decay`` (float64), by the root of that quadratic written without cancellation."""
        span = self.beta_max - self.beta_min
        decay = decay.clamp(0.0, self.beta_min * self.T + 0.5 * span * self.T**2)
        t = 2 * decay / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * span * decay))
        return t.clamp(0.0, self.T).to(dtype)


@attrs.frozen(kw_only=True)
class VPSDE(_VariancePreserving, _BetaSchedule):
    """Variance preserving: dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw; sigma(t) = sqrt(1 - alpha(t)^2)."""

    name = "vp"

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """alpha(t)^2 = sigmoid(log_snr), so -2 log alpha(t) = softplus(-log_snr): a quadratic in t."""
        return self._t_from_decay(torch.nn.functional.softplus(-log_snr.to(torch.float64)), log_snr.dtype)


@attrs.frozen(kw_only=True)
class SubVPSDE(_BetaSchedule):
    """Sub-VP: dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2 int_0^t beta))) dw; sigma(t) = 1 - alpha(t)^2.

    The std has no square root. Its discretize is Euler-Maruyama, as in the paper.
    """

    name = "subvp"

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(2 * self.log_mean_coeff(t))

    def diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(4 * self.log_mean_coeff(t)))

    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """With u = sigma(t) = 1 - alpha(t)^2 and r = sqrt(1 + 4 exp(log_snr)): exp(log_snr) u^2 + u
        - 1 = 0, so u = 2 / (1 + r) and alpha(t)^2 = 4 exp(log_snr) / (1 + r)^2; -2 log alpha(t),
        a quadratic in t, is -log(1 - u) where u is small and -log(alpha^2) where it is near 1."""
        log_snr64 = log_snr.to(torch.float64)
        r = torch.sqrt(1 + 4 * torch.exp(log_snr64))
        from_sigma = -torch.log1p(-2 / (1 + r))
        from_alpha = 2 * torch.log1p(r) - log_snr64 - math.log(4.0)
        return self._t_from_decay(torch.where(log_snr64 >= 0, from_sigma, from_alpha), log_snr.dtype)


#: The beta schedules of diffusers' DDPM-family schedulers that the ``ddpm`` SDE follows.
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def chain_betas(schedule: str, beta_start: float, beta_end: float, n: int, dtype: torch.dtype) -> Tensor:
    """The N betas of a DDPM chain as diffusers' schedulers define them: "linear" from beta_start
    to beta_end, "scaled_linear" (the square of a line between their roots, latent diffusion's),
    "squaredcos_cap_v2" (the cosine schedule of Nichol & Dhariwal, each beta capped at 0.999)."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=dtype)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=dtype) ** 2

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(betas, dtype=dtype)


@attrs.frozen(kw_only=True)
class DDPMSDE(_VariancePreserving, _MeanDecay, LinearSDE):
    """DDPM's discrete chain as a VP SDE: step k of N sits at t_k = k / (N - 1), where
    alpha(t_k)^2 = prod_{i <= k} (1 - beta_i) exactly, with DDPM's betas (``beta_schedule``:
    linear from beta_start to beta_end by default, or another of ``BETA_SCHEDULES``); log alpha
    is linear between steps (beta(t) piecewise constant). ``table_dtype = "float32"`` computes
    the betas and their products in float32, as diffusers' schedulers do, so that a diffusers
    model sees the noise levels it was trained at to the last bit.

    On its grid the exact kernel from t_k to t_{k-1} is DDPM's x_k = sqrt(1 - beta_k) x_{k-1}
    + sqrt(beta_k) z, so the ``ancestral`` predictor is DDPM's sampler step for step. Step 0
    already carries noise beta_0 (sigma(0) = sqrt(beta_0)), as in DDPM. Its continuous
    counterpart is ``vp`` with beta_min = N beta_start and beta_max = N beta_end.
    """

    name = "ddpm"
    default_eps = 0.0

    beta_start: float = attrs.field(default=1e-4, converter=float, validator=_positive)
    beta_end: float = attrs.field(default=0.02, converter=float, validator=_positive)
    N: int = attrs.field(default=1000, converter=_whole, validator=v.gt(1))
    beta_schedule: str = attrs.field(default="linear", validator=v.in_(BETA_SCHEDULES))
    table_dtype: str = attrs.field(default="float64", validator=v.in_(("float64", "float32")))
    T: float = attrs.field(default=1.0, init=False)
    _log_alpha: Tensor = attrs.field(init=False, repr=False, eq=False)

    @classmethod
    def example_options(cls):
        from hypothesis import strategies as st

        return st.builds(
            lambda lo, span, n, schedule: {"beta_start": lo, "beta_end": lo + span, "N": n, "beta_schedule": schedule},
            st.floats(1e-5, 1e-3),
            st.floats(0.0, 0.05),
            st.integers(10, 1000),
            st.sampled_from(BETA_SCHEDULES),
        )

    def __attrs_post_init__(self) -> None:
        if not self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"need beta_start <= beta_end < 1; got beta_start={self.beta_start}, beta_end={self.beta_end}"
            )
        dtype = torch.float32 if self.table_dtype == "float32" else torch.float64
        betas = chain_betas(self.beta_schedule, self.beta_start, self.beta_end, self.N, dtype)
        if self.table_dtype == "float32":  # diffusers' alphas_cumprod, bit for bit
            log_alpha = 0.5 * torch.log(torch.cumprod(1.0 - betas, 0).to(torch.float64))
        else:
            log_alpha = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        object.__setattr__(self, "_log_alpha", log_alpha)

    def _position(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Step below t, the fraction of the way to the next, and log alpha's slope there."""
        table = self._log_alpha.to(t.device)
        s = (t.to(torch.float64) * (self.N - 1)).clamp(0, self.N - 1)
        k = s.floor().clamp(max=self.N - 2).long()
        slope = table[k + 1] - table[k]
        return table[k], s - k, slope

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        """log alpha(t), interpolated linearly between the steps (float64 inside)."""
        base, frac, slope = self._position(t)
        return (base + frac * slope).to(t.dtype)

    def beta(self, t: Tensor) -> Tensor:
        """-2 d log alpha / dt: constant between two steps."""
        _, _, slope = self._position(t)
        return (-2 * slope * (self.N - 1)).to(t.dtype)

    def langevin_alpha(self, t: Tensor) -> Tensor:
        """1 - beta_k of the chain's step at t."""
        return torch.exp(2 * self._position(t)[2]).to(t.dtype)
