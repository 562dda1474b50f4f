"""The bundled SDEs against simulation, closed forms and the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given

import sdeplug
from sdeplug.errors import OptionError
from sdeplug.testing.strategies import event_shapes, sdes, seeds

F64 = torch.float64


def _full(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=F64)


def test_marginal_std_is_the_papers():
    """VP std = sqrt(1 - e^{2 lmc}), sub-VP std = 1 - e^{2 lmc} (no root), VE std = sigma_min (ratio)^t."""
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=F64)
    lmc = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1
    vp, subvp, ve = (sdeplug.create("sde", n) for n in ("vp", "subvp", "ve"))
    x = torch.ones(4, 3, dtype=F64)
    torch.testing.assert_close(vp.marginal_prob(x, t)[1], torch.sqrt(1 - torch.exp(2 * lmc)))
    torch.testing.assert_close(subvp.marginal_prob(x, t)[1], 1 - torch.exp(2 * lmc))
    torch.testing.assert_close(vp.marginal_prob(x, t)[0], torch.exp(lmc)[:, None] * x)
    torch.testing.assert_close(ve.marginal_prob(x, t)[1], 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(ve.marginal_prob(x, t)[0], x)
    # A hand-computed value: VP at t = 0.5 has lmc = -1.26875.
    assert math.isclose(float(vp.alpha(torch.tensor([0.5], dtype=F64))), math.exp(-1.26875), rel_tol=1e-12)


def test_drift_and_diffusion_are_the_papers():
    t = torch.tensor([0.2, 0.7], dtype=F64)
    x = torch.randn(2, 4, dtype=F64)
    beta = 0.1 + t * (20 - 0.1)
    vp, subvp, ve = (sdeplug.create("sde", n) for n in ("vp", "subvp", "ve"))
    torch.testing.assert_close(vp.drift(x, t), -0.5 * beta[:, None] * x)
    torch.testing.assert_close(vp.diffusion(t), torch.sqrt(beta))
    torch.testing.assert_close(subvp.drift(x, t), -0.5 * beta[:, None] * x)
    discount = 1 - torch.exp(-2 * 0.1 * t - (20 - 0.1) * t**2)
    torch.testing.assert_close(subvp.diffusion(t), torch.sqrt(beta * discount))
    sigma = 0.01 * (50 / 0.01) ** t
    torch.testing.assert_close(ve.drift(x, t), torch.zeros_like(x))
    torch.testing.assert_close(ve.diffusion(t), sigma * math.sqrt(2 * math.log(50 / 0.01)))


PRIOR_STD = {"ve": lambda sde: sde.sigma_max, "vp": lambda sde: 1.0, "subvp": lambda sde: 1.0, "ddpm": lambda sde: 1.0}


@given(sde=sdes(), shape=event_shapes, seed=seeds)
def test_prior_logp_is_the_normal_density(sde, shape, seed):
    g = torch.Generator().manual_seed(seed)
    std = PRIOR_STD[sde.name](sde)
    z = sde.prior_sampling((7, *shape), generator=g, dtype=F64)
    expected = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), std).log_prob(z).reshape(7, -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_ddpm_and_smld_discretisations(name):
    """VP: x_t = sqrt(1 - beta_i) x + sqrt(beta_i) z with alpha(t)^2 / alpha(t-dt)^2 = 1 - beta_i.
    VE: G^2 = sigma_t^2 - sigma_{t-dt}^2."""
    sde = sdeplug.create("sde", name)
    t, dt = torch.tensor([0.6], dtype=F64), torch.tensor([0.01], dtype=F64)
    x = torch.tensor([[1.5, -2.0]], dtype=F64)
    f, G = sde.discretize(x, t, dt)
    if name == "vp":
        one_minus_beta = (sde.alpha(t) / sde.alpha(t - dt)) ** 2
        torch.testing.assert_close(f, (torch.sqrt(one_minus_beta) - 1) * x)
        torch.testing.assert_close(G**2, 1 - one_minus_beta)
    else:
        torch.testing.assert_close(f, torch.zeros_like(x))
        torch.testing.assert_close(G**2, sde.sigma(t) ** 2 - sde.sigma(t - dt) ** 2)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_langevin_alpha_is_defined_for_every_sde(name):
    """The paper's code crashes on sub-VP; here every SDE has alpha in (0, 1]."""
    sde = sdeplug.create("sde", name)
    alpha = sde.langevin_alpha(torch.linspace(0, 1, 11))
    assert torch.all((alpha > 0) & (alpha <= 1))
    if name != "ve":
        torch.testing.assert_close(alpha[-1], torch.tensor(1 - 20.0 / 1000))


@pytest.mark.parametrize(
    "name, options, fragment",
    [
        ("vp", {"beta_min": -1.0}, "beta_min"),
        ("vp", {"beta_min": 5.0, "beta_max": 1.0}, "beta_max must be at least beta_min"),
        ("ve", {"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_max must exceed sigma_min"),
        ("ve", {"sigma_max": "big"}, "could not convert"),
    ],
)
def test_bad_sde_options_are_refused_clearly(name, options, fragment):
    with pytest.raises(OptionError, match=fragment) as info:
        sdeplug.create("sde", name, **options)
    assert f"sde {name!r}" in str(info.value)


def test_the_ddpm_sde_is_ddpms_chain_on_its_grid():
    """alpha(t_k)^2 is DDPM's cumulative product at t_k = k / (N - 1), the kernel between grid
    points is its step with beta_k, and the drift's beta is the slope of -2 log alpha."""
    sde = sdeplug.create("sde", "ddpm", beta_start=1e-3, beta_end=0.05, N=11)
    betas = torch.linspace(1e-3, 0.05, 11, dtype=F64)
    t = torch.arange(11, dtype=F64) / 10
    torch.testing.assert_close(sde.alpha(t) ** 2, torch.cumprod(1 - betas, 0))
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - torch.cumprod(1 - betas, 0))
    a, var = sde.transition(t[:-1], t[1:])
    torch.testing.assert_close(var, betas[1:])
    torch.testing.assert_close(a, torch.sqrt(1 - betas[1:]))
    mid = (t[:-1] + t[1:]) / 2
    torch.testing.assert_close(sde.beta(mid), -torch.log1p(-betas[1:]) * 10)
    torch.testing.assert_close(sde.langevin_alpha(mid), 1 - betas[1:])
    with pytest.raises(OptionError, match=r"sde .ddpm.: need beta_start <= beta_end < 1.*accepted options"):
        sdeplug.create("sde", "ddpm", beta_start=0.1, beta_end=0.01)


class CosineFromAlphaAndSigma(sdeplug.LinearSDE):
    """A plugin author's SDE written as alpha and sigma only: the cosine schedule
    alpha = cos(pi t / 2), sigma = sin(pi t / 2) on [0, 0.999]."""

    name = "cosine_alpha_sigma"
    T = 0.999

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * t)


def test_a_linear_sde_from_alpha_and_sigma_alone_gets_the_drift_diffusion_and_prior_they_imply():
    """f = d log(alpha)/dt = -(pi/2) tan(pi t/2) and g^2 = d(sigma^2)/dt - 2 f sigma^2 = pi tan(pi t/2)
    in closed form; the prior is N(0, sigma(T)^2 I). Autograd in float64 is exact to rounding."""
    sde = CosineFromAlphaAndSigma()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = -0.5 * math.pi * torch.tan(0.5 * math.pi * t)
    torch.testing.assert_close(sde.drift_coefficient(t), f, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.drift(x, t), f[:, None] * x, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(math.pi * torch.tan(0.5 * math.pi * t)), rtol=1e-12, atol=0)
    std = math.sin(0.5 * math.pi * 0.999)
    z = sde.prior_sampling((20_000, 3), torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(z.std()) / std - 1) < 0.02  # 60 000 draws: the std's standard error is 0.3%
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(std, dtype=torch.float64))
    expected = normal.log_prob(z[:5]).sum(1)
    torch.testing.assert_close(sde.prior_logp(z[:5]), expected, rtol=1e-12, atol=1e-12)
    assert sde.diffusion(t.float()).dtype == torch.float32  # follows the input's dtype


@pytest.mark.parametrize("name", ["vp", "ve", "subvp", "ddpm"])
def test_the_derived_drift_and_diffusion_equal_the_bundled_closed_forms(name):
    """What LinearSDE derives from alpha and sigma is what each bundled SDE writes by hand."""
    from sdeplug.interfaces import _time_derivative

    sde = sdeplug.create("sde", name)
    t = torch.linspace(0.02, 0.98, 40, dtype=torch.float64)
    derived_f = _time_derivative(lambda s: torch.log(sde.alpha(s)), t)
    torch.testing.assert_close(derived_f, sde.drift_coefficient(t), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sdeplug.LinearSDE.diffusion(sde, t), sde.diffusion(t), rtol=1e-10, atol=0)


@pytest.mark.slow
def test_the_kit_passes_an_sde_written_as_alpha_and_sigma_alone():
    from sdeplug.testing import check_sde

    report = check_sde(CosineFromAlphaAndSigma, examples=2, n_paths=4000)
    assert report.passed


@given(sde=sdes(["ve", "vp", "subvp"]))
def test_the_closed_form_t_from_log_snr_is_the_bisections_inverse(sde):
    """VE, VP and sub-VP invert log_snr in closed form; the default bisection (to 2^-64 T) is
    the reference. A few float64 roundings of quantities of order one, divided by d log_snr / dt
    (at least log(sigma_max / sigma_min) or beta_min): 1e-13 T leaves a margin of 100 and more."""
    from sdeplug import LinearSDE

    t = torch.cat([torch.tensor([1e-9, 1e-6, 1e-3]), torch.linspace(0.01, 1.0, 100)]).double() * sde.T
    log_snr = sde.log_snr(t)
    closed, bisected = sde.t_from_log_snr(log_snr), LinearSDE.t_from_log_snr(sde, log_snr)
    assert float((closed - bisected).abs().max()) < 1e-13 * sde.T
    beyond = torch.tensor([1e4, float(log_snr[0]) + 1, float(log_snr[-1]) - 1, -1e4], dtype=torch.float64)
    ends = sde.t_from_log_snr(beyond)
    assert torch.isfinite(ends).all() and float(ends[0]) == 0.0 and float(ends[-1]) == pytest.approx(sde.T)
    assert 0 <= float(ends[1]) < 1e-9 * sde.T and float(ends[2]) == pytest.approx(sde.T)
    assert sde.t_from_log_snr(log_snr.float()).dtype == torch.float32
