"""The time-grid contract."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sdeplug.testing.kit_base import ContractReport, _devices, _fail, _start

F64 = torch.float64


def check_time_grid(
    spec: Any, *, sdes: Sequence[Any] | None = None, options: dict[str, Any] | None = None
) -> ContractReport:
    """For every compatible SDE: steps + 1 strictly decreasing times from exactly T to exactly
    eps, in the dtype and on the device asked for, the same on every call, and a mesh that
    shrinks as steps grow (samplers converge only if it does)."""
    name, cls, sets, report, targets = _start("time_grid", spec, sdes, options, oracle=False)
    for options, sde in [(options, sde) for options in sets for sde in targets]:
        rule = cls(**options)
        label = f"time_grid {name!r} with {type(sde).__name__}"
        eps = sde.default_eps
        for steps in (1, 7, 50):
            for device in _devices():
                for dtype in (torch.float32, F64):
                    times = rule.times(sde, steps, eps, device=device, dtype=dtype)
                    if not isinstance(times, Tensor) or times.shape != (steps + 1,):
                        _fail(
                            f"{label}: times(steps={steps}) returned shape {tuple(getattr(times, 'shape', ()))}; "
                            f"it must return steps + 1 = {steps + 1} times"
                        )
                    if times.dtype != dtype or times.device.type != torch.device(device).type:
                        _fail(f"{label}: asked for {dtype} on {device}, got {times.dtype} on {times.device}")
                    ends = torch.tensor([sde.T, eps], dtype=dtype)
                    if not torch.equal(times[[0, -1]].cpu(), ends):
                        _fail(
                            f"{label}: the grid must run from exactly T = {sde.T} to exactly eps = {eps}; "
                            f"got {float(times[0])!r} to {float(times[-1])!r}"
                        )
                    if not bool((times.diff() < 0).all()) or not bool(torch.isfinite(times).all()):
                        _fail(f"{label}: times must be finite and strictly decreasing; got {times.tolist()[:10]}")
            if not torch.equal(rule.times(sde, steps, eps, dtype=F64), rule.times(sde, steps, eps, dtype=F64)):
                _fail(f"{label}: two calls with the same arguments give different grids")
        coarse = float(rule.times(sde, 50, eps, dtype=F64).diff().abs().max())
        fine = float(rule.times(sde, 400, eps, dtype=F64).diff().abs().max())
        if fine > coarse / 4:
            _fail(
                f"{label}: the largest step shrinks only from {coarse:.3g} (50 steps) to {fine:.3g} (400 steps); "
                "a sampler can converge only if every step shrinks with 1/steps"
            )
        report.passed.append(
            f"{type(sde).__name__}: ends at T and eps exactly, decreasing, dtypes, devices, "
            f"deterministic, largest step {coarse:.3g} -> {fine:.3g} from 50 to 400 steps"
        )
    return report
