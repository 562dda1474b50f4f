"""Built-in data sets that need no download, and user data from a file.

- 2-D toys: ``moons``, ``swiss_roll``, and every oracle mixture (``ring8``, ``mixture3``,
  ...), whose exact density is known and whose labels are the mixture components;
- ``digits``: the 8x8 handwritten digits shipped with scikit-learn (1797 images, 17
  grey levels), scaled to [-1, 1], shape (1, 8, 8), split 80/20 with a fixed seed;
- ``file``: a .npy or .pt array (``path``), split 90/10 with a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from sdeplug.app.arrays import load_array
from sdeplug.app.limits import check_fits
from sdeplug.errors import DataError, OptionError, UnknownPartError
from sdeplug.extras import require
from sdeplug.oracle import PRESETS, GaussianMixture, preset
from sdeplug.tensors import check_seed, non_finite_rows


@attrs.frozen
class Dataset:
    """Train and test tensors (batch, *event_shape), with what is known about them."""

    name: str
    train: Tensor
    test: Tensor
    #: "none", or "[-1,1]" for quantised data scaled to that range (bits/dim offsets need it).
    data_range: str = "none"
    #: Number of quantisation levels (17 for the digits), None for continuous data.
    levels: int | None = None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    #: The exact law, when the data come from an oracle mixture.
    mixture: GaussianMixture | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])


def _split(x: Tensor, test_fraction: float, seed: int, labels: Tensor | None = None):
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * x.shape[0])
    test, train = perm[:n_test], perm[n_test:]
    if labels is None:
        return x[train], x[test], None, None
    return x[train], x[test], labels[train], labels[test]


def moons(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """Two interleaving half circles, centred and scaled to unit spread; points i.i.d."""
    a = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    lower = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    upper_pts = torch.stack([torch.cos(a), torch.sin(a)], 1)
    lower_pts = torch.stack([1 - torch.cos(a), 0.5 - torch.sin(a)], 1)
    x = torch.where(lower[:, None], lower_pts, upper_pts)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) * 1.5


def swiss_roll(n: int, noise: float = 0.05, generator: torch.Generator | None = None) -> Tensor:
    """The 2-D swiss roll, scaled to about [-2, 2]^2."""
    s = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    x = torch.stack([s * torch.cos(s), s * torch.sin(s)], 1) / 7.0
    return x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (no download: the data ship with the package)."""
    load_digits = require("sklearn.datasets", "the digits data set (it ships inside scikit-learn)").load_digits

    raw = load_digits()
    images = torch.as_tensor(raw.images, dtype=torch.float64)[:, None] / 16.0 * 2 - 1
    labels = torch.as_tensor(raw.target, dtype=torch.int64)
    train, test, y_train, y_test = _split(images, 0.2, seed, labels)
    return Dataset("digits", train, test, "[-1,1]", 17, y_train, y_test)


TOYS = {"moons": moons, "swiss_roll": swiss_roll}


#: The options each data set takes, with their defaults.
_SIZES = {"n_train": 20_000, "n_test": 2_000}
_TOY_OPTIONS = {**_SIZES, "seed": 0, "noise": 0.05}
_MIXTURE_OPTIONS = {**_SIZES, "seed": 0}
_FILE_OPTIONS = {"path": None, "seed": 0}
_DIGITS_OPTIONS = {"seed": 0}


def data_options(name: str) -> dict[str, Any]:
    """The options the data set ``name`` takes, with their defaults (UnknownPartError if none is called so)."""
    if name == "digits":
        return dict(_DIGITS_OPTIONS)
    if name == "file":
        return dict(_FILE_OPTIONS)
    if name in TOYS:
        return dict(_TOY_OPTIONS)
    if name in PRESETS:
        return dict(_MIXTURE_OPTIONS)
    raise UnknownPartError("data set", name, ["digits", "file", *TOYS, *PRESETS])


def check_data_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the data set ``name``, the given ones checked, the rest at their defaults;
    an OptionError names the first unknown option or bad value."""
    accepted = data_options(name)
    for key in options:
        if key not in accepted:
            raise OptionError.unknown_option("data set", name, key, accepted)
    chosen = {**accepted, **options}
    for key in ("n_train", "n_test"):
        if key in chosen:
            value = chosen[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptionError("data set", name, f"{key} must be a positive integer; got {value!r}")
            check_fits(f"[data] {key} = {value}", value * 2 * 8)  # float64 points of the 2-D toys
    try:
        check_seed(chosen["seed"])
    except ValueError as exc:
        raise OptionError("data set", name, str(exc)) from None
    if "noise" in chosen:
        noise = chosen["noise"]
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
            raise OptionError("data set", name, f"noise must be a finite number >= 0; got {noise!r}")
    if name == "file" and not isinstance(chosen["path"], str):
        raise OptionError("data set", name, f"needs a 'path' to a .npy or .pt file; got {chosen['path']!r}")
    return chosen


def load_dataset(name: str, **options: Any) -> Dataset:
    """A built-in data set by name (see the module docstring) with its options (``data_options``);
    float64 tensors on the CPU."""
    chosen = check_data_options(name, options)
    seed = chosen["seed"]
    if name == "digits":
        return digits(seed)
    if name == "file":
        path = chosen["path"]
        x = load_array(Path(path)).to(torch.float64)
        bad = non_finite_rows(x)
        if len(bad):
            raise DataError(
                f"{path}: row {int(bad[0])} has NaN or inf values (the first of {len(bad)} such rows); "
                "every value must be finite"
            )
        train, test, _, _ = _split(x, 0.1, seed)
        return Dataset(f"file:{path}", train, test)
    generator = torch.Generator().manual_seed(seed)
    n_train, n_test = chosen["n_train"], chosen["n_test"]
    if name in TOYS:
        make = TOYS[name]
        noise = float(chosen["noise"])
        return Dataset(name, make(n_train, noise, generator), make(n_test, noise, generator))
    mixture = preset(name)  # the labels are the mixture components
    train, train_labels = mixture.sample(n_train, generator, return_labels=True)
    test, test_labels = mixture.sample(n_test, generator, return_labels=True)
    return Dataset(name, train, test, train_labels=train_labels, test_labels=test_labels, mixture=mixture)
