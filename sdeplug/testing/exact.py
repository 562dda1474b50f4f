"""Exact samples and scores of Gaussian data for the step checks of predictors and correctors,
the step-interface and identity checks, and the loop over option sets and SDEs they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from sdeplug.interfaces import (
    SDE,
    LinearSDE,
    Predictor,
)
from sdeplug.oracle import GaussianMixture
from sdeplug.testing import probes
from sdeplug.testing.kit_base import (
    ContractReport,
    _accepted,
    _as_sdes,
    _devices,
    _fail,
    _label,
    _start,
)
from sdeplug.testing.sde_contract import _check_sde_first

F64 = torch.float64


#: Gaussian data N(mean, std^2) per coordinate for the one-step and balance checks.
_DATA_MEAN, _DATA_STD = 0.3, 0.5


def _gaussian_marginal(sde: LinearSDE, t: float) -> tuple[float, float]:
    """Mean and variance of p_t for the Gaussian data."""
    tt = torch.tensor([t], dtype=F64)
    a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
    return a * _DATA_MEAN, a**2 * _DATA_STD**2 + s**2


def _gaussian_score(sde: LinearSDE) -> Callable[[Tensor, Tensor], Tensor]:
    """The exact score of p_t for the Gaussian data."""
    return GaussianMixture([1.0], [[_DATA_MEAN]], stds=[_DATA_STD]).score_model(sde)


def _exact_samples(sde: LinearSDE, t: float, n: int, seed: int = 0) -> Tensor:
    """n samples of p_t for the Gaussian data (1-D), moment-matched: their mean and variance are exact."""
    mean, var = _gaussian_marginal(sde, t)
    z = torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return mean + (z - z.mean()) / z.std(correction=0) * math.sqrt(var)


def _check_times(sde: LinearSDE) -> list[float]:
    """Where the one-step and balance checks look: where the noise is a third of the signal's
    scale (log-SNR 2), where they are equal (log-SNR 0), and at 0.3 T."""
    at = sde.t_from_log_snr(torch.tensor([2.0, 0.0], dtype=F64)).tolist()
    low = min(10 * sde.default_eps, 0.01 * sde.T)  # an SDE whose log-SNR never reaches 2 or 0 maps them to an end
    times = [min(max(t, low), sde.T) for t in [*at, 0.3 * sde.T]]
    return sorted(set(times), key=times.index)


def _check_identity(call: Callable, label: str) -> None:
    x = torch.randn(5, 2, dtype=F64)
    if not torch.equal(call(x, torch.full((5,), 0.5, dtype=F64)), x):
        _fail(f"{label} declares identity = True but changes x")


def _check_step_interface(sde: SDE, call: Callable, label: str) -> None:
    for device in _devices():
        for dtype in (torch.float32, F64):
            x = torch.randn(3, 1, 2, 2, dtype=dtype, device=device)
            t = torch.full((3,), 0.5 * sde.T, dtype=dtype, device=device)
            given = x.clone()
            out = call(x, t, torch.Generator(device).manual_seed(0))
            if not torch.equal(x, given):
                _fail(
                    f"{label}: step changed the x it was given in place (x += ..., or an in-place op on x); it must "
                    "leave x as it was and return the new x as a new tensor: samplers and guidance reuse x"
                )
            again = call(x, t, torch.Generator(device).manual_seed(0))
            if not isinstance(out, Tensor):
                _fail(f"{label}: step returned {type(out).__name__}; it must return the new x (a tensor)")
            if out.shape != x.shape or out.dtype != dtype or out.device.type != torch.device(device).type:
                _fail(
                    f"{label}: step returned shape {tuple(out.shape)}, {out.dtype} on {out.device} "
                    f"for x of shape {tuple(x.shape)}, {dtype} on {device}"
                )
            if not torch.equal(out, again):
                _fail(f"{label}: two steps with generators seeded alike differ: draw noise from `generator`")


def _kit_grid(sde: SDE, steps: int = 100) -> Tensor:
    """The grid correctors are told about (``for_grid``) in their checks: uniform, T to eps."""
    return torch.linspace(sde.T, sde.default_eps, steps + 1, dtype=F64)


def _probe_step(step: Callable, part: Any, sde: SDE, where: str, label: str, report: ContractReport) -> None:
    """The statistics-free probes of one step (``sdeplug.testing.probes``): seed dependence as
    declared, float64 precision, and batch independence unless the part declares coupling."""
    if isinstance(part, Predictor):
        weak, ode = getattr(part, "weak_order", None), getattr(part, "ode_order", None)
        declared = True if weak is not None else (False if ode is not None else None)
        why = (
            f"it declares weak_order {weak:g} (a stochastic sampler)"
            if weak is not None
            else f"it declares ode_order {ode:g} (a deterministic step)"
            if ode is not None
            else ""
        )
    else:
        declared, why = True, "a corrector is an MCMC step that draws noise"
    shown = probes.check_seed_dependence(step, sde.T, declared, where, why)
    if declared is None:
        report.skipped.append(f"{label}: seed dependence ({shown}; declare weak_order or ode_order to have it checked)")
    else:
        report.passed.append(f"{label}: {shown}, as {why.split(' (')[0].replace('it ', '')}")
    probes.check_float64_precision(step, sde.T, where)
    report.passed.append(f"{label}: a float64 step responds to a 1e-9 relative change of x, linearly")
    if getattr(part, "batch_coupled", False):
        report.skipped.append(f"{label}: batch independence (the part declares batch_coupled = True)")
    else:
        probes.check_batch_independence(step, sde.T, where)
        report.passed.append(f"{label}: each sample's step ignores the rest of the batch")


def _check_cases(
    kind: str,
    spec: Any,
    sdes: Sequence[Any] | None,
    options: dict[str, Any] | None,
    local_sdes: Sequence[Any],
    check_on: Callable[..., None],
) -> ContractReport:
    """Run ``check_on(name, cls, options, sde, label, report, local_only=...)`` for each option
    set on each SDE to check, then with the local checks alone on each of ``local_sdes``."""
    name, cls, sets, report, targets = _start(kind, spec, sdes, options)
    local = _accepted(cls, _as_sdes(local_sdes) or [])
    cases = [(sde, False) for sde in targets] + [(sde, True) for sde in local]
    for sde, _ in cases:
        _check_sde_first(sde, f"{kind} {name!r}")
    for options in sets:
        for sde, local_only in cases:
            check_on(name, cls, options, sde, _label(sde, options, sets[0]), report, local_only=local_only)
    return report
