"""Issue 17, item 4: denoisers D(x, sigma) (the EDM / k-diffusion convention) as sdeplug scores
and sdeplug scores as denoisers, checked against a Gaussian mixture's denoiser in closed
form; pickled EDM snapshots are refused, never unpickled."""

from __future__ import annotations

import pickle

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdeplug
from sdeplug.checkpoint import CheckpointError, load_checkpoint
from sdeplug.denoisers import DenoiserScore, ScoreDenoiser, noise_level
from sdeplug.oracle import GaussianMixture
from sdeplug.sampling import sample_pc

SDES = {"vp": {}, "subvp": {}, "ve": {}}


def closed_form_denoiser(weights, means, stds):
    """E[x_0 | x_0 + sigma n = x] for sum_k w_k N(mu_k, diag(s_k^2)), written out here."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        var = stds**2  # (K, D)
        total = var[None] + sigma.reshape(-1, 1, 1) ** 2  # (B, K, D)
        diff = x[:, None, :] - means[None]  # (B, K, D)
        log_r = torch.log(weights)[None] - 0.5 * ((diff**2 / total) + torch.log(2 * torch.pi * total)).sum(-1)
        r = torch.softmax(log_r, dim=1)  # (B, K)
        posterior_means = means[None] + var[None] / total * diff
        return (r[..., None] * posterior_means).sum(1)

    return denoise


@pytest.fixture(scope="module")
def truth():
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(3, generator=g, dtype=torch.float64) + 0.2
    weights = weights / weights.sum()
    means = 2 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    stds = 0.2 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    m = GaussianMixture(weights, means, stds=stds)
    return m, closed_form_denoiser(weights, means, stds)


@pytest.mark.parametrize("name", SDES)
def test_a_denoiser_gives_the_exact_score_of_every_linear_sde(truth, name):
    m, denoise = truth
    sde = sdeplug.create("sde", name)
    g = torch.Generator().manual_seed(1)
    x = 3 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    t = 1e-3 + (sde.T - 1e-3) * torch.rand(64, generator=g, dtype=torch.float64)
    # (alpha D - x) / sigma^2 cancels digits where sigma is small (sub-VP near t = 0)
    torch.testing.assert_close(DenoiserScore(denoise, sde)(x, t), m.score(x, t, sde), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", SDES)
def test_an_sdeplug_score_is_the_exact_denoiser(truth, name):
    m, denoise = truth
    sde = sdeplug.create("sde", name)
    as_denoiser = ScoreDenoiser(m.score_model(sde), sde, t_min=1e-3)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    levels = noise_level(sde, torch.tensor([1e-3, sde.T], dtype=torch.float64))
    sigma = levels[0] * (levels[1] / levels[0]) ** torch.rand(64, generator=g, dtype=torch.float64)
    torch.testing.assert_close(as_denoiser(x, sigma), denoise(x, sigma), rtol=1e-8, atol=1e-8)
    # a single noise level for the whole batch, as k-diffusion's samplers pass it
    torch.testing.assert_close(as_denoiser(x, float(sigma[0])), denoise(x, sigma[0].expand(64)), rtol=1e-8, atol=1e-8)


@given(seed=st.integers(0, 2**16), name=st.sampled_from(sorted(SDES)), t=st.floats(0.01, 0.99))
def test_the_two_adapters_undo_each_other_on_any_network(seed, name, t):
    torch.manual_seed(seed)
    sde = sdeplug.create("sde", name)
    network = sdeplug.create("score_model", "mlp", event_shape=(3,), width=16, depth=2).double()
    round_trip = DenoiserScore(ScoreDenoiser(network, sde), sde)
    x = torch.randn(8, 3, dtype=torch.float64)
    tt = torch.full((8,), t * sde.T, dtype=torch.float64)
    torch.testing.assert_close(round_trip(x, tt), network(x, tt), rtol=1e-7, atol=1e-7)


def test_a_noise_level_the_sde_never_reaches_is_refused_naming_the_range(truth):
    m, _ = truth
    sde = sdeplug.create("sde", "ve")  # sigma from 0.01 to 50
    as_denoiser = ScoreDenoiser(m.score_model(sde), sde)
    x = torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"outside what VESDE reaches .*\[0\.01, 50\]"):
        as_denoiser(x, 80.0)  # EDM's sigma_max
    with pytest.raises(ValueError, match="must be positive"):
        as_denoiser(x, torch.tensor([0.0, 1.0], dtype=torch.float64))


def test_sdeplug_samplers_run_a_denoiser_as_they_run_the_score(truth):
    m, denoise = truth
    sde = sdeplug.create("sde", "vp")
    common = dict(steps=30, corrector="none", dtype=torch.float64)
    a = sample_pc(sde, DenoiserScore(denoise, sde), (256, 4), generator=torch.Generator().manual_seed(3), **common)
    b = sample_pc(sde, m.score_model(sde), (256, 4), generator=torch.Generator().manual_seed(3), **common)
    torch.testing.assert_close(a.x, b.x, rtol=1e-7, atol=1e-7)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))  # unpickling would create this file


@pytest.mark.parametrize("name", ["network-snapshot-000000.pkl", "looks-fine.safetensors"])
def test_a_pickled_snapshot_is_refused_without_being_unpickled(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"ema": _Exploit(str(tmp_path / "pwned"))}, protocol=4))
    with pytest.raises(CheckpointError, match="is a Python pickle .*never does.*safetensors"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_a_pickle_given_to_the_command_line_is_one_line(tmp_path, capsys):
    from sdeplug.app.cli import main

    snapshot = tmp_path / "network-snapshot.pkl"
    snapshot.write_bytes(pickle.dumps({"x": 1}))
    config = tmp_path / "c.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "moons"\n[model]\nname = "mlp"\n'
        f'[sample]\nnum = 4\n[output]\ndir = "{tmp_path / "out"}"\n'
    )
    assert main(["sample", str(config), "--checkpoint", str(snapshot)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a Python pickle" in err, err
