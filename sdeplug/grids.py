"""Time grids for sampling: decreasing 1-D tensors from T down to eps.

A grid is given to the samplers as a tensor, as the name of a registered TimeGrid
(``"uniform"``, ``"logsnr"``, ``"edm"``, ``"quadratic"``, or a plugin's), or as a
TimeGrid instance; ``resolve_grid`` turns any of these into the tensor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sdeplug.errors import SdeplugWarning
from sdeplug.files import file_digest, write_atomically
from sdeplug.interfaces import SDE, LinearSDE, TimeGrid
from sdeplug.registry import get_registry, part_name, resolve

GridSpec = Tensor | str | TimeGrid | type[TimeGrid] | None
"""What a sampler's ``grid`` argument accepts."""

#: What the ``format`` key of a tuned-grid file says (``sdeplug tune-grid`` writes them).
GRID_FORMAT = "sdeplug-tuned-grid"
F64 = torch.float64


def uniform_grid(
    t_start: float,
    t_end: float,
    steps: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``steps`` + 1 evenly spaced times from t_start to t_end (both included).

    Sampling on this grid takes ``steps`` steps of size (T - eps) / steps exactly; the
    paper's code uses linspace(T, eps, N) but steps by 1/N (see docs/sampling.md, "Samplers").
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
    tuned_times = getattr(grid, "times", None)
    if isinstance(tuned_times, Tensor) and not isinstance(grid, Tensor):  # a tuning result: its times
        grid = tuned_times
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


# Grids placed at fractions of the log-SNR range (tuned grids) ------------------------


def _half_log_snr(sde: LinearSDE, times: Tensor) -> Tensor:
    return 0.5 * sde.log_snr(times.to(F64))


def fractions_of(sde: LinearSDE, times: Tensor) -> list[float]:
    """Where each time of a decreasing grid sits in its log-SNR range: 0 at the first, 1 at the last."""
    lam = _half_log_snr(sde, times.detach().cpu())
    fractions = ((lam - lam[0]) / (lam[-1] - lam[0])).tolist()
    fractions[0], fractions[-1] = 0.0, 1.0
    return fractions


def check_fractions(fractions: Any, where: str = "fractions") -> tuple[float, ...]:
    """A strictly increasing list of at least two finite numbers from exactly 0 to exactly 1."""
    if not isinstance(fractions, (list, tuple)) or len(fractions) < 2:
        raise ValueError(f"{where} must be a list of at least 2 numbers from 0 to 1; got {fractions!r:.80}")
    if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in fractions):
        raise ValueError(f"{where} must hold finite numbers only; got {list(fractions)!r:.80}")
    if fractions[0] != 0 or fractions[-1] != 1 or any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"{where} must increase strictly from exactly 0 to exactly 1; got {list(fractions)!r:.80}")
    return tuple(float(f) for f in fractions)


def grid_from_fractions(
    sde: LinearSDE,
    fractions: Sequence[float],
    steps: int,
    eps: float,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``steps`` + 1 times from T to eps at the given log-SNR fractions, interpolated piecewise
    linearly in the step index when ``steps`` differs from ``len(fractions) - 1``."""
    steps = check_steps(steps)
    tuned_steps = len(fractions) - 1
    placed = torch.from_numpy(
        np.interp(np.arange(steps + 1) * tuned_steps / steps, np.arange(tuned_steps + 1), fractions)
    )
    ends = _half_log_snr(sde, torch.tensor([float(sde.T), float(eps)], dtype=F64))
    times = sde.t_from_log_snr(2 * (ends[0] + placed * (ends[1] - ends[0])))
    times[0], times[-1] = float(sde.T), float(eps)  # the ends exactly, whatever the inversion's last bit
    flat = (times[1:] >= times[:-1]).nonzero()
    if len(flat):
        i = int(flat[0, 0])
        raise ValueError(
            f"log-SNR fractions {float(placed[i]):.17g} and {float(placed[i + 1]):.17g} are too close to place two "
            f"distinct times for this SDE (both {float(times[i]):.17g}); space the fractions further apart"
        )
    return times.to(device=device, dtype=dtype if dtype is not None else F64)


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """A tuned-grid file's contents, checked: its ``fractions`` at least."""
    path = Path(path).expanduser()
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"tuned grid file {str(path)!r} does not exist; make one with `sdeplug tune-grid`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"tuned grid file {str(path)!r} is not readable JSON: {exc}") from None
    if not isinstance(content, dict) or content.get("format") != GRID_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a tuned grid file (format {GRID_FORMAT!r}, written by sdeplug tune-grid)"
        )
    content["fractions"] = list(check_fractions(content.get("fractions"), f"the fractions in {str(path)!r}"))
    _check_recorded_times(path, content)
    return content


def _check_recorded_times(path: Path, content: Mapping[str, Any]) -> None:
    """Refuse a file whose recorded times are not its fractions under the SDE it was tuned
    for: the grid is placed by the fractions, so edited times would be ignored without a word."""
    times, sde_table = content.get("times"), (content.get("tuned_for") or {}).get("sde")
    if times is None or not isinstance(sde_table, Mapping):
        return
    try:
        sde = get_registry().create("sde", sde_table["name"], **{k: v for k, v in sde_table.items() if k != "name"})
        recorded = torch.as_tensor(times, dtype=F64)
        placed = fractions_of(sde, recorded)
    except Exception:  # the SDE's plugin is gone, or times that are no grid: the fractions still place it
        return
    if len(placed) != len(content["fractions"]) or max(abs(a - b) for a, b in zip(placed, content["fractions"])) > 1e-9:
        raise ValueError(
            f"the times in {str(path)!r} are not its fractions under the SDE it was tuned for (were they edited?); "
            "the grid is placed by its fractions: edit those instead, or remove 'times'"
        )


def save_grid_file(path: str | Path, content: Mapping[str, Any]) -> Path:
    """Write a tuned-grid file atomically (a temporary file, then a rename)."""
    path = Path(path).expanduser()
    check_fractions(content.get("fractions"))
    text = json.dumps({"format": GRID_FORMAT, **content}, indent=2) + "\n"
    return write_atomically(path, lambda temporary: temporary.write_text(text))


class GridStepsWarning(SdeplugWarning):
    """A tuned grid used at another step count than it was tuned for: it is stretched."""


def tuned_grid_mismatches(
    content: Mapping[str, Any],
    *,
    sde: SDE | None = None,
    eps: float | None = None,
    predictor: str | None = None,
    predictor_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """How a use differs from what a tuned-grid file says it was tuned for (each as a phrase):
    another predictor or predictor options (a file option, such as moments, by content), SDE,
    SDE options or eps. Whatever the file does not record is not compared."""
    tuned_for = content.get("tuned_for") or {}
    problems: list[str] = []
    recorded = tuned_for.get("predictor")
    if predictor is not None and isinstance(recorded, Mapping):
        recorded = dict(recorded)
        name = recorded.pop("name", None)
        digests = {key: recorded.pop(key) for key in list(recorded) if key.endswith("_sha256")}
        given = dict(predictor_options or {})
        if name != predictor:
            problems.append(f"predictor {name!r}, not {predictor!r}")
        elif recorded != given:
            problems.append(f"predictor options {recorded}, not {given}")
        for key, digest in digests.items():
            path = given.get(key.removesuffix("_sha256"))
            if isinstance(path, str) and Path(path).expanduser().is_file():
                if file_digest(Path(path).expanduser()) != digest:
                    problems.append(f"another {key.removesuffix('_sha256')} file (its content differs)")
    table = tuned_for.get("sde")
    if sde is not None and isinstance(table, Mapping):
        table = dict(table)
        name = table.pop("name", None)
        if name != getattr(sde, "name", None):
            problems.append(f"SDE {name!r}, not {getattr(sde, 'name', type(sde).__name__)!r}")
        else:
            differing = {k: v for k, v in table.items() if getattr(sde, k, v) != v}
            if differing:
                problems.append(f"SDE options {differing}, not { ({k: getattr(sde, k) for k in differing}) }")
    tuned_eps = tuned_for.get("eps")
    if eps is not None and isinstance(tuned_eps, (int, float)) and not math.isclose(eps, tuned_eps, rel_tol=1e-9):
        problems.append(f"eps {tuned_eps:g}, not {eps:g}")
    return problems
