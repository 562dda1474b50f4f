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
