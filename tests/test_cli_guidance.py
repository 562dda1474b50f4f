"""``sdeplug train --classifier`` and ``sdeplug sample`` with a [guidance] section, on the oracle mixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import computed_once
from sdeplug.app.assemble import check_config
from sdeplug.app.cli import main
from sdeplug.app.config import Config
from sdeplug.app.datasets import load_dataset
from sdeplug.errors import ConfigError

CONFIG = """
[sde]
name = "vp"

[data]
name = "mixture3"
n_train = 20000

[classifier]
name = "mlp_classifier"
width = 64
depth = 2

[classifier.train]
steps = 600
batch_size = 256
lr = 2e-3
warmup = 50
ema_decay = 0.99
progress = false

[sampler]
kind = "ode"

[sampler.solver]
name = "dopri5"

[guidance]
kind = "classifier"
scale = [0, 3]

[sample]
num = 600
progress = false

[output]
dir = "{out}"
"""


# Its module-scoped fixture trains once: keep its tests on one worker (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("cli_guidance")


@pytest.fixture(scope="module")
@computed_once
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guidance")
    config = tmp / "m.toml"
    config.write_text(CONFIG.format(out=tmp / "run"))
    assert main(["train", str(config), "--classifier"]) == 0
    return config, tmp / "run"


@pytest.mark.slow
def test_trained_classifier_guides_the_cli_samples(trained, capsys):
    config, out = trained
    train = json.loads((out / "classifier-train.json").read_text())
    assert train["steps"] == 600 and train["held_out_accuracy"]["0.01T"] > 0.95
    assert main(["sample", str(config)]) == 0
    report = json.loads((out / "guidance.json").read_text())
    agreement = {row["scale"]: row["agreement"] for row in report["runs"]}
    assert abs(agreement[0.0] - 1 / 3) < 0.1  # unguided: the requested class is a coin toss
    assert agreement[3.0] > 0.95
    assert np.load(out / "samples-scale3.npy").shape == (600, 2)
    assert (out / "samples-scale3.png").exists()
    assert "scale  agreement" in capsys.readouterr().out
    # --scale overrides the list
    assert main(["sample", str(config), "--scale", "1", "--num", "30"]) == 0
    assert [row["scale"] for row in json.loads((out / "guidance.json").read_text())["runs"]] == [1.0]


@pytest.mark.slow
def test_inpainting_from_a_guidance_file_keeps_the_known_entries(trained, tmp_path):
    config, _ = trained
    guidance = tmp_path / "inpaint.toml"
    guidance.write_text('[guidance]\nkind = "inpaint"\nmask = [1, 0]\nper_image = 3\n')
    sampler = tmp_path / "pc.toml"
    sampler.write_text('[sampler]\nkind = "pc"\nsteps = 100\n')
    out = tmp_path / "inpaint"
    args = [
        "sample",
        str(config),
        "--guidance",
        str(guidance),
        "--sampler",
        str(sampler),
        "--num",
        "60",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    report = json.loads((out / "guidance.json").read_text())
    assert report["num_points"] == 20 and report["per_point"] == 3
    x = np.load(out / "samples.npy")
    truth = load_dataset("mixture3", n_train=20000).test[:20].numpy().repeat(3, 0)  # the first held-out points
    np.testing.assert_allclose(x[:, 0], truth[:, 0], atol=1e-6)  # known: kept exactly
    assert np.abs(x[:, 1] - truth[:, 1]).max() > 0.01  # unknown: sampled


@pytest.mark.slow
def test_guidance_config_errors_name_what_is_wrong(trained, tmp_path, capsys):
    config, _ = trained
    bad = tmp_path / "bad.toml"
    for text, message in [
        ('[guidance]\nkind = "inpaint"\nmask = "upper_half"\n', "is for images (C, H, W)"),
        ('[guidance]\nkind = "inpaint"\nmask = [1, 0, 1]\n', "must be like one sample (2,)"),
        ('[guidance]\nkind = "classifier"\nclasses = [5]\n', "classes [5] do not exist"),
        ('[guidance]\nkind = "measurement"\nmatrix = "grey"\n', "needs colour images"),
        ('[guidance]\nkind = "classifier"\nmask = [1, 0]\n', "takes no key 'mask'"),
        ('[guidance]\nkind = "classifier"\n[sample]\nnum = 3\n', "must hold only a [guidance] section"),
        ("[guidance\n", "guidance file"),
    ]:
        bad.write_text(text)
        sampler = ["--sampler", str(Path(__file__).parents[1] / "examples" / "samplers" / "pc.toml")]
        assert main(["sample", str(config), "--guidance", str(bad), "--num", "4", *sampler]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs \\[sampler\\] kind = 'pc'"):
        check_config(
            Config.from_dict(
                {"sde": {"name": "vp"}, "guidance": {"kind": "inpaint", "mask": [1, 0]}, "sampler": {"kind": "ode"}}
            )
        )
    with pytest.raises(ConfigError, match="needs a \\[classifier\\] section"):
        check_config(Config.from_dict({"sde": {"name": "vp"}, "guidance": {"kind": "classifier"}}))
    with pytest.raises(ConfigError, match="scale must be a number"):
        Config.from_dict({"sde": {"name": "vp"}, "guidance": {"kind": "classifier", "scale": "big"}})
