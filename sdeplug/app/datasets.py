"""Built-in data sets that need no download, and user data from a file.

- 2-D toys: ``moons``, ``swiss_roll``, and every oracle mixture (``ring8``, ``mixture3``,
  ...), whose exact density is known and whose labels are the mixture components;
- ``digits``: the 8x8 handwritten digits shipped with scikit-learn (1797 images, 17
  grey levels), scaled to [-1, 1], shape (1, 8, 8), split 80/20 with a fixed seed;
- ``file``: a .npy, .npz or .pt array (``path``), split 90/10 with a fixed seed; a .npy or
  uncompressed .npz too large to hold (``in_memory``) is memory-mapped and streamed;
  ``labels`` names an integer array beside it, one class per row;
- ``images``: a folder of PNG/JPEG images (``path``), read with Pillow, resized and
  centre-cropped to ``resolution`` if given, scaled to [-1, 1], split 90/10 with a fixed
  seed; held in memory when small, else streamed by DataLoader workers. Images in class
  subfolders (``path/cat/1.png``) are labelled by subfolder, in sorted order.

Sets with images take ``flip`` (random left-right mirroring of training batches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from sdeplug.app.arrays import load_array, load_labels
from sdeplug.app.limits import check_fits
from sdeplug.data import ArraySource, ImageFolder, Source, Subset, load_all
from sdeplug.errors import DataError, OptionError, UnknownPartError
from sdeplug.extras import require
from sdeplug.oracle import PRESETS, GaussianMixture, preset
from sdeplug.tensors import check_seed, non_finite_rows


@attrs.frozen
class Dataset:
    """Train and test splits, tensors (batch, *event_shape) or streamed Sources, with what is
    known about them and how training reads them."""

    name: str
    train: Tensor | Source
    test: Tensor | Source
    #: "none", or "[-1,1]" for quantised data scaled to that range (bits/dim offsets need it).
    data_range: str = "none"
    #: Number of quantisation levels (17 for the digits), None for continuous data.
    levels: int | None = None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    #: The exact law, when the data come from an oracle mixture.
    mixture: GaussianMixture | None = None
    #: Mirror a random half of each training batch left to right (images only).
    flip: bool = False
    #: DataLoader processes that read a streamed training split ahead of the loop.
    workers: int = 0
    #: The names of the classes (an image folder's class subfolders), when they have names.
    class_names: tuple[str, ...] | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.train.event_shape if isinstance(self.train, Source) else tuple(self.train.shape[1:])


#: Data sets whose decoded float64 size is at most this are held in memory under in_memory = "auto".
HOLD_LIMIT_BYTES = 2**30


def rows(data: Tensor | Source, count: int | None = None) -> Tensor:
    """The first ``count`` rows (all by default) of a split as a float64 tensor on the CPU."""
    count = len(data) if count is None else min(count, len(data))
    return data[:count] if isinstance(data, Tensor) else take(data, torch.arange(count))


def take(data: Tensor | Source, indices: Tensor) -> Tensor:
    """The rows of a split at ``indices`` as a float64 tensor on the CPU."""
    if isinstance(data, Tensor):
        return data[indices]
    return load_all(Subset(data, indices)).to(torch.float64)


def mean_row(data: Tensor | Source) -> Tensor:
    """The mean of a split's rows (float64), read chunk by chunk when it is streamed."""
    if isinstance(data, Tensor):
        return data.mean(0)
    total, chunk = torch.zeros(data.event_shape, dtype=torch.float64), 4096
    for first in range(0, len(data), chunk):
        total += take(data, torch.arange(first, min(len(data), first + chunk))).sum(0)
    return total / len(data)


def _split(x: Tensor | Source, test_fraction: float, seed: int, labels: Tensor | None = None):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(x))
    test, train = perm[:n_test], perm[n_test:]
    if isinstance(x, Source):
        if labels is None:
            return Subset(x, train), Subset(x, test), None, None
        return Subset(x, train), Subset(x, test), labels[train], labels[test]
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
#: How a set is read, not what it holds: a checkpoint's data compare equal whatever these are.
LOADER_OPTIONS = ("in_memory", "workers")
_STREAMED_OPTIONS = {"flip": False, "in_memory": "auto", "workers": 2}
_FILE_OPTIONS = {"path": None, "key": None, "labels": None, "seed": 0, **_STREAMED_OPTIONS}
_IMAGES_OPTIONS = {"path": None, "resolution": None, "channels": None, "seed": 0, **_STREAMED_OPTIONS}
_DIGITS_OPTIONS = {"seed": 0, "flip": False}


def data_options(name: str) -> dict[str, Any]:
    """The options the data set ``name`` takes, with their defaults (UnknownPartError if none is called so)."""
    if name == "digits":
        return dict(_DIGITS_OPTIONS)
    if name == "file":
        return dict(_FILE_OPTIONS)
    if name == "images":
        return dict(_IMAGES_OPTIONS)
    if name in TOYS:
        return dict(_TOY_OPTIONS)
    if name in PRESETS:
        return dict(_MIXTURE_OPTIONS)
    raise UnknownPartError("data set", name, ["digits", "file", "images", *TOYS, *PRESETS])


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
        raise OptionError("data set", name, f"needs a 'path' to a .npy, .npz or .pt file; got {chosen['path']!r}")
    if name == "images" and not isinstance(chosen["path"], str):
        raise OptionError("data set", name, f"needs a 'path' to a folder of PNG or JPEG images; got {chosen['path']!r}")
    _check_choice(name, chosen, "flip", (True, False), "true or false")
    _check_choice(name, chosen, "in_memory", ("auto", True, False), '"auto", true or false')
    _check_choice(name, chosen, "channels", (None, 1, 3), "1 (grey) or 3 (RGB)")
    if chosen.get("labels") is not None and not isinstance(chosen["labels"], str):
        raise OptionError(
            "data set",
            name,
            f"labels must be the path of an integer array, one label per row; got {chosen['labels']!r}",
        )
    if "key" in chosen and chosen["key"] is not None and not isinstance(chosen["key"], str):
        raise OptionError("data set", name, f"key must be the name of an array in the .npz; got {chosen['key']!r}")
    for key, least in (("workers", 0), ("resolution", 1)):
        value = chosen.get(key)
        if value is not None and (type(value) is not int or value < least):
            raise OptionError("data set", name, f"{key} must be an integer >= {least}; got {value!r}")
    return chosen


def _check_choice(name: str, chosen: Mapping[str, Any], key: str, accepted: tuple, described: str) -> None:
    value = chosen.get(key, accepted[0])
    if not any(type(value) is type(a) and value == a for a in accepted):  # so that true is not 1
        raise OptionError("data set", name, f"{key} must be {described}; got {value!r}")


def load_dataset(name: str, **options: Any) -> Dataset:
    """A built-in data set by name (see the module docstring) with its options (``data_options``);
    float64 tensors on the CPU."""
    chosen = check_data_options(name, options)
    seed = chosen["seed"]
    if name == "digits":
        return attrs.evolve(digits(seed), flip=chosen["flip"])
    if name == "file":
        return _array_file(chosen)
    if name == "images":
        return _image_folder(chosen)
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


def _held(in_memory: bool | str, items: int, event_shape: tuple[int, ...]) -> bool:
    """Whether a set of ``items`` is held in memory: as asked, or under "auto" when it is small."""
    if in_memory == "auto":
        return items * math.prod(event_shape) * 8 <= HOLD_LIMIT_BYTES
    return bool(in_memory)


def _labels_file(chosen: Mapping[str, Any], rows: int) -> Tensor | None:
    """The [data] labels array: one non-negative integer per row of the data."""
    return None if chosen["labels"] is None else load_labels(chosen["labels"], rows)


def _array_file(chosen: Mapping[str, Any]) -> Dataset:
    path = Path(chosen["path"]).expanduser()
    loader = {"flip": chosen["flip"], "workers": chosen["workers"]}
    streamable = path.suffix in (".npy", ".npz") and path.is_file()
    if streamable and chosen["in_memory"] is not True:
        try:
            source = ArraySource(path, chosen["key"])
        except DataError:
            if chosen["in_memory"] is False or path.suffix == ".npy":
                raise
            source = None  # a compressed .npz: read whole below
        if source is not None and not _held(chosen["in_memory"], len(source), source.event_shape):
            labels = _labels_file(chosen, len(source))
            train, test, y_train, y_test = _split(source, 0.1, chosen["seed"], labels)
            return Dataset(f"file:{path}", train, test, train_labels=y_train, test_labels=y_test, **loader)
    elif chosen["in_memory"] is False:
        raise DataError(f"{path}: only a .npy or .npz file can be streamed (memory-mapped); set in_memory = true")
    x = load_array(path, chosen["key"]).to(torch.float64)
    bad = non_finite_rows(x)
    if len(bad):
        raise DataError(
            f"{path}: row {int(bad[0])} has NaN or inf values (the first of {len(bad)} such rows); "
            "every value must be finite"
        )
    train, test, y_train, y_test = _split(x, 0.1, chosen["seed"], _labels_file(chosen, len(x)))
    return Dataset(f"file:{path}", train, test, train_labels=y_train, test_labels=y_test, **loader)


def _image_folder(chosen: Mapping[str, Any]) -> Dataset:
    path = Path(chosen["path"]).expanduser()
    source = ImageFolder(path, chosen["resolution"], chosen["channels"])
    loader = {"flip": chosen["flip"], "workers": chosen["workers"]}
    if _held(chosen["in_memory"], len(source), source.event_shape):
        check_fits(
            f"the images in {path} ({len(source)} of shape {source.event_shape})",
            len(source) * math.prod(source.event_shape) * 8,
        )
        x = load_all(source, chosen["workers"]).to(torch.float64)
        train, test, y_train, y_test = _split(x, 0.1, chosen["seed"], source.labels)
    else:
        train, test, y_train, y_test = _split(source, 0.1, chosen["seed"], source.labels)
    return Dataset(
        f"images:{path}",
        train,
        test,
        "[-1,1]",
        256,
        y_train,
        y_test,
        class_names=source.class_names,
        **loader,
    )
