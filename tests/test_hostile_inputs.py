"""Issue 15: what a careless user or a hostile file gives the command line gets one line naming
the input, the problem and what is accepted, a non-zero exit, and nothing made or written."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib import format as npy

from conftest import computed_once, files_limited_to, interruptible
from sdeplug.app.cli import main
from sdeplug.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.xdist_group("hostile_cli")

CONFIG = """
[sde]
name = "vp"
{sde}
[data]
name = "moons"
n_train = 500
n_test = 100
{data}
[model]
name = "mlp"
width = 16
depth = 2

[train]
steps = 10
batch_size = 32
checkpoint_every = 5
progress = false
{train}
[sampler]
kind = "pc"
steps = 20
{sampler}
[sample]
num = 50
progress = false
{sample}
[output]
dir = "{out}"
plot = false
"""


def config(folder: Path, out: Path, name: str = "c.toml", **sections: str) -> Path:
    """A small config; ``sections`` sets lines of [sde], [data], [train], [sampler] or [sample]
    (replacing a key the template already sets)."""
    text = CONFIG.format(out=out, **{k: sections.get(k, "") for k in ("sde", "data", "train", "sampler", "sample")})
    kept, section = [], None
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and line not in sections.get(section, "").splitlines():
            key = line.split("=")[0].strip()
            if any(added.split("=")[0].strip() == key for added in sections.get(section, "").splitlines()):
                continue
        kept.append(line)
    path = folder / name
    path.write_text("\n".join(kept) + "\n")
    return path


def one_line_error(capsys, *argv: str) -> str:
    """Run the command; it must fail with exit 2 and exactly one line on stderr, which is returned."""
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdeplug: error: "), err
    return lines[0]


@pytest.fixture(scope="module")
@computed_once
def trained(tmp_path_factory):
    """A config and its trained checkpoint (10 steps of a tiny MLP)."""
    folder = tmp_path_factory.mktemp("trained")
    path = config(folder, folder / "run")
    assert main(["train", str(path)]) == 0
    return path, folder / "run" / "checkpoint.safetensors"


def test_config_files_that_are_folders_binary_or_not_utf8(tmp_path, capsys):
    (tmp_path / "folder.toml").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"[sde]\nname = 'vp'\n\x00\x01\x02")
    (tmp_path / "latin1.toml").write_bytes('[sde]\nname = "v\xe9"\n'.encode("latin-1"))
    for name, fragment in [
        ("folder.toml", "is a folder; give a TOML file"),
        ("binary.toml", "is a binary file, not TOML text"),
        ("latin1.toml", "is not UTF-8 text (byte 15 is 0xe9)"),
    ]:
        assert fragment in one_line_error(capsys, "sample", str(tmp_path / name))
    good = config(tmp_path, tmp_path / "out")
    message = one_line_error(capsys, "sample", str(good), "--sampler", str(tmp_path / "folder.toml"))
    assert "sampler file" in message and "is a folder" in message


@pytest.mark.parametrize(
    "sections, fragment",
    [
        ({"sample": "seed = 1.5"}, "[sample] seed must be an integer; got 1.5"),
        ({"sample": "seed = 18446744073709551616"}, "[sample] seed must be an integer in [0, 2**63)"),
        ({"train": "seed = -1"}, "[train] seed must be an integer in [0, 2**63); got -1"),
        ({"data": "nmber = 3"}, "data set 'moons': unknown option 'nmber'; accepted options: n_test, n_train"),
        ({"data": "n_train = 0"}, "n_train must be a positive integer; got 0"),
        ({"sampler": "eps = nan"}, "[sampler] eps must be a finite number >= 0"),
        ({"sampler": "eps = 2.0"}, "[sampler] eps = 2.0 must lie in [0, T) = [0, 1)"),
        ({"train": "eps = -1e-3"}, "[train] eps must be a finite number >= 0"),
        ({"train": "eps = 1.5"}, "[train] eps = 1.5 must lie in [0, T)"),
        ({"sde": "N = inf"}, "N must be a positive integer; got inf"),
        ({"sde": "N = 10.5"}, "N must be a positive integer; got 10.5"),
        ({"sde": "beta_max = inf"}, "beta_max must be a finite positive number; got inf"),
        ({"sde": "T = inf"}, "T must be a finite positive number; got inf"),
        ({"train": 'grad_clip = "x"'}, "[train] grad_clip must be a number; got 'x'"),
    ],
)
@pytest.mark.parametrize("command", ["train", "sample"])
def test_bad_values_are_one_line_before_anything_is_made(tmp_path, capsys, sections, fragment, command):
    out = tmp_path / "never"
    path = config(tmp_path, out, **sections)
    assert fragment in one_line_error(capsys, command, str(path))
    assert not out.exists()


def test_a_ve_sde_with_an_infinite_sigma_max_is_refused(tmp_path, capsys):
    path = config(tmp_path, tmp_path / "never")
    path.write_text(path.read_text().replace('name = "vp"', 'name = "ve"\nsigma_max = inf', 1))
    assert "sigma_max must be a finite positive number; got inf" in one_line_error(capsys, "sample", str(path))


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--device", "meta"], "--device = 'meta' cannot run sdeplug"),
        (["--device", "foo"], "--device = 'foo' is not a torch device; this machine has: cpu"),
        (["--device", "cuda:99"], "--device = 'cuda:99'"),
        (["--seed", str(2**64)], "--seed must be an integer in [0, 2**63); got 18446744073709551616"),
        (["--seed", "-3"], "--seed must be an integer in [0, 2**63); got -3"),
        (["--num", "0"], "--num: num must be a positive integer; got 0"),
    ],
)
def test_bad_command_line_values(tmp_path, capsys, flags, fragment):
    out = tmp_path / "never"
    assert fragment in one_line_error(capsys, "sample", str(config(tmp_path, out)), *flags)
    assert not out.exists()


@pytest.mark.parametrize(
    "sections, fragment",
    [
        ({"sample": "num = 1000000000000"}, "[sample] num = 1000000000000 needs"),
        ({"sample": "batch_size = 1000000000000"}, "[sample] batch_size = 1000000000000 needs"),
        ({"train": "steps = 1000000000000"}, "[train] steps = 1000000000000 needs"),
        ({"train": "batch_size = 1000000000000"}, "[train] batch_size = 1000000000000 needs"),
        ({"data": "n_train = 1000000000000"}, "[data] n_train = 1000000000000 needs"),
    ],
)
def test_sizes_that_cannot_fit_in_memory_are_refused_before_allocating(tmp_path, capsys, sections, fragment):
    command = "train" if "train" in sections else "sample"
    message = one_line_error(capsys, command, str(config(tmp_path, tmp_path / "run", **sections)))
    assert fragment in message and "GiB of memory" in message


def _lying_header(path: Path) -> None:
    """A .npy header claiming 10^13 rows in front of 100 rows of data."""
    with open(path, "wb") as f:
        npy.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10**13, 2)})
        f.write(np.zeros((100, 2)).tobytes())


def test_bad_data_files_are_refused_naming_the_file(tmp_path, capsys):
    np.save(tmp_path / "empty.npy", np.zeros((0, 2)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    whole = tmp_path / "whole.npy"
    np.save(whole, np.ones((100, 2)))
    (tmp_path / "truncated.npy").write_bytes(whole.read_bytes()[:300])
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "zero_bytes.npy").write_bytes(b"")
    _lying_header(tmp_path / "lying.npy")
    cases = {
        "empty.npy": "holds no data (shape (0, 2)); it needs at least one point",
        "objects.npy": "holds Python objects, which would need unpickling",
        "truncated.npy": "is truncated or its header lies: shape (100, 2) of float64 needs 1600 bytes",
        "folder.npy": "is a folder; give a .npy, .npz or .pt file",
        "zero_bytes.npy": "is not a readable .npy file",
        "lying.npy": "shape (10000000000000, 2) of float64 needs 160000000000000 bytes of data, the file holds 1600",
    }
    for name, fragment in cases.items():
        data = f'name = "file"\npath = "{tmp_path / name}"'
        path = config(tmp_path, tmp_path / "run", data=data)
        path.write_text(path.read_text().replace("n_train = 500\nn_test = 100\n", ""))
        message = one_line_error(capsys, "train", str(path))
        assert fragment in message and name in message, message


def test_steps_below_the_checkpoints_step_say_how_to_continue(trained, tmp_path, capsys):
    path, checkpoint = trained
    shorter = tmp_path / "shorter.toml"
    shorter.write_text(path.read_text().replace("steps = 10\n", "steps = 4\n", 1))
    message = one_line_error(capsys, "train", str(shorter))
    assert f"{checkpoint} is at step 10, beyond steps = 4; to continue it, set steps to 10 or more" in message


def test_an_sde_table_that_writes_out_a_default_is_the_same_sde(trained, tmp_path, capsys):
    """The checkpoint records [sde] {name = "vp"}; a config writing beta_max = 20.0 names the
    same SDE (the built parts' settings are compared, not the tables' text)."""
    path, _ = trained
    spelled = tmp_path / "spelled.toml"
    spelled.write_text(path.read_text().replace('name = "vp"\n', 'name = "vp"\nbeta_max = 20.0\nbeta_min = 0.1\n', 1))
    assert main(["sample", str(spelled), "--out", str(tmp_path / "s")]) == 0
    assert main(["train", str(spelled), "--out", str(tmp_path / "t")]) == 0
    other = tmp_path / "other.toml"
    other.write_text(path.read_text().replace('name = "vp"\n', 'name = "vp"\nbeta_max = 10.0\n', 1))
    capsys.readouterr()
    assert "was trained with [sde]" in one_line_error(capsys, "sample", str(other))


def test_sampling_with_another_data_set_warns_in_one_line(trained, tmp_path, capsys):
    path, _ = trained
    same_with_defaults = tmp_path / "defaults.toml"
    same_with_defaults.write_text(path.read_text().replace("n_test = 100\n", "n_test = 100\nseed = 0\nnoise = 0.05\n"))
    assert main(["sample", str(same_with_defaults), "--out", str(tmp_path / "a")]) == 0
    assert "warning" not in capsys.readouterr().err
    swiss = tmp_path / "swiss.toml"
    swiss.write_text(path.read_text().replace('name = "moons"', 'name = "swiss_roll"', 1))
    assert main(["sample", str(swiss), "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdeplug: warning: ") and "was trained on [data]" in err[0], err


def _rehashed(source: Path, target: Path, edit) -> Path:
    """A copy of a checkpoint whose tensors and metadata ``edit`` changed, with a fresh valid checksum
    (which anyone can compute)."""
    tensors, meta = load_checkpoint(source)
    edit(tensors, meta)
    return save_checkpoint(target, tensors, meta)


def _edits():
    def drop(key):
        return lambda tensors, meta: meta.pop(key)

    def add(tensors, meta):
        meta["run_me"] = "import os"

    def bad_rng(tensors, meta):
        tensors["rng.loss"] = torch.zeros(7, dtype=torch.uint8)

    def beyond(tensors, meta):
        meta["step"] = 10**6

    def settings(tensors, meta):
        meta["settings"]["lr"] = "fast"

    def history(tensors, meta):
        tensors["history"] = torch.zeros(3)

    def stray(tensors, meta):
        tensors["payload"] = torch.zeros(3)

    return {
        "missing key": (drop("optimizer"), "metadata keys missing ['optimizer']"),
        "unexpected key": (add, "unexpected ['run_me']"),
        "bad RNG state": (bad_rng, "its random state rng.loss is not one"),
        "step beyond the run": (beyond, "step 1000000 lies outside the run it belongs to (0 to 10 steps)"),
        "bad settings": (settings, "its training settings are invalid"),
        "short history": (history, "its loss history must have shape (10,)"),
        "stray tensor": (stray, "unexpected ['payload']"),
    }


@pytest.mark.parametrize("case", list(_edits()))
def test_rehashed_metadata_is_still_checked_field_by_field(trained, tmp_path, capsys, case):
    path, checkpoint = trained
    edit, fragment = _edits()[case]
    out = tmp_path / "run"
    out.mkdir()
    _rehashed(checkpoint, out / "checkpoint.safetensors", edit)
    edited = tmp_path / "edited.toml"
    edited.write_text(path.read_text().replace(str(path.parent / "run"), str(out)))
    command = "train" if case == "bad RNG state" else "sample"  # sampling never reads the generators
    message = one_line_error(capsys, command, str(edited))
    assert "is not a valid training checkpoint" in message and fragment in message, message


def test_stale_temporary_files_of_a_killed_save_are_removed_on_the_next_start(trained, tmp_path):
    path, checkpoint = trained
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".checkpoint.safetensors.tmp-4242", out / ".checkpoint.safetensors.tmp-77"]
    for leftover in stale:
        leftover.write_bytes(checkpoint.read_bytes()[:5000])
    unrelated = out / ".other.safetensors.tmp-4242"
    unrelated.write_bytes(b"not ours")
    moved = tmp_path / "moved.toml"
    moved.write_text(path.read_text().replace(str(path.parent / "run"), str(out)))
    assert main(["train", str(moved)]) == 0
    assert not any(p.exists() for p in stale) and unrelated.exists()


def test_a_failed_checkpoint_save_is_one_line_and_keeps_the_old_file(trained, tmp_path, capsys, monkeypatch):
    path, checkpoint = trained
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.safetensors").write_bytes(checkpoint.read_bytes())
    longer = tmp_path / "longer.toml"
    longer.write_text(
        path.read_text().replace(str(path.parent / "run"), str(out)).replace("steps = 10\n", "steps = 20\n")
    )

    # a real failing write: files may not grow past 4 kB (the checkpoint is larger), so the
    # operating system refuses the write itself, as on a full disk
    with files_limited_to(4096):
        message = one_line_error(capsys, "train", str(longer))
    assert "could not write" in message and "File too large; the previous file is kept" in message, message
    assert load_checkpoint(out / "checkpoint.safetensors")[1]["step"] == 10
    assert not list(out.glob(".*.tmp-*"))


def test_a_second_ctrl_c_during_the_final_save_waits_for_it_and_exits_130(trained, tmp_path, capsys, monkeypatch):
    """Ctrl-C stops training after step 13; a second one arrives while that last checkpoint is
    being written. The save completes, the command says so in one line and exits 130."""
    import sdeplug.files
    import sdeplug.trainer

    path, checkpoint = trained
    out = tmp_path / "run"
    longer = tmp_path / "longer.toml"
    longer.write_text(
        path.read_text().replace(str(path.parent / "run"), str(out)).replace("steps = 10\n", "steps = 1000\n")
    )
    real_save, real_step = sdeplug.files.safetensors_bytes, sdeplug.trainer.Trainer.train_step

    def save_interrupted(tensors, metadata=None):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the save
        return real_save(tensors, metadata=metadata)

    def step(self):
        loss = real_step(self)
        if self.step == 13:
            monkeypatch.setattr(sdeplug.files, "safetensors_bytes", save_interrupted)
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C
        return loss

    monkeypatch.setattr(sdeplug.trainer.Trainer, "train_step", step)
    assert main(["train", str(longer)]) == 130
    assert "interrupted at step 13; checkpoint saved" in capsys.readouterr().out
    assert load_checkpoint(out / "checkpoint.safetensors")[1]["step"] == 13
    assert not list(out.glob(".*.tmp-*"))


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sdeplug_cli", *args]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.8])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    """Ctrl-C while torch and the plugins are still being imported."""
    command = _command("sample", str(config(tmp_path, tmp_path / "run")))
    with interruptible(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert process.returncode == 130 and lines == [
        "sdeplug: interrupted (Ctrl-C); files are written whole or not at all"
    ], err.decode()


@pytest.mark.slow
def test_ctrl_c_during_sampling_is_one_line_exit_130_and_writes_nothing(tmp_path):
    """Ctrl-C once the progress bar has been redrawn (the loop is running; its first drawing is
    made before): after the bar, one line."""
    ring = tmp_path / "ring.toml"
    ring.write_text(
        f'[sde]\nname = "vp"\n[sampler]\nsteps = 200000\n[sample]\nnum = 500\nprogress = true\n'
        f'[output]\ndir = "{tmp_path / "run"}"\n'
    )
    with interruptible(_command("sample", str(ring)), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        shown, deadline = b"", time.monotonic() + 120
        while shown.count(b"sampling:") < 2 and time.monotonic() < deadline and process.poll() is None:
            readable, _, _ = select.select([process.stderr], [], [], max(0.0, deadline - time.monotonic()))
            if readable:  # never blocks past the deadline, even if the process stops writing
                shown += os.read(process.stderr.fileno(), 4096)
        assert shown.count(b"sampling:") >= 2, shown.decode()
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=60)
    err = (shown + rest).decode()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    ours = [line for line in lines if not line.startswith("sampling:")]
    assert process.returncode == 130 and len(ours) == 1 and ours[0].startswith("sdeplug: interrupted"), err
    assert not (tmp_path / "run").exists() or list((tmp_path / "run").iterdir()) == []  # made by the first write


def test_the_guarantees_section_names_the_tests_behind_it():
    section = (Path(__file__).parents[1] / "docs" / "guarantees.md").read_text()
    for fragment in ("checksum", "re-hash", "test_rehashed_metadata_is_still_checked_field_by_field", "is 130"):
        assert fragment in section, fragment


# The library: one clear ValueError or TypeError for each bad argument -------------------------


def _oracle():
    import sdeplug
    from sdeplug.oracle import preset

    sde = sdeplug.create("sde", "vp")
    return sde, preset("mixture3").score_model(sde)


@pytest.mark.parametrize(
    "call, error, fragment",
    [
        (lambda s: s.pc((0, 2)), ValueError, "batch >= 1"),
        (lambda s: s.ode((0, 2)), ValueError, "batch >= 1"),
        (lambda s: s.pc((-1, 2)), ValueError, "sizes >= 0"),
        (lambda s: s.pc((4, 2), dtype=torch.int64), TypeError, "real floating-point dtype"),
        (lambda s: s.ode((4, 2), dtype=torch.complex64), TypeError, "real floating-point dtype"),
        (lambda s: s.pc(None, x_init=torch.ones(4, 2, dtype=torch.int32)), TypeError, "x_init's dtype"),
        (lambda s: s.pc(None, x_init=torch.ones(0, 2)), ValueError, "x_init must hold at least one sample"),
        (lambda s: s.pc((4, 2), generator=0), TypeError, "torch.Generator(device).manual_seed(seed)"),
        (lambda s: s.ode((4, 2), generator=0), TypeError, "generator must be a torch.Generator"),
        (lambda s: s.pc((4, 2), generator=torch.Generator(), device="meta"), ValueError, "on cpu but the samples"),
        (lambda s: s.pc((4, 2), device="foo"), ValueError, "device 'foo' is not a torch device"),
        (lambda s: s.logp(torch.zeros(0, 2)), ValueError, "x must hold at least one sample"),
        (lambda s: s.logp(torch.zeros(3, 2, dtype=torch.int64)), TypeError, "x's dtype"),
        (lambda s: s.logp(torch.zeros(3, 2, dtype=torch.complex64)), TypeError, "x's dtype"),
        (lambda s: s.logp(torch.zeros(3, 2), divergence="hutchinson", generator=0), TypeError, "torch.Generator"),
    ],
)
def test_library_calls_refuse_hostile_arguments_clearly(call, error, fragment):
    from types import SimpleNamespace

    from sdeplug.likelihood import log_likelihood
    from sdeplug.sampling import sample_ode, sample_pc

    sde, score = _oracle()
    calls = SimpleNamespace(
        pc=lambda shape, **kw: sample_pc(sde, score, shape, steps=3, **kw),
        ode=lambda shape, **kw: sample_ode(sde, score, shape, solver="heun", steps=3, **kw),
        logp=lambda x, **kw: log_likelihood(sde, score, x, solver="heun", solver_options={"steps": 3}, **kw),
    )
    with pytest.raises(error, match=fragment.replace("(", "\\(").replace(")", "\\)")):
        call(calls)


def _nan_below_half(score):
    def broken(x, t):
        return torch.where((t < 0.5)[:, None], torch.full_like(x, float("nan")), score(x, t))

    return broken


def test_a_non_finite_score_under_torchdiffeq_is_reported_like_other_solvers():
    """torchdiffeq's adaptive steps end in its own "AssertionError: underflow in dt" once the
    state is NaN; sdeplug reports where, when and after which part instead, for sampling and
    likelihood alike."""
    from sdeplug.errors import NonFiniteError
    from sdeplug.likelihood import log_likelihood
    from sdeplug.sampling import sample_ode

    sde, score = _oracle()
    with pytest.raises(NonFiniteError, match=r"at score evaluation \d+ \(t = 0\.4\d*\), after the ODE solver 'dopri5'"):
        sample_ode(sde, _nan_below_half(score), (16, 2), solver="dopri5", generator=torch.Generator().manual_seed(0))
    x = torch.zeros(4, 2)
    with pytest.raises(NonFiniteError, match=r"derivative became non-finite .* at score evaluation 0 \(t = 1e-05\)"):
        log_likelihood(sde, _nan_below_half(score), x, solver="dopri5")
    with pytest.raises(NonFiniteError, match=r"derivative became non-finite .* at score evaluation 0 \(t = 1e-05\)"):
        log_likelihood(sde, _nan_below_half(score), x, solver="dopri5", quadrature=3)


def test_a_plugins_part_that_raises_is_named_with_its_plugin_and_the_scores_own_errors_pass_through():
    import sdeplug
    from sdeplug import Predictor, hookimpl
    from sdeplug.errors import PluginError
    from sdeplug.sampling import sample_pc

    class Clumsy(Predictor):
        name = "clumsy"

        def __init__(self, sde, score):
            self.sde, self.score = sde, score

        def step(self, x, t, t_next, state, generator=None, jumped=False):
            return x[:, 5], state  # an IndexError of the plugin's own

    class ClumsyPlugin:
        @hookimpl
        def register_predictors(self, register):
            register(Clumsy)

    sdeplug.register_plugin(ClumsyPlugin(), "clumsy-plugin")
    sde, score = _oracle()
    with pytest.raises(PluginError, match=r"predictor 'clumsy' \(plugin 'clumsy-plugin'.*failed in step\(\) at t = 1 "):
        sample_pc(sde, score, (4, 2), steps=3, predictor="clumsy")

    def failing_score(x, t):
        raise RuntimeError("the user's own network broke")

    with pytest.raises(RuntimeError, match="the user's own network broke"):
        sample_pc(sde, failing_score, (4, 2), steps=3)


def test_a_third_party_sde_that_accepts_inf_is_refused_before_sampling(tmp_path, capsys):
    """The bundled SDEs refuse infinite options themselves; for a plugin's SDE that does not,
    the coefficients are checked before the failure could be blamed on the score model."""
    import attrs

    import sdeplug
    from sdeplug import hookimpl
    from sdeplug_reference.sdes import VPSDE

    @attrs.frozen(kw_only=True)
    class LooseVP(VPSDE):
        name = "loose_vp"
        beta_max: float = attrs.field(default=20.0, converter=float)  # no validator

    class LoosePlugin:
        @hookimpl
        def register_sdes(self, register):
            register(LooseVP)

    sdeplug.register_plugin(LoosePlugin(), "loose")
    path = config(tmp_path, tmp_path / "never", sde="beta_max = inf")
    path.write_text(path.read_text().replace('name = "vp"', 'name = "loose_vp"', 1))
    message = one_line_error(capsys, "sample", str(path))
    assert "[sde] 'loose_vp', beta_max = inf: its diffusion at t = 1 is not finite" in message
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_output_into_a_pipe_whose_reader_left_ends_quietly():
    """`sdeplug plugins | head -2`: the reader leaves early, and no BrokenPipe traceback
    follows. Here the reader (`true`) leaves before the first line, every time."""
    import shlex

    run = subprocess.run(
        f"{shlex.join(_command('plugins'))} | true; echo ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.stderr == "" and run.stdout.strip() == "141", (run.stdout, run.stderr[-2000:])


def test_a_checkpoint_of_another_width_is_one_line_naming_the_first_tensor(trained, tmp_path, capsys):
    path, checkpoint = trained
    wider = tmp_path / "wider.toml"
    wider.write_text(path.read_text().replace("width = 16", "width = 24"))
    message = one_line_error(capsys, "sample", str(wider), "--checkpoint", str(checkpoint))
    assert "does not fit this network: its " in message and "was it trained with other [model] options?" in message


def test_a_classifier_checkpoint_given_as_the_score_model_is_named(tmp_path, capsys):
    import sdeplug
    from sdeplug.trainer import Trainer, TrainSettings

    network = sdeplug.create("classifier", "mlp_classifier", event_shape=(2,), num_classes=3)
    data, labels = torch.randn(40, 2), torch.randint(0, 3, (40,))
    settings = TrainSettings(steps=1, batch_size=8, objective="classifier", progress=False, checkpoint_every=None)
    trainer = Trainer(network, sdeplug.create("sde", "vp"), data, settings, labels=labels)
    trainer.config = {"sde": {"name": "vp"}, "classifier": {"name": "mlp_classifier"}, "data": {"name": "ring8"}}
    trainer.fit().save(tmp_path / "classifier.safetensors")
    path = config(tmp_path, tmp_path / "out")
    message = one_line_error(capsys, "sample", str(path), "--checkpoint", str(tmp_path / "classifier.safetensors"))
    assert "holds a classifier (trained with --classifier), not the score model needed here" in message


def test_non_finite_rows_of_a_likelihood_data_file_are_one_line(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(20, 2))
    x[3, 1] = np.nan
    np.save(tmp_path / "points.npy", x)
    path = tmp_path / "lk.toml"
    path.write_text(
        f'[sde]\nname = "vp"\n[data]\nname = "ring8"\n[likelihood]\ndata_file = "{tmp_path / "points.npy"}"\n'
        f'[output]\ndir = "{tmp_path / "out"}"\n'
    )
    message = one_line_error(capsys, "likelihood", str(path))
    assert "points.npy: row 3 has NaN or inf values" in message


def test_float128_data_are_one_line_naming_the_dtype(tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((10, 2), dtype=np.longdouble))
    path = tmp_path / "wide.toml"
    path.write_text(
        f'[sde]\nname = "vp"\n[data]\nname = "file"\npath = "{tmp_path / "wide.npy"}"\n[model]\nname = "mlp"\n'
        f'[train]\nsteps = 2\nbatch_size = 4\n[output]\ndir = "{tmp_path / "out"}"\n'
    )
    message = one_line_error(capsys, "train", str(path))
    if np.dtype(np.longdouble).itemsize > 8:  # a platform whose long double is wider than float64
        assert "holds float128 numbers, which torch cannot take" in message


def test_a_checkpoint_whose_ema_holds_a_nan_is_not_resumed_and_never_saved(trained, tmp_path, capsys):
    """The loss and gradients were finite, but the EMA holds a NaN (an edited or damaged
    state): resuming refuses it in one line, and a Trainer never writes such a state."""
    path, checkpoint = trained

    def poison(tensors, meta):
        name = next(k for k in tensors if k.startswith("ema.") and tensors[k].is_floating_point())
        tensors[name] = (
            tensors[name].clone().view(-1).index_fill_(0, torch.tensor([0]), float("nan")).view_as(tensors[name])
        )

    out = tmp_path / "run"
    _rehashed(checkpoint, out / "checkpoint.safetensors", poison)
    longer = tmp_path / "longer.toml"
    longer.write_text(
        path.read_text().replace(str(path.parent / "run"), str(out)).replace("steps = 10\n", "steps = 20\n")
    )
    message = one_line_error(capsys, "train", str(longer))
    assert "is no state to resume: its ema." in message and "holds NaN or inf values" in message

    import sdeplug
    from sdeplug.errors import TrainingDivergedError
    from sdeplug.trainer import Trainer, TrainSettings

    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=8, depth=1)
    trainer = Trainer(network, sdeplug.create("sde", "vp"), torch.randn(32, 2), TrainSettings(steps=2, batch_size=8))
    with torch.no_grad():
        next(trainer.ema.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDivergedError, match="ema.* holds NaN or inf values"):
        trainer.save(tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def test_moments_of_other_data_are_one_line_from_the_command(tmp_path, capsys):
    """The moments of 3-D data given to gaussian_start on 2-D data."""
    from sdeplug import DataMoments

    DataMoments.from_samples(torch.randn(100, 3, dtype=torch.float64)).save(tmp_path / "m3.safetensors")
    sampler = tmp_path / "gs.toml"
    sampler.write_text(
        '[sampler]\nkind = "pc"\nsteps = 4\ndenoise = false\n[sampler.predictor]\nname = "gaussian_start"\n'
        f'moments = "{tmp_path / "m3.safetensors"}"\n[sampler.corrector]\nname = "none"\n'
    )
    ring = Path(__file__).parent.parent / "examples" / "ring8_pc.toml"
    message = one_line_error(capsys, "sample", str(ring), "--sampler", str(sampler), "--out", str(tmp_path / "o"))
    assert "predictor 'gaussian_start': the data moments are for samples of shape (3,), not (2,)" in message


def test_the_printed_use_it_line_is_valid_toml_for_a_path_with_quotes(tmp_path, capsys):
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    out = tmp_path / 'say "cheese" \\ here' / "moments.safetensors"
    ring = Path(__file__).parent.parent / "examples" / "ring8_pc.toml"
    assert main(["moments", str(ring), "--out", str(out)]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("use it: "))
    table = line.removeprefix("use it: [sampler.predictor] ")
    assert tomllib.loads(table.replace(", ", "\n"))["moments"] == str(out)


def test_a_huge_npy_header_and_a_pt_file_holding_code_are_one_clean_line(tmp_path, capsys):
    """numpy's and torch's refusals come with paragraphs of advice; the line keeps what was refused."""
    import struct

    header = repr({"descr": "<f8", "fortran_order": False, "shape": (10, 2), "x" * 200_000: 1})
    header = header.ljust((len(header) + 12) // 64 * 64 + 64 - 12) + "\n"
    with open(tmp_path / "big.npy", "wb") as f:
        f.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", len(header)) + header.encode() + bytes(160))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Payload()}, tmp_path / "code.pt")
    for name, fragment in (("big.npy", "Header info length"), ("code.pt", "Trying to load unsupported GLOBAL")):
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'[sde]\nname = "vp"\n[data]\nname = "file"\npath = "{tmp_path / name}"\n[model]\nname = "mlp"\n'
            f'[train]\nsteps = 2\nbatch_size = 4\n[output]\ndir = "{tmp_path / "out"}"\n'
        )
        assert fragment in one_line_error(capsys, "train", str(path))
    assert not (tmp_path / "pwned").exists()
