"""NCSN++ / DDPM++ against the paper's own code (a recorded fixture), its presets, and
score_sde_pytorch checkpoints read safely."""

from __future__ import annotations

import copy
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdeplug.checkpoint import CheckpointError
from sdeplug.errors import ConfigError
from sdeplug.parameterization import ParameterizedScore
from sdeplug.registry import get_registry
from sdeplug.score_sde_checkpoints import (
    ReferenceCheckpoint,
    load_score_sde_model,
    read_reference_checkpoint,
    reference_weights,
)
from sdeplug_models import fir
from sdeplug_models.ncsnpp import PRESETS, NCSNpp
from sdeplug_reference.sdes import VESDE, VPSDE, SubVPSDE

FIXTURE = Path(__file__).parent / "data" / "score_sde"
CASES = json.loads((FIXTURE / "cases.json").read_text())
RECORDED = load_file(FIXTURE / "reference_outputs.safetensors")
#: The same cases run by the paper's code in float64 on the same weights and inputs (make_fixture_float64.py).
RECORDED_FLOAT64 = load_file(FIXTURE / "reference_outputs_float64.safetensors")
SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": SubVPSDE}


def build(case: str) -> tuple[NCSNpp, ParameterizedScore]:
    """The case's network with fresh weights, and its score under the paper's convention."""
    spec, params = CASES["cases"][case], CASES["sde"]
    network = NCSNpp(event_shape=(3, 8, 8), **spec["options"]).eval()
    if spec["sde"] == "vesde":
        sde = VESDE(sigma_min=params["sigma_min"], sigma_max=params["sigma_max"])
    else:
        sde = SDES[spec["sde"]](beta_min=params["beta_min"], beta_max=params["beta_max"])
    # the paper's get_score_fn: VE models output the score, VP and sub-VP models the noise
    return network, ParameterizedScore(network, sde, "score" if spec["sde"] == "vesde" else "noise")


def reference_label_and_std(case: str, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The network input and output divisor of the paper's get_score_fn, in its float32 arithmetic."""
    spec, p = CASES["cases"][case], CASES["sde"]
    if spec["sde"] == "vesde":
        return p["sigma_min"] * (p["sigma_max"] / p["sigma_min"]) ** t, None
    log_mean = -0.25 * t**2 * (p["beta_max"] - p["beta_min"]) - 0.5 * t * p["beta_min"]
    std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean)) if spec["sde"] == "vpsde" else 1.0 - torch.exp(2.0 * log_mean)
    return t * 999, std


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().amax(dim=(1, 2, 3), keepdim=True)
    return ((got - expected).abs() / scale).max().item()


def assert_matches(case: str, network: NCSNpp, score: ParameterizedScore, output: str) -> None:
    """The network on the paper's own inputs against the paper's code run in float64.

    In float64 the two compute the same sums in other orders: they agree to float64 rounding
    (2^-53 = 1.1e-16) grown by the network's depth and conditioning, far below 1e-12. The
    sdeplug score divides by sdeplug's sigma(t), whose VP formula avoids the paper's
    cancellation in 1 - exp(.) (relative error up to 1e-16 / sigma(t)^2, about 5e-14 at
    t = 0.01): 1e-10. In float32 (2^-24 = 6e-8 per operation) the paper's own float32 run is
    7e-6 from its float64 run on these cases; two float32 runs may sit on opposite sides and
    another CPU's kernels round otherwise: 5e-5 for the network, 1e-4 for the score.
    """
    x, t = RECORDED["x"].double(), RECORDED["t"].double()
    expected = RECORDED_FLOAT64[output]
    label, std = reference_label_and_std(case, t)
    scale = torch.ones(()) if std is None else -std[:, None, None, None]  # the paper's score = output / scale
    network64 = copy.deepcopy(network).double()
    score64 = ParameterizedScore(network64, score.sde, score.parameterization)
    with torch.no_grad():
        assert relative_error(network64(x, label) / scale, expected) < 1e-12
        assert relative_error(score64(x, t), expected) < 1e-10
        x32, t32, label32 = x.float(), t.float(), label.float()
        assert relative_error(network(x32, label32) / scale.float(), expected.float()) < 5e-5
        assert relative_error(score(x32, t32), expected.float()) < 1e-4


@pytest.mark.parametrize("case", ["vp", "subvp", "vp_residual"])
def test_matches_the_papers_code_on_its_weights(case):
    network, score = build(case)
    prefix = f"{case}.model."
    model = {key: RECORDED[prefix + key] for key in CASES["cases"][case]["keys"]}  # in the reference's order
    network.load_state_dict(reference_weights(network, ReferenceCheckpoint(model, None, None), weights="model"))
    assert_matches(case, network, score, f"{case}.score")
    # the fixture's outputs depend on every layer: disturbing one projection breaks the match
    with torch.no_grad():
        network.mid[1].q.weight.add_(0.05)
    with pytest.raises(AssertionError):
        assert_matches(case, network, score, f"{case}.score")


def test_a_checkpoint_of_the_papers_code_loads_with_its_ema_weights():
    checkpoint = read_reference_checkpoint(FIXTURE / "checkpoint_2.pth")
    assert checkpoint.step == 2 and checkpoint.shadow_params is not None
    network, score = build("ve")
    network.load_state_dict(reference_weights(network, checkpoint, weights="model"))
    assert_matches("ve", network, score, "ve.score")
    network.load_state_dict(reference_weights(network, checkpoint, weights="ema"))
    assert_matches("ve", network, score, "ve.score_ema")
    # the fixed Fourier features are not trained: they keep the model's value under EMA
    assert torch.equal(network.fourier.freqs, checkpoint.model["all_modules.0.W"])
    assert not torch.allclose(RECORDED["ve.score"], RECORDED["ve.score_ema"])


def test_the_fixture_checkpoint_carries_numpy_1_scalars_that_plain_weights_only_loading_refuses():
    with pytest.raises(pickle.UnpicklingError, match="numpy"):
        torch.load(FIXTURE / "checkpoint_2.pth", weights_only=True)


def test_a_checkpoint_of_the_wrong_preset_is_refused_naming_the_first_mismatching_key():
    checkpoint = read_reference_checkpoint(FIXTURE / "checkpoint_2.pth")
    network, _ = build("vp")
    with pytest.raises(CheckpointError, match=r"all_modules\.\d+\.\S+ has shape .* \(is it the right preset\?\)"):
        reference_weights(network, checkpoint)


def test_a_truncated_checkpoint_is_refused_naming_what_is_missing():
    checkpoint = read_reference_checkpoint(FIXTURE / "checkpoint_2.pth")
    network, _ = build("ve")
    short = dict(list(checkpoint.model.items())[:-2])
    with pytest.raises(CheckpointError, match=r"holds \d+ tensors where the network has \d+; 'out\.weight' is missing"):
        reference_weights(network, ReferenceCheckpoint(short, checkpoint.shadow_params, 2))
    with pytest.raises(CheckpointError, match="EMA holds 3 tensors"):
        reference_weights(network, ReferenceCheckpoint(checkpoint.model, checkpoint.shadow_params[:3], 2))
    with pytest.raises(CheckpointError, match="no EMA weights"):
        reference_weights(network, ReferenceCheckpoint(checkpoint.model, None, 2))


class _SideEffect:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_checkpoint_with_code_in_it_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {}, "ema": _SideEffect(), "step": 1}, tmp_path / "hostile.pth")
    with pytest.raises(CheckpointError, match="weights-only loading refuses.*GLOBAL posix.system"):
        read_reference_checkpoint(tmp_path / "hostile.pth")
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "bare.pkl").write_bytes(pickle.dumps({"model": {}}))
    with pytest.raises(CheckpointError, match="is a bare pickle; a score_sde_pytorch checkpoint is a torch.save zip"):
        read_reference_checkpoint(tmp_path / "bare.pkl")


def test_other_files_are_refused_with_what_a_checkpoint_holds(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"expected a dict with 'model'.*got \['weights'\]"):
        read_reference_checkpoint(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a zip archive"):
        read_reference_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="not found"):
        read_reference_checkpoint(tmp_path / "missing.pth")


def test_numpy_scalars_written_by_this_numpy_are_read_too(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "optimizer": {"lr": np.float64(1e-4), "n": np.int64(3)}, "step": 5}
    torch.save(state, tmp_path / "checkpoint_5.pth")
    assert read_reference_checkpoint(tmp_path / "checkpoint_5.pth").step == 5
    buffer = io.BytesIO()
    torch.save({"model": {}, "step": np.complex128(1j)}, buffer)  # a numpy type the paper's files never hold
    (tmp_path / "complex.pth").write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError, match="weights-only loading refuses"):
        read_reference_checkpoint(tmp_path / "complex.pth")


def test_the_fixture_is_a_torch_save_zip_as_the_papers_files_are():
    assert zipfile.is_zipfile(FIXTURE / "checkpoint_2.pth")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_runs_forward_and_backward_at_a_tiny_width(name):
    options, _sde = PRESETS[name]
    network = NCSNpp(event_shape=(3, 16, 16), preset=name, nf=8)
    assert network.nf == 8 and network.num_res_blocks == options["num_res_blocks"]
    assert network.embedding_type == options["embedding_type"] and network.scale_by_sigma == options["scale_by_sigma"]
    x = torch.randn(2, 3, 16, 16)
    label = torch.tensor([0.5, 20.0]) if network.time_input == "sigma" else torch.tensor([3.0, 900.0])
    out = network(x, label)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in network.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert network.time_input == ("sigma" if _sde == "ve" else "999t")


@pytest.mark.slow
def test_the_paper_cifar10_presets_have_its_sizes():
    """Parameter counts of the paper's CIFAR-10 networks, built at full width."""
    counts = {}
    for name in ("ncsnpp_cifar10_ve", "ddpmpp_cifar10_vp"):
        network = get_registry().create("score_model", "ncsnpp", preset=name, event_shape=(3, 32, 32))
        counts[name] = sum(p.numel() for p in network.parameters())
    # NCSN++ cont. is about 63 M parameters in the paper's Table; DDPM++ cont. about 62 M
    assert 60e6 < counts["ncsnpp_cifar10_ve"] < 66e6
    assert 58e6 < counts["ddpmpp_cifar10_vp"] < 64e6


def test_bad_options_are_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match="progressive must be one of 'none', 'output_skip', 'residual'; got 'skip'"):
        NCSNpp(event_shape=(3, 8, 8), progressive="skip")
    with pytest.raises(ValueError, match="preset must be one of 'ncsnpp_cifar10_ve', .*; got 'cifar10'"):
        NCSNpp(preset="cifar10")
    with pytest.raises(ValueError, match="divisible by 8"):
        NCSNpp(event_shape=(3, 12, 12), nf=8)
    with pytest.raises(ValueError, match="scale_by_sigma .* needs time_input 'sigma'"):
        NCSNpp(event_shape=(3, 8, 8), nf=8, ch_mult=(1, 2), scale_by_sigma=True, embedding_type="positional")


def test_fir_resampling_keeps_constant_images_constant_away_from_the_border():
    kernel = fir.fir_filter([1, 3, 3, 1]).double()
    ones = torch.ones(1, 2, 8, 8, dtype=torch.float64)
    up, down = fir.upsample(ones, kernel), fir.downsample(ones, kernel)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.ones_like(up[..., 2:-2, 2:-2]))
    assert torch.allclose(down[..., 1:-1, 1:-1], torch.ones_like(down[..., 1:-1, 1:-1]))
    with pytest.raises(ValueError, match="fir_kernel must be"):
        fir.fir_filter([1, -1])


def paper_config(case: str) -> dict:
    """The case's config as the paper's ml_collections config gives it (``config.to_dict()``)."""
    spec, sde = CASES["cases"][case], CASES["sde"]
    model = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in spec["options"].items() if k != "centered"}
    model.update(
        name="ncsnpp", normalization="GroupNorm", nonlinearity="swish", attention_type="ddpm", conv_size=3,
        sigma_min=sde["sigma_min"], sigma_max=sde["sigma_max"], beta_min=sde["beta_min"], beta_max=sde["beta_max"],
        num_scales=sde["N"], ema_rate=0.999,
    )  # fmt: skip
    return {
        "training": {"sde": spec["sde"], "continuous": True, "batch_size": 4},
        "model": model,
        "data": {"image_size": 8, "num_channels": 3, "centered": spec["options"]["centered"], "dataset": "CIFAR10"},
    }


def paper_file(case: str, folder: Path) -> Path:
    """A training file of the paper's code holding the case's weights (no EMA)."""
    model = {f"module.{key}": RECORDED[f"{case}.model.{key}"] for key in CASES["cases"][case]["keys"]}
    torch.save({"model": model, "step": 0}, folder / f"{case}.pth")
    return folder / f"{case}.pth"


def score_error(score, expected: torch.Tensor, dtype: torch.dtype) -> float:
    with torch.no_grad():
        return relative_error(score(RECORDED["x"].to(dtype), RECORDED["t"].to(dtype)), expected.to(dtype))


@pytest.mark.parametrize("case", ["vp", "subvp", "vp_residual"])
def test_load_score_sde_model_gives_the_papers_score_from_its_file_and_config(tmp_path, case):
    """The error model of assert_matches: float64 to 1e-10, float32 to 1e-4."""
    checkpoint = paper_file(case, tmp_path)
    sde, score = load_score_sde_model(checkpoint, paper_config(case), weights="model", dtype=torch.float64)
    assert type(sde).__name__ == {"vp": "VPSDE", "subvp": "SubVPSDE", "vp_residual": "VPSDE"}[case]
    assert score.parameterization == "noise" and not score.network.training
    assert score_error(score, RECORDED_FLOAT64[f"{case}.score"], torch.float64) < 1e-10
    _, score32 = load_score_sde_model(checkpoint, paper_config(case), weights="model")
    assert score_error(score32, RECORDED_FLOAT64[f"{case}.score"], torch.float32) < 1e-4


def test_the_docs_recipe_config_is_the_fixture_config():
    assert json.loads((FIXTURE / "config_ve.json").read_text()) == paper_config("ve")


def test_load_score_sde_model_reads_a_ve_model_as_a_score_with_its_ema_weights(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(paper_config("ve")))  # a JSON file of the config works too
    sde, score = load_score_sde_model(FIXTURE / "checkpoint_2.pth", config, dtype=torch.float64)
    assert type(sde).__name__ == "VESDE" and score.parameterization == "score" and not score.network.training
    assert score_error(score, RECORDED_FLOAT64["ve.score_ema"], torch.float64) < 1e-10
    _, raw = load_score_sde_model(FIXTURE / "checkpoint_2.pth", config, weights="model", dtype=torch.float64)
    assert score_error(raw, RECORDED_FLOAT64["ve.score"], torch.float64) < 1e-10

    class ConfigDict:  # what ml_collections hands over
        def to_dict(self):
            return paper_config("ve")

    _, from_object = load_score_sde_model(FIXTURE / "checkpoint_2.pth", ConfigDict(), dtype=torch.float64)
    assert score_error(from_object, RECORDED_FLOAT64["ve.score_ema"], torch.float64) < 1e-10


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["training"].update(continuous=False), "training.continuous is false"),
        (lambda c: c["training"].update(sde="cosine"), "training.sde must be one of 'vesde', 'vpsde', 'subvpsde'"),
        (lambda c: c["model"].update(name="ddpm"), "model.name = 'ddpm': sdeplug has the paper's NCSN\\+\\+"),
        (lambda c: c["model"].pop("nf"), "the paper's config has no model.nf"),
        (lambda c: c.pop("data"), "the paper's config has no data.image_size"),
    ],
)
def test_load_score_sde_model_refuses_configs_it_cannot_read_in_one_line(tmp_path, edit, message):
    config = paper_config("vp")
    edit(config)
    with pytest.raises(ConfigError, match=message):
        load_score_sde_model(paper_file("vp", tmp_path), config)
