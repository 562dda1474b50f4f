"""The data's Gaussian moments (sdeplug.DataMoments), their exact probability flow, and the
``gaussian_start`` predictor that takes the first step along it for free."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdeplug
from sdeplug import DataMoments
from sdeplug.errors import OptionError
from sdeplug.grid_tuning import tune_grid
from sdeplug.grids import resolve_grid
from sdeplug.oracle import GaussianMixture, preset, random_mixture
from sdeplug.sampling import sample_ode, sample_pc

F64 = torch.float64
SDES = ["ve", "vp", "subvp"]


def _gaussian_data(dim: int = 3, seed: int = 0) -> GaussianMixture:
    """One component with a full, anisotropic covariance and a mean away from 0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=F64)
    return GaussianMixture([1.0], torch.randn(1, dim, generator=g, dtype=F64) + 1.0, covs=(a @ a.T / dim + 0.1)[None])


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("t_end", [0.5, 0.05])
def test_the_flow_is_the_probability_flow_of_gaussian_data(sde_name, t_end):
    """From T to t_end, the closed form lands where dopri5 on the exact score's flow does."""
    sde = sdeplug.create("sde", sde_name)
    data = _gaussian_data()
    x_T = data.sample(64, torch.Generator().manual_seed(1), sde, sde.T)
    solved = sample_ode(
        sde,
        data.score_model(sde),
        x_init=x_T,
        solver="dopri5",
        solver_options={"rtol": 1e-10, "atol": 1e-10},
        eps=t_end,
        denoise=False,
    ).x
    t = torch.full((64,), float(sde.T), dtype=F64)
    moved = data.moments().flow(sde, x_T, t, torch.full_like(t, t_end))
    torch.testing.assert_close(moved, solved, rtol=1e-7, atol=1e-7)


@given(
    sde_name=st.sampled_from(SDES),
    times=st.lists(st.floats(0.01, 1.0), min_size=3, max_size=3, unique=True),
    kind=st.sampled_from(["full", "per-coordinate", "shared"]),
)
def test_the_flow_composes_and_inverts(sde_name, times, kind):
    """Moving t -> s -> u is moving t -> u, and t -> s -> t comes back: a flow map."""
    sde = sdeplug.create("sde", sde_name)
    data = _gaussian_data(seed=3)
    if kind == "full":
        moments = data.moments()
    elif kind == "per-coordinate":
        moments = DataMoments(torch.tensor([0.5, -1.0, 2.0], dtype=F64), torch.tensor([0.2, 1.5, 0.0], dtype=F64))
    else:
        moments = DataMoments(torch.tensor(0.3, dtype=F64), torch.tensor(0.25, dtype=F64))
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t, s, u = (torch.full((8,), v, dtype=F64) for v in times)
    via = moments.flow(sde, moments.flow(sde, x, t, s), s, u)
    torch.testing.assert_close(via, moments.flow(sde, x, t, u), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(moments.flow(sde, moments.flow(sde, x, t, s), s, t), x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", SDES)
def test_the_flow_carries_the_marginals(sde_name):
    """The flow is affine, x -> A x + b, and takes p_T's mean and covariance to p_t's exactly."""
    sde = sdeplug.create("sde", sde_name)
    data = _gaussian_data()
    moments = data.moments()
    points = torch.cat([torch.zeros(1, 3, dtype=F64), torch.eye(3, dtype=F64)])
    t_from, t_to = torch.full((4,), float(sde.T), dtype=F64), torch.full((4,), 0.2, dtype=F64)
    moved = moments.flow(sde, points, t_from, t_to)
    b, A = moved[0], (moved[1:] - moved[0]).T

    def marginal(t):
        alpha, sigma = sde.alpha(t[:1]), sde.sigma(t[:1])
        return alpha * data.means[0], alpha**2 * data.covariances()[0] + sigma**2 * torch.eye(3, dtype=F64)

    (mean_from, cov_from), (mean_to, cov_to) = marginal(t_from), marginal(t_to)
    torch.testing.assert_close(A @ mean_from + b, mean_to, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A @ cov_from @ A.T, cov_to, rtol=1e-10, atol=1e-10)


def test_moments_from_samples_are_the_sample_mean_and_covariance(tmp_path):
    x = random_mixture(4, 3, seed=5).sample(500, torch.Generator().manual_seed(0))
    full = DataMoments.from_samples(x)
    torch.testing.assert_close(full.mean, x.mean(0))
    torch.testing.assert_close(full.basis @ torch.diag(full.variances) @ full.basis.T, torch.cov(x.T))
    diagonal = DataMoments.from_samples(x.reshape(500, 2, 2), full=False)
    torch.testing.assert_close(diagonal.variances, x.var(0).reshape(2, 2))
    for moments in (full, diagonal, DataMoments.standard()):
        loaded = DataMoments.load(moments.save(tmp_path / "m.safetensors"))
        assert torch.equal(loaded.mean, moments.mean) and torch.equal(loaded.variances, moments.variances)
        assert (loaded.basis is None) == (moments.basis is None)


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_a_mixtures_moments_are_its_mean_and_covariance(offset):
    mixture = random_mixture(3, 4, seed=2)
    far = GaussianMixture(
        torch.softmax(mixture.log_weights, 0), mixture.means + offset, covs=mixture.covariances()
    )  # a mixture far from zero: the moments must not lose its covariance to cancellation
    moments = far.moments()
    x = far.sample(400_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(moments.mean, x.mean(0), rtol=0, atol=0.01)
    covariance = moments.basis @ torch.diag(moments.variances) @ moments.basis.T
    torch.testing.assert_close(covariance, torch.cov((x - x.mean(0)).T), rtol=0, atol=0.03)
    torch.testing.assert_close(
        covariance,
        mixture.moments().basis @ torch.diag(mixture.moments().variances) @ mixture.moments().basis.T,
        rtol=1e-9,
        atol=1e-9,
    )


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"mean": torch.zeros(3)}, "must hold 'mean' and 'variances'"),
        ({"mean": torch.zeros(3), "variances": torch.ones(3), "extra": torch.ones(1)}, "must hold 'mean'"),
        ({"mean": torch.zeros(3), "variances": torch.ones(2)}, "need a mean of the same shape"),
        ({"mean": torch.zeros(3), "variances": torch.ones(3), "basis": torch.eye(2)}, r"needs basis \(3, 3\)"),
        ({"mean": torch.zeros(3), "variances": -torch.ones(3)}, "variances must be >= 0"),
        ({"mean": torch.zeros(2), "variances": torch.ones(2), "basis": 2 * torch.eye(2)}, "must be orthonormal"),
        ({"mean": torch.tensor([0.0, float("nan")]), "variances": torch.ones(2)}, "mean must be a finite tensor"),
    ],
)
def test_bad_moments_files_are_refused_in_one_line(tmp_path, tensors, message):
    from safetensors.torch import save_file

    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(ValueError, match=message):
        DataMoments.load(path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read .* as a safetensors file"):
        DataMoments.load(tmp_path / "junk.safetensors")


@pytest.mark.parametrize(
    ("covariance", "message"),
    [
        (torch.eye(3), r"needs a covariance of shape \(2, 2\); got \(3, 3\)"),
        (torch.tensor([[1.0, 0.5], [0.0, 1.0]]), "must be symmetric"),
        (torch.tensor([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite; its smallest eigenvalue is -1"),
        (torch.tensor([[1.0, float("inf")], [float("inf"), 1.0]]), "covariance must be a finite tensor"),
    ],
)
def test_a_covariance_that_is_no_covariance_is_refused(covariance, message):
    with pytest.raises(ValueError, match=message):
        DataMoments.from_covariance(torch.zeros(2), covariance)
    with pytest.raises(ValueError, match="mean must be a finite tensor; got list"):
        DataMoments.from_covariance([0.0, 0.0], torch.eye(2))


def test_rounding_below_zero_in_a_singular_covariance_counts_as_zero():
    direction = torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64) / 14**0.5
    moments = DataMoments.from_covariance(torch.zeros(3), 4.0 * direction @ direction.T)  # rank one
    assert bool((moments.variances >= 0).all())
    torch.testing.assert_close(moments.variances.max(), torch.tensor(4.0, dtype=torch.float64))


def _counting(score):
    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return score(x, t)

    return counted, calls


def test_the_first_step_calls_no_score_and_the_rest_is_the_other_predictor():
    """On grid g, gaussian_start is the Gaussian flow to g[1], then ``then`` on g[1:]: its
    score calls are the other predictor's on g[1:] from the moved state, and nothing more."""
    sde = sdeplug.create("sde", "vp")
    data = random_mixture(2, 4, seed=9)
    moments = data.moments()
    grid = resolve_grid(sde, "logsnr", 6, 1e-3, dtype=F64)
    x_T = sde.prior_sampling((128, 2), torch.Generator().manual_seed(0), None, F64)
    counted, calls = _counting(data.score_model(sde))
    ours = sample_pc(
        sde,
        counted,
        predictor="gaussian_start",
        predictor_options={"moments": moments, "then_options": {"order": 3}},
        corrector="none",
        grid=grid,
        denoise=False,
        x_init=x_T,
    )
    assert ours.nfe == 5 and len(calls) == 5 and min(calls) < float(grid[1]) and float(grid[0]) not in calls
    moved = moments.flow(sde, x_T, grid[:1].expand(128), grid[1:2].expand(128))
    theirs = sample_pc(
        sde,
        data.score_model(sde),
        predictor="unipc",
        predictor_options={"order": 3},
        corrector="none",
        grid=grid[1:],
        denoise=False,
        x_init=moved,
    )
    torch.testing.assert_close(ours.x, theirs.x, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_with_the_datas_moments_five_evaluations_land_closer_to_the_flow(sde_name):
    """On a mixture far from Gaussian (9 components), 5 UniPC evaluations after the free step
    land closer to an accurate solve of the same flow than 5 without it, on the same log-SNR
    grid rule, and tuning the grid keeps the advantage."""
    sde = sdeplug.create("sde", sde_name)
    data = random_mixture(2, 9, seed=4242)
    score = data.score_model(sde)
    eps = 1e-5 if sde_name == "ve" else 1e-3
    x_T = sde.prior_sampling((512, 2), torch.Generator().manual_seed(0), None, F64)
    reference = sample_ode(
        sde, score, x_init=x_T, solver="dopri5", solver_options={"rtol": 1e-8, "atol": 1e-8}, eps=eps, denoise=False
    ).x

    def error(predictor, options, steps):
        x = sample_pc(
            sde, score, predictor=predictor, predictor_options=options, corrector="none", steps=steps, grid="logsnr",
            eps=eps, denoise=False, x_init=x_T,
        ).x  # fmt: skip
        return float(((x - reference) ** 2).mean().sqrt())

    moments = {"moments": data.moments()}
    plain, free = error("unipc", {}, 5), error("gaussian_start", moments, 6)
    assert free < plain
    tuned_plain = tune_grid(sde, score, (2,), 5, predictor="unipc", eps=eps, pilot=128)
    tuned_free = tune_grid(
        sde, score, (2,), 6, predictor="gaussian_start", predictor_options=moments, eps=eps, pilot=128
    )
    assert tuned_free.validation_error < 0.7 * tuned_plain.validation_error
    assert tuned_free.validation_error <= tuned_free.validation_error_start


def test_bad_options_are_refused_in_one_line(tmp_path):
    sde = sdeplug.create("sde", "vp")
    score = random_mixture(2, 3, seed=0).score_model(sde)
    with pytest.raises(OptionError, match="moments must be the path of a data-moments file"):
        sdeplug.create("predictor", "gaussian_start", sde, score, moments=5)
    with pytest.raises(OptionError, match="cannot read .*nothing.safetensors"):
        sdeplug.create("predictor", "gaussian_start", sde, score, moments=str(tmp_path / "nothing.safetensors"))
    with pytest.raises(OptionError, match="then must be another predictor"):
        sdeplug.create("predictor", "gaussian_start", sde, score, then="gaussian_start")
    with pytest.raises(sdeplug.UnknownPartError, match="no_such_predictor"):
        sdeplug.create("predictor", "gaussian_start", sde, score, then="no_such_predictor")
    three_d = DataMoments(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(sdeplug.OptionError, match=r"data moments are for samples of shape \(3,\), not \(2,\)"):
        sample_pc(sde, score, (4, 2), predictor="gaussian_start", predictor_options={"moments": three_d}, steps=3)


CONFIG = """
[sde]
name = "vp"

[model]
name = "oracle"

[data]
name = "ring8"

[sampler]
kind = "pc"
steps = 6
denoise = false

[sampler.predictor]
name = "gaussian_start"
moments = "{moments}"

[sampler.corrector]
name = "none"

[sample]
num = 300
seed = 3

[output]
dir = "{out}"
"""


@pytest.mark.slow
def test_a_config_names_a_moments_file_and_tune_grid_places_the_free_step(tmp_path, capsys):
    from sdeplug.app.cli import main

    moments = preset("ring8").moments().save(tmp_path / "moments.safetensors")
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(moments=moments, out=tmp_path / "run"))
    assert main(["tune-grid", str(config), "--steps", "6", "--pilot", "64", "--no-progress"]) == 0
    grid_file = tmp_path / "run" / "grid-gaussian_start-6.json"
    assert str(grid_file) in capsys.readouterr().out
    tuned = tmp_path / "tuned.toml"
    tuned.write_text(
        config.read_text().replace(
            "[sampler.predictor]", f'[sampler.grid]\nname = "tuned"\nfile = "{grid_file}"\n\n[sampler.predictor]'
        )
    )
    assert main(["sample", str(tuned), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "s" / "summary.json").read_text())["nfe_per_sample"] == 5
    broken = tmp_path / "broken.toml"
    broken.write_text(CONFIG.format(moments=tmp_path / "missing.safetensors", out=tmp_path / "run2"))
    capsys.readouterr()
    assert main(["sample", str(broken), "--out", str(tmp_path / "s2"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing.safetensors" in err and len(err.splitlines()) == 1


def test_the_moments_command_writes_the_training_datas_moments(tmp_path, capsys, monkeypatch):
    import sdeplug.app.moments as moments_app
    from sdeplug.app.assemble import build_dataset
    from sdeplug.app.cli import main
    from sdeplug.app.config import load_config

    monkeypatch.setattr(moments_app, "CHUNK", 37)  # several chunks, the last one short
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(moments="unused", out=tmp_path / "run"))
    train = build_dataset(load_config(config)).train[:1000]
    assert main(["moments", str(config), "--num", "1000"]) == 0
    assert "full covariance of 1000 training samples" in capsys.readouterr().out
    written = DataMoments.load(tmp_path / "run" / "moments.safetensors")
    expected = DataMoments.from_samples(train)
    torch.testing.assert_close(written.mean, expected.mean)
    torch.testing.assert_close(
        written.basis @ torch.diag(written.variances) @ written.basis.T, torch.cov(train.T), rtol=1e-10, atol=1e-10
    )
    out = tmp_path / "diag.safetensors"
    assert main(["moments", str(config), "--num", "1000", "--per-coordinate", "--out", str(out)]) == 0
    torch.testing.assert_close(DataMoments.load(out).variances, train.var(0))
    for bad, message in ((["--num", "1"], "--num must be at least 2"), (["--out", str(tmp_path)], "is a folder")):
        capsys.readouterr()
        assert main(["moments", str(config), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("full", [True, False])
def test_the_moments_command_keeps_small_variances_of_data_far_from_zero(full, monkeypatch):
    import sdeplug.app.moments as moments_app

    monkeypatch.setattr(moments_app, "CHUNK", 300)
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(1000, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.2, 0.1]], dtype=torch.float64
    )
    x = 1e6 + 1e-3 * spread  # sums of squares of the raw rows would lose the variances' digits
    moments = moments_app.data_moments(x, 1000, (3,), full)
    centred = torch.cov((x - x.mean(0)).T)
    torch.testing.assert_close(moments.mean, x.mean(0), rtol=1e-14, atol=0)
    if full:
        covariance = moments.basis @ torch.diag(moments.variances) @ moments.basis.T
        torch.testing.assert_close(covariance, centred, rtol=1e-8, atol=1e-16)
    else:
        torch.testing.assert_close(moments.variances, centred.diagonal(), rtol=1e-8, atol=0)
