"""Built-in data sets and the bundled score networks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.errors import OptionError, UnknownPartError


def test_digits_are_the_sklearn_digits_scaled_and_split():
    ds = load_dataset("digits")
    assert ds.train.shape == (1438, 1, 8, 8) and ds.test.shape == (359, 1, 8, 8)
    assert ds.data_range == "[-1,1]" and ds.levels == 17
    values = torch.unique(torch.cat([ds.train, ds.test]))
    torch.testing.assert_close(values, torch.linspace(-1, 1, 17, dtype=values.dtype))
    assert set(ds.train_labels.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(ds.test, again.test)  # the split is fixed


@pytest.mark.parametrize("name", ["moons", "swiss_roll", "ring8", "mixture3"])
def test_toys_are_2d_iid_and_seeded(name):
    a, b = load_dataset(name, n_train=4000, n_test=100), load_dataset(name, n_train=4000, n_test=100)
    assert a.train.shape == (4000, 2) and a.test.shape == (100, 2)
    assert torch.equal(a.train, b.train)
    first, second = a.train[:2000], a.train[2000:]  # any prefix is a fair sample
    assert torch.allclose(first.mean(0), second.mean(0), atol=0.1)
    assert (a.mixture is not None) == (name in ("ring8", "mixture3"))


def test_user_data_from_a_file(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(100, 3)))
    ds = load_dataset("file", path=str(tmp_path / "x.npy"))
    assert ds.train.shape == (90, 3) and ds.test.shape == (10, 3)
    with pytest.raises(OptionError, match="needs a 'path'"):
        load_dataset("file")
    with pytest.raises(UnknownPartError, match="Did you mean 'moons'"):
        load_dataset("moon")


@pytest.mark.parametrize("name, shape", [("mlp", (2,)), ("mlp", (1, 4, 4)), ("unet", (1, 8, 8)), ("unet", (3, 16, 16))])
def test_networks_keep_the_shape_and_are_registered(name, shape):
    net = sdeplug.create("score_model", name, event_shape=shape)
    assert isinstance(net, sdeplug.ScoreModel)
    x = torch.randn(3, *shape)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    if name == "unet":
        assert torch.all(out == 0)  # zero-initialised output layer
    info = sdeplug.get_registry().get("score_model", name)
    assert info.plugin == "models"


def test_network_options_are_checked():
    with pytest.raises(OptionError, match="divisible by 2"):
        sdeplug.create("score_model", "unet", event_shape=(1, 7, 7))
    with pytest.raises(OptionError, match="channels, height, width"):
        sdeplug.create("score_model", "unet", event_shape=(64,))
    with pytest.raises(OptionError, match="unknown option 'hidden'"):
        sdeplug.create("score_model", "mlp", hidden=3)


@pytest.mark.parametrize(
    ("kind", "name", "options", "message"),
    [
        ("score_model", "mlp", {"width": 2.5}, "width must be an integer >= 1; got 2.5"),
        ("score_model", "mlp", {"depth": True}, "depth must be an integer >= 1; got True"),
        ("score_model", "mlp", {"embed_dim": 3}, "embed_dim must be even"),
        ("score_model", "mlp", {"event_shape": (0,)}, "event_shape must be a non-empty sequence of sizes"),
        ("score_model", "unet", {"channels": 0}, "channels must be an integer >= 8; got 0"),
        (
            "score_model",
            "unet",
            {"channels": 12},
            r"channels must be a multiple of 8 \(GroupNorm in 8 groups\); got 12",
        ),
        ("score_model", "unet", {"channel_mult": []}, "channel_mult must be a non-empty sequence of positive integers"),
        ("score_model", "unet", {"channel_mult": [1, 0]}, "channel_mult must be an integer >= 1; got 0"),
        ("score_model", "unet", {"num_res_blocks": -1}, "num_res_blocks must be an integer >= 1; got -1"),
        ("score_model", "unet", {"embed_dim": 7}, "embed_dim must be even"),
        ("score_model", "unet", {"dropout": 1.5}, r"dropout must be a number in \[0, 1\); got 1.5"),
        (
            "score_model",
            "unet",
            {"attention_resolutions": 4},
            "attention_resolutions must be a sequence of heights",
        ),
        ("classifier", "mlp_classifier", {"embed_dim": 5}, "embed_dim must be even"),
        ("classifier", "conv_classifier", {"channels": 20}, "channels must be a multiple of 8"),
        ("classifier", "conv_classifier", {"event_shape": (8, 8)}, r"event_shape must be \(channels, height, width\)"),
    ],
)
def test_bad_network_sizes_are_refused_by_name_before_torch_sees_them(kind, name, options, message):
    # an odd embed_dim used to build and then fail at the first call; a float width inside
    # torch's constructor, reported as a bug of the plugin
    with pytest.raises(OptionError, match=message) as refused:
        sdeplug.create(kind, name, **options)
    assert "\n" not in str(refused.value)
