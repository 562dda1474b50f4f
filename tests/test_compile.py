"""Issue 16, item 6: [train] compile = true runs the network through torch.compile, and a
platform that cannot compile is one clear error when the Trainer is built."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from sdeplug import trainer as trainer_module
from sdeplug.errors import PlatformError
from sdeplug.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.xdist_group("compile")


def trained(compile: bool) -> tuple[Trainer, torch.Tensor]:
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2)
    settings = TrainSettings(steps=5, batch_size=16, progress=False, checkpoint_every=None, compile=compile)
    trainer = Trainer(network, sdeplug.create("sde", "vp"), torch.randn(200, 2), settings).fit()
    return trainer, torch.cat([p.detach().flatten() for p in network.parameters()])


@pytest.mark.slow
def test_a_compiled_network_trains_like_the_eager_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiled, weights = trained(True)
    assert compiled.model is not compiled.network and hasattr(compiled.model, "_orig_mod")  # really compiled
    _, eager = trained(False)
    torch.testing.assert_close(weights, eager, atol=1e-6, rtol=0)


def test_a_platform_that_cannot_compile_is_refused_when_the_trainer_is_built(tmp_path, monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    monkeypatch.setattr(trainer_module, "_COMPILE_WORKS", {})
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
