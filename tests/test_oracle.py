"""The Gaussian-mixture oracle against torch.distributions (an independent implementation)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from problems import TanhSDE
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import sdeplug
from sdeplug.oracle import GaussianMixture, preset, random_mixture, ring_mixture
from sdeplug.testing import assert_same_law
from sdeplug.testing.strategies import sdes, seeds

F64 = torch.float64


def torch_mixture_at(mixture: GaussianMixture, sde=None, t: float | None = None) -> MixtureSameFamily:
    """p_t built directly by torch.distributions: components N(alpha mu, alpha^2 C + sigma^2 I)."""
    mixture = mixture.to(F64)
    evecs = (
        mixture.evecs
        if mixture.evecs is not None
        else torch.eye(mixture.dim, dtype=F64).expand(mixture.num_components, -1, -1)
    )
    covs = evecs @ torch.diag_embed(mixture.evals) @ evecs.transpose(-1, -2)
    means = mixture.means
    if sde is not None:
        tt = torch.tensor([t], dtype=F64)
        alpha, sigma = float(sde.alpha(tt)), float(sde.sigma(tt))
        means = alpha * means
        covs = alpha**2 * covs + sigma**2 * torch.eye(mixture.dim, dtype=F64)
    return MixtureSameFamily(Categorical(logits=mixture.log_weights), MultivariateNormal(means, covs))


MIXTURES = {
    "ring8": lambda: ring_mixture(8),
    "mixture3": lambda: preset("mixture3"),
    "diag5": lambda: random_mixture(5, 3, seed=3, full_covariance=False),
    "full4": lambda: random_mixture(4, 3, seed=4),
}


@given(name=st.sampled_from(sorted(MIXTURES)), sde=sdes(), t=st.floats(1e-3, 1.0), seed=seeds)
def test_log_prob_and_score_match_torch_distributions(name, sde, t, seed):
    mixture = MIXTURES[name]().to(F64)
    reference = torch_mixture_at(mixture, sde, t)
    torch.manual_seed(seed)
    x = reference.sample((6,))
    x.requires_grad_(True)
    expected_logp = reference.log_prob(x)
    (expected_score,) = torch.autograd.grad(expected_logp.sum(), x)
    tt = torch.full((6,), t, dtype=F64)
    torch.testing.assert_close(mixture.log_prob(x.detach(), tt, sde), expected_logp.detach())
    torch.testing.assert_close(mixture.score(x.detach(), tt, sde), expected_score, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(MIXTURES))
def test_data_law_log_prob(name):
    mixture = MIXTURES[name]().to(F64)
    reference = torch_mixture_at(mixture)
    torch.manual_seed(0)
    x = reference.sample((10,))
    torch.testing.assert_close(mixture.log_prob(x), reference.log_prob(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixture3", "full4"])
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_samples_of_p_t_match_torch_distributions(name, sde_name):
    sde = sdeplug.create("sde", sde_name)
    mixture = MIXTURES[name]().to(F64)
    reference = torch_mixture_at(mixture, sde, 0.2)
    torch.manual_seed(0)
    samples = mixture.sample(2000, torch.Generator().manual_seed(1), sde, 0.2)
    assert_same_law(samples, lambda n, g: reference.sample((n,)))


def test_image_shaped_mixture_and_score_model():
    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4))
    sde = sdeplug.create("sde", "vp")
    x = mixture.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 4, 4)
    model = mixture.score_model(sde)
    assert isinstance(model, sdeplug.ScoreModel)
    t = torch.full((5,), 0.4)
    s = model(x, t)
    assert s.shape == x.shape
    torch.testing.assert_close(s.reshape(5, -1), mixture.score(x.reshape(5, -1), t, sde))


def test_posterior_weights_are_bayes_rule():
    mixture = preset("mixture3").to(F64)
    sde = sdeplug.create("sde", "vp")
    x = torch.tensor([[0.1, 0.2], [-1.0, 0.4]], dtype=F64)  # fixed points
    t = torch.full((2,), 0.3, dtype=F64)
    reference = torch_mixture_at(mixture, sde, 0.3)
    comp_logp = reference.component_distribution.log_prob(x[:, None, :]) + mixture.log_weights
    torch.testing.assert_close(mixture.posterior_weights(x, t, sde), torch.softmax(comp_logp, -1))


def test_oracle_refuses_what_it_cannot_do():
    with pytest.raises(TypeError, match="LinearSDE"):
        preset("ring8").score_model(TanhSDE())
    with pytest.raises(ValueError, match="event shape"):
        preset("ring8").log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="exactly one of stds"):
        GaussianMixture([1.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], covs=[[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(sdeplug.UnknownPartError, match="ring8"):
        preset("ring9")
