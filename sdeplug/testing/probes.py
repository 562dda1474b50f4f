"""Probes of one step of a predictor or corrector that need no statistics: whether its output
depends on the generator's seed as it declares, whether it moves x, whether a float64 step
computes in float64, and whether each sample's step ignores the other samples in the batch.

Each probe calls ``step(x, t, generator)`` (the one-step call of the part under test) and
raises ``ContractError`` naming the part, the probe and the cause.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

F64 = torch.float64
Step = Callable[[Tensor, Tensor, "torch.Generator | None"], Tensor]


def _fail(message: str) -> None:
    from sdeplug.testing.kit_base import ContractError

    raise ContractError(message)


def _inputs(T: float, n: int = 16, dim: int = 3, seed: int = 11) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, dtype=F64, generator=g), torch.full((n,), 0.5 * T, dtype=F64)


def check_seed_dependence(step: Step, T: float, declared_random: bool | None, where: str, why: str) -> str:
    """A part that declares randomness (``why`` says how) changes its output with the
    generator's seed; one that declares itself deterministic does not. Returns what was shown."""
    x, t = _inputs(T)
    first, second = step(x, t, torch.Generator().manual_seed(1)), step(x, t, torch.Generator().manual_seed(2))
    differs = not torch.equal(first, second)
    if declared_random is True and not differs:
        _fail(
            f"{where}: {why}, but its step gives the same output with generators seeded 1 and 2: it draws no "
            "noise from `generator` (an option that should add noise is ignored?), or it declares randomness "
            "it does not have"
        )
    if declared_random is False and differs:
        _fail(
            f"{where}: {why}, but its step changes with the generator's seed (1 against 2): it draws noise, so "
            "it is not deterministic; declare weak_order instead, or stop drawing from `generator`"
        )
    return "changes with the seed" if differs else "does not change with the seed"


def check_moves(step: Step, T: float, where: str) -> None:
    """A corrector that is not declared the identity moves x."""
    x, t = _inputs(T)
    if torch.equal(step(x.clone(), t, torch.Generator().manual_seed(1)), x):
        _fail(
            f"{where}: step() returns x unchanged at t = {0.5 * T:g}; a corrector that does nothing must declare "
            "identity = True (as the bundled 'none' does), otherwise it must move x"
        )


#: Relative size of the perturbations of the precision probe: far below float32's resolution
#: (1.2e-7), far above float64's (2.2e-16).
PRECISION_DELTA = 1e-9


def check_float64_precision(step: Step, T: float, where: str) -> None:
    """A float64 step responds to a perturbation of x of 1e-9 relative, linearly: doubled
    perturbation, doubled response (within 1%). A step computed in float32 inside rounds the
    perturbation away (no response) or answers with float32 rounding noise (not linear)."""
    x, t = _inputs(T)
    direction = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(5))
    scale = PRECISION_DELTA * float(x.abs().max())

    def out(k: int) -> Tensor:
        return step(x + k * scale * direction, t, torch.Generator().manual_seed(1))

    base = out(0)
    once, twice = out(1) - base, out(2) - base
    size = float(once.norm())
    if size == 0 and torch.equal(step(x * 1.01 + 0.01, t, torch.Generator().manual_seed(1)), base):
        return  # the output ignores x altogether: not a question of precision (the other checks judge it)
    linear = float((twice - 2 * once).norm()) <= 0.01 * float(twice.norm())
    if size == 0 or not linear:
        what = "does not respond at all" if size == 0 else "responds non-linearly, at the size of float32 rounding"
        _fail(
            f"{where}: a float64 step {what} to a perturbation of x of {PRECISION_DELTA:g} relative "
            f"(response {size:.3g}; twice the perturbation gives {float(twice.norm()):.3g}): part of the step "
            "is computed in float32 (a float32 constant, buffer or cast); keep x's dtype throughout"
        )


def check_batch_independence(step: Step, T: float, where: str) -> None:
    """Each sample's step ignores the other samples: the first half of a batch steps to the same
    values whatever the second half holds (same shape, same generator seed, so the same noise)."""
    x, t = _inputs(T, n=16)
    other = torch.randn(8, x.shape[1], dtype=F64, generator=torch.Generator().manual_seed(7)) * 5
    one = step(x, t, torch.Generator().manual_seed(1))
    two = step(torch.cat([x[:8], other]), t, torch.Generator().manual_seed(1))
    if not torch.allclose(one[:8], two[:8], rtol=1e-12, atol=1e-12):
        gap = float((one[:8] - two[:8]).abs().max())
        _fail(
            f"{where}: a sample's step depends on the other samples in the batch: the same 8 samples, with the "
            f"same noise, step to values up to {gap:.3g} apart when the other 8 of the batch change (a norm, "
            "mean or clip over the whole batch?); if that is intended, declare batch_coupled = True"
        )
