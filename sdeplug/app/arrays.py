"""Reading arrays of samples from .npy and .pt files without executing code, and writing them whole."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdeplug.app.limits import check_fits
from sdeplug.checkpoint import write_atomically
from sdeplug.errors import ConfigError, DataError


def _read_npy(path: Path) -> np.ndarray:
    """A .npy file's array, its header checked first: no objects (pickles), and no more data
    claimed than the file holds (so a lying header never allocates)."""
    from numpy.lib import format as npy

    with open(path, "rb") as f:
        try:
            major, _ = npy.read_magic(f)
            read_header = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except (ValueError, EOFError, OSError, SyntaxError) as exc:
            raise DataError(f"{path} is not a readable .npy file (empty, truncated or another format): {exc}") from None
        if dtype.hasobject:
            raise DataError(f"{path} holds Python objects, which would need unpickling; save a numeric array")
        needed, held = math.prod(shape) * dtype.itemsize, path.stat().st_size - f.tell()
        if needed > held:
            raise DataError(
                f"{path} is truncated or its header lies: shape {shape} of {dtype} needs {needed} bytes of data, "
                f"the file holds {held}"
            )
    check_fits(f"the data file {path} (shape {shape})", math.prod(shape) * 8)  # as float64 in memory
    return np.load(path, mmap_mode="r", allow_pickle=False)


def load_array(path: str | Path) -> Tensor:
    """A float tensor (batch, ...) from a .npy (no pickles) or .pt file (weights_only), of real
    numbers with at least one row; anything else is one error naming the file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"data file not found: {path}")
    if path.is_dir():
        raise ConfigError(f"data file {path} is a folder; give a .npy or .pt file")
    if path.suffix == ".npy":
        array = torch.from_numpy(np.array(_read_npy(path)))
    elif path.suffix == ".pt":
        try:
            array = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never execute
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            reason = next(
                (line for line in lines if line.startswith("WeightsUnpickler error")), lines[0] if lines else ""
            )
            raise DataError(
                f"{path} could not be loaded safely (weights_only: tensors only, no code): {reason}"
            ) from None
        if not isinstance(array, Tensor):
            raise DataError(f"{path} must hold a single tensor; got {type(array).__name__}")
    else:
        raise ConfigError(f"data file {path} must end in .npy or .pt")
    real = array.is_floating_point() or (not array.is_complex() and array.dtype != torch.bool)
    if array.ndim < 2 or not real:
        raise DataError(f"{path} must hold real numbers of shape (batch, ...); got {array.dtype} {tuple(array.shape)}")
    if array.shape[0] == 0 or array[0].numel() == 0:
        raise DataError(f"{path} holds no data (shape {tuple(array.shape)}); it needs at least one point")
    return array.to(torch.float64) if array.dtype != torch.float32 else array


def save_array(path: Path, array: np.ndarray) -> Path:
    """Write a .npy file whole or not at all."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomically(path, write)
