"""Reading arrays of samples from .npy and .pt files without executing code, and writing them whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdeplug.checkpoint import write_atomically
from sdeplug.errors import ConfigError


def load_array(path: str | Path) -> Tensor:
    """A float tensor (batch, ...) from a .npy (no pickles) or .pt file (weights_only)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"data file not found: {path}")
    if path.suffix == ".npy":
        array = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".pt":
        try:
            array = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle.UnpicklingError and friends: refuse, never execute
            raise ConfigError(
                f"{path} could not be loaded safely (weights_only: tensors only, no code): {exc}"
            ) from exc
        if not isinstance(array, Tensor):
            raise ConfigError(f"{path} must hold a single tensor; got {type(array).__name__}")
    else:
        raise ConfigError(f"data file {path} must end in .npy or .pt")
    if array.ndim < 2 or not (array.is_floating_point() or array.dtype == torch.uint8):
        raise ConfigError(f"{path} must hold numbers of shape (batch, ...); got {array.dtype} {tuple(array.shape)}")
    return array.to(torch.float64) if array.dtype != torch.float32 else array


def save_array(path: Path, array: np.ndarray) -> Path:
    """Write a .npy file whole or not at all."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return write_atomically(path, write)
