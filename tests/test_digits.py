"""A small U-Net trained with the Trainer on the 8x8 digits: recognisable samples, better bits/dim
than a Gaussian. The slowest test module (about 1.5 minutes on 2 cores), trained once."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from sdeplug.data import load_dataset
from sdeplug.evaluation import classifier_report, gaussian_logp
from sdeplug.likelihood import bits_per_dim, log_likelihood, uniform_dequantize
from sdeplug.sampling import sample_ode
from sdeplug.trainer import Trainer, TrainSettings


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # convolutions use both cores; the rest of the suite runs on one
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    dataset = load_dataset("digits")
    sde = sdeplug.create("sde", "vp")
    network = sdeplug.create("score_model", "unet", event_shape=(1, 8, 8), channels=16)
    settings = TrainSettings(steps=1200, batch_size=128, lr=1e-3, ema_decay=0.995, progress=False)
    trainer = Trainer(network, sde, dataset.train.float(), settings).fit()
    return trainer, dataset


def test_digit_samples_are_recognisable(trained):
    """A classifier fitted on real digits is nearly as confident on samples as on held-out real digits
    (within 0.1), and the samples spread over the classes like the real ones (total-variation
    distance of class frequencies at most 0.15, no class below 3%)."""
    trainer, dataset = trained
    x = sample_ode(trainer.sde, trainer.score_model(), (400, 1, 8, 8), solver="dopri5",
                   solver_options={"rtol": 1e-4, "atol": 1e-4}, generator=torch.Generator().manual_seed(0)).x
    report = classifier_report(dataset, x)
    print({k: v for k, v in report.items() if "frequencies" not in k})
    assert report["real_test_accuracy"] > 0.9  # the judge itself is good
    assert report["sample_confidence"] > report["real_confidence"] - 0.1, report
    assert report["class_frequency_tv_distance"] < 0.15, report
    assert min(report["sample_class_frequencies"]) > 0.03, report
    noise = torch.rand(400, 1, 8, 8) * 2 - 1  # and the judge can tell noise apart
    assert classifier_report(dataset, noise)["sample_confidence"] < report["sample_confidence"] - 0.1


def test_bits_per_dim_beat_a_gaussian_fitted_to_the_same_data(trained):
    trainer, dataset = trained
    g = torch.Generator().manual_seed(0)
    test = uniform_dequantize(dataset.test[:200], "[-1,1]", g, levels=17)
    train = uniform_dequantize(dataset.train, "[-1,1]", g, levels=17)
    result = log_likelihood(trainer.sde, trainer.score_model(), test.float(), divergence="hutchinson", probes=4,
                            solver_options={"rtol": 1e-4, "atol": 1e-4}, generator=g)
    ours = float(result.bits_per_dim("[-1,1]", levels=17).mean())
    gaussian = float(bits_per_dim(gaussian_logp(train, test), 64, "[-1,1]", 17).mean())
    print(f"bits/dim: model {ours:.3f}, Gaussian {gaussian:.3f}")
    assert ours < gaussian - 0.3, (ours, gaussian)
