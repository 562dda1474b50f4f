"""[train] and [sample] compile = true run the network through torch.compile, and a
platform that cannot compile is one clear error when the Trainer is built."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdeplug
from sdeplug import compiling
from sdeplug.compiling import compile_score
from sdeplug.errors import PlatformError
from sdeplug.parameterization import ParameterizedScore
from sdeplug.sampling import sample_pc
from sdeplug.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.xdist_group("compile")


@pytest.fixture(scope="module")
def inductor_cache(tmp_path_factory):
    """One inductor cache for this module's compiles, apart from the user's: they share its
    precompiled headers and instruction-set probes, which a fresh cache builds again for
    every test (each a run of the C++ compiler)."""
    return tmp_path_factory.mktemp("inductor")


def trained(compile: bool) -> tuple[Trainer, torch.Tensor]:
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2)
    settings = TrainSettings(steps=5, batch_size=16, progress=False, checkpoint_every=None, compile=compile)
    trainer = Trainer(network, sdeplug.create("sde", "vp"), torch.randn(200, 2), settings).fit()
    return trainer, torch.cat([p.detach().flatten() for p in network.parameters()])


@pytest.mark.slow
def test_a_compiled_network_trains_like_the_eager_one(inductor_cache, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    compiled, weights = trained(True)
    assert compiled.model is not compiled.network and hasattr(compiled.model, "_orig_mod")  # really compiled
    _, eager = trained(False)
    torch.testing.assert_close(weights, eager, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_a_platform_that_cannot_compile_is_refused_when_the_trainer_is_built(tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    monkeypatch.setattr(compiling, "_COMPILE_WORKS", {})
    torch._dynamo.reset()
    with pytest.raises(PlatformError) as info:
        trained(True)
    message = str(info.value)
    assert "\n" not in message and "torch.compile cannot compile for cpu" in message
    assert "set compile = false" in message and "compiler" in message.lower()
    torch._dynamo.reset()


def test_compile_must_be_true_or_false():
    with pytest.raises(TypeError, match="compile"):
        TrainSettings(compile="yes")


def _score(name: str, **options):
    """A network with every weight moved off its initialisation (whose zero output layer would make
    any two networks agree), the same weights each call."""
    torch.manual_seed(0)
    network = sdeplug.create("score_model", name, event_shape=(3, 8, 8), **options).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=g))
    return ParameterizedScore(network, sdeplug.create("sde", "vp"), "noise")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "options"), [("unet", {"channels": 16, "channel_mult": (1,), "attention_resolutions": (8,)})]
)
def test_compiled_sampling_gives_the_eager_samples_to_float32_rounding(inductor_cache, monkeypatch, name, options):
    """Inductor fuses and reorders float32 arithmetic: each network evaluation may differ by a
    few units of roundoff times the depth (about 1e-6 relative), and 6 multistep steps carry and
    amplify it; 1e-4 of the samples' norm leaves a wide margin (an element near zero may differ
    by more, relative to itself), while another network is off by order 1 (checked). A U-Net
    of one level (residual blocks, attention, skips) keeps inductor's compile time down; NCSN++
    compiles for half a minute more: benchmarks/compile_sampling.py shows its samples' largest
    difference."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    eager, compiled = _score(name, **options), compile_score(_score(name, **options))
    assert hasattr(compiled.network, "_orig_mod")
    sde = sdeplug.create("sde", "vp")

    def draw(score):
        return sample_pc(
            sde, score, (4, 3, 8, 8), predictor="unipc", corrector="none", steps=6, grid="logsnr", denoise=False,
            generator=torch.Generator().manual_seed(1),
        ).x  # fmt: skip

    with torch.no_grad():
        expected = draw(eager)
        assert float((expected - draw(_score("unet", channels=16, channel_mult=(1, 1)))).abs().max()) > 0.1
        got = draw(compiled)
        relative = float((got - expected).norm() / expected.norm())
        print(f"compiled against eager: relative difference {relative:.2e}")
        assert relative < 1e-4
    torch._dynamo.reset()


def test_compile_score_needs_a_network():
    with pytest.raises(TypeError, match="needs a score model with a network"):
        compile_score(lambda x, t: -x)


@pytest.mark.slow
def test_sample_with_compile_gives_the_eager_samples(tmp_path, inductor_cache, monkeypatch):
    """[sample] compile = true: the command samples through the compiled network and gets what
    the eager one gets, to float32 rounding (a 2-layer MLP over 10 PC steps: 1e-5 leaves a wide
    margin)."""
    from test_cli_training import write_config

    from sdeplug.app.cli import main

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    config = write_config(tmp_path, steps=20, every=20)
    config.write_text(config.read_text().replace("steps = 50", "steps = 10"))
    assert main(["train", str(config)]) == 0
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    assert main(["sample", str(config), "--out", str(eager), "--no-progress"]) == 0
    config.write_text(config.read_text().replace("[sample]\n", "[sample]\ncompile = true\n"))
    assert main(["sample", str(config), "--out", str(compiled), "--no-progress"]) == 0
    a, b = (torch.from_numpy(np.load(path / "samples.npy")) for path in (eager, compiled))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_compile_with_the_oracle_is_refused_in_one_line(tmp_path, capsys):
    from sdeplug.app.cli import main

    config = tmp_path / "c.toml"
    config.write_text('[data]\nname = "ring8"\n\n[sample]\ncompile = true\n')
    assert main(["sample", str(config), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "compile" in err and "oracle" in err and len(err.splitlines()) == 1
