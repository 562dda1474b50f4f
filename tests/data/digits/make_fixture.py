"""Train the digits models that tests/test_digits.py samples, guides and inpaints with, and write
their EMA weights as weights checkpoints beside this script. Not run by the tests: training them
took minutes of every `make test`, and what those tests judge is sampling, guidance and the
likelihood on a trained model, not the Trainer (tests/test_training.py judges that against the
exact law). Run from the repository root: `python tests/data/digits/make_fixture.py`.

One thread and fixed seeds, so a rerun on the same CPU and torch writes the same bytes; another
CPU trains another, equally good, network."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.trainer import Trainer, TrainSettings, save_weights

HERE = Path(__file__).parent
#: How each network is built (sdeplug.create's name and options); the tests build them so.
UNET = {"name": "unet", "options": {"event_shape": [1, 8, 8], "channels": 16}}
CLASSIFIER = {"name": "conv_classifier", "options": {"num_classes": 10, "channels": 16}}


def main() -> None:
    torch.set_num_threads(1)
    dataset = load_dataset("digits")
    sde = sdeplug.create("sde", "vp")
    source = {"script": "tests/data/digits/make_fixture.py", "torch": torch.__version__, "machine": platform.machine()}

    torch.manual_seed(0)
    network = sdeplug.create("score_model", UNET["name"], **UNET["options"])
    settings = TrainSettings(steps=1200, batch_size=128, lr=1e-3, ema_decay=0.995, progress=False)
    trainer = Trainer(network, sde, dataset.train.float(), settings).fit()
    config = {"sde": {"name": "vp"}, "model": UNET, "train": {"steps": 1200, "batch_size": 128, "lr": 1e-3}}
    state = trainer.trained_network().state_dict()
    save_weights(HERE / "unet.safetensors", state, parameterization="noise", config=config, source=source)

    torch.manual_seed(0)
    network = sdeplug.create("classifier", CLASSIFIER["name"], **CLASSIFIER["options"])
    settings = TrainSettings(
        steps=1000, batch_size=128, lr=2e-3, ema_decay=0.995, objective="classifier", progress=False
    )
    classifier = Trainer(network, sde, dataset.train.float(), settings, labels=dataset.train_labels).fit()
    config = {"sde": {"name": "vp"}, "classifier": CLASSIFIER, "train": {"steps": 1000, "batch_size": 128, "lr": 2e-3}}
    state = classifier.trained_network().state_dict()
    save_weights(HERE / "classifier.safetensors", state, parameterization="noise", config=config, source=source)


if __name__ == "__main__":
    main()
