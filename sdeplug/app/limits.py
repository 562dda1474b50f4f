"""Limits checked before any work: devices that exist, sizes that fit in memory."""

from __future__ import annotations

import os

import torch

from sdeplug.errors import ConfigError


def memory_bytes(device: torch.device | str = "cpu") -> int | None:
    """The memory of ``device`` in bytes (the machine's RAM for the CPU); None if unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - no sysconf (Windows)
        return None


def check_fits(what: str, nbytes: int, device: torch.device | str = "cpu") -> None:
    """Refuse, before allocating, a size that cannot fit in the memory of ``device``."""
    available = memory_bytes(device)
    if available is not None and nbytes > available:
        raise ConfigError(
            f"{what} needs {nbytes / 2**30:.3g} GiB, more than the {available / 2**30:.3g} GiB of memory "
            f"of the {torch.device(device).type} device; choose a smaller value"
        )


def check_device(text: str, what: str = "[sample] device") -> torch.device:
    """The torch device named ``text`` if it exists here, else one ConfigError naming ``what`` and the
    devices there are."""
    usable = (
        "cpu"
        + (", cuda or cuda:N" if torch.cuda.is_available() else "")
        + (", mps" if torch.backends.mps.is_available() else "")
    )
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} = {text!r} is not a torch device; this machine has: {usable}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{what} = {text!r}: this machine (or this torch build) has no CUDA device; use {usable}")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{what} = {text!r}: there are {count} CUDA devices (cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{what} = {text!r}: MPS is not available here; use {usable}")
    elif device.type != "cpu":
        raise ConfigError(f"{what} = {text!r} cannot run sdeplug (it holds no data or is not supported); use {usable}")
    return device
