"""``sdeplug convert``: a checkpoint of the paper's code, converted once, samples and scores
exactly as the reference's get_score_fn on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sdeplug.app.assemble import build_dataset, build_score, check_config
from sdeplug.app.config import load_config
from sdeplug.checkpoint import load_checkpoint
from sdeplug_cli import main

FIXTURE = Path(__file__).parent / "data" / "score_sde"
CASES = json.loads((FIXTURE / "cases.json").read_text())
RECORDED = load_file(FIXTURE / "reference_outputs.safetensors")


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_config(tmp_path: Path, case: str = "ve", sde: str = "ve") -> Path:
    """A config for the fixture's tiny network of ``case`` on 8x8 RGB data in a .npy file."""
    np.save(tmp_path / "images.npy", np.random.default_rng(0).uniform(0, 1, (20, 3, 8, 8)))
    options = "\n".join(f"{k} = {_toml(v)}" for k, v in CASES["cases"][case]["options"].items())
    path = tmp_path / "config.toml"
    path.write_text(
        f'[sde]\nname = "{sde}"\n\n[data]\nname = "file"\npath = "{tmp_path / "images.npy"}"\n\n'
        f'[model]\nname = "ncsnpp"\nevent_shape = [3, 8, 8]\n{options}\n\n'
        '[sampler]\nkind = "pc"\nsteps = 5\n\n[sampler.predictor]\nname = "reverse_diffusion"\n\n'
        f'[sample]\nnum = 6\nseed = 0\n\n[output]\ndir = "{tmp_path / "run"}"\n'
    )
    return path


def test_a_converted_checkpoint_scores_as_the_papers_code_with_its_ema_weights(tmp_path, capsys):
    config_path = write_config(tmp_path)
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 0
    printed = capsys.readouterr().out
    assert "converted checkpoint_2.pth (step 2, ema weights" in printed and "read as score" in printed
    converted = tmp_path / "run" / "checkpoint.safetensors"
    tensors, meta = load_checkpoint(converted)
    assert meta["kind"] == "weights" and meta["source"]["weights"] == "ema" and len(meta["source"]["sha256"]) == 64
    config = load_config(config_path)
    sde = check_config(config)
    score = build_score(config, sde, build_dataset(config), converted, torch.device("cpu"))
    with torch.no_grad():
        got = score(RECORDED["x"], RECORDED["t"])
    expected = RECORDED["ve.score_ema"]
    assert ((got - expected).abs() / expected.abs().amax(dim=(1, 2, 3), keepdim=True)).max() < 1e-4
    # and the sampler reads it as it reads a trained checkpoint
    assert main(["sample", str(config_path), "--no-progress"]) == 0
    samples = np.load(tmp_path / "run" / "samples.npy")
    assert samples.shape == (6, 3, 8, 8) and np.isfinite(samples).all()


def test_converting_twice_into_one_folder_is_refused(tmp_path, capsys):
    config_path = write_config(tmp_path)
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 0
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists already" in err[0]


def test_a_checkpoint_for_another_network_is_refused_in_one_line(tmp_path, capsys):
    config_path = write_config(tmp_path, case="vp", sde="vp")
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not fit this network: its 'all_modules.0.W' has shape (8,)" in err[0]
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


@pytest.mark.slow
def test_training_does_not_resume_from_a_weights_checkpoint(tmp_path, capsys):
    config_path = write_config(tmp_path)
    config_path.write_text(
        config_path.read_text() + '\n[train]\nsteps = 2\nbatch_size = 4\nparameterization = "score"\n'
    )
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 0
    assert main(["train", str(config_path), "--no-progress"]) == 2
    assert "holds weights only" in capsys.readouterr().err


@pytest.mark.slow
def test_the_readme_commands_for_a_paper_checkpoint_run_on_the_fixture(tmp_path, capsys):
    """README: convert, sample with UniPC in 10 steps, bits/dim (examples/score_sde_fixture.toml)."""
    root = Path(__file__).parent.parent
    text = (root / "examples" / "score_sde_fixture.toml").read_text()
    text = text.replace('path = "tests/', f'path = "{root}/tests/').replace(
        'dir = "demo-output/score-sde-fixture"', f'dir = "{tmp_path}"'
    )
    config = tmp_path / "fixture.toml"
    config.write_text(text)
    assert main(["convert", str(config), str(FIXTURE / "checkpoint_2.pth")]) == 0
    assert (
        main(["sample", str(config), "--sampler", str(root / "examples/samplers/unipc10.toml"), "--no-progress"]) == 0
    )
    assert "10 score evaluations per sample" in capsys.readouterr().out
    assert main(["likelihood", str(config)]) == 0
    report = json.loads((tmp_path / "likelihood.json").read_text())
    assert np.isfinite(report["mean_bits_per_dim"])


def test_a_preset_made_for_another_sde_is_refused_naming_both(tmp_path, capsys):
    """VP and sub-VP networks have the same shapes: the preset's SDE is the only check there is."""
    config = tmp_path / "mismatch.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[model]\nname = "ncsnpp"\npreset = "ddpmpp_cifar10_subvp"\nevent_shape = [3, 8, 8]\n'
        f'nf = 8\nch_mult = [1, 2]\nnum_res_blocks = 1\n[output]\ndir = "{tmp_path / "run"}"\n'
    )
    for command in (["convert", str(config), str(FIXTURE / "checkpoint_2.pth")], ["sample", str(config)]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "preset 'ddpmpp_cifar10_subvp' is made for the SDE 'subvp'" in err[0], err
        assert "[sde] name is 'vp'" in err[0]
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def without_data(config_path: Path) -> Path:
    text = config_path.read_text()
    start = text.index("[data]")
    config_path.write_text(text[:start] + text[text.index("[model]") :])
    return config_path


def test_a_converted_model_samples_without_data_from_its_event_shape(tmp_path, capsys):
    """No [data]: [model] event_shape is enough, no default data set stands in, and no warning
    says what the converted model was "trained on"."""
    config_path = without_data(write_config(tmp_path))
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 0
    assert "data" not in load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")[1]["config"]
    capsys.readouterr()
    assert main(["sample", str(config_path), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    assert np.load(tmp_path / "run" / "samples.npy").shape == (6, 3, 8, 8)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "energy_distance" not in summary  # nothing to compare the samples with


def test_sampling_a_network_without_data_or_event_shape_says_what_is_missing(tmp_path, capsys):
    """A network's default shape is no evidence (NCSN++ takes any image size with the same
    weights): without [data], [model] event_shape is needed, and the error says so."""
    config_path = without_data(write_config(tmp_path))
    config_path.write_text(config_path.read_text().replace("event_shape = [3, 8, 8]\n", ""))
    assert main(["sample", str(config_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no [data], so [model] 'ncsnpp' needs event_shape" in err[0], err


def test_likelihood_of_8_bit_data_dequantises_when_levels_is_given_and_warns_of_a_singular_baseline(tmp_path, capsys):
    """[likelihood] levels = 256 on a data file (no levels of its own) turns dequantisation on;
    the Gaussian baseline fitted on fewer rows than dimensions says it is no reference; and
    likelihood takes --no-progress like the other commands."""
    config_path = write_config(tmp_path)
    config_path.write_text(
        config_path.read_text()
        + '\n[likelihood]\ndivergence = "hutchinson"\ndata_range = "[0,1]"\nlevels = 256\n'
        + '[likelihood.solver]\nname = "dopri5"\nrtol = 1e-2\natol = 1e-2\n'
    )
    assert main(["convert", str(config_path), str(FIXTURE / "checkpoint_2.pth")]) == 0
    capsys.readouterr()
    assert main(["likelihood", str(config_path), "--num", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "likelihood.json").read_text())
    assert report["dequantized"] is True and report["levels"] == 256
    assert "fitted on 18 training rows in 192 dimensions" in report["gaussian_baseline_caveat"]
    assert "note: the Gaussian baseline is fitted on 18 training rows in 192 dimensions" in printed
