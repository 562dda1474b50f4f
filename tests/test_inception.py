"""FID's Inception-v3, written here, against pytorch-fid's own network on the same (random)
weights and images (tests/data/inception, made by its make_fixture.py)."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sdeplug.testing import check_feature_extractor
from sdeplug_features import InceptionFeatures

sys.path.insert(0, str(Path(__file__).parent / "data" / "inception"))
from make_fixture import random_weights  # noqa: E402  (the weights the reference ran with)

RECORDED = load_file(Path(__file__).parent / "data" / "inception" / "pool_features.safetensors")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("inception")]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """The random weights as the user's weights file would hold them: a torch state dict."""
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(random_weights(InceptionFeatures().state_dict()), path)
    return path


def test_pool_features_equal_pytorch_fids_on_the_same_weights_and_images(weights_file):
    network = InceptionFeatures(event_shape=(3, 32, 32), weights=str(weights_file))
    with torch.no_grad():
        got = network(RECORDED["images"] * 2 - 1)  # sdeplug's images are in [-1, 1], pytorch-fid's in [0, 1]
    assert torch.allclose(got, RECORDED["features"], rtol=1e-5, atol=1e-5)
    identity = network.identity()
    assert identity["name"] == "inception" and len(identity["weights_sha256"]) == 64
    assert network.comparable_with_published and "bilinear 299x299" in identity["preprocessing"]
    # grey images go through as three equal channels
    grey = RECORDED["images"][:, :1] * 2 - 1
    with torch.no_grad():
        as_rgb = network(grey.expand(-1, 3, -1, -1))
        assert torch.equal(InceptionFeatures(event_shape=(1, 32, 32), weights=str(weights_file))(grey), as_rgb)


def test_without_weights_the_network_says_it_is_not_comparable():
    network = InceptionFeatures()
    assert not network.comparable_with_published and network.identity()["weights_sha256"] is None
    assert check_feature_extractor("inception").passed


def test_bad_weights_files_are_refused_without_running_code(tmp_path):
    with pytest.raises(ValueError, match="Inception weights not found: .*never downloads it"):
        InceptionFeatures(weights=str(tmp_path / "missing.pth"))
    (tmp_path / "hostile.pth").write_bytes(pickle.dumps({"x": print}))
    with pytest.raises(ValueError, match="not a weights file that loads without running code"):
        InceptionFeatures(weights=str(tmp_path / "hostile.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="does not hold FID Inception-v3 weights"):
        InceptionFeatures(weights=str(tmp_path / "other.pth"))
