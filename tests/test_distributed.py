"""Training with several processes (torch.distributed, gloo, launched by torchrun): the result
does not depend on the number of processes, and an interrupted run resumes exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sdeplug
from conftest import computed_once
from sdeplug.app.datasets import load_dataset
from sdeplug.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.xdist_group("distributed")

WORKER = Path(__file__).parent / "distributed_train.py"
#: The installed sdeplug command (a Python script).
SDEPLUG = Path(sys.executable).parent / "sdeplug"


def launch(processes: int, script: Path, *args: object) -> subprocess.CompletedProcess:
    """Run a Python script in ``processes`` processes (torchrun for more than one), one thread
    each, with a time limit."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(
        [*launcher, str(script), *map(str, args)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )


def run_workers(processes: int, out: Path, *args: str) -> dict[str, torch.Tensor]:
    """Run tests/distributed_train.py in ``processes`` processes; return the weights rank 0 wrote."""
    run = launch(processes, WORKER, out, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(str(out))


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)


@pytest.fixture(scope="module")
@computed_once
def two_process_run(tmp_path_factory) -> dict[str, torch.Tensor]:
    """30 steps in 2 processes, 2 micro-batches of 8 samples each per step (batch 32)."""
    folder = tmp_path_factory.mktemp("two")
    return run_workers(2, folder / "two.safetensors", "--steps", "30", "--accumulate", "2")


@pytest.mark.slow
def test_two_ranks_with_half_batches_train_as_one_process_with_the_whole_batch(tmp_path, two_process_run):
    """2 processes x 16 samples (each in 2 micro-batches) against 1 process x 32: the same
    weights and EMA after 30 steps (float64; they differ only in the order of the gradient sums)."""
    one = run_workers(1, tmp_path / "one.safetensors", "--steps", "30")
    assert int(one["step"]) == int(two_process_run["step"]) == 30
    assert_close(one, two_process_run, atol=1e-11)
    assert any(not torch.equal(one[k], 0 * one[k]) for k in one)


@pytest.mark.slow
def test_two_ranks_streaming_a_memory_mapped_file_train_as_one_process_holding_it(tmp_path):
    """Each rank reads its own slice of every global batch from the .npy through a DataLoader
    worker; the weights equal those of one process with the file held in memory."""
    from sdeplug.app.datasets import load_dataset

    np.save(tmp_path / "moons.npy", load_dataset("moons", n_train=400, n_test=10).train.numpy())
    common = ("--steps", "12", "--data-file", tmp_path / "moons.npy")
    one = run_workers(1, tmp_path / "one.safetensors", *common, "--hold")
    two = run_workers(2, tmp_path / "two.safetensors", *common, "--workers", "1")
    assert_close(one, two, atol=1e-11)


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_both_and_the_resumed_run_is_bit_identical_with_dropout(tmp_path):
    """The last rank gets Ctrl-C after step 3; the ranks agree to stop at step 10 and rank 0
    saves; the same command resumes to step 14 and ends with the weights of a run never
    stopped. Dropout draws from each rank's global generator, seeded from the run's seed and
    the rank (the two ranks drew different masks), and each rank's batch is 2 micro-batches."""
    common = ("--steps", "14", "--dropout", "0.3", "--accumulate", "2")
    whole = run_workers(2, tmp_path / "whole.safetensors", *common)
    checkpoint = tmp_path / "run.safetensors"
    run_workers(2, tmp_path / "stopped.safetensors", *common, "--checkpoint", checkpoint, "--stop-at", "3")
    from sdeplug.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(checkpoint)
    assert meta["step"] == 10 and not torch.equal(tensors["rng.torch"], tensors["rng.torch.rank1"])
    resumed = run_workers(2, tmp_path / "resumed.safetensors", *common, "--checkpoint", checkpoint)
    assert int(resumed["step"]) == 14
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_instead_of_hanging(tmp_path):
    """The last rank exits abruptly after step 3; the run ends with a non-zero status (torchrun
    stops the other rank) well within the test's time limit, and rank 0 writes nothing."""
    import time

    start = time.monotonic()
    run = launch(2, WORKER, tmp_path / "never.safetensors", "--steps", "1000", "--die-at", "3")
    assert run.returncode != 0 and time.monotonic() - start < 120
    assert "exitcode  : 3" in run.stderr and not (tmp_path / "never.safetensors").exists()


def _trainer(**settings) -> Trainer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2).double()
    options = {"steps": 5, "batch_size": 32, "lr": 1e-2, "warmup": 2, "checkpoint_every": None, "progress": False}
    options.update(settings)
    data = load_dataset("moons", n_train=400, n_test=10).train
    return Trainer(network, sdeplug.create("sde", "vp"), data, TrainSettings(**options))


def test_gradient_accumulation_gives_the_update_of_the_whole_batch():
    whole, accumulated = _trainer().fit(), _trainer(accumulate=4).fit()
    for a, b in zip(whole.network.parameters(), accumulated.network.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    torch.testing.assert_close(whole.history, accumulated.history, atol=1e-6, rtol=0)


def test_a_batch_that_does_not_split_evenly_is_refused():
    with pytest.raises(ValueError, match="batch_size = 30 must split evenly into 1 process\\(es\\) x accumulate = 4"):
        _trainer(batch_size=30, accumulate=4)


@pytest.mark.slow
def test_sdeplug_train_under_torchrun_matches_the_single_process_command(tmp_path):
    """The command line: `torchrun --nproc_per_node 2 sdeplug train CONFIG` writes one
    checkpoint (rank 0) whose weights match the single-process run's up to float32 rounding."""
    from sdeplug.app.cli import main

    text = (
        '[sde]\nname = "vp"\n[data]\nname = "moons"\nn_train = 500\n[model]\nname = "mlp"\nwidth = 32\ndepth = 2\n'
        "[train]\nsteps = 30\nbatch_size = 64\nlr = 1e-3\ncheckpoint_every = 10\nprogress = false\n"
        '[output]\ndir = "{out}"\nplot = false\n'
    )
    single, double = tmp_path / "single.toml", tmp_path / "double.toml"
    single.write_text(text.format(out=tmp_path / "single"))
    double.write_text(text.format(out=tmp_path / "double"))
    assert main(["train", str(single)]) == 0
    run = launch(2, SDEPLUG, "train", double)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("trained 30 steps") == 1  # rank 0 reports, once
    a = load_file(str(tmp_path / "single" / "checkpoint.safetensors"))
    b = load_file(str(tmp_path / "double" / "checkpoint.safetensors"))
    for key in a:
        if key.startswith(("model.", "ema.")):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=0, msg=key)
    assert sorted(p.name for p in (tmp_path / "double").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )


def _command_line(processes: int, *args: str) -> subprocess.CompletedProcess:
    """The installed sdeplug command in ``processes`` processes (torchrun for more than one)."""
    run = launch(processes, SDEPLUG, *args)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
def test_sampling_and_likelihoods_are_the_same_with_one_or_two_processes(tmp_path):
    """Each batch has its own seed from (seed, batch index) and ranks share the batches out, so
    the samples and log-densities do not depend on the number of processes."""
    import numpy as np

    config = tmp_path / "ring.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[sampler]\nsteps = 40\n[data]\nname = "ring8"\n'
        "[sample]\nnum = 250\nbatch_size = 60\nprogress = false\n"
        '[likelihood]\ndivergence = "hutchinson"\n[likelihood.solver]\nname = "heun"\nsteps = 20\n'
        "[output]\nplot = false\n"
    )
    from sdeplug.app.cli import main

    fewer = tmp_path / "fewer.toml"  # (torchrun takes a --num after the script for its own --numa-binding)
    fewer.write_text(config.read_text().replace("num = 250", "num = 130"))
    outputs = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker
    try:
        assert main(["sample", str(config), "--out", str(tmp_path / "p1")]) == 0
        assert main(["likelihood", str(fewer), "--out", str(tmp_path / "p1")]) == 0
    finally:
        torch.set_num_threads(threads)
    sampled = _command_line(2, "sample", str(config), "--out", str(tmp_path / "p2"))
    assert sampled.stdout.count("samples in") == 1  # rank 0 reports, once
    _command_line(2, "likelihood", str(fewer), "--out", str(tmp_path / "p2"))
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        outputs[processes] = (np.load(out / "samples.npy"), np.load(out / "logp.npy"))
    assert outputs[1][0].shape == (250, 2) and outputs[1][1].shape == (130,)
    np.testing.assert_array_equal(outputs[1][0], outputs[2][0])
    np.testing.assert_array_equal(outputs[1][1], outputs[2][1])
    assert len(np.unique(outputs[1][0][:, 0])) == 250  # no two batches drew the same noise


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_like_fp32_and_keeps_float32_state(tmp_path, precision):
    """Autocast in the forward pass only: weights, EMA, optimiser state and checkpoints stay
    float32, the loss follows the fp32 run's, and an fp16 run checkpoints its gradient scaler
    so that a resumed run continues exactly."""
    from sdeplug.checkpoint import load_checkpoint

    def trainer(path, **settings):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=32, depth=2)
        options = {"steps": 60, "batch_size": 64, "lr": 2e-3, "warmup": 5, "progress": False, "checkpoint_every": None}
        data = load_dataset("moons", n_train=500, n_test=10).train.float()
        return Trainer(
            network, sdeplug.create("sde", "vp"), data, TrainSettings(**{**options, **settings}), checkpoint_path=path
        )

    reference = trainer(None).fit()
    mixed = trainer(tmp_path / "straight.safetensors", precision=precision).fit()
    assert abs(float(mixed.history[-20:].mean()) - float(reference.history[-20:].mean())) < 0.05
    tensors, meta = load_checkpoint(tmp_path / "straight.safetensors")
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if k.startswith(("model.", "ema.", "optim.")))
    assert ("scaler" in meta) == (precision == "fp16")
    half = trainer(tmp_path / "resumed.safetensors", precision=precision, steps=60).fit(until=25)
    resumed = trainer(tmp_path / "resumed.safetensors", precision=precision).load().fit()
    assert half.step == 25 and resumed.step == 60
    for a, b in zip(mixed.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)


def test_mixed_precision_needs_float32_weights():
    with pytest.raises(ValueError, match="precision = 'bf16' needs float32 weights"):
        _trainer(precision="bf16")


@pytest.mark.slow
def test_evaluate_gives_the_same_numbers_with_one_or_two_processes(tmp_path):
    """Under torchrun the samples and their features are shared out over the ranks; the
    metrics, computed by rank 0 on the gathered features, do not depend on the number of
    processes."""
    import json

    config = tmp_path / "ring.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[sampler]\nsteps = 30\n[data]\nname = "ring8"\n'
        "[sample]\nbatch_size = 70\nprogress = false\n"
        '[evaluate]\nnum = 250\nseeds = [0, 1]\nmetrics = ["fid", "kid", "precision_recall"]\nkid_subsets = 5\n'
        "[output]\nplot = false\n"
    )
    from sdeplug.app.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker
    try:
        assert main(["evaluate", str(config), "--out", str(tmp_path / "p1")]) == 0
    finally:
        torch.set_num_threads(threads)
    evaluated = _command_line(2, "evaluate", str(config), "--out", str(tmp_path / "p2"))
    assert evaluated.stdout.count("250 samples x 2 seeds") == 1  # rank 0 reports, once
    one, two = (json.loads((tmp_path / f"p{n}" / "evaluate.json").read_text()) for n in (1, 2))
    for key in ("fid", "kid", "precision", "recall"):
        assert one["metrics"][key]["per_seed"] == pytest.approx(two["metrics"][key]["per_seed"], rel=1e-9, abs=1e-12)


RANKED_COMMAND = """
import os, sys
from sdeplug_cli import main
sys.exit(main(["train", sys.argv[1 + int(os.environ["RANK"])], "--no-progress"]))
"""


@pytest.mark.slow
def test_ranks_started_with_different_configs_stop_at_once_naming_what_differs(tmp_path):
    """Two ranks of one torchrun job with different learning rates (or step counts, which
    would hang until the timeout): every rank refuses in one line before training."""
    text = (
        '[sde]\nname = "vp"\n[data]\nname = "moons"\nn_train = 200\n[model]\nname = "mlp"\nwidth = 16\ndepth = 1\n'
        "[train]\nsteps = 5\nbatch_size = 16\nlr = {lr}\n"
        '[output]\ndir = "{out}"\nplot = false\n'
    )
    configs = []
    for rank, lr in enumerate(("1e-3", "2e-3")):
        configs.append(tmp_path / f"rank{rank}.toml")
        configs[-1].write_text(text.format(lr=lr, out=tmp_path / "run"))
    script = tmp_path / "ranked.py"
    script.write_text(RANKED_COMMAND)
    run = launch(2, script, *configs)
    assert run.returncode != 0
    # torchrun stops the other rank as soon as one exits, so one or both print their line
    refusals = [line for line in run.stderr.splitlines() if line.startswith("sdeplug: error:")]
    assert 1 <= len(refusals) <= 2, run.stderr[-3000:]
    assert all(r.endswith("started with different settings: [train] differ between rank 0 and rank 1; start every "
                          "rank with the same config, options and data") for r in refusals), refusals  # fmt: skip
    assert "sdeplug/" not in run.stderr  # no traceback of ours (torchrun prints its own about the exit codes)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_a_batch_that_does_not_split_over_the_ranks_is_one_line_before_the_data_are_read(tmp_path, monkeypatch):
    """Under torchrun with 2 ranks (pretended here: the check comes before any collective) an
    odd [train] batch_size was a raw ValueError traceback on each rank."""
    from sdeplug import distributed
    from sdeplug.app.config import load_config
    from sdeplug.app.jobs import train_job
    from sdeplug.errors import ConfigError

    config = tmp_path / "odd.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "file"\npath = "no-such-file.npy"\n[model]\nname = "mlp"\n'
        f'[train]\nsteps = 3\nbatch_size = 15\n[output]\ndir = "{tmp_path / "run"}"\n'
    )
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(ConfigError, match=r"\[train\] batch_size = 15 must split evenly into 2 process\(es\)"):
        train_job(load_config(config), tmp_path / "run")  # before the missing data file is noticed


@pytest.mark.slow
def test_a_leftover_torchrun_environment_is_named_instead_of_waiting_forever(tmp_path):
    """RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT left in a shell by an earlier torchrun
    job, and no torchrun now: one line at once, not a wait for ranks that never come."""
    leftover = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29571"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
    run = subprocess.run(
        [sys.executable, "-m", "sdeplug_cli", "sample", str(Path(__file__).parent.parent / "examples/ring8_pc.toml"),
         "--num", "10", "--out", str(tmp_path)],
        env={**env, **leftover}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.count("\n") == 1 and "no torchrun started it" in run.stderr
    assert "RANK=1, WORLD_SIZE=2, MASTER_ADDR=127.0.0.1, MASTER_PORT=29571" in run.stderr


def _ranks_running(marker: str) -> list[int]:
    """The pids of sdeplug processes (not torchrun itself) whose command line holds ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if marker in cmdline and not any("torch.distributed.run" in part for part in cmdline):
                pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the ranks' processes through /proc")
def test_a_rank_killed_mid_run_leaves_one_line_on_the_other_not_a_traceback(tmp_path):
    config = tmp_path / "long.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "moons"\nn_train = 500\n[model]\nname = "mlp"\nwidth = 32\ndepth = 2\n'
        "[train]\nsteps = 1000000\nbatch_size = 32\ncheckpoint_every = 1000000\n"
        f'[output]\ndir = "{tmp_path / "run"}"\nplot = false\n'
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command = [*launcher, str(SDEPLUG), "train", str(config), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as job:
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "run" / "checkpoint.safetensors.lock").exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(2)  # the ranks are in their training steps
            ranks = _ranks_running(str(config))
            assert len(ranks) == 2, ranks
            os.kill(ranks[-1], signal.SIGKILL)
            _, stderr = job.communicate(timeout=120)
        finally:
            job.kill()
    ours = [line for line in stderr.splitlines() if line.startswith(("sdeplug:", "[rank"))]
    assert not any("Traceback" in line for line in ours), stderr[-3000:]
    assert all("lost the other processes" in line for line in ours if line.startswith("sdeplug: error:")), ours
