"""Reading arrays of samples from .npy and .pt files without executing code, and writing them whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdeplug.app.limits import check_fits
from sdeplug.data import check_rows_of_data, npz_member, open_npy
from sdeplug.errors import ConfigError, DataError, load_refusal
from sdeplug.files import write_atomically


def _read_npy(path: Path) -> np.ndarray:
    """A .npy file's array as a memory map, its header checked first (``sdeplug.data.open_npy``)
    and its size against the memory it would take as float64."""
    array = open_npy(path)
    check_fits(f"the data file {path} (shape {array.shape})", array.size * 8)  # as float64 in memory
    return array


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    """One array of a .npz file (compressed or not), never unpickled."""
    member = npz_member(path, key)
    try:
        with np.load(path, allow_pickle=False) as archive:
            info = archive.zip.getinfo(member + ".npy")
            check_fits(f"the array {member!r} of {path}", info.file_size * 8)
            return archive[member]
    except ValueError as exc:  # object arrays refused by allow_pickle=False
        raise DataError(f"{path}: the array {member!r} cannot be read without unpickling: {exc}") from None


def _tensor(path: Path, array: np.ndarray) -> Tensor:
    """``array`` as a tensor, or one error naming the file where torch has no such dtype (float128)."""
    try:
        return torch.from_numpy(array)
    except TypeError:
        raise DataError(
            f"{path} holds {array.dtype} numbers, which torch cannot take; save them as float32 or float64"
        ) from None


def load_array(path: str | Path, key: str | None = None) -> Tensor:
    """A float tensor (batch, ...) from a .npy or .npz (no pickles; ``key`` names the array of
    a .npz with several) or .pt file (weights_only), of real numbers with at least one row;
    anything else is one error naming the file."""
    array = _load(Path(path).expanduser(), key)
    real = array.is_floating_point() or (not array.is_complex() and array.dtype != torch.bool)
    check_rows_of_data(path, tuple(array.shape), array.dtype, real)
    return array.to(torch.float64) if array.dtype != torch.float32 else array


def load_labels(path: str | Path, rows: int) -> Tensor:
    """Class labels from a .npy, .npz or .pt file: ``rows`` non-negative whole numbers, as int64."""
    path = Path(path).expanduser()
    labels = _load(path, None)
    if labels.is_complex() or labels.dtype == torch.bool or labels.shape != (rows,):
        raise DataError(
            f"{path}: labels must be {rows} whole numbers, one per row of the data; got {labels.dtype} "
            f"of shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() and not bool((torch.isfinite(labels) & (labels == labels.round())).all()):
        raise DataError(f"{path}: labels must be whole numbers (one class per row); got fractions or NaN")
    labels = labels.to(torch.int64)
    if rows and int(labels.min()) < 0:
        raise DataError(f"{path}: labels must be non-negative class numbers; the smallest is {int(labels.min())}")
    return labels


def _load(path: Path, key: str | None) -> Tensor:
    """The array of a .npy, .npz or .pt file as it is stored, read without executing code."""
    if not path.exists():
        raise ConfigError(f"data file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"data file {path} is a folder; give a .npy, .npz or .pt file")
    if path.suffix == ".npy":
        array = _tensor(path, np.array(_read_npy(path)))
    elif path.suffix == ".npz":
        array = _tensor(path, np.array(_read_npz(path, key)))
    elif path.suffix == ".pt":
        try:
            array = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never execute
            raise DataError(
                f"{path} could not be loaded safely (weights_only: tensors only, no code): {load_refusal(exc)}"
            ) from None
        if not isinstance(array, Tensor):
            raise DataError(f"{path} must hold a single tensor; got {type(array).__name__}")
    else:
        raise ConfigError(f"data file {path} must end in .npy, .npz or .pt")
    return array


def save_array(path: Path, array: np.ndarray) -> Path:
    """Write a .npy file whole or not at all."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomically(path, write)
