"""The denoising score-matching loss, the Trainer, checkpoints and resumption."""

from __future__ import annotations

import os
import pickle
import re
import signal

import pytest
import torch
from problems import TanhSDE
from torch import nn

import sdeplug
from conftest import computed_once, files_limited_to
from sdeplug.app.arrays import load_array
from sdeplug.app.datasets import load_dataset
from sdeplug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdeplug.errors import DataError, WriteError
from sdeplug.likelihood import log_likelihood
from sdeplug.losses import DenoisingScoreMatching
from sdeplug.oracle import preset
from sdeplug.parameterization import ParameterizedScore
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null
from sdeplug.trainer import Trainer, TrainSettings

F64 = torch.float64


# Its module-scoped fixture trains once: keep its tests on one worker (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("training")


class TinyNet(nn.Module):
    """A plain torch module: no sdeplug base class."""

    def __init__(self, dim: int = 2, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 2, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim)
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, torch.sin(6 * t)[:, None], torch.cos(6 * t)[:, None]], dim=1))


def _draws(seed: int, x0: torch.Tensor, sde, eps: float = 1e-5):
    """The t and z the loss draws from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    t = eps + (sde.T - eps) * torch.rand(x0.shape[0], generator=g, dtype=x0.dtype)
    z = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    return t, z, mean + std[:, None] * z, std


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_loss_is_the_papers_formula_for_every_parameterization(sde_name):
    sde = sdeplug.create("sde", sde_name)
    torch.manual_seed(0)
    net = TinyNet().double()
    x0 = torch.randn(64, 2, dtype=F64)
    t, z, xt, std = _draws(7, x0, sde)
    alpha = sde.alpha(t)[:, None]
    out = net(xt, t).detach()
    expected = {
        # lambda = sigma^2: ||sigma s + z||^2, per entry, averaged
        "noise": ((z - out) ** 2).mean(1).mean(),  # sigma s = -eps_hat
        "data": ((alpha * (out - x0) / std[:, None]) ** 2).mean(1).mean(),  # sigma s + z = alpha (x0_hat - x0) / sigma
        "score": ((std[:, None] * out + z) ** 2).mean(1).mean(),
    }
    for parameterization, value in expected.items():
        loss = DenoisingScoreMatching(sde)(
            ParameterizedScore(net, sde, parameterization), x0, torch.Generator().manual_seed(7)
        )
        torch.testing.assert_close(loss.detach(), value)
    summed = DenoisingScoreMatching(sde, reduction="sum")(net, x0, torch.Generator().manual_seed(7))
    torch.testing.assert_close(summed.detach(), ((std[:, None] * out + z) ** 2).sum(1).mean())
    likelihood = DenoisingScoreMatching(sde, weighting="likelihood")(net, x0, torch.Generator().manual_seed(7))
    g2 = sde.diffusion(t) ** 2
    torch.testing.assert_close(likelihood.detach(), (g2 * ((out + z / std[:, None]) ** 2).mean(1)).mean())
    # a velocity network, v = alpha z - sigma x0 (Salimans & Ho), trained on ||v_hat - v||^2
    velocity = DenoisingScoreMatching(sde, weighting="velocity")(
        ParameterizedScore(net, sde, "velocity"), x0, torch.Generator().manual_seed(7)
    )
    v = alpha * z - std[:, None] * x0
    torch.testing.assert_close(velocity.detach(), ((out - v) ** 2).mean(1).mean(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_the_exact_velocity_read_as_velocity_is_the_exact_score(sde_name):
    sde = sdeplug.create("sde", sde_name)
    mixture = preset("mixture3").to(F64)
    x0 = mixture.sample(50, torch.Generator().manual_seed(3))
    t, z, xt, std = _draws(4, x0, sde, eps=1e-3)
    alpha, sigma = sde.alpha(t)[:, None], std[:, None]
    exact = mixture.score(xt, t, sde)
    # E[z | x_t] = -sigma s and E[x0 | x_t] = (x_t + sigma^2 s) / alpha, so E[v | x_t] is:
    velocity = -alpha * sigma * exact - sigma * (xt + sigma**2 * exact) / alpha

    class ExactVelocity(nn.Module):
        def forward(self, x, t_in):
            return velocity

    got = ParameterizedScore(ExactVelocity(), sde, "velocity")(xt, t)
    torch.testing.assert_close(got, exact, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_the_true_score_minimises_the_loss(sde_name):
    """With common random numbers, scaling the exact score either way raises the loss."""
    sde = sdeplug.create("sde", sde_name)
    mixture = preset("mixture3")
    x0 = mixture.sample(20_000, torch.Generator().manual_seed(0))
    oracle = mixture.score_model(sde)
    loss = DenoisingScoreMatching(sde, eps=1e-3)

    def value(scale):
        return float(loss(lambda x, t: scale * oracle(x, t), x0, torch.Generator().manual_seed(1)))

    best = value(1.0)
    assert best < value(0.9) and best < value(1.1)


def test_loss_refuses_an_sde_without_a_perturbation_kernel():
    with pytest.raises(TypeError, match="needs the perturbation kernel.*TanhSDE has no marginal_prob"):
        DenoisingScoreMatching(TanhSDE())
    with pytest.raises(TypeError, match="needs a LinearSDE"):
        ParameterizedScore(TinyNet(), TanhSDE(), "noise")


@pytest.mark.slow
def test_loss_trains_a_plain_module_in_a_hand_written_loop():
    """No Trainer: Adam on the loss brings a plain module's loss to the exact score's (the minimum)."""
    sde = sdeplug.create("sde", "vp")
    mixture = preset("mixture3")
    data = mixture.sample(20_000, torch.Generator().manual_seed(0)).float()
    loss_fn = DenoisingScoreMatching(sde, eps=1e-3)
    torch.manual_seed(0)
    net = TinyNet()

    def score(x, t):  # the module predicts the noise
        return -net(x, t) / sde.sigma(t)[:, None]

    def gap():
        held_out = mixture.sample(20_000, torch.Generator().manual_seed(9)).float()
        with torch.no_grad():
            ours = loss_fn(score, held_out, torch.Generator().manual_seed(3))
            best = loss_fn(mixture.score_model(sde), held_out, torch.Generator().manual_seed(3))
        return float(ours - best)

    before = gap()
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(1500):
        batch = data[torch.randint(len(data), (256,), generator=g)]
        loss = loss_fn(score, batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = gap()
    assert before > 0.3 and after < 0.03 and after < 0.1 * before, (before, after)


@pytest.fixture(scope="module")
@computed_once
def trained_mixture_model():
    """An MLP trained with the Trainer on samples of the mixture3 oracle (about 15 s)."""
    sde = sdeplug.create("sde", "vp")
    dataset = load_dataset("mixture3")
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=128, depth=3)
    settings = TrainSettings(steps=3000, batch_size=256, lr=2e-3, ema_decay=0.995, progress=False)
    trainer = Trainer(network, sde, dataset.train.float(), settings).fit()
    return trainer, dataset


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pc", "ode"])
def test_trained_model_samples_pass_the_two_sample_test(trained_mixture_model, kind):
    """Tolerance: the same as for the exact score, 5 null standard deviations at n = 2000."""
    trainer, dataset = trained_mixture_model
    sde, score, mixture = trainer.sde, trainer.score_model(), dataset.mixture
    g = torch.Generator().manual_seed(0)
    if kind == "pc":
        x = sample_pc(sde, score, (2000, 2), steps=500, generator=g).x
    else:
        x = sample_ode(sde, score, (2000, 2), solver="dopri5", generator=g).x
    assert_same_law(
        x, lambda n, gen: mixture.sample(n, gen), null=energy_null(lambda n, gen: mixture.sample(n, gen), 2000)
    )


@pytest.mark.slow
def test_trained_model_likelihood_is_close_to_the_exact_density(trained_mixture_model):
    """On 500 held-out points: mean log-likelihood within 0.03 nats per dimension of the exact
    log p_eps, and per point within 0.1 nats per dimension on average."""
    trainer, dataset = trained_mixture_model
    sde = trainer.sde
    x = dataset.test[:500].float()
    result = log_likelihood(sde, trainer.score_model(), x, solver_options={"rtol": 1e-5, "atol": 1e-5})
    exact = dataset.mixture.log_prob(x.double(), torch.full((500,), sde.default_eps, dtype=F64), sde)
    diff = (result.logp.double() - exact) / 2
    assert abs(float(diff.mean())) < 0.03, float(diff.mean())
    assert float(diff.abs().mean()) < 0.1, float(diff.abs().mean())


# Checkpoints and resumption --------------------------------------------------------------


def _small_trainer(path, seed: int = 0, **settings) -> Trainer:
    torch.manual_seed(seed)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2)
    data = load_dataset("moons", n_train=500, n_test=10).train.float()
    options = dict(steps=40, batch_size=32, lr=1e-3, warmup=5, checkpoint_every=None, progress=False)
    options.update(settings)
    return Trainer(network, sdeplug.create("sde", "vp"), data, TrainSettings(**options), checkpoint_path=path)


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    sa, sb = a.state_tensors(), b.state_tensors()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_interrupted_training_resumes_to_the_same_weights(tmp_path):
    straight = _small_trainer(tmp_path / "straight.safetensors").fit()

    interrupted = _small_trainer(tmp_path / "run.safetensors", sample_every=15)
    interrupted.on_sample = lambda tr: os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C during step 15
    interrupted.fit()
    assert interrupted.interrupted and interrupted.step == 15
    assert load_checkpoint(tmp_path / "run.safetensors")[1]["step"] == 15

    resumed = _small_trainer(tmp_path / "run.safetensors", seed=123, sample_every=15)  # other initial weights
    resumed.load()
    assert resumed.step == 15
    resumed.fit()
    assert resumed.step == 40 and not resumed.interrupted
    _assert_same_state(straight, resumed)


def test_resuming_with_other_settings_is_refused(tmp_path):
    _small_trainer(tmp_path / "c.safetensors").fit(until=10)
    with pytest.raises(CheckpointError, match="other training settings"):
        _small_trainer(tmp_path / "c.safetensors", lr=5e-3).load()


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    _small_trainer(path).fit(until=10)
    raw = path.read_bytes()

    (tmp_path / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint"):
        load_checkpoint(tmp_path / "truncated.safetensors")

    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF  # inside the tensor data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="failed its checksum"):
        load_checkpoint(tmp_path / "flipped.safetensors")

    assert b'\\"step\\": 10' in raw
    (tmp_path / "edited.safetensors").write_bytes(raw.replace(b'\\"step\\": 10', b'\\"step\\": 19'))
    with pytest.raises(CheckpointError, match="failed its checksum"):
        load_checkpoint(tmp_path / "edited.safetensors")

    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not an sdeplug checkpoint"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.safetensors")


class _Exploit:
    """Unpickling this would create a file: the proof that loading ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": _Exploit(marker)})
    (tmp_path / "evil.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.safetensors")
    torch.save({"weights": _Exploit(marker)}, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="weights_only.*Unsupported global") as refused:
        load_array(tmp_path / "evil.pt")
    assert "\n" not in str(refused.value) and "weights_only` set to `False" not in str(refused.value)
    assert not marker.exists()


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})

    with files_limited_to(64), pytest.raises(WriteError, match="File too large; the previous file is kept"):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})  # the write fails after 64 bytes
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 1} and torch.equal(tensors["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_ema_follows_the_weights_with_its_decay(tmp_path):
    trainer = _small_trainer(None, ema_decay=0.9)
    before = [p.detach().clone() for p in trainer.ema.parameters()]
    trainer.train_step()
    for ema, old, new in zip(trainer.ema.parameters(), before, trainer.network.parameters()):
        torch.testing.assert_close(ema, 0.9 * old + 0.1 * new.detach())


def test_warmup_ramps_the_learning_rate():
    trainer = _small_trainer(None, lr=1e-2, warmup=4)
    rates = []
    for _ in range(6):
        trainer.train_step()
        rates.append(trainer.optimizer.param_groups[0]["lr"])
    assert rates == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


# Nothing silent: a diverged run saves nothing non-finite, and non-finite data is refused (issue 15) ---


def _diverging_trainer(tmp_path, **settings):
    from sdeplug.app.datasets import load_dataset

    torch.manual_seed(0)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=16, depth=2)
    data = load_dataset("moons").train.float()
    options = dict(steps=50, batch_size=64, lr=1e30, warmup=0, grad_clip=1e30, checkpoint_every=1, progress=False)
    return Trainer(
        network,
        sdeplug.create("sde", "vp"),
        data,
        TrainSettings(**{**options, **settings}),
        checkpoint_path=tmp_path / "c.safetensors",
    )


def test_a_run_whose_loss_turns_non_finite_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    from sdeplug.checkpoint import load_checkpoint
    from sdeplug.errors import TrainingDivergedError

    trainer = _diverging_trainer(tmp_path)
    with pytest.raises(
        TrainingDivergedError, match=r"step (\d+) had a non-finite loss or gradient .*keeps the last good"
    ) as info:
        trainer.fit()
    bad = int(re.search(r"step (\d+) had", str(info.value)).group(1))
    tensors, meta = load_checkpoint(tmp_path / "c.safetensors")
    assert meta["step"] == bad - 1  # the step before the first bad one, saved because checkpoint_every = 1
    assert all(bool(torch.isfinite(t).all()) for k, t in tensors.items() if t.is_floating_point())
    assert "lr = 1e+30" in str(info.value)


def test_a_divergence_between_checkpoints_is_found_without_a_checkpoint(tmp_path):
    from sdeplug.errors import TrainingDivergedError

    trainer = _diverging_trainer(tmp_path, checkpoint_every=None, steps=500)
    with pytest.raises(TrainingDivergedError, match="nothing was saved"):
        trainer.fit()
    assert trainer.step <= 200  # read every 100 steps: it stopped soon, not at step 500
    assert not (tmp_path / "c.safetensors").exists()


def test_training_data_with_nan_is_refused_naming_the_row():
    from sdeplug.errors import DataError

    data = torch.randn(20, 2)
    data[7, 1] = float("nan")
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=8, depth=1)
    with pytest.raises(DataError, match="row 7 is the first of 1 such rows"):
        Trainer(network, sdeplug.create("sde", "vp"), data, TrainSettings(steps=1, progress=False))


@pytest.mark.slow
def test_two_runs_never_train_into_one_checkpoint_and_a_killed_runs_lock_does_not_block(tmp_path):
    """Issue 15: two trainers on one folder overwrote each other. The second now gets an error
    naming the first process; once that process is killed (SIGKILL: no clean-up), the next run trains."""
    import subprocess
    import sys
    import time

    from sdeplug.checkpoint import CheckpointInUseError

    checkpoint = tmp_path / "c.safetensors"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sdeplug.checkpoint import exclusive_writer\n"
            f"with exclusive_writer({str(checkpoint)!r}):\n    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        trainer = _diverging_trainer(tmp_path, lr=1e-3, grad_clip=1.0, steps=2)
        with pytest.raises(
            CheckpointInUseError, match=rf"c.safetensors is being trained into by another run \(process {holder.pid} "
        ):
            trainer.fit()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    time.sleep(0.1)
    trainer.fit()  # the killed holder's lock went with its process
    assert checkpoint.exists() and trainer.step == 2
