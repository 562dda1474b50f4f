"""Likelihood accuracy and speed: sdeplug against the paper's method, on the same data and score.

The baseline is written the way score_sde_pytorch's likelihood.py does it: scipy's
RK45 (rtol = atol = 1e-5) on a flat numpy state, a round trip from numpy to torch and
back at every evaluation, one Rademacher Hutchinson probe drawn once per solve, and, as
its ode_func does, the drift from one forward pass and the divergence from a second
forward pass with its backward. A second baseline fuses the two (one forward pass per
evaluation), the fastest the paper's method can be written. sdeplug runs torchdiffeq's
dopri5 on the tensor's own device with the same tolerances, with the exact divergence and
with the same one-probe estimator.

Errors are per sample, in nats per dimension, against the oracle's exact log p_eps(x):
"total" with the SDE's prior as the terminal density (what a user gets), "ODE" with
the exact log p_T(z) instead (the solver and divergence alone).

    python benchmarks/likelihood.py [--n 256] [--rounds 9] [--device cuda] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
from report import replace_section  # benchmarks/report.py: scripts run from this folder
from scipy import integrate
from torch.func import jvp, vmap

import sdeplug
from sdeplug.likelihood import LIKELIHOOD_EPS, _exact_divergence, _hutchinson_divergence, log_likelihood
from sdeplug.oracle import preset, random_mixture


def paper_baseline(
    sde, score, x: torch.Tensor, eps: float, seed: int, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """log p_eps(x) as score_sde_pytorch computes it: scipy RK45 and one Hutchinson probe.

    Its ode_func calls drift_fn (a forward pass) and div_fn (another forward pass, with the
    backward pass) at every evaluation; ``fused`` takes both from one forward pass instead.
    """
    shape, n, device = x.shape, x.shape[0], x.device
    g = torch.Generator().manual_seed(seed)
    probe = (torch.randint(0, 2, shape, generator=g).to(x.dtype) * 2 - 1).to(device)

    def drift_fn(xt, t):
        g2 = sde.diffusion(t)[:, None] ** 2
        return sde.drift(xt, t) - 0.5 * g2 * score(xt, t)

    def drift_and_div(xt, t):
        with torch.enable_grad():
            xt = xt.requires_grad_(True)
            drift = drift_fn(xt, t)
            (grad,) = torch.autograd.grad((drift * probe).sum(), xt)
        return drift.detach(), (grad * probe).reshape(n, -1).sum(1)

    def ode_func(t, state):
        sample = torch.from_numpy(state[:-n].reshape(shape)).to(device=device, dtype=x.dtype)
        vec_t = torch.ones(n, device=device, dtype=x.dtype) * t
        if fused:
            drift, div = drift_and_div(sample, vec_t)
        else:
            drift = drift_fn(sample, vec_t)
            div = drift_and_div(sample, vec_t)[1]
        return np.concatenate([drift.cpu().numpy().reshape(-1), div.cpu().numpy()])

    init = np.concatenate([x.cpu().numpy().reshape(-1), np.zeros(n)])
    with torch.no_grad():
        solution = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=1e-5, atol=1e-5, method="RK45")
    final = torch.from_numpy(solution.y[:, -1]).to(device=device, dtype=x.dtype)
    z = final[:-n].reshape(shape)
    return sde.prior_logp(z) + final[-n:], z, solution.nfev


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_together(methods: dict, rounds: int, device: torch.device) -> dict:
    """Each method's output and wall times over ``rounds`` rounds that run every method in
    turn, so that a slow spell of the machine falls on all of them alike."""
    outputs, times = {}, {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            synchronize(device)
            start = time.perf_counter()
            outputs[name] = fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: (outputs[name], times[name]) for name in methods}


PAPER = "paper: scipy RK45, 1 Hutchinson probe"
PAPER_FUSED = "paper's method, drift and divergence from one forward pass"
EXACT_GAUSS3 = "sdeplug: dopri5 flow, exact divergence by 3-point Gauss per step"


def run(n: int, rounds: int, device: torch.device) -> list[dict]:
    rows = []
    problems = [("2-D mixture3", preset("mixture3")), ("16-D blobs16", random_mixture(16, 4, seed=1))]
    for label, mixture in problems:
        for sde_name in ("vp", "ve"):
            sde = sdeplug.create("sde", sde_name)
            eps = LIKELIHOOD_EPS  # the paper's likelihood eps, for the baseline and sdeplug alike
            x = mixture.sample(n, torch.Generator().manual_seed(0), sde, eps).to(device)
            mixture = mixture.to(device)
            score = mixture.score_model(sde)
            exact = mixture.log_prob(x, torch.full((n,), eps, dtype=x.dtype), sde)
            d = x[0].numel()

            def terminal(z, sde=sde, mixture=mixture):
                return mixture.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=z.dtype), sde)

            options = {"rtol": 1e-5, "atol": 1e-5}
            methods = {
                PAPER: lambda sde=sde, score=score, x=x, eps=eps: paper_baseline(sde, score, x, eps, seed=1),
                PAPER_FUSED: lambda sde=sde, score=score, x=x, eps=eps: paper_baseline(
                    sde, score, x, eps, seed=1, fused=True
                ),
                "sdeplug: dopri5, 1 Hutchinson probe": lambda sde=sde, score=score, x=x, options=options: _ours(
                    sde, score, x, options, "hutchinson"
                ),
                "sdeplug: dopri5, exact divergence": lambda sde=sde, score=score, x=x, options=options: _ours(
                    sde, score, x, options, "exact"
                ),
                EXACT_GAUSS3: (
                    lambda sde=sde, score=score, x=x, options=options: _ours(sde, score, x, options, "exact", 3)
                ),
                "sdeplug: dopri5 flow, exact divergence by 4-point Gauss per step": (
                    lambda sde=sde, score=score, x=x, options=options: _ours(sde, score, x, options, "exact", 4)
                ),
            }
            timed = timed_together(methods, rounds, device)
            written, fused = timed[PAPER][0][0], timed[PAPER_FUSED][0][0]
            assert torch.allclose(written, fused, rtol=1e-12, atol=1e-12), "the two baselines compute the same thing"
            for method, ((logp, z, nfe), times) in timed.items():
                ode_logp = logp - sde.prior_logp(z) + terminal(z)
                rows.append(
                    {
                        "problem": f"{label}, {sde_name.upper()}",
                        "method": method,
                        "total": float((logp - exact).abs().mean()) / d,
                        "ode": float((ode_logp - exact).abs().mean()) / d,
                        "ode_max": float((ode_logp - exact).abs().max()) / d,
                        "nfe": nfe,
                        "seconds": min(times),
                        "speedup": min(timed[PAPER][1]) / min(times),
                        "times": times,
                    }
                )
    return rows


def _ours(sde, score, x, options, divergence, quadrature=None):
    result = log_likelihood(
        sde,
        score,
        x,
        solver="dopri5",
        solver_options=options,
        divergence=divergence,
        generator=torch.Generator(x.device).manual_seed(1),
        quadrature=quadrature,
    )
    return result.logp.detach(), result.z, result.nfe


def _divergence_ways(drift, x: torch.Tensor, t: torch.Tensor) -> dict:
    """Ways to get the divergence of ``drift`` at (x, t): one probe, and three exact ones."""
    n, d = x.shape
    probe = torch.ones(1, n, d, device=x.device, dtype=x.dtype)
    basis = torch.eye(d, device=x.device, dtype=x.dtype)[:, None, :].expand(d, n, d)

    def with_graph(divergence):
        def run():
            with torch.enable_grad():
                xt = x.detach().requires_grad_(True)
                return divergence(drift(xt, t), xt)

        return run

    def replicated():
        with torch.enable_grad():
            xr = x.repeat(d, 1).requires_grad_(True)
            (grad,) = torch.autograd.grad(drift(xr, t.repeat(d)), xr, grad_outputs=basis.reshape(d * n, d))
        return (grad * basis.reshape(d * n, d)).sum(1).reshape(d, n).sum(0)

    def forward_mode():
        _, tangents = vmap(lambda v: jvp(lambda xx: drift(xx, t), (x,), (v,)))(basis)
        return (tangents * basis).sum(-1).sum(0)

    return {
        "1 Hutchinson probe (one backward pass)": with_graph(lambda out, xt: _hutchinson_divergence(out, xt, probe)),
        "exact: vmapped backward over the D basis vectors (sdeplug)": with_graph(_exact_divergence),
        "exact: the batch replicated D times, one backward": replicated,
        "exact: vmapped forward mode (jvp) over the basis": forward_mode,
    }


def divergence_costs(n: int, device: torch.device) -> str:
    """Milliseconds per evaluation of the drift and its divergence in 16-D, by each way."""
    torch.manual_seed(0)
    d = 16
    mixture = random_mixture(d, 4, seed=1)
    sde = sdeplug.create("sde", "ve")
    x = mixture.sample(n, torch.Generator().manual_seed(0), sde, 0.3).to(device)
    mixture = mixture.to(device)
    t = torch.full((n,), 0.3, device=device)
    drifts = {"oracle score (the table above)": sde.reverse(mixture.score_model(sde), probability_flow=True).drift}
    for width in (64, 256, 1024):
        net = torch.nn.Sequential(
            torch.nn.Linear(d + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, d),
        ).to(device)
        drifts[f"MLP 2 x {width}"] = lambda x, t, net=net: net(torch.cat([x, t[:, None]], 1))
    lines = [
        f"\nPer evaluation, {n} samples in 16-D, float64 (best of 20, milliseconds); the three exact ways agree to "
        "1e-13. Ratios to one Hutchinson probe in brackets.\n",
        "| drift | " + " | ".join(_divergence_ways(lambda x, t: x, x, t)) + " |",
        "|---|" + "---|" * 4,
    ]
    for label, drift in drifts.items():
        ways = _divergence_ways(drift, x, t)
        exact = [fn() for name, fn in ways.items() if name.startswith("exact")]
        assert all(torch.allclose(e, exact[0], rtol=1e-10, atol=1e-10) for e in exact)
        times = []
        for fn in ways.values():
            best = math.inf
            for _ in range(20):
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                best = min(best, time.perf_counter() - start)
            times.append(best * 1e3)
        cells = [f"{ms:.2f} ({ms / times[0]:.1f}x)" for ms in times]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def table(rows: list[dict], n: int, rounds: int) -> str:
    lines = [
        f"Per-sample |log p - exact log p_eps| in nats per dimension (mean over {n} exact samples of p_eps,",
        f"and the worst sample for the ODE error), and wall time for the whole batch (best of {rounds} rounds,",
        "each running every method of the problem in turn). NFE counts evaluations of the whole batch: with a",
        "quadrature, the flow's solve plus one per Gauss node, where the divergence is taken (the states at",
        "the nodes come from the solver's dense output, without evaluations).",
        "",
        "| problem | method | total error | ODE error (mean / max) | NFE | seconds | speed-up vs paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['total']:.2e} | {r['ode']:.2e} / {r['ode_max']:.2e} | "
            f"{r['nfe']} | {r['seconds']:.3f} | {r['speedup']:.1f}x |"
        )
    return "\n".join(lines)


def exact_cost_table(rows: list[dict]) -> str:
    """The exact run's cost (3-point Gauss) in units of each one-probe baseline: the median of the
    rounds' ratios, each round timing both back to back, and the middle half of those ratios."""
    lines = [
        "\nCost of the exact likelihood (3-point Gauss per step) in units of a one-probe run: per round, "
        "the exact run's time over the baseline's in the same round; the median, and the middle half of "
        "the rounds (the machine's noise).\n",
        "| problem | / paper's code as written | / paper's method, one forward pass per evaluation |",
        "|---|---|---|",
    ]
    by_problem: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        by_problem.setdefault(r["problem"], {})[r["method"]] = r["times"]
    for problem, times in by_problem.items():
        cells = []
        for baseline in (PAPER, PAPER_FUSED):
            ratios = np.array(times[EXACT_GAUSS3]) / np.array(times[baseline])
            low, median, high = np.quantile(ratios, [0.25, 0.5, 0.75])
            cells.append(f"{median:.2f} ({low:.2f} to {high:.2f})")
        lines.append(f"| {problem} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="samples per problem")
    parser.add_argument("--rounds", type=int, default=9, help="timing rounds, each running every method")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda (its section is written apart)")
    parser.add_argument("--write", type=Path, help="markdown file whose likelihood section is (re)written")
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    device = torch.device(args.device)
    rows = run(args.n, args.rounds, device)
    text = table(rows, args.n, args.rounds) + "\n" + exact_cost_table(rows) + divergence_costs(args.n, device)
    print(text)
    if args.write:
        on_cpu = device.type == "cpu"
        machine = (
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, " + ("CPU" if on_cpu else torch.cuda.get_device_name(device))
        )
        heading = "## Likelihood" if on_cpu else f"## Likelihood on {device.type.upper()}"
        section = (
            f"{heading}: sdeplug against the paper's method\n\n"
            f"Command: `python benchmarks/likelihood.py --n {args.n} --rounds {args.rounds} "
            + ("" if on_cpu else f"--device {args.device} ")
            + "--write docs/benchmarks.md`"
            + (" (or `make bench`)" if on_cpu else "")
            + f". Machine: {machine}. float64, oracle score, rtol = atol = 1e-5 for every solver, "
            f"integration from eps = {LIKELIHOOD_EPS:g} for every SDE (the paper's likelihood eps, and "
            "`log_likelihood`'s default).\n\n" + text + "\n"
        )
        replace_section(args.write, heading, section)


if __name__ == "__main__":
    main()
