"""Likelihoods through the probability-flow ODE against the oracle's exact log p_eps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sdeplug
from sdeplug.app.cli import main
from sdeplug.likelihood import LIKELIHOOD_EPS, bits_per_dim, log_likelihood, uniform_dequantize
from sdeplug.oracle import GaussianMixture, preset, random_mixture

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]
MIXTURES = {2: lambda: preset("mixture3"), 16: lambda: random_mixture(16, 4, seed=1)}


def _setup(dim: int, sde_name: str, n: int, seed: int = 0):
    mixture = MIXTURES[dim]()
    sde = sdeplug.create("sde", sde_name)
    eps = LIKELIHOOD_EPS  # the default start of log_likelihood: the paper's 1e-5 for every SDE
    x = mixture.sample(n, torch.Generator().manual_seed(seed), sde, eps)
    exact = mixture.log_prob(x, torch.full((n,), eps, dtype=F64), sde)

    def terminal_logp(z):
        return mixture.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=F64), sde)

    return mixture, sde, x, exact, terminal_logp


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_exact_divergence_likelihood_matches_the_oracle(dim, sde_name):
    """Per sample within 1e-3 nats per dimension of the exact log p_eps(x).

    The terminal density is the exact p_T here, so what is measured is the ODE and
    divergence machinery; the gap between p_T and the SDE's prior is a property of the
    model (tested below), not an error of the computation.
    """
    mixture, sde, x, exact, terminal_logp = _setup(dim, sde_name, 64)
    result = log_likelihood(
        sde,
        mixture.score_model(sde),
        x,
        solver="dopri5",
        solver_options={"rtol": 1e-6, "atol": 1e-6},
        prior_logp=terminal_logp,
    )
    error_per_dim = (result.logp - exact).abs() / dim
    assert float(error_per_dim.max()) < 1e-3, float(error_per_dim.max())
    assert result.logp.shape == (64,) and result.dim == dim and result.nfe > 10


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_quadrature_on_the_accepted_steps_matches_the_oracle(dim, sde_name):
    """The flow solved alone, then the exact divergence by Gauss-Legendre on dopri5's accepted
    steps: as accurate as the augmented ODE at the same tolerance, and more points per step
    shrink the quadrature's share of the error."""
    mixture, sde, x, exact, terminal_logp = _setup(dim, sde_name, 64)
    score, options = mixture.score_model(sde), {"rtol": 1e-6, "atol": 1e-6}
    errors = {}
    for points in (2, 3, 4):
        result = log_likelihood(sde, score, x, solver_options=options, prior_logp=terminal_logp, quadrature=points)
        errors[points] = (result.logp - exact).abs() / dim
        assert result.logp.shape == (64,) and result.z.shape == x.shape
    augmented = log_likelihood(sde, score, x, solver_options=options, prior_logp=terminal_logp)
    assert float(errors[3].max()) < 1e-3 and float(errors[3].mean()) < 1e-5, errors[3]
    assert float(errors[4].mean()) < 2 * float(((augmented.logp - exact).abs() / dim).mean()) + 1e-6
    assert float(errors[4].mean()) < float(errors[2].mean()) / 3


def test_quadrature_with_hutchinson_uses_the_same_probe_and_image_shapes():
    """With one probe drawn from the same generator, the quadrature and the augmented ODE
    estimate the same integral (v^T J v along the path): they agree to the solver's accuracy,
    for image-shaped float32 data too, while the probe's own spread is far larger."""
    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4))
    sde = sdeplug.create("sde", "vp")
    x = mixture.sample(32, torch.Generator().manual_seed(0), sde, LIKELIHOOD_EPS)
    score = mixture.score_model(sde)
    runs = {
        q: log_likelihood(
            sde, score, x, divergence="hutchinson", generator=torch.Generator().manual_seed(7), quadrature=q
        )
        for q in (None, 3)
    }
    exact = log_likelihood(sde, score, x, quadrature=3).logp
    gap = (runs[3].logp - runs[None].logp).abs() / 16
    spread = (runs[None].logp - exact).abs() / 16
    assert float(gap.max()) < 2e-3 and float(spread.mean()) > 10 * float(gap.mean())
    single = log_likelihood(sde, score, x.float(), quadrature=3)
    assert single.logp.dtype == torch.float32 and single.z.shape == x.shape
    assert float((single.logp.double() - exact).abs().max()) / 16 < 1e-3


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_with_the_sdes_prior_the_gap_is_only_the_prior_mismatch(sde_name):
    """Using sde.prior_logp changes log p by exactly log N(z) - log p_T(z), which is small."""
    mixture, sde, x, _, terminal_logp = _setup(2, sde_name, 64)
    score = mixture.score_model(sde)
    with_prior = log_likelihood(sde, score, x, solver_options={"rtol": 1e-6, "atol": 1e-6})
    with_exact = log_likelihood(sde, score, x, solver_options={"rtol": 1e-6, "atol": 1e-6}, prior_logp=terminal_logp)
    gap = sde.prior_logp(with_prior.z) - terminal_logp(with_prior.z)
    torch.testing.assert_close(with_prior.logp - with_exact.logp, gap, rtol=1e-6, atol=1e-6)
    assert float(gap.abs().max()) / 2 < 1e-2


@pytest.mark.slow
def test_hutchinson_is_unbiased_and_more_probes_shrink_its_spread():
    mixture, sde, x, _, terminal_logp = _setup(16, "vp", 4, seed=3)
    score = mixture.score_model(sde)
    copies = 300
    xs = x.repeat_interleave(copies, dim=0)  # every point seen with 300 independent probes
    options = {"rtol": 1e-6, "atol": 1e-6}
    reference = log_likelihood(sde, score, x, solver_options=options, prior_logp=terminal_logp).logp
    spreads = {}
    for noise in ("rademacher", "gaussian"):
        for probes in (1, 4):
            estimate = log_likelihood(
                sde,
                score,
                xs,
                solver_options=options,
                divergence="hutchinson",
                probes=probes,
                noise=noise,
                generator=torch.Generator().manual_seed(probes),
                prior_logp=terminal_logp,
            ).logp.reshape(4, copies)
            mean, stderr = estimate.mean(1), estimate.std(1) / math.sqrt(copies)
            assert torch.all((mean - reference).abs() <= 4 * stderr), (noise, probes, mean - reference, stderr)
            spreads[noise, probes] = estimate.std(1)
    for noise in ("rademacher", "gaussian"):
        ratio = spreads[noise, 4] / spreads[noise, 1]
        assert torch.all(ratio < 0.65) and torch.all(ratio > 0.35), ratio  # theory: 1 / sqrt(4)


@pytest.mark.slow
def test_any_registered_solver_and_image_shapes_and_float32():
    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4))
    sde = sdeplug.create("sde", "subvp")
    x = mixture.sample(16, torch.Generator().manual_seed(0), sde, LIKELIHOOD_EPS)
    exact = mixture.log_prob(x, torch.full((16,), LIKELIHOOD_EPS, dtype=F64), sde)
    fixed = log_likelihood(sde, mixture.score_model(sde), x, solver="heun", solver_options={"steps": 400})
    assert float((fixed.logp - exact).abs().max()) / 16 < 5e-3  # includes the small prior gap
    single = log_likelihood(sde, mixture.score_model(sde), x.float())
    assert single.logp.dtype == torch.float32 and single.z.shape == (16, 1, 4, 4)
    assert float((single.logp.double() - exact).abs().max()) / 16 < 5e-3


def test_bits_per_dim_offsets():
    logp = torch.tensor([-2 * math.log(2) * 3.0])  # 3 bits per dimension in 2 dimensions
    assert float(bits_per_dim(logp, 2)) == pytest.approx(3.0)
    assert float(bits_per_dim(logp, 2, "[0,1]")) == pytest.approx(11.0)
    assert float(bits_per_dim(logp, 2, "[-1,1]")) == pytest.approx(10.0)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(logp, 2, "[0,255]")
    for bad in (0, 1, True, 2.0):
        with pytest.raises(ValueError, match=r"levels must be an integer >= 2 \(the data's quantisation levels\)"):
            bits_per_dim(logp, 2, "[0,1]", levels=bad)
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"dim must be a positive integer \(numbers per sample\)"):
            bits_per_dim(logp, bad)
    assert float(bits_per_dim(logp, np.int64(2), "[0,1]", levels=np.int64(256))) == pytest.approx(11.0)


@pytest.mark.parametrize("data_range, scale", [("[0,1]", lambda k: k / 255), ("[-1,1]", lambda k: 2 * k / 255 - 1)])
def test_uniform_dequantisation_fills_each_bin(data_range, scale):
    k = torch.arange(256, dtype=F64).repeat(40)
    out = uniform_dequantize(scale(k), data_range, torch.Generator().manual_seed(0))
    unit = out if data_range == "[0,1]" else (out + 1) / 2
    assert torch.equal(torch.floor(unit * 256), k)  # (k + u) / 256 stays in bin k
    assert 0.45 < float((unit * 256 - k).mean()) < 0.55
    with pytest.raises(ValueError, match="dequantisation needs"):
        uniform_dequantize(k, "none")
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        uniform_dequantize(k, data_range, levels=1)


def test_bad_likelihood_arguments():
    mixture, sde, x, _, _ = _setup(2, "vp", 4)
    with pytest.raises(ValueError, match="divergence must be"):
        log_likelihood(sde, mixture.score_model(sde), x, divergence="trace")
    with pytest.raises(ValueError, match="noise must be"):
        log_likelihood(sde, mixture.score_model(sde), x, divergence="hutchinson", noise="uniform")
    with pytest.raises(sdeplug.UnknownPartError, match="unknown ode_solver 'rk45'"):
        log_likelihood(sde, mixture.score_model(sde), x, solver="rk45")
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="quadrature must be None or a positive integer"):
            log_likelihood(sde, mixture.score_model(sde), x, quadrature=bad)
    for bad in (0, True, 1.5, "2"):
        with pytest.raises(ValueError, match="probes must be a positive integer"):
            log_likelihood(sde, mixture.score_model(sde), x, divergence="hutchinson", probes=bad)
    bad_x = x.clone()
    bad_x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or inf: a likelihood needs finite data"):
        log_likelihood(sde, mixture.score_model(sde), bad_x)
    for shape in ((3,), (x.shape[0], 1)):  # (batch, 1) would broadcast against the (batch,) divergence
        with pytest.raises(
            ValueError, match=rf"prior_logp must return one log-density per sample, shape \({x.shape[0]},\)"
        ):
            log_likelihood(sde, mixture.score_model(sde), x, prior_logp=lambda z, shape=shape: torch.zeros(shape))
    for solver in ("heun", "rk4", "bosh3"):  # fixed steps, or an interpolant short of the steps' accuracy
        with pytest.raises(ValueError, match=f"quadrature needs an ODE solver with dense output.*'{solver}' has none"):
            log_likelihood(sde, mixture.score_model(sde), x, solver=solver, quadrature=3)


def test_cli_likelihood_on_oracle_samples_and_on_files(tmp_path):
    config = REPO / "examples" / "ring8_likelihood.toml"
    assert main(["likelihood", str(config), "--out", str(tmp_path / "oracle"), "--num", "100"]) == 0
    summary = json.loads((tmp_path / "oracle" / "likelihood.json").read_text())
    assert summary["mean_abs_error_nats_per_dim"] < 1e-3
    quadrature = tmp_path / "quadrature.toml"
    quadrature.write_text(config.read_text().replace('divergence = "exact"', 'divergence = "exact"\nquadrature = 3'))
    assert main(["likelihood", str(quadrature), "--out", str(tmp_path / "q"), "--num", "100"]) == 0
    by_quadrature = json.loads((tmp_path / "q" / "likelihood.json").read_text())
    assert by_quadrature["likelihood"]["quadrature"] == 3
    assert by_quadrature["mean_abs_error_nats_per_dim"] < 1e-3
    assert by_quadrature["mean_logp_nats"] == pytest.approx(summary["mean_logp_nats"], abs=1e-3)
    assert summary["mean_bits_per_dim"] == pytest.approx(-summary["mean_logp_nats"] / (2 * math.log(2)))
    logp = np.load(tmp_path / "oracle" / "logp.npy")
    assert logp.shape == (100,)

    points = preset("ring8").sample(20, torch.Generator().manual_seed(0))
    np.save(tmp_path / "points.npy", points.numpy())
    torch.save(points, tmp_path / "points.pt")
    for name in ("points.npy", "points.pt"):
        text = config.read_text().replace(
            'divergence = "exact"', f'divergence = "exact"\ndata_file = "{tmp_path / name}"'
        )
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        assert main(["likelihood", str(path), "--out", str(tmp_path / f"out-{name}")]) == 0
        summary = json.loads((tmp_path / f"out-{name}" / "likelihood.json").read_text())
        assert summary["num_samples"] == 20 and summary["data"].endswith(name)


def test_cli_likelihood_refuses_bad_data(tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((5, 3)))
    config = tmp_path / "c.toml"
    config.write_text(f'[sde]\nname = "vp"\n[likelihood]\ndata_file = "{tmp_path / "wide.npy"}"\n')
    assert main(["likelihood", str(config)]) == 2
    assert "event shape (3,)" in capsys.readouterr().err
    config.write_text('[sde]\nname = "vp"\n[likelihood]\ndequantize = true\n')
    assert main(["likelihood", str(config)]) == 2
    assert "needs data_range" in capsys.readouterr().err
    config.write_text('[sde]\nname = "vp"\n[likelihood]\nquadrature = 3\n[likelihood.solver]\nname = "heun"\n')
    assert main(["likelihood", str(config)]) == 2
    assert "quadrature needs a [likelihood.solver] with dense output" in capsys.readouterr().err
    config.write_text('[sde]\nname = "vp"\n[likelihood]\nquadrature = 0\n')
    assert main(["likelihood", str(config)]) == 2
    assert "quadrature must be a positive integer; got 0" in capsys.readouterr().err


def test_the_default_start_is_the_papers_likelihood_eps_for_every_sde():
    """Issue 15: log_likelihood started at the SDE's sampling eps (1e-3 for VP), while the
    paper's likelihoods start at 1e-5 for every SDE; on fine-scale data the two differ by
    far more than the solver's error, so the default must be the paper's."""
    fine = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [0.3, 0.0]], stds=[0.003, 0.003])
    sde = sdeplug.create("sde", "vp")
    x = fine.sample(8, torch.Generator().manual_seed(0), sde, LIKELIHOOD_EPS)
    score = fine.score_model(sde)
    default = log_likelihood(sde, score, x).logp
    exact = {eps: fine.log_prob(x, torch.full((8,), eps, dtype=F64), sde) for eps in (1e-5, 1e-3)}
    assert LIKELIHOOD_EPS == 1e-5
    assert float((default - exact[1e-5]).abs().max()) < 0.05
    assert float((exact[1e-5] - exact[1e-3]).mean()) > 1.0  # the old default was this far off
