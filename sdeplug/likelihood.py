"""Exact log-likelihoods through the probability-flow ODE, in nats and bits/dim.

Integrating dx/dt = F(x, t) = f - g^2 s / 2 from eps up to T together with
d(delta)/dt = div F gives log p_eps(x) = log p_T(x_T) + delta(T) (instantaneous change
of variables). The divergence is exact (one backward pass per dimension; for small
D) or the Hutchinson-Skilling estimate E[v^T (dF/dx) v] with v Rademacher or Gaussian,
drawn once per solve and shared by every step, as the estimator requires. The divergence
is taken at every solver stage (the paper's augmented ODE) or, with ``quadrature``, by Gauss
quadrature on the accepted steps of the flow solved alone. Everything stays on the tensor's
device; nothing goes through numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Integral
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from sdeplug.grids import end_time
from sdeplug.interfaces import SDE, DenseODESolution, ODESolver, ScoreFn
from sdeplug.registry import part_name, resolve
from sdeplug.sampling import (
    CountingScore,
    FiniteMonitor,
    check_batch,
    check_generator,
    check_unbound,
    raise_as_part_failure,
)
from sdeplug.tensors import randn_like

#: Where likelihood integration starts unless told: 1e-5 for every SDE, as the paper's
#: likelihoods do (its get_likelihood_fn), while its sampling stops at 1e-3 for VP and
#: sub-VP (the SDEs' ``default_eps``). log p_eps at the two differs a lot on fine-scale data.
LIKELIHOOD_EPS = 1e-5

DataRange = Literal["none", "[0,1]", "[-1,1]"]
_RANGE_WIDTH = {"[0,1]": 1.0, "[-1,1]": 2.0}


@attrs.frozen
class LikelihoodResult:
    """log p_eps(x) per sample and its parts: the prior term, the divergence integral, the latent."""

    logp: Tensor
    prior_logp: Tensor
    delta_logp: Tensor
    z: Tensor
    nfe: int
    dim: int

    def bits_per_dim(self, data_range: DataRange = "none", levels: int = 256) -> Tensor:
        return bits_per_dim(self.logp, self.dim, data_range, levels)


def bits_per_dim(logp: Tensor, dim: int, data_range: DataRange = "none", levels: int = 256) -> Tensor:
    """-log p / (D ln 2), plus log2(levels / width) for dequantised data on ``levels`` levels.

    A bin of quantised data in a range of width w has width w / levels, so the probability
    of the discrete value is at least the density times (w / levels)^D: 8-bit data in
    [0, 1] add 8 bits per dimension, in [-1, 1] 7 (the paper's offsets).
    """
    _require_integer(dim, 1, "dim must be a positive integer (numbers per sample)")
    if data_range == "none":
        return -logp / (dim * math.log(2))
    _check_levels(levels)
    if data_range not in _RANGE_WIDTH:
        raise ValueError(f"data_range must be one of 'none', '[0,1]', '[-1,1]'; got {data_range!r}")
    return -logp / (dim * math.log(2)) + math.log2(levels / _RANGE_WIDTH[data_range])


def uniform_dequantize(
    x: Tensor, data_range: DataRange, generator: torch.Generator | None = None, levels: int = 256
) -> Tensor:
    """Turn data on ``levels`` evenly spaced values spanning [0, 1] (or [-1, 1]) into continuous data.

    Value k (of 0 .. levels - 1) becomes (k + u) / levels with u ~ U[0, 1), mapped to the
    same range, so the density of the result bounds the probability of the discrete data
    (the offset of ``bits_per_dim`` assumes exactly this). 8-bit images scaled by 1/255 use
    the default 256 levels.
    """
    if data_range not in _RANGE_WIDTH:
        raise ValueError(f"dequantisation needs data_range '[0,1]' or '[-1,1]'; got {data_range!r}")
    _check_levels(levels)
    unit = x if data_range == "[0,1]" else (x + 1) / 2
    k = torch.round(unit * (levels - 1))
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    out = (k + u) / levels
    return out if data_range == "[0,1]" else 2 * out - 1


def _require_integer(value: object, least: int, requirement: str) -> None:
    """A ValueError saying ``requirement`` unless value is an integer (not a bool) >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        raise ValueError(f"{requirement}; got {value!r}")


def _check_levels(levels: object) -> None:
    _require_integer(levels, 2, "levels must be an integer >= 2 (the data's quantisation levels)")


def _probes(x: Tensor, probes: int, noise: str, generator: torch.Generator | None) -> Tensor:
    shape = (probes, *x.shape)
    if noise == "rademacher":
        bits = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return bits.to(x.dtype) * 2 - 1
    if noise == "gaussian":
        return randn_like(torch.empty(shape, device=x.device, dtype=x.dtype), generator)
    raise ValueError(f"noise must be 'rademacher' or 'gaussian'; got {noise!r}")


def _batched_vjp_dot(out: Tensor, x: Tensor, vs: Tensor) -> Tensor:
    """sum over the event of v * (v^T dF/dx) for each v in vs (k, *x.shape): shape (k, batch).

    All k vector-Jacobian products run in one vmapped backward pass; a score network
    whose ops vmap cannot batch falls back to k sequential passes.
    """
    if vs.shape[0] == 1:
        vjps = torch.autograd.grad(out, x, grad_outputs=vs[0], retain_graph=True)[0][None]
        return (vjps * vs).reshape(1, vs.shape[1], -1).sum(-1)
    try:
        (vjps,) = torch.autograd.grad(out, x, grad_outputs=vs, retain_graph=True, is_grads_batched=True)
    except RuntimeError:
        vjps = torch.stack([torch.autograd.grad(out, x, grad_outputs=v, retain_graph=True)[0] for v in vs])
    return (vjps * vs).reshape(vs.shape[0], vs.shape[1], -1).sum(-1)


def _exact_divergence(out: Tensor, x: Tensor) -> Tensor:
    """Trace of dF/dx: the D diagonal entries from D basis-vector products."""
    batch, dim = x.shape[0], x[0].numel()
    basis = torch.eye(dim, device=x.device, dtype=x.dtype)[:, None, :].expand(dim, batch, dim).reshape(dim, *x.shape)
    return _batched_vjp_dot(out, x, basis).sum(0)


def _hutchinson_divergence(out: Tensor, x: Tensor, vs: Tensor) -> Tensor:
    """The mean of v^T (dF/dx) v over the probes vs, shape (batch,)."""
    return _batched_vjp_dot(out, x, vs).mean(0)


def log_likelihood(
    sde: SDE,
    score: ScoreFn,
    x: Tensor,
    *,
    solver: str | type[ODESolver] | ODESolver = "dopri5",
    solver_options: Mapping[str, Any] | None = None,
    eps: float | None = None,
    divergence: Literal["exact", "hutchinson"] = "exact",
    probes: int = 1,
    noise: Literal["rademacher", "gaussian"] = "rademacher",
    generator: torch.Generator | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    quadrature: int | None = None,
) -> LikelihoodResult:
    """log p_eps(x) per sample (nats) by the probability-flow ODE from eps (default
    ``LIKELIHOOD_EPS``, the paper's 1e-5, for every SDE) to T.

    ``solver`` is any ODESolver: a registered name or a class (options in ``solver_options``),
    or a built solver.
    ``divergence="exact"`` costs one backward pass per dimension; "hutchinson" costs
    ``probes`` passes and is unbiased. The terminal density is ``sde.prior_logp`` unless
    ``prior_logp`` is given: p_T is only close to the prior (for VE with sigma_max = 50,
    data of scale 1 shift log p by about 1e-2 nats per dimension), so a check against a
    closed form passes the exact log p_T here.

    ``quadrature=None`` integrates the divergence with the flow, at every stage of the solver
    (the paper's augmented ODE). ``quadrature=m`` solves the flow alone and then integrates
    the divergence by m-point Gauss-Legendre on each of the solver's accepted steps, all nodes
    in a few large batches: the divergence, the costly part, is evaluated at far fewer points.
    It needs a solver with dense output (``dense_output``, e.g. dopri5); see docs/evaluation.md.
    """
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson'; got {divergence!r}")
    _require_integer(probes, 1, "probes must be a positive integer")
    probes = int(probes)
    check_batch(x, "x")
    check_unbound(score)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf: a likelihood needs finite data")
    if divergence == "hutchinson":
        check_generator(generator, x.device)
    if quadrature is not None and (isinstance(quadrature, bool) or not isinstance(quadrature, int) or quadrature < 1):
        raise ValueError(f"quadrature must be None or a positive integer (Gauss nodes per step); got {quadrature!r}")
    ode_solver = resolve("ode_solver", solver, options=solver_options)
    if quadrature is not None and not getattr(ode_solver, "dense_output", False):
        raise ValueError(
            f"quadrature needs an ODE solver with dense output (such as dopri5); "
            f"{solver if isinstance(solver, str) else part_name(ode_solver)!r} has none: pass quadrature=None"
        )
    t_start = end_time(sde, LIKELIHOOD_EPS if eps is None else eps)
    batch, dim = x.shape[0], x[0].numel()
    counted = CountingScore(score)
    reverse = sde.reverse(counted, probability_flow=True)
    vs = _probes(x, probes, noise, generator) if divergence == "hutchinson" else None

    monitor = FiniteMonitor(("score model (the flow's drift or divergence)",), state="the likelihood ODE's derivative")

    def drift_and_divergence(xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """F and div F at (xt, t); xt may hold several copies of the batch (quadrature nodes)."""
        with torch.enable_grad():
            xt = xt.detach().requires_grad_(True)
            drift = reverse.drift(xt, t)
            if vs is None:
                div = _exact_divergence(drift, xt)
            else:
                copies = xt.shape[0] // batch
                tiled = vs if copies == 1 else vs.repeat(1, copies, *([1] * (x.dim() - 1)))
                div = _hutchinson_divergence(drift, xt, tiled)
        return drift.detach(), div.detach()

    def augmented(t: Tensor, y: Tensor) -> Tensor:
        i = counted.calls
        drift, div = drift_and_divergence(y[:, :dim].reshape(x.shape), t.expand(batch))
        dy = torch.cat([drift.reshape(batch, dim), div[:, None]], dim=1)
        monitor.check(dy, i, 0, t)
        return dy

    def flow(t: Tensor, y: Tensor) -> Tensor:
        i = counted.calls
        dy = reverse.drift(y, t.expand(batch))
        monitor.check(dy, i, 0, t)
        return dy

    def divergence_at(xt: Tensor, t: Tensor) -> Tensor:
        div = drift_and_divergence(xt, t)[1]
        monitor.check(div, counted.calls - 1, 0, t[0])
        return div

    y0 = torch.cat([x.detach().reshape(batch, dim), torch.zeros(batch, 1, device=x.device, dtype=x.dtype)], dim=1)
    try:
        if quadrature is None:
            y_end = ode_solver.solve(augmented, y0, t_start, sde.T).y
            z, delta = y_end[:, :dim].reshape(x.shape), y_end[:, dim]
            nfe = counted.calls
        else:
            solution = ode_solver.solve_dense(flow, x.detach(), t_start, sde.T)
            z = solution.y
            delta, nodes = _divergence_integral(
                solution, quadrature, divergence_at, batch, dim * (probes if vs is not None else dim)
            )
            nfe = counted.calls - nodes.calls + nodes.count
    except Exception as exc:  # e.g. torchdiffeq's "underflow in dt" after the state went non-finite
        monitor.raise_if_bad(lambda i: f"score evaluation {i}")
        raise_as_part_failure(exc, "ode_solver", ode_solver, "solve", t_start)
        raise
    monitor.raise_if_bad(lambda i: f"score evaluation {i}")
    prior = (prior_logp or sde.prior_logp)(z)
    if not isinstance(prior, Tensor) or prior.shape != (batch,):
        shape = tuple(prior.shape) if isinstance(prior, Tensor) else type(prior).__name__
        raise ValueError(f"prior_logp must return one log-density per sample, shape ({batch},); got {shape}")
    return LikelihoodResult(logp=prior + delta, prior_logp=prior, delta_logp=delta, z=z, nfe=nfe, dim=dim)


#: How many numbers the vector-Jacobian products of one batched divergence call may hold:
#: nodes are evaluated together up to this, so small problems run in a few large batches,
#: while large ones stay small enough for the CPU's caches (per node, larger calls were slower).
_NODE_BATCH_ELEMENTS = 2**16


@attrs.frozen
class _NodeCount:
    count: int  # quadrature nodes: each one evaluation of the batch
    calls: int  # score calls they took (several nodes per call)


def _divergence_integral(
    solution: DenseODESolution,
    points: int,
    divergence_at: Callable[[Tensor, Tensor], Tensor],
    batch: int,
    elements_per_sample: int,
) -> tuple[Tensor, _NodeCount]:
    """The integral of the divergence along the solved path: ``points``-point Gauss-Legendre on
    each accepted step (exact for polynomials of degree 2 points - 1 in t on the step)."""
    steps = solution.steps
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(points)
    unit_nodes = torch.as_tensor((unit_nodes + 1) / 2, dtype=steps.dtype, device=steps.device)
    unit_weights = torch.as_tensor(unit_weights / 2, dtype=steps.dtype, device=steps.device)
    widths = steps[1:] - steps[:-1]
    times = (steps[:-1, None] + widths[:, None] * unit_nodes).reshape(-1)
    weights = (widths[:, None] * unit_weights).reshape(-1)
    states, _ = solution.states_at(times)
    times, weights = times.to(states.dtype), weights.to(states.dtype)  # solvers may keep time in float64
    per_call = max(1, _NODE_BATCH_ELEMENTS // max(1, batch * elements_per_sample))
    total, calls = torch.zeros(batch, dtype=states.dtype, device=states.device), 0
    for start in range(0, times.numel(), per_call):
        chunk = slice(start, start + per_call)
        k = states[chunk].shape[0]
        div = divergence_at(states[chunk].reshape(k * batch, *states.shape[2:]), times[chunk].repeat_interleave(batch))
        total = total + (weights[chunk, None] * div.reshape(k, batch)).sum(0)
        calls += 1
    return total, _NodeCount(count=times.numel(), calls=calls)
