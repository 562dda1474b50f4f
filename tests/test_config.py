"""TOML configs and the ``sdeplug`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdeplug.app.assemble import check_config
from sdeplug.app.cli import main
from sdeplug.app.config import Config, load_config
from sdeplug.errors import ConfigError, OptionError, UnknownPartError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    config = load_config(path)
    sde = check_config(config)
    assert sde.name == config.sde.name


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_parts_and_options_are_read_from_toml(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[sde]
name = "vp"
beta_max = 18.0

[sampler]
kind = "pc"
steps = 50
order = "corrector_first"

[sampler.predictor]
name = "ancestral"
variance = "transition"

[sampler.corrector]
name = "langevin"
snr = 0.1
n_steps = 2
""",
        )
    )
    assert config.sde.options == {"beta_max": 18.0}
    assert config.sampler.predictor.name == "ancestral" and config.sampler.predictor.options == {
        "variance": "transition"
    }
    assert config.sampler.corrector.options == {"snr": 0.1, "n_steps": 2}
    assert config.sampler.order == "corrector_first"
    assert check_config(config).beta_max == 18.0


@pytest.mark.parametrize(
    "text, error, fragment",
    [
        ("[sde]\nname='vp'\n[smapler]\nkind='pc'", ConfigError, "no key 'smapler'.*Did you mean 'sampler'"),
        ("[sampler]\nkind='pc'", ConfigError, r"needs an \[sde\] section"),
        ("[sde]\nbeta_max=3.0", ConfigError, r"\[sde\] needs a 'name' key"),
        ("[sde]\nname='vp'\n[sampler]\nkind='sde'", ConfigError, "kind must be one of 'pc', 'ode'"),
        ("[sde]\nname='vp'\n[sampler]\nsteps=0", ConfigError, "steps must be a positive integer"),
        ("[sde]\nname='vp'\n[sampler]\nstep=10", ConfigError, "no key 'step'.*Did you mean 'steps'"),
        (
            "[sde]\nname='vp'\n[sampler]\nkind='ode'\n[sampler.predictor]\nname='none'",
            ConfigError,
            "takes \\[sampler.solver\\]",
        ),
        ("[sde]\nname='vp'\n[sample]\ndtype='float16'", ConfigError, "dtype must be one of"),
        ("[sde]\nname='vp'\n[sample]\nprogress='yes'", ConfigError, "progress"),
        ("[sde]\nname='vp'\nbeta_maxx=3.0", OptionError, "unknown option 'beta_maxx'"),
        ("[sde]\nname='vq'", UnknownPartError, "unknown sde 'vq'"),
        ("[sde]\nname='vp'\n[sampler.corrector]\nname='langevin'\nsnr=-1.0", OptionError, "snr"),
        (
            "[sde]\nname='vp'\n[sampler]\nkind='ode'\n[sampler.solver]\nname='rk45'",
            UnknownPartError,
            "unknown ode_solver 'rk45'",
        ),
        ("[sde]\nname='vp'\n[data]\nname='moons'", ConfigError, "'oracle' needs an oracle mixture"),
        ("[sde]\nname='vp'\n[model]\nname='mlp'\nwidht=3", OptionError, "unknown option 'widht'.*Did you mean 'width'"),
        ("[sde]\nname='vp'\n[model]\nname='transformer'", UnknownPartError, "unknown score_model 'transformer'"),
        ("[sde]\nname='vp'\n[train]\nsteps=0", ConfigError, "steps must be a positive integer"),
        ("[sde]\nname='vp'\n[train]\ngrad_clip=-1", ConfigError, "grad_clip must be a positive finite number; got -1"),
        ("[sde]\nname='vp'\n[train]\ngrad_clip=nan", ConfigError, "grad_clip must be a positive finite number"),
        ("[sde]\nname='vp'\n[train]\nlr=inf", ConfigError, "lr must be a positive finite number; got inf"),
        ("[sde]\nname='vp'\n[train]\nparameterization='v'", ConfigError, "parameterization"),
        ("[sde]\nname='vp'\n[train]\nlearning_rate=0.1", ConfigError, "no key 'learning_rate'"),
        ("[sde\nname='vp'", ConfigError, "not valid TOML"),
        ("[sde]\nname='vp'\n[likelihood]\ndivergence='trace'", ConfigError, "divergence must be one of"),
        ("[sde]\nname='vp'\n[likelihood]\nprobe=2", ConfigError, "no key 'probe'.*Did you mean 'probes'"),
        ("[sde]\nname='vp'\n[likelihood.solver]\nname='dopri5'\nrtoll=1e-3", OptionError, "unknown option 'rtoll'"),
    ],
)
def test_config_errors_name_what_is_wrong(tmp_path, text, error, fragment):
    with pytest.raises(error, match=fragment):
        check_config(load_config(write(tmp_path, text)))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_defaults_are_the_papers():
    config = Config.from_dict({"sde": {"name": "vp"}})
    assert config.sampler.kind == "pc" and config.sampler.predictor.name == "reverse_diffusion"
    assert config.sampler.corrector.name == "langevin" and config.sampler.denoise


def test_cli_sample_writes_samples_summary_and_plot(tmp_path, capsys):
    code = main(
        ["sample", str(REPO / "examples" / "ring8_ode.toml"), "--out", str(tmp_path), "--num", "300", "--no-progress"]
    )
    assert code == 0
    samples = np.load(tmp_path / "samples.npy")
    assert samples.shape == (300, 2) and np.isfinite(samples).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_samples"] == 300 and summary["nfe_per_sample"] == 201
    assert summary["energy_distance"] <= summary["null_mean"] + 5 * summary["null_std"]
    assert (tmp_path / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert "energy distance to fresh oracle samples" in capsys.readouterr().out


def test_cli_same_seed_same_samples(tmp_path):
    for name in ("a", "b"):
        main(
            [
                "sample",
                str(REPO / "examples" / "ring8_ode.toml"),
                "--out",
                str(tmp_path / name),
                "--num",
                "50",
                "--seed",
                "7",
                "--no-progress",
            ]
        )
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npy"), np.load(tmp_path / "b" / "samples.npy"))


def test_cli_errors_exit_2_with_the_message(tmp_path, capsys):
    code = main(["sample", str(write(tmp_path, "[sde]\nname='vpp'"))])
    assert code == 2
    assert "sdeplug: error: " in capsys.readouterr().err


def test_sampling_configs_can_name_the_adaptive_solvers(tmp_path):
    path = write(
        tmp_path,
        """
[sde]
name = "vp"

[sampler]
kind = "ode"

[sampler.solver]
name = "dopri5"
rtol = 1e-4
atol = 1e-4

[data]
name = "mixture3"
""",
    )
    assert main(["sample", str(path), "--out", str(tmp_path / "out"), "--num", "1000", "--no-progress"]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["sampler"]["solver"] == {"name": "dopri5", "options": {"rtol": 1e-4, "atol": 1e-4}}
    assert 20 < summary["nfe_per_sample"] < 200  # adaptive: its own steps
    assert summary["energy_distance"] <= summary["null_mean"] + 5 * summary["null_std"]


def test_the_output_folder_is_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """Issue 15: --out naming a file, a folder that cannot be made, and ~ were tracebacks or wrong."""
    config = tmp_path / "c.toml"
    config.write_text('[sde]\nname = "vp"\n[sample]\nnum = 8\nprogress = false\n[sampler]\nsteps = 2\n')
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["sample", str(config), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "--out = " in err and "is an existing file; give a folder" in err, err
    assert main(["sample", str(config), "--out", str(a_file / "below")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot make the folder" in err, err
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["sample", str(config), "--out", "~/home-out"]) == 0
    assert (tmp_path / "home-out" / "samples.npy").exists() and not (tmp_path / "~").exists()


def test_a_command_stopped_by_its_inputs_makes_no_output_folder(tmp_path, capsys):
    """The folder is made when the first file is written: bad data leave nothing behind."""
    np.save(tmp_path / "words.npy", np.array([["a", "b"]] * 10))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[sde]\nname = "vp"\n[data]\nname = "file"\npath = "{tmp_path / "words.npy"}"\n[model]\nname = "mlp"\n'
        f'[train]\nsteps = 2\nbatch_size = 4\n[output]\ndir = "{tmp_path / "run" / "deeper"}"\n'
    )
    assert main(["train", str(config), "--no-progress"]) == 2
    assert "must hold real numbers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
