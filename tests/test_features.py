"""Feature extractors (a kind of part) and reference statistics that name how they were made."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.metrics import FeatureStats, MetricsMismatchError, fid, load_stats, save_stats
from sdeplug.testing import check_feature_extractor
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


@pytest.fixture(scope="module")
def digit_features():
    digits = load_dataset("digits")
    extractor = DataClassifierFeatures(event_shape=(1, 8, 8)).fit(
        digits.train.float(), digits.train_labels, steps=400, seed=0
    )
    return digits, extractor


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
