"""Every random draw of a training run comes from its seed: two runs of one config write the
same checkpoint, byte for byte, with dropout (which draws from torch's global generator),
streamed data read by DataLoader workers, bf16, and through an interruption and resume."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.checkpoint import load_checkpoint
from sdeplug.data import ArraySource, load_all
from sdeplug.trainer import Trainer, TrainSettings

NETWORKS = {
    "unet": {"channels": 8, "channel_mult": (1,), "num_res_blocks": 1, "attention_resolutions": (), "dropout": 0.3},
    "ncsnpp": {"nf": 8, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (), "dropout": 0.3},
}


def digits(n: int = 64) -> torch.Tensor:
    return load_dataset("digits").train[:n].float()


def trainer(
    name: str, data, path: Path, *, steps: int = 4, workers: int = 0, precision: str = "fp32", seed: int = 3
) -> Trainer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same initial weights; the run's own draws come from its seed
        network = sdeplug.create("score_model", name, event_shape=(1, 8, 8), **NETWORKS[name])
    settings = TrainSettings(
        steps=steps, batch_size=8, lr=1e-3, warmup=1, checkpoint_every=None, progress=False, seed=seed,
        precision=precision,
    )  # fmt: skip
    return Trainer(network, sdeplug.create("sde", "vp"), data, settings, checkpoint_path=path, workers=workers)


def disturb_global_generator() -> None:
    """What a user's own code, or an earlier run in the same process, does to the global generator."""
    torch.rand(17)


@pytest.mark.parametrize("name", ["unet", "ncsnpp"])
def test_two_runs_with_dropout_write_the_same_checkpoint_byte_for_byte(tmp_path, name):
    trainer(name, digits(), tmp_path / "a.safetensors").fit()
    disturb_global_generator()
    trainer(name, digits(), tmp_path / "b.safetensors").fit()
    assert filecmp.cmp(tmp_path / "a.safetensors", tmp_path / "b.safetensors", shallow=False)
    # dropout is on and draws from the seeded global generator: another seed trains otherwise
    trainer(name, digits(), tmp_path / "c.safetensors", seed=4).fit()
    a, c = load_checkpoint(tmp_path / "a.safetensors")[0], load_checkpoint(tmp_path / "c.safetensors")[0]
    assert not torch.equal(a["rng.torch"], c["rng.torch"])


def test_the_global_generator_is_seeded_from_the_run_s_seed():
    """Dropout masks come from torch's global generator: building the Trainer seeds it."""
    disturb_global_generator()
    trainer("unet", digits(), None)
    first = torch.rand(4)
    trainer("unet", digits(), None)
    assert torch.equal(torch.rand(4), first)


def test_an_interrupted_and_resumed_run_writes_the_checkpoint_of_an_uninterrupted_one(tmp_path):
    whole = tmp_path / "whole.safetensors"
    trainer("unet", digits(), whole, steps=6).fit()
    parts = tmp_path / "parts.safetensors"
    trainer("unet", digits(), parts, steps=6).fit(until=3)  # saves at step 3, as Ctrl-C does
    disturb_global_generator()
    trainer("unet", digits(), parts, steps=6).load().fit()
    assert filecmp.cmp(whole, parts, shallow=False)


def test_bf16_runs_with_dropout_are_reproducible(tmp_path):
    for name in ("a", "b"):
        disturb_global_generator()
        trainer("unet", digits(), tmp_path / f"{name}.safetensors", precision="bf16").fit()
    assert filecmp.cmp(tmp_path / "a.safetensors", tmp_path / "b.safetensors", shallow=False)


@pytest.mark.slow
def test_streamed_data_read_by_workers_trains_as_the_same_data_held_in_memory(tmp_path):
    """Starting a DataLoader draws its workers' base seed; it comes from the run's seed, not
    from the global generator that dropout uses, so streaming, holding and resuming agree."""
    np.save(tmp_path / "digits.npy", digits().numpy())
    source = ArraySource(tmp_path / "digits.npy")
    trainer("unet", load_all(source), tmp_path / "held.safetensors", steps=6).fit()
    trainer("unet", source, tmp_path / "streamed.safetensors", steps=6, workers=2).fit()
    resumed = tmp_path / "resumed.safetensors"
    trainer("unet", source, resumed, steps=6, workers=2).fit(until=2)
    trainer("unet", source, resumed, steps=6, workers=2).load().fit()
    assert filecmp.cmp(tmp_path / "held.safetensors", tmp_path / "streamed.safetensors", shallow=False)
    assert filecmp.cmp(tmp_path / "held.safetensors", resumed, shallow=False)


CONFIG = """
[sde]
name = "vp"
[data]
name = "moons"
n_train = 200
[model]
name = "mlp"
width = 16
depth = 1
[train]
steps = 2
batch_size = 8
checkpoint_every = 1
progress = false
[output]
dir = "{out}"
plot = false
"""


@pytest.mark.slow
def test_two_processes_running_one_config_write_the_same_checkpoint_file(tmp_path):
    """The command in two processes: the same bytes (safetensors keeps its header's metadata
    in a hash map, whose order would change from process to process)."""
    from sdeplug_cli import main

    for name in ("a", "b"):
        (tmp_path / f"{name}.toml").write_text(CONFIG.format(out=tmp_path / name))
    disturb_global_generator()
    assert main(["train", str(tmp_path / "a.toml")]) == 0  # in this process, after other tests' draws
    # in a fresh process, with this one's single thread (another thread count sums in another order)
    command = [sys.executable, "-m", "sdeplug_cli", "train", str(tmp_path / "b.toml")]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    a, b = (tmp_path / name / "checkpoint.safetensors" for name in ("a", "b"))
    assert filecmp.cmp(a, b, shallow=False)
