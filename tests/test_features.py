"""Feature extractors (a kind of part) and reference statistics that name how they were made."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from sdeplug.metrics import FeatureStats, MetricsMismatchError, fid, load_stats, save_stats
from sdeplug.sampling import sample_pc
from sdeplug.testing import check_feature_extractor
from sdeplug.trainer import Trainer, TrainSettings
from sdeplug_features import DataClassifierFeatures

pytestmark = pytest.mark.xdist_group("features")


def test_feature_extractors_are_a_registered_kind_with_a_contract():
    assert {"pixels", "data_classifier"} <= set(sdeplug.get_registry().names("feature_extractor"))
    for name in ("pixels", "data_classifier"):
        assert check_feature_extractor(name).passed


def test_the_contract_catches_features_that_depend_on_the_batch():
    class BatchNormed(sdeplug.FeatureExtractor):
        name = "batch_normed"

        def __init__(self, event_shape=(2,)):
            super().__init__()
            self.event_shape = tuple(event_shape)

        def forward(self, x):
            return x - x.mean(0)  # depends on the other samples

    with pytest.raises(Exception, match="a sample's features change with the rest of the batch"):
        check_feature_extractor(BatchNormed)


@pytest.mark.slow
def test_learnt_digit_features_classify_held_out_digits_and_tell_real_from_noise(digit_features):
    digits, extractor = digit_features
    with torch.no_grad():
        accuracy = (extractor.class_probabilities(digits.test.float()).argmax(1) == digits.test_labels).float().mean()
        train = FeatureStats.of(extractor(digits.train.float()))
        test = FeatureStats.of(extractor(digits.test.float()))
        noise = FeatureStats.of(extractor(torch.rand(len(digits.test), 1, 8, 8) * 2 - 1))
    assert accuracy > 0.9
    assert fid(train, test) * 10 < fid(train, noise), (fid(train, test), fid(train, noise))


@pytest.mark.slow
def test_training_the_features_is_repeatable_and_their_identity_names_the_weights(digit_features, tmp_path):
    digits, extractor = digit_features
    again = DataClassifierFeatures(event_shape=(1, 8, 8)).fit(
        digits.train.float(), digits.train_labels, steps=400, seed=0
    )
    assert again.identity() == extractor.identity() and extractor.identity()["weights_sha256"]
    assert extractor.identity()["comparable_with_published"] is False
    extractor.save(str(tmp_path / "features.safetensors"))
    loaded = DataClassifierFeatures(event_shape=(1, 8, 8), weights=str(tmp_path / "features.safetensors"))
    assert loaded.identity() == extractor.identity()


def test_statistics_files_refuse_other_features(tmp_path):
    features = torch.randn(50, 3, dtype=torch.float64)
    pixels = sdeplug.create("feature_extractor", "pixels", event_shape=(3,))
    path = save_stats(tmp_path / "ref.safetensors", FeatureStats.of(features), extractor=pixels.identity(), data={})
    stats, meta = load_stats(path, extractor=pixels.identity())
    assert stats.n == 50 and torch.allclose(stats.cov, torch.cov(features.T)) and meta["extractor"]["name"] == "pixels"
    other = sdeplug.create("feature_extractor", "data_classifier", event_shape=(3,)).identity()
    with pytest.raises(MetricsMismatchError, match=r"computed with other features \(.*name.*differ"):
        load_stats(path, extractor=other)


@pytest.mark.slow
def test_on_the_digits_real_data_beat_a_barely_trained_model_which_beats_noise(digit_features):
    """FID in the learnt features ranks real digits, a U-Net trained for 200 steps, and noise. The
    bounds are far apart (3 x real's FID, and noise's, about 20 and 600): over training seeds that
    model's FID spread from 36 to 408 (without warm-up and clipping some runs diverged past noise)."""
    digits, extractor = digit_features
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "unet", event_shape=(1, 8, 8), channels=16)
    sde = sdeplug.create("sde", "vp")
    settings = TrainSettings(steps=200, batch_size=64, lr=1e-3, warmup=20, grad_clip=1.0, ema_decay=0.9, progress=False)
    trainer = Trainer(network, sde, digits.train.float(), settings).fit()
    samples = sample_pc(
        sde,
        trainer.score_model(),
        (360, 1, 8, 8),
        predictor="euler_maruyama",
        corrector="none",
        steps=50,
        generator=torch.Generator().manual_seed(0),
    ).x
    with torch.no_grad():
        reference = FeatureStats.of(extractor(digits.test.float()))
        real = fid(FeatureStats.of(extractor(digits.train[:360].float())), reference)
        barely = fid(FeatureStats.of(extractor(samples)), reference)
        noise = fid(FeatureStats.of(extractor(torch.rand(360, 1, 8, 8) * 2 - 1)), reference)
    print(f"FID: real {real:.1f}, barely trained {barely:.1f}, noise {noise:.1f}")
    assert 3 * real < barely < noise, (real, barely, noise)
