"""The bundled SDEs against simulation, closed forms and the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import event_shapes, sdes, seeds

import sdeplug
from sdeplug.errors import OptionError
from sdeplug.testing import simulate_forward

F64 = torch.float64


def _full(t: float, n: int) -> torch.Tensor:
    return torch.full((n,), t, dtype=F64)


@given(sde=sdes(), t=st.floats(0.05, 1.0), shape=event_shapes, seed=seeds)
def test_marginal_prob_matches_forward_simulation(sde, t, shape, seed):
    """Simulating dx = f dt + g dw from the t = 0 marginal reproduces marginal_prob's mean and std at t."""
    g = torch.Generator().manual_seed(seed)
    n = 20_000
    x0 = (2 * torch.randn((1, *shape), generator=g, dtype=F64)).expand(n, *shape)
    mean0, std0 = sde.marginal_prob(x0, _full(0.0, n))  # VE starts at sigma_min, as in the paper
    start = mean0 + std0[0] * torch.randn(x0.shape, generator=g, dtype=F64)
    xt = simulate_forward(sde, start, _full(t, n), steps=200, generator=g)
    mean, std = sde.marginal_prob(x0, _full(t, n))
    emp_mean, emp_var = xt.mean(0), xt.var(0)
    sd = float(std[0])
    assert torch.all((emp_mean - mean[0]).abs() <= 5 * sd / math.sqrt(n) + 1e-9), (emp_mean, mean[0])
    d = x0[0].numel()
    ratio = float(emp_var.mean()) / sd**2
    assert abs(ratio - 1) <= 6 * math.sqrt(2 / (n * d)), ratio


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


PRIOR_STD = {"ve": lambda sde: sde.sigma_max, "vp": lambda sde: 1.0, "subvp": lambda sde: 1.0}


@given(sde=sdes(), shape=event_shapes, seed=seeds)
def test_prior_logp_is_the_normal_density(sde, shape, seed):
    g = torch.Generator().manual_seed(seed)
    std = PRIOR_STD[sde.name](sde)
    z = sde.prior_sampling((7, *shape), generator=g, dtype=F64)
    expected = torch.distributions.Normal(torch.tensor(0.0, dtype=F64), std).log_prob(z).reshape(7, -1).sum(1)
    torch.testing.assert_close(sde.prior_logp(z), expected)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_prior_density_integrates_to_one_and_matches_prior_sampling(name):
    sde = sdeplug.create("sde", name)
    std = PRIOR_STD[name](sde)
    grid = torch.linspace(-12 * std, 12 * std, 20001, dtype=F64)[:, None]
    assert math.isclose(float(torch.trapezoid(sde.prior_logp(grid).exp(), grid[:, 0])), 1.0, rel_tol=1e-6)
    z = sde.prior_sampling((50_000, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert abs(float(z.std()) / std - 1) < 0.01
    assert abs(float(z.mean())) < 0.02 * std


@given(sde=sdes(), t=st.floats(0.1, 1.0), seed=seeds)
def test_discretize_tends_to_drift_and_diffusion(sde, t, seed):
    """f / dt -> f(x, t) and G / sqrt(dt) -> g(t) as dt -> 0, with first-order error."""
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    tt = _full(t, 3)
    drift, diffusion = sde.drift(x, tt), sde.diffusion(tt)
    for dt in (1e-3, 1e-5):
        f, G = sde.discretize(x, tt, _full(dt, 3))
        assert torch.allclose(f / dt, drift, rtol=50 * dt, atol=50 * dt * float(drift.abs().max()) + 1e-12)
        torch.testing.assert_close(G / math.sqrt(dt), diffusion, rtol=50 * dt, atol=0.0)


@given(sde=sdes(), s=st.floats(0.0, 0.45), u=st.floats(0.5, 0.7), t=st.floats(0.75, 1.0))
def test_transitions_compose(sde, s, u, t):
    """The kernel s -> t is the kernel s -> u followed by u -> t (Chapman-Kolmogorov for Gaussians)."""
    S, U, T = (_full(v, 1) for v in (s, u, t))
    a_su, v_su = sde.transition(S, U)
    a_ut, v_ut = sde.transition(U, T)
    a_st, v_st = sde.transition(S, T)
    torch.testing.assert_close(a_st, a_su * a_ut)
    torch.testing.assert_close(v_st, a_ut**2 * v_su + v_ut)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_ddpm_and_smld_discretisations(name):
    """VP: x_t = sqrt(1 - beta_i) x + sqrt(beta_i) z with alpha(t)^2 / alpha(t-dt)^2 = 1 - beta_i. VE: G^2 = sigma_t^2 - sigma_{t-dt}^2."""
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


@given(sde=sdes(), t=st.floats(0.01, 1.0), seed=seeds)
def test_reverse_sde_and_probability_flow_signs(sde, t, seed):
    """Reverse drift f - g^2 s with diffusion g; probability flow f - g^2 s / 2 with none."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed), dtype=F64)
    tt = _full(t, 4)

    def score(x, t):
        return -x / 3.0

    g2 = sde.diffusion(tt)[:, None] ** 2
    rev, flow = sde.reverse(score), sde.reverse(score, probability_flow=True)
    torch.testing.assert_close(rev.drift(x, tt), sde.drift(x, tt) - g2 * score(x, tt))
    torch.testing.assert_close(flow.drift(x, tt), sde.drift(x, tt) - 0.5 * g2 * score(x, tt))
    torch.testing.assert_close(rev.diffusion(tt), sde.diffusion(tt))
    assert torch.all(flow.diffusion(tt) == 0)
    rev_f, rev_G = rev.discretize(x, tt, _full(1e-3, 4))
    f, G = sde.discretize(x, tt, _full(1e-3, 4))
    torch.testing.assert_close(rev_f, f - G[:, None] ** 2 * score(x, tt))
    torch.testing.assert_close(rev_G, G)


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_langevin_alpha_is_defined_for_every_sde(name):
    """The paper's code crashes on sub-VP; here every SDE has alpha in (0, 1]."""
    sde = sdeplug.create("sde", name)
    alpha = sde.langevin_alpha(torch.linspace(0, 1, 11))
    assert torch.all((alpha > 0) & (alpha <= 1))
    if name != "ve":
        torch.testing.assert_close(alpha[-1], torch.tensor(1 - 20.0 / 1000))


@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_image_shapes_are_kept(name, dtype):
    sde = sdeplug.create("sde", name)
    x = torch.randn(2, 3, 4, 4, dtype=dtype)
    t = torch.tensor([0.2, 0.9], dtype=dtype)
    mean, std = sde.marginal_prob(x, t)
    assert mean.shape == x.shape and std.shape == (2,)
    assert sde.drift(x, t).dtype == dtype and sde.diffusion(t).dtype == dtype
    f, G = sde.discretize(x, t, torch.full((2,), 0.01, dtype=dtype))
    assert f.shape == x.shape and G.shape == (2,)
    z = sde.prior_sampling((5, 3, 4, 4), dtype=dtype)
    assert z.shape == (5, 3, 4, 4) and z.dtype == dtype
    assert sde.prior_logp(z).shape == (5,)


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
