"""Built-in data sets that need no download, and user data from a file.

- 2-D toys: ``moons``, ``swiss_roll``, and every oracle mixture (``ring8``, ``mixture3``,
  ...), whose exact density is known and whose labels are the mixture components;
- ``digits``: the 8x8 handwritten digits shipped with scikit-learn (1797 images, 17
  grey levels), scaled to [-1, 1], shape (1, 8, 8), split 80/20 with a fixed seed;
- ``file``: a .npy or .pt array (``path``), split 90/10 with a fixed seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch
from torch import Tensor

from sdeplug.app.arrays import load_array
from sdeplug.errors import DataError, OptionError, UnknownPartError
from sdeplug.extras import require
from sdeplug.oracle import PRESETS, GaussianMixture, preset
from sdeplug.tensors import non_finite_rows


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


def load_dataset(
    name: str,
    *,
    n_train: int = 20_000,
    n_test: int = 2_000,
    seed: int = 0,
    noise: float = 0.05,
    path: str | None = None,
) -> Dataset:
    """A built-in data set by name (see the module docstring); float64 tensors on the CPU."""
    if name == "digits":
        return digits(seed)
    if name == "file":
        if path is None:
            raise OptionError("data", "file", "needs a 'path' to a .npy or .pt file")
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
    if name in TOYS:
        make = TOYS[name]
        return Dataset(name, make(n_train, noise, generator), make(n_test, noise, generator))
    if name in PRESETS:
        mixture = preset(name)  # the labels are the mixture components
        train, train_labels = mixture.sample(n_train, generator, return_labels=True)
        test, test_labels = mixture.sample(n_test, generator, return_labels=True)
        return Dataset(name, train, test, train_labels=train_labels, test_labels=test_labels, mixture=mixture)
    raise UnknownPartError("data set", name, ["digits", "file", *TOYS, *PRESETS])
