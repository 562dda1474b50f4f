"""Grids placed by noise level rather than by time: uniform in log-SNR, EDM's rho-schedule,
and grids tuned to a model (``sdeplug tune-grid``).

All work for any LinearSDE: they place the noise levels, then map them back to times
with ``LinearSDE.t_from_log_snr``.
"""

from __future__ import annotations

import warnings

import attrs
import torch
from attrs import validators as v
from torch import Tensor

from sdeplug import LinearSDE, TimeGrid
from sdeplug.grids import (
    GridStepsWarning,
    check_fractions,
    grid_from_fractions,
    load_grid_file,
    log_snr_grid,
    tuned_grid_mismatches,
)


@attrs.frozen
class LogSNRGrid(TimeGrid):
    """Evenly spaced in log-SNR: equal steps h in the variable exponential integrators step in."""

    name = "logsnr"
    sde_types = (LinearSDE,)

    def times(self, sde: LinearSDE, steps: int, eps: float, device=None, dtype=None) -> Tensor:
        return log_snr_grid(sde, steps, eps, device=device, dtype=dtype)


@attrs.frozen
class EDMGrid(TimeGrid):
    """Karras et al.'s schedule: the noise level s = sigma / alpha evenly spaced in s^(1/rho).

    rho = 7 (the EDM default) puts most steps at low noise; rho = 1 is uniform in s.
    """

    name = "edm"
    sde_types = (LinearSDE,)
    rho: float = attrs.field(default=7.0, kw_only=True, validator=[v.instance_of((int, float)), v.gt(0)])

    def times(self, sde: LinearSDE, steps: int, eps: float, device=None, dtype=None) -> Tensor:
        # s = sigma / alpha = exp(-log_snr / 2)
        s_max, s_min = torch.exp(-0.5 * sde.log_snr(torch.tensor([float(sde.T), float(eps)], dtype=torch.float64)))
        u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
        inv = 1.0 / self.rho
        s = (s_max**inv + u * (s_min**inv - s_max**inv)) ** self.rho
        times = sde.t_from_log_snr(-2.0 * torch.log(s))
        times[0], times[-1] = float(sde.T), float(eps)  # the ends exactly, whatever the inversion's last bit
        return times.to(device=device, dtype=dtype)


@attrs.frozen
class TunedLogSNRGrid(TimeGrid):
    """A grid tuned by ``sdeplug tune-grid``: ``file`` names the tuned-grid file it wrote, or
    ``fractions`` gives the log-SNR fractions (0 at T, 1 at eps) inline.

    At the tuned number of steps it gives the tuned times; at any other it stretches them
    piecewise linearly in the step index (a file's grid with a ``GridStepsWarning``). A file's grid is
    refused for another SDE or eps than it was tuned for, unless ``allow_mismatch``. With
    neither option it is the log-SNR grid.
    """

    name = "tuned"
    sde_types = (LinearSDE,)
    file: str | None = attrs.field(default=None, kw_only=True, validator=v.optional(v.instance_of(str)))
    fractions: tuple[float, ...] | None = attrs.field(
        default=None, kw_only=True, converter=lambda f: f if f is None else check_fractions(f)
    )
    allow_mismatch: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    _content: dict = attrs.field(init=False, repr=False)

    @_content.default
    def _read(self) -> dict:
        if self.file is not None and self.fractions is not None:
            raise ValueError("give the tuned grid's file or its fractions, not both")
        if self.file is not None:
            return load_grid_file(self.file)
        return {"fractions": list(self.fractions) if self.fractions is not None else [0.0, 1.0]}

    @classmethod
    def example_options(cls):
        return [{"fractions": [0.0, 0.15, 0.5, 0.9, 1.0]}]

    def times(self, sde: LinearSDE, steps: int, eps: float, device=None, dtype=None) -> Tensor:
        fractions = self._content["fractions"]
        if self.file is not None and not self.allow_mismatch:
            problems = tuned_grid_mismatches(self._content, sde=sde, eps=eps)
            if problems:
                raise ValueError(
                    f"the grid in {self.file!r} was tuned for {'; '.join(problems)}; tune one for this use "
                    "(sdeplug tune-grid), or set allow_mismatch = true to use it anyway"
                )
        if self.file is not None and steps != len(fractions) - 1:
            warnings.warn(
                f"a grid tuned for {len(fractions) - 1} steps stretched to {steps}: tune one for {steps} "
                "(sdeplug tune-grid --steps) for the best times",
                GridStepsWarning,
                stacklevel=2,
            )
        return grid_from_fractions(sde, fractions, steps, eps, device=device, dtype=dtype)
