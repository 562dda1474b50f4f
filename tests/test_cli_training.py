"""``sdeplug train``, then ``sample`` and ``likelihood`` from its checkpoint; Ctrl-C and resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import interruptible
from sdeplug.app.cli import main

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
[sde]
name = "{sde}"

[data]
name = "moons"
n_train = 2000
n_test = 500

[model]
name = "mlp"
width = 32
depth = 2

[train]
steps = {steps}
batch_size = 64
lr = 1e-3
checkpoint_every = {every}
progress = false

[sampler]
kind = "pc"
steps = 50

[sample]
num = 200
progress = false

[output]
dir = "{out}"
"""


def write_config(tmp_path: Path, name: str = "c.toml", sde: str = "vp", steps: int = 60, every: int = 20) -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(sde=sde, steps=steps, every=every, out=tmp_path / "run"))
    return path


@pytest.mark.slow
def test_train_then_sample_and_likelihood_from_the_checkpoint(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config)]) == 0
    run = tmp_path / "run"
    assert {"checkpoint.safetensors", "train.json", "loss.png"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "train.json").read_text())["steps"] == 60

    speed = json.loads((run / "train.json").read_text())["steps_per_second"]
    assert main(["train", str(config)]) == 0  # nothing left to do: resumes at the end
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((run / "train.json").read_text())["steps_per_second"] == speed  # the summary is kept

    assert main(["sample", str(config), "--out", str(tmp_path / "pc")]) == 0
    summary = json.loads((tmp_path / "pc" / "summary.json").read_text())
    assert summary["model"] == "mlp" and summary["checkpoint"].endswith("checkpoint.safetensors")
    assert summary["reference"] == "held-out data" and summary["nfe_per_sample"] == 50 * 2 + 1
    assert summary["null_std"] > 0  # the floor's spread, from ten sets of training points
    assert (tmp_path / "pc" / "samples.png").exists()

    sampler = REPO / "examples" / "samplers" / "dopri5.toml"
    assert (
        main(
            [
                "sample",
                str(config),
                "--sampler",
                str(sampler),
                "--out",
                str(tmp_path / "ode"),
                "--checkpoint",
                str(run / "checkpoint.safetensors"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ode" / "summary.json").read_text())["sampler"]["kind"] == "ode"

    float64 = tmp_path / "f64.toml"
    float64.write_text(config.read_text().replace("num = 200\n", 'num = 200\ndtype = "float64"\n'))
    assert 'dtype = "float64"' in float64.read_text()
    assert main(["sample", str(float64), "--out", str(tmp_path / "f64"), "--num", "20"]) == 0
    assert np.load(tmp_path / "f64" / "samples.npy").dtype == np.float64

    assert main(["likelihood", str(config), "--out", str(tmp_path / "ll"), "--num", "50"]) == 0
    ll = json.loads((tmp_path / "ll" / "likelihood.json").read_text())
    assert ll["num_samples"] == 50 and "gaussian_baseline_bits_per_dim" in ll and not ll["dequantized"]


def test_a_checkpoint_is_not_used_with_another_sde(tmp_path, capsys):
    config = write_config(tmp_path, steps=5)
    assert main(["train", str(config)]) == 0
    other = write_config(tmp_path, "ve.toml", sde="ve", steps=5)
    assert main(["sample", str(other)]) == 2
    assert "was trained with [sde]" in capsys.readouterr().err
    assert main(["train", str(other)]) == 2
    assert "belongs to another run" in capsys.readouterr().err
    assert main(["train", str(other), "--restart"]) == 0


def test_training_the_oracle_or_sampling_without_a_checkpoint_is_refused(tmp_path, capsys):
    assert main(["train", str(REPO / "examples" / "ring8_pc.toml")]) == 2
    assert "needs no training" in capsys.readouterr().err
    assert main(["sample", str(write_config(tmp_path))]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_same_command_resumes(tmp_path):
    config = write_config(tmp_path, steps=1_000_000, every=50)
    command = [sys.executable, "-m", "sdeplug_cli", "train", str(config)]
    checkpoint = tmp_path / "run" / "checkpoint.safetensors"
    with interruptible(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        deadline = time.monotonic() + 60
        while not checkpoint.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert checkpoint.exists(), "no checkpoint within 60 s"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted at step" in out and "Run the same command to resume" in out
    step = int(out.split("interrupted at step ")[1].split(";")[0])

    from sdeplug.checkpoint import load_checkpoint

    assert load_checkpoint(checkpoint)[1]["step"] == step > 0
    shorter = write_config(tmp_path, steps=step + 10, every=50)
    resumed = subprocess.run(
        [sys.executable, "-m", "sdeplug_cli", "train", str(shorter)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {checkpoint} at step {step}" in resumed.stdout
    assert f"trained {step + 10} steps (10 now" in resumed.stdout


def test_periodic_sampling_writes_pictures_while_training(tmp_path):
    config = write_config(tmp_path, steps=40)
    config.write_text(config.read_text().replace("progress = false\n", "progress = false\nsample_every = 20\n", 1))
    assert main(["train", str(config)]) == 0
    pictures = sorted(p.name for p in (tmp_path / "run").glob("samples-step*.png"))
    assert pictures == ["samples-step20.png", "samples-step40.png"]


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_the_same_config_trains_bit_identical_checkpoints_and_seed_changes_them(tmp_path, capsys):
    """Issue 15: the network was initialised from torch's unseeded global generator, so two
    runs of one config differed; for train, --seed seeds the run (it used to set [sample] seed)."""
    config = write_config(tmp_path, steps=5, every=5)
    for out in ("a", "b", "c"):
        seed = ["--seed", "1"] if out == "c" else []
        assert main(["train", str(config), "--out", str(tmp_path / out), *seed]) == 0
    a, b, c = (_tensors(tmp_path / out / "checkpoint.safetensors") for out in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("ema."))  # other weights, another run
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "overrides [train] seed" in " ".join(capsys.readouterr().out.split())


def test_training_on_a_data_file_with_nan_rows_fails_naming_the_file_and_row(tmp_path, capsys):
    data = np.random.default_rng(0).normal(size=(400, 2))
    data[123] = np.nan
    np.save(tmp_path / "x.npy", data)
    text = CONFIG.format(sde="vp", steps=5, every=5, out=tmp_path / "run").replace(
        'name = "moons"\nn_train = 2000\nn_test = 500', f'name = "file"\npath = "{tmp_path / "x.npy"}"'
    )
    (tmp_path / "c.toml").write_text(text)
    assert main(["train", str(tmp_path / "c.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x.npy: row 123 has NaN or inf values" in err, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_sample_with_out_reads_the_checkpoint_train_wrote_there_and_names_it(tmp_path, capsys):
    """`train CONFIG --out X` then `sample CONFIG --out X`: the checkpoint in X, not the
    [output] dir's (which may hold another run's), and the command says which it used."""
    config = write_config(tmp_path, steps=5, every=5)
    elsewhere = tmp_path / "elsewhere"
    assert main(["train", str(config), "--out", str(elsewhere)]) == 0
    capsys.readouterr()
    assert main(["sample", str(config), "--out", str(elsewhere), "--num", "20"]) == 0
    assert f"from {elsewhere / 'checkpoint.safetensors'}" in capsys.readouterr().out
    summary = json.loads((elsewhere / "summary.json").read_text())
    assert summary["checkpoint"] == str(elsewhere / "checkpoint.safetensors")
