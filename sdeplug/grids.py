"""Time grids for sampling: decreasing 1-D tensors from T down to eps."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_grid(
    t_start: float,
    t_end: float,
    steps: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``steps`` + 1 evenly spaced times from t_start to t_end (both included).

    Sampling on this grid takes ``steps`` steps of size (T - eps) / steps exactly; the
    paper's code uses linspace(T, eps, N) but steps by 1/N (see docs/user-guide.md).
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    return torch.linspace(float(t_start), float(t_end), int(steps) + 1, device=device, dtype=dtype)


def check_grid(grid: Tensor, *, decreasing: bool = True) -> Tensor:
    """Check a grid is a finite 1-D tensor of at least two strictly monotone times; return it."""
    if not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(
            f"a time grid must be a 1-D tensor of at least 2 times; got "
            f"{tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__}"
        )
    diffs = grid[1:] - grid[:-1]
    monotone = (diffs < 0).all() if decreasing else (diffs > 0).all()
    if not bool(torch.isfinite(grid).all()) or not bool(monotone):
        direction = "decreasing" if decreasing else "increasing"
        raise ValueError(f"a time grid must be finite and strictly {direction}; got {grid.tolist()[:8]}...")
    return grid
