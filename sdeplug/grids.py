"""Time grids for sampling: decreasing 1-D tensors from T down to eps.

A grid is given to the samplers as a tensor, as the name of a registered TimeGrid
(``"uniform"``, ``"logsnr"``, ``"edm"``, ``"quadratic"``, or a plugin's), or as a
TimeGrid instance; ``resolve_grid`` turns any of these into the tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, TimeGrid
from sdeplug.registry import part_name, resolve

GridSpec = Tensor | str | TimeGrid | type[TimeGrid] | None
"""What a sampler's ``grid`` argument accepts."""


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
    check_steps(steps)
    return torch.linspace(float(t_start), float(t_end), int(steps) + 1, device=device, dtype=dtype)


def log_snr_grid(
    sde: LinearSDE,
    steps: int,
    t_end: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``steps`` + 1 times from T to t_end evenly spaced in log-SNR (equal steps h in the
    variable exponential integrators step in), placed in float64 and ending exactly at T
    and t_end."""
    check_steps(steps)
    ends = sde.log_snr(torch.tensor([float(sde.T), float(t_end)], dtype=torch.float64))
    times = sde.t_from_log_snr(torch.linspace(float(ends[0]), float(ends[1]), int(steps) + 1, dtype=torch.float64))
    times[0], times[-1] = float(sde.T), float(t_end)  # the ends exactly, whatever the inversion's last bit
    return times.to(device=device, dtype=dtype if dtype is not None else torch.float64)


def end_time(sde: SDE, eps: float | None) -> float:
    """Where sampling ends and likelihood integration starts: ``eps``, or the SDE's default;
    checked to lie in [0, T)."""
    eps = sde.default_eps if eps is None else eps
    if not 0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T) = [0, {sde.T}); got {eps}")
    return eps


def check_steps(steps: Any) -> int:
    """``steps`` as an int, or a ValueError saying a positive integer is needed."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}")
    return int(steps)


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


def resolve_grid(
    sde: SDE,
    grid: GridSpec,
    steps: int,
    eps: float,
    *,
    grid_options: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """The decreasing tensor of times a sampler steps through, from any ``GridSpec``.

    None is the uniform grid; a tensor is checked and used as it is (``steps`` and
    ``eps`` are then ignored); a name or TimeGrid places ``steps`` + 1 times from T to eps.
    """
    if isinstance(grid, Tensor):
        if grid_options:
            raise ValueError("grid_options are for a grid given by name; a tensor grid takes none")
        times = check_grid(grid.to(device=device, dtype=dtype))
        first, last = float(times[0]), float(times[-1])  # once per run, before sampling
        slack = 4 * torch.finfo(times.dtype).eps * max(1.0, sde.T)  # T rounded to the grid's dtype
        if first > sde.T + slack or last < -slack:
            raise ValueError(
                f"a time grid must lie in [0, T] = [0, {sde.T:g}] for this SDE; got times from {first:g} to {last:g}"
            )
        return times
    if grid is None and not grid_options:
        return uniform_grid(sde.T, eps, steps, device=device, dtype=dtype)
    spec = "uniform" if grid is None else grid
    rule = resolve("time_grid", spec, options=grid_options, sde=sde)
    name = part_name(spec if isinstance(spec, str) else rule)
    times = rule.times(sde, check_steps(steps), eps, device=device, dtype=dtype)
    if not isinstance(times, Tensor) or times.shape != (steps + 1,):
        raise ValueError(
            f"time grid {name!r} returned {tuple(getattr(times, 'shape', ()))} for {steps} steps; "
            f"it must return {steps + 1} times"
        )
    return check_grid(times.to(device=device, dtype=dtype))
