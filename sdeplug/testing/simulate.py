"""Simulating the forward SDE from its drift and diffusion alone (to check marginal_prob)."""

from __future__ import annotations

import torch
from torch import Tensor

from sdeplug.interfaces import SDE
from sdeplug.tensors import per_sample, randn_like


@torch.no_grad()
def simulate_forward(
    sde: SDE, x0: Tensor, t_end: Tensor, steps: int = 200, generator: torch.Generator | None = None
) -> Tensor:
    """Simulate dx = f dt + g dw from x0 at time 0 to per-sample times t_end (shape (batch,)).

    A stochastic Heun scheme with the trapezoid rule for the noise variance: weak order
    two for additive noise, so its bias is far below Monte-Carlo error at a few hundred
    steps. It uses only ``drift`` and ``diffusion``, never the marginals it is checked against.
    When every sample ends at the same time, the steps are placed by how stiff the drift is
    (``stiffness_fractions``), so a rate that blows up near T (a cosine schedule) is resolved.
    """
    fractions = torch.linspace(0, 1, steps + 1, dtype=t_end.dtype, device=t_end.device)
    if bool((t_end == t_end[0]).all()):
        fractions = stiffness_fractions(sde, x0[:1], float(t_end[0]), steps)
    x, t = x0, torch.zeros_like(t_end)
    for k in range(steps):
        t_next = fractions[k + 1] * t_end
        h = t_next - t
        g2 = 0.5 * (sde.diffusion(t) ** 2 + sde.diffusion(t_next) ** 2)
        noise = per_sample(torch.sqrt(g2 * h), x) * randn_like(x, generator)
        f0 = sde.drift(x, t)
        x_pred = x + f0 * per_sample(h, x) + noise
        x = x + 0.5 * (f0 + sde.drift(x_pred, t_next)) * per_sample(h, x) + noise
        t = t_next
    return x


def stiffness_fractions(sde: SDE, like: Tensor, t_end: float, steps: int) -> Tensor:
    """steps + 1 fractions of t_end from 0 to 1, spaced so that each step has an equal share of
    the integral of 1 + t_end |df/dx|: uniform for a drift that is gentle (or zero, as VE's),
    dense where it is stiff. |df/dx| is probed from the drift at x = 0 and x = 1 alone."""
    fine = torch.linspace(0, 1, 8 * steps + 1, dtype=like.dtype, device=like.device)
    times = fine * t_end
    k = len(times)
    probe = torch.cat(
        [torch.zeros_like(like[:1]).expand(k, *like.shape[1:]), torch.ones_like(like[:1]).expand(k, *like.shape[1:])]
    )
    drift = sde.drift(probe, times.repeat(2)).reshape(2, k, -1)
    rates = (drift[1] - drift[0]).abs().mean(-1)
    weight = 1 + t_end * torch.nan_to_num(rates, nan=0.0, posinf=0.0)
    cumulative = torch.cat([torch.zeros(1, dtype=weight.dtype), torch.cumsum(0.5 * (weight[1:] + weight[:-1]), 0)])
    cumulative = cumulative / cumulative[-1]
    targets = torch.linspace(0, 1, steps + 1, dtype=like.dtype, device=like.device)
    index = torch.searchsorted(cumulative, targets).clamp(1, len(fine) - 1)
    lo, hi = cumulative[index - 1], cumulative[index]
    share = ((targets - lo) / (hi - lo).clamp(min=1e-300)).clamp(0, 1)
    fractions = fine[index - 1] + share * (fine[index] - fine[index - 1])
    fractions[0], fractions[-1] = 0.0, 1.0
    return fractions
