"""A small U-Net trained with the Trainer on the 8x8 digits: recognisable samples, better bits/dim
than a Gaussian. The slowest test module (about 1.5 minutes on 2 cores), trained once."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from conftest import PARALLEL_WORKERS, computed_once
from sdeplug.app.datasets import load_dataset
from sdeplug.app.evaluation import classifier_report, gaussian_logp
from sdeplug.likelihood import bits_per_dim, log_likelihood, uniform_dequantize
from sdeplug.sampling import sample_ode
from sdeplug.trainer import Trainer, TrainSettings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("digits"),
]  # minutes of training or a pip install: left out of make test-fast


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    # Convolutions use both cores, unless pytest-xdist runs another worker on the second one.
    torch.set_num_threads(1 if PARALLEL_WORKERS else 2)
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


@computed_once
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
    x = sample_ode(
        trainer.sde,
        trainer.score_model(),
        (400, 1, 8, 8),
        solver="dopri5",
        solver_options={"rtol": 1e-4, "atol": 1e-4},
        generator=torch.Generator().manual_seed(0),
    ).x
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
    test = uniform_dequantize(dataset.test[:100], "[-1,1]", g, levels=17)
    train = uniform_dequantize(dataset.train, "[-1,1]", g, levels=17)
    result = log_likelihood(
        trainer.sde,
        trainer.score_model(),
        test.float(),
        divergence="hutchinson",
        probes=4,
        solver_options={"rtol": 1e-4, "atol": 1e-4},
        generator=g,
    )
    ours = float(result.bits_per_dim("[-1,1]", levels=17).mean())
    gaussian = float(bits_per_dim(gaussian_logp(train, test), 64, "[-1,1]", 17).mean())
    print(f"bits/dim: model {ours:.3f}, Gaussian {gaussian:.3f}")
    assert ours < gaussian - 0.3, (ours, gaussian)


# Controllable generation on the digits ------------------------------------------------------


def test_a_trained_classifier_guides_the_digits_to_the_requested_class(trained):
    """A time-dependent classifier trained with the Trainer guides sampling: the logistic
    regression fitted on real digits agrees with the requested class far above chance (0.1).
    Measured with 200 samples: 0.08 unguided, 0.62 at scale 1, 0.81 at 2 (0.71 with half the
    classifier's training steps, too close to the mark)."""
    from sdeplug.app.evaluation import predicted_labels, reference_classifier
    from sdeplug.guidance import ClassifierGuidance
    from sdeplug.sampling import sample_pc

    trainer, dataset = trained
    torch.manual_seed(0)
    network = sdeplug.create("classifier", "conv_classifier", num_classes=10, channels=16)
    settings = TrainSettings(
        steps=1000, batch_size=128, lr=2e-3, ema_decay=0.995, objective="classifier", progress=False
    )
    classifier = Trainer(network, trainer.sde, dataset.train.float(), settings, labels=dataset.train_labels).fit()
    judge = reference_classifier(dataset)
    wanted = torch.arange(10).repeat(20)
    agreement = {}
    for scale in (0.0, 2.0):
        guided = ClassifierGuidance(trainer.score_model(), classifier.trained_network().eval(), wanted, scale)
        x = sample_pc(
            trainer.sde,
            guided,
            (200, 1, 8, 8),
            predictor="unipc",
            corrector="none",
            steps=20,
            grid="logsnr",
            generator=torch.Generator().manual_seed(0),
        ).x
        agreement[scale] = float((predicted_labels(judge, x) == wanted).double().mean())
    print(f"agreement with the requested class: {agreement}")
    assert agreement[0.0] < 0.25
    assert agreement[2.0] > 0.7


def test_inpainting_completes_held_out_digits(trained):
    """The paper's replacement method keeps the known upper half exactly and completes the lower
    half into digits the judge most often reads as the original's class (measured 0.66 over
    300 completions with 500 PC steps; chance is 0.1)."""
    from sdeplug.app.evaluation import predicted_labels, reference_classifier
    from sdeplug.guidance import Measurement, Replacement
    from sdeplug.sampling import sample_pc

    trainer, dataset = trained
    originals, labels = dataset.test[:40].float(), dataset.test_labels[:40]
    mask = torch.zeros(1, 8, 8)
    mask[:, :4] = 1
    x = sample_pc(
        trainer.sde,
        trainer.score_model(),
        (40, 1, 8, 8),
        steps=250,
        constraint=Replacement(trainer.sde, Measurement(originals * mask, mask=mask)),
        generator=torch.Generator().manual_seed(0),
    ).x
    torch.testing.assert_close(x[:, :, :4], originals[:, :, :4])
    assert (x[:, :, 4:] - originals[:, :, 4:]).abs().max() > 0.5  # the lower half is generated
    kept = float((predicted_labels(reference_classifier(dataset), x) == labels).double().mean())
    print(f"class kept by the completions: {kept:.3f}")
    assert kept > 0.4
