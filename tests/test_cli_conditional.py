"""``sdeplug train`` and ``sdeplug sample`` with a class-conditional model: label dropout,
classifier-free guidance and autoguidance from [guidance], on the oracle mixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import computed_once
from sdeplug.app.cli import main

CONFIG = """
[sde]
name = "vp"

[data]
name = "mixture3"

[model]
name = "mlp"
width = 96
depth = 3
num_classes = 3

[train]
steps = 700
batch_size = 256
lr = 2e-3
ema_decay = 0.99
checkpoint_every = 350
progress = false

[sampler]
kind = "pc"
steps = 20
grid = {{name = "logsnr"}}

[sampler.predictor]
name = "unipc"

[sampler.corrector]
name = "none"

[sample]
num = 600
batch_size = 250
progress = false

[output]
dir = "{out}"
"""

# Its module-scoped fixture trains once: keep its tests on one worker (make test uses --dist
# loadgroup); the tests that use it take seconds each and are left out of make test-fast.
pytestmark = pytest.mark.xdist_group("cli_conditional")


@pytest.fixture(scope="module")
@computed_once
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conditional")
    config = tmp / "m.toml"
    config.write_text(CONFIG.format(out=tmp / "run"))
    assert main(["train", str(config)]) == 0
    return config, tmp / "run"


def _guidance(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text("[guidance]\n" + text)
    return str(path)


@pytest.mark.slow
def test_a_conditional_model_samples_class_balanced_in_its_classes(trained, capsys):
    config, out = trained
    assert main(["sample", str(config)]) == 0
    report = json.loads((out / "summary.json").read_text())
    (run,) = report["runs"]
    assert report["kind"] == "conditional" and report["num_classes"] == 3
    assert run["agreement"] > 0.9 and run["network_evaluations_per_sample"] == run["nfe_per_sample"]
    labels = np.load(out / "labels.npy")
    np.testing.assert_array_equal(labels, np.arange(600) % 3)
    assert np.load(out / "samples.npy").shape == (600, 2)
    assert "oracle samples of the requested components" == run["reference"]
    assert "agreement" in capsys.readouterr().out


@pytest.mark.slow
def test_classifier_free_guidance_from_the_config(trained, tmp_path, capsys):
    config, out = trained
    cfg = _guidance(tmp_path, "cfg.toml", 'kind = "cfg"\nscale = [0, 1, 3]\nclasses = [2, 0]\n')
    assert main(["sample", str(config), "--guidance", cfg, "--out", str(tmp_path / "cfg")]) == 0
    report = json.loads((tmp_path / "cfg" / "guidance.json").read_text())
    runs = {row["weight"]: row for row in report["runs"]}
    assert abs(runs[0.0]["agreement"] - 0.25) < 0.12  # unconditional: class 2 a fifth of the time, class 0 0.3
    assert runs[1.0]["agreement"] > 0.9 and runs[3.0]["agreement"] > 0.9
    for row in report["runs"]:  # w = 0 and w = 1 are one of the two scores: one forward pass per step
        assert row["network_evaluations_per_sample"] == (1 if row["weight"] in (0, 1) else 2) * row["nfe_per_sample"]
    np.testing.assert_array_equal(np.load(tmp_path / "cfg" / "labels.npy")[:4], [2, 0, 2, 0])
    assert "classifier-free guidance" in capsys.readouterr().out
    # w = 0 is the unconditional score the null label learnt: the mixture's class shares
    from sdeplug.oracle import preset

    mixture = preset("mixture3")
    unconditional = torch.as_tensor(np.load(tmp_path / "cfg" / "samples-w0.npy"), dtype=torch.float64)
    shares = torch.bincount(mixture.posterior_weights(unconditional).argmax(1), minlength=3).double() / 600
    # a share's binomial standard error at n = 600 is at most 0.02; a trained score adds some
    assert (shares - mixture.log_weights.exp()).abs().max() < 0.08, shares


@pytest.mark.slow
def test_autoguidance_by_the_model_itself_is_unguided_and_by_an_earlier_checkpoint_differs(trained, tmp_path):
    config, out = trained

    def guided(name: str, checkpoint) -> np.ndarray:
        path = _guidance(tmp_path, f"{name}.toml", f'kind = "autoguidance"\nscale = [2]\ncheckpoint = "{checkpoint}"\n')
        assert main(["sample", str(config), "--guidance", path, "--out", str(tmp_path / name)]) == 0
        return np.load(tmp_path / name / "samples-w2.npy")

    assert main(["sample", str(config), "--out", str(tmp_path / "plain")]) == 0
    plain = np.load(tmp_path / "plain" / "samples.npy")
    np.testing.assert_array_equal(guided("same", out / "checkpoint.safetensors"), plain)
    short = tmp_path / "short.toml"  # the same run stopped early: a weaker model
    short.write_text(
        config.read_text().replace("steps = 700", "steps = 150").replace(str(out), str(tmp_path / "short"))
    )
    assert main(["train", str(short)]) == 0
    by_earlier = guided("earlier", tmp_path / "short" / "checkpoint.safetensors")
    assert np.abs(by_earlier - plain).max() > 1e-3


@pytest.mark.parametrize(
    ("guidance", "message"),
    [
        ('kind = "cfg"\nclasses = [3]\n', "[guidance] classes [3] do not exist: the model knows classes 0 to 2"),
        ('kind = "cfg"\ninterval = [2, 1]\n', "interval must satisfy 0 <= low < high"),
        ('kind = "cfg"\nthreshold = 1.5\n', "threshold must be a quantile ratio in (0, 1]"),
        ('kind = "autoguidance"\n', "kind = 'autoguidance' needs checkpoint"),
        ('kind = "autoguidance"\ncheckpoint = "missing.safetensors"\n', "[guidance] checkpoint not found"),
    ],
)
@pytest.mark.slow
def test_bad_guidance_is_one_line(trained, tmp_path, capsys, guidance, message):
    config, _ = trained
    path = _guidance(tmp_path, "bad.toml", guidance)
    assert main(["sample", str(config), "--guidance", path, "--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_guidance_that_needs_classes_is_refused_for_an_unconditional_model(tmp_path, capsys):
    config = tmp_path / "plain.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "mixture3"\n[guidance]\nkind = "cfg"\n'
        "[sample]\nnum = 10\nprogress = false\n"
    )
    assert main(["sample", str(config), "--out", str(tmp_path / "o")]) != 0
    assert "needs a class-conditional model" in capsys.readouterr().err


def test_training_a_conditional_model_on_unlabelled_data_is_one_line(tmp_path, capsys):
    config = tmp_path / "moons.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "moons"\n[model]\nname = "mlp"\nnum_classes = 2\n'
        "[train]\nsteps = 2\nprogress = false\n"
    )
    assert main(["train", str(config), "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err.strip()
    assert "[model] num_classes = 2 needs labelled data; [data] 'moons' has no labels" in err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_autoguidance_by_a_network_of_another_shape_is_refused(trained, tmp_path, capsys):
    config, _ = trained
    other = tmp_path / "other.toml"
    other.write_text(
        '[sde]\nname = "vp"\n[data]\nname = "blobs16"\n[model]\nname = "mlp"\nwidth = 16\ndepth = 1\n'
        f'[train]\nsteps = 2\nprogress = false\n[output]\ndir = "{tmp_path / "other"}"\n'
    )
    assert main(["train", str(other)]) == 0
    path = _guidance(
        tmp_path, "ag.toml", f'kind = "autoguidance"\ncheckpoint = "{tmp_path / "other" / "checkpoint.safetensors"}"\n'
    )
    assert main(["sample", str(config), "--guidance", path, "--out", str(tmp_path / "ag")]) != 0
    err = capsys.readouterr().err
    assert "two models of the same data shape" in err


@pytest.mark.slow
def test_labels_follow_their_samples_over_two_processes(trained, tmp_path):
    """Sample i has class i mod C whatever the number of processes: the samples agree byte for byte."""
    from test_distributed import SDEPLUG, launch

    config, _ = trained
    cfg = _guidance(tmp_path, "cfg.toml", 'kind = "cfg"\nscale = [2]\n')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun worker
    try:
        assert main(["sample", str(config), "--guidance", cfg, "--out", str(tmp_path / "p1")]) == 0
    finally:
        torch.set_num_threads(threads)
    run = launch(2, SDEPLUG, "sample", str(config), "--guidance", cfg, "--out", str(tmp_path / "p2"))
    assert run.returncode == 0, run.stderr[-3000:]
    np.testing.assert_array_equal(
        np.load(tmp_path / "p1" / "samples-w2.npy"), np.load(tmp_path / "p2" / "samples-w2.npy")
    )


# Labelled data --------------------------------------------------------------------------------


def test_image_folders_are_labelled_by_their_class_subfolders_in_sorted_order(tmp_path):
    from PIL import Image

    from sdeplug.app.datasets import load_dataset

    for name, grey in (("zebra", 255), ("ant", 0), ("moth", 128)):
        (tmp_path / name).mkdir()
        for i in range(7):
            Image.fromarray(np.full((4, 4), grey, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_dataset("images", path=str(tmp_path))
    assert data.class_names == ("ant", "moth", "zebra")  # as torchvision's ImageFolder numbers them
    pixel = {0: -1.0, 1: 128 / 127.5 - 1, 2: 1.0}
    for split, labels in ((data.train, data.train_labels), (data.test, data.test_labels)):
        expected = torch.tensor([pixel[int(k)] for k in labels], dtype=torch.float64)
        torch.testing.assert_close(split[:, 0, 0, 0], expected)  # each label stays with its image
    (tmp_path / "loose.png").write_bytes((tmp_path / "ant" / "0.png").read_bytes())
    assert load_dataset("images", path=str(tmp_path)).train_labels is None  # not every image has a class


def test_an_array_file_takes_a_labels_file_that_follows_its_rows(tmp_path):
    from sdeplug.app.datasets import load_dataset
    from sdeplug.errors import DataError

    labels = np.arange(40) % 4
    x = np.stack([labels.astype(np.float64), np.random.default_rng(0).normal(size=40)], axis=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    data = load_dataset("file", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"))
    torch.testing.assert_close(data.train[:, 0], data.train_labels.double())
    torch.testing.assert_close(data.test[:, 0], data.test_labels.double())
    np.save(tmp_path / "short.npy", labels[:39])
    with pytest.raises(DataError, match=r"labels must be 40 whole numbers, one per row of the data"):
        load_dataset("file", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "short.npy"))
    np.save(tmp_path / "half.npy", labels + 0.5)
    with pytest.raises(DataError, match="labels must be whole numbers"):
        load_dataset("file", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "half.npy"))
    np.save(tmp_path / "negative.npy", labels - 1)
    with pytest.raises(DataError, match="non-negative class numbers; the smallest is -1"):
        load_dataset("file", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "negative.npy"))


@pytest.mark.slow
def test_evaluate_sweeps_the_guidance_weight_with_the_classifiers_accuracy(trained, tmp_path, capsys):
    config, out = trained
    evaluated = tmp_path / "evaluate.toml"
    evaluated.write_text(
        config.read_text()
        + '[evaluate]\nfeatures = "data_classifier"\nnum = 300\nseeds = [0, 1]\nmetrics = ["fid", "precision_recall"]\n'
    )
    sweep = tmp_path / "weights.toml"
    sweep.write_text("[sweep]\nweights = [4, 0, 1]\n")
    assert main(["evaluate", str(evaluated), "--sweep", str(sweep), "--out", str(out)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    rows = {row["weight"]: row for row in report["weight_sweep"]}
    assert list(rows) == [0.0, 1.0, 4.0]
    accuracy = {w: row["metrics"]["accuracy"]["mean"] for w, row in rows.items()}
    recall = {w: row["metrics"]["recall"]["mean"] for w, row in rows.items()}
    assert accuracy[0.0] < 0.6 < 0.9 < accuracy[1.0] <= accuracy[4.0] + 0.02, accuracy
    assert recall[4.0] < recall[1.0], recall  # guidance trades diversity for fidelity
    assert report["real_data"]["accuracy"] > 0.95 and "accuracy" not in report["uniform_noise"]
    assert all(row["network_evaluations"] == (1 if w in (0, 1) else 2) * row["nfe"] for w, row in rows.items())
    assert (out / "sweep.png").exists() and "| w | NFE |" in capsys.readouterr().out
    # one weight, from a [guidance] file
    guidance = tmp_path / "cfg.toml"
    guidance.write_text('[guidance]\nkind = "cfg"\nscale = [2]\n')
    assert main(["evaluate", str(evaluated), "--guidance", str(guidance), "--out", str(out), "--seed", "0"]) == 0
    single = json.loads((out / "evaluate.json").read_text())
    assert single["weight"] == 2.0 and single["metrics"]["accuracy"]["mean"] > 0.9
    assert "guidance weight w = 2" in capsys.readouterr().out
    # autoguidance by the model itself is the conditional model at every weight
    guide = tmp_path / "self.toml"
    guide.write_text(f'[guidance]\nkind = "autoguidance"\ncheckpoint = "{out / "checkpoint.safetensors"}"\n')
    sweep.write_text("[sweep]\nweights = [1, 3]\n")
    assert main(["evaluate", str(evaluated), "--sweep", str(sweep), "--guidance", str(guide), "--out", str(out)]) == 0
    runs = json.loads((out / "sweep.json").read_text())["weight_sweep"]
    assert (
        runs[0]["metrics"] == runs[1]["metrics"] and runs[0]["metrics"]["accuracy"] == rows[1.0]["metrics"]["accuracy"]
    )


@pytest.mark.slow
def test_likelihood_of_a_conditional_model_is_conditioned_on_each_points_label(trained, tmp_path):
    """log p(x | y) with the held-out points' own labels: above the exact unconditional log p(x)
    by about the mutual information of point and component (log p(y | x) - log p(y) on average)."""
    config, out = trained
    assert main(["likelihood", str(config), "--num", "200", "--out", str(tmp_path)]) == 0
    report = json.loads(next(tmp_path.glob("likelihood*.json")).read_text())
    assert report["conditioned_on"] == "each point's own label"
    gain = report["mean_logp_nats"] - report["oracle_mean_logp_nats"]
    assert 0.5 < gain < 1.5, report  # the components of mixture3 barely overlap: about H(y) = 1.03 nats


@pytest.mark.slow
def test_tune_grid_tunes_for_the_score_the_sampler_runs(trained, tmp_path):
    config, out = trained
    guidance = _guidance(tmp_path, "cfg.toml", 'kind = "cfg"\nscale = [2]\n')
    grid = tmp_path / "grid.json"
    args = ["tune-grid", str(config), "--steps", "4", "--pilot", "64", "--guidance", guidance, "--out", str(grid)]
    assert main([*args, "--no-progress"]) == 0
    assert len(json.loads(grid.read_text())["fractions"]) == 5
