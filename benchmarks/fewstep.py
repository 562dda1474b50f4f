"""Few-step sampling on mixtures no sampler or tuner was developed on: 3 to 10 score evaluations.

A family of random 8-component Gaussian mixtures spanning easy to hard (each component's
standard deviations log-uniform in [0.05, 0.5], its mean drawn with a spread of 1 to 4 per
coordinate, random rotations, unequal weights), d = 2, 16 and 64, each mixture drawn with a
fresh seed the benchmark prints. For each mixture and SDE (VE, VP), UniPC and UniPC after a
free Gaussian first step (``gaussian_start``, with the mixture's mean and covariance) run on
the log-SNR grid and on grids tuned for every budget at once (``tune_grids``: 256 pilot draws
and 256 validation draws, none of them used to judge). Each sampling seed is judged on its own:
the energy distance (V-statistic) of n samples to n fresh true samples, divided by the mean
noise floor (the same statistic between two true sets; its mean and standard deviation over 8
pairs are shown). A cell is **bold** where every seed is within two floor standard deviations of
the floor's mean, and the summary counts, per budget, the mixtures and seeds at the floor.

It also checks the tuner's objective: for every tuning, whether its candidate grids rank the
same way by the tuned-for quantity on the validation draws as by the energy distance of
their samples (the fraction of concordant pairs).

    python benchmarks/fewstep.py [--seed S] [--n 4000] [--seeds 3] [--mixtures 2] [--quick] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
import warnings
from pathlib import Path

import torch
from report import replace_section  # benchmarks/report.py: scripts run from this folder
from sampling import machine

import sdeplug
from sdeplug.grid_tuning import BudgetOrderWarning, tune_grids
from sdeplug.oracle import GaussianMixture
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.stats import energy_distance

F64 = torch.float64
BUDGETS = (3, 4, 5, 6, 8, 10)
HEADING = "## Sampling: few steps, tuned grids"
SAMPLERS = {
    "unipc": "UniPC",
    "gaussian_start": "UniPC after a free Gaussian step",
}


def hard_mixture(dim: int, seed: int, components: int = 8) -> GaussianMixture:
    """A mixture of the benchmark's family: narrow to broad components, close to far apart."""
    g = torch.Generator().manual_seed(seed)
    weights = 0.5 + torch.rand(components, generator=g, dtype=F64)
    spread = 1 + 3 * torch.rand((), generator=g, dtype=F64)
    means = spread * torch.randn(components, dim, generator=g, dtype=F64)
    log_std = math.log(0.05) + (math.log(0.5) - math.log(0.05)) * torch.rand(components, dim, generator=g, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=F64))
    covs = q @ torch.diag_embed(torch.exp(2 * log_std)) @ q.transpose(-1, -2)
    mixture = GaussianMixture(weights, means, covs=covs)
    mixture.spread = float(spread)  # for the report
    return mixture


def options_for(sampler: str, mixture) -> tuple[str, dict]:
    if sampler == "gaussian_start":
        return "gaussian_start", {"moments": mixture.moments()}
    return sampler, {}


def steps_for(sampler: str, nfe: int) -> int:
    """gaussian_start's first step is free: K + 1 steps spend K evaluations."""
    return nfe + 1 if sampler == "gaussian_start" else nfe


def sample(sde, score, sampler, options, grid, steps, n, dim, seed) -> torch.Tensor:
    return sample_pc(
        sde, score, (n, dim), predictor=sampler, predictor_options=options, corrector="none", grid=grid,
        steps=steps, denoise=False, generator=torch.Generator().manual_seed(seed), dtype=F64,
    ).x  # fmt: skip


def judge(x: torch.Tensor, mixture, seed: int) -> float:
    if not torch.isfinite(x).all():
        return math.inf
    return energy_distance(x, mixture.sample(len(x), torch.Generator().manual_seed(50_000 + seed)), unbiased=False)


def noise_floor(mixture, n: int, pairs: int = 8) -> tuple[float, float]:
    g = torch.Generator().manual_seed(90_000)
    values = [energy_distance(mixture.sample(n, g), mixture.sample(n, g), unbiased=False) for _ in range(pairs)]
    return statistics.fmean(values), statistics.stdev(values)


def checking_draws(sde, score, dim: int, count: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior draws of their own and their accurate solves, to compare objectives on."""
    x_T = sde.prior_sampling((count, dim), torch.Generator().manual_seed(70_000), None, F64)
    solve = sample_ode(
        sde, score, x_init=x_T, solver="dopri5", solver_options={"rtol": 1e-7, "atol": 1e-7}, denoise=False
    )
    return x_T, solve.x


def concordance(objective: list[float], quality: list[float]) -> tuple[int, int]:
    """Pairs ranked the same way by both lists, and all pairs with distinct values in both."""
    same = total = 0
    for i in range(len(objective)):
        for j in range(i + 1, len(objective)):
            a, b = objective[i] - objective[j], quality[i] - quality[j]
            if a != 0 and b != 0 and math.isfinite(a) and math.isfinite(b):
                total += 1
                same += (a > 0) == (b > 0)
    return same, total


def run(seed: int, n: int, seeds: int, per_dim: int, quick: bool, pilot: int = 256, sweeps: int = 4, dims=None) -> str:
    budgets = (3, 4, 5, 8) if quick else BUDGETS
    dims = dims or ((2, 16) if quick else (2, 16, 64))
    rng = random.Random(seed)
    lines: list[str] = []
    #: (dim, sampler, grid, budget) -> [at floor?] over mixtures, SDEs and seeds
    reached: dict[tuple, list[bool]] = {}
    ratios: dict[tuple, list[float]] = {}
    agree = {"distance": [0, 0], "rms": [0, 0]}
    costs = []
    for dim in dims:
        for _ in range(per_dim):
            mixture_seed = rng.randrange(1_000_000)
            mixture = hard_mixture(dim, mixture_seed)
            floor_mean, floor_std = noise_floor(mixture, n)
            for sde_name in ("ve", "vp"):
                sde = sdeplug.create("sde", sde_name)
                score = mixture.score_model(sde)
                x_T, reference = checking_draws(sde, score, dim)
                lines.append(
                    f"\n**d = {dim}, mixture seed {mixture_seed} (mean spread {mixture.spread:.2f}), "
                    f"{sde_name.upper()}**: floor {floor_mean:.3e} (std {floor_std:.1e}, "
                    f"{floor_std / floor_mean:.0%} of the mean)\n"
                )
                lines.append("| sampler | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
                lines.append("|---|---|" + "---|" * len(budgets))
                for sampler, label in SAMPLERS.items():
                    name, options = options_for(sampler, mixture)
                    started = time.perf_counter()
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", BudgetOrderWarning)
                        tuned = tune_grids(
                            sde, score, dim, [steps_for(sampler, b) for b in budgets], predictor=name,
                            predictor_options=options, pilot=pilot, sweeps=sweeps, seed=rng.randrange(1_000_000),
                            objective="distance",
                        )  # fmt: skip
                    seconds = time.perf_counter() - started
                    for result in tuned:
                        costs.append((result.score_evaluations * pilot, result.steps, seconds / len(tuned)))
                    order_warnings = sum(issubclass(w.category, BudgetOrderWarning) for w in caught)
                    for grid_kind in ("logsnr", "tuned"):
                        cells = []
                        for b, result in zip(budgets, tuned):
                            grid = "logsnr" if grid_kind == "logsnr" else result
                            steps = steps_for(sampler, b)
                            values = [
                                judge(sample(sde, score, name, options, grid, steps, n, dim, s), mixture, s)
                                / floor_mean
                                for s in range(seeds)
                            ]
                            at = [v <= 1 + 2 * floor_std / floor_mean for v in values]
                            reached.setdefault((dim, sampler, grid_kind, b), []).extend(at)
                            ratios.setdefault((dim, sampler, grid_kind, b), []).extend(values)
                            text = " / ".join("inf" if not math.isfinite(v) else f"{v:.2f}" for v in values)
                            cells.append(f"**{text}**" if all(at) else text)
                        suffix = (
                            f" ({order_warnings} budget-order warnings)"
                            if grid_kind == "tuned" and order_warnings
                            else ""
                        )
                        lines.append(f"| {label} | {grid_kind}{suffix} | " + " | ".join(cells) + " |")
                        print(lines[-1], flush=True)
                    # Do the two objectives rank the candidates as their samples' energy distance does?
                    for result in tuned:
                        quality, by = [], {"distance": [], "rms": []}
                        for c in result.candidates:
                            grid = sdeplug.create("time_grid", "tuned", fractions=list(c.fractions))
                            x = sample(sde, score, name, options, grid, result.steps, n, dim, 0)
                            quality.append(judge(x, mixture, 0))
                            x = sample_pc(
                                sde, score, predictor=name, predictor_options=options, corrector="none", grid=grid,
                                steps=result.steps, denoise=False, x_init=x_T,
                            ).x  # fmt: skip
                            per_sample = ((x - reference) ** 2).sum(1) / dim
                            by["distance"].append(float(per_sample.sqrt().mean()))
                            by["rms"].append(float(per_sample.mean().sqrt()))
                        for objective, values in by.items():
                            same, total = concordance(values, quality)
                            agree[objective][0] += same
                            agree[objective][1] += total
    return _report(lines, reached, ratios, agree, costs, budgets, dims, seeds, per_dim, seed, n, pilot, sweeps)


def _report(lines, reached, ratios, agree, costs, budgets, dims, seeds, per_dim, seed, n, pilot, sweeps) -> str:
    head = [
        f"n = {n} samples per set; {per_dim} mixtures per dimension drawn from the family with seed {seed}; "
        f"{seeds} sampling seeds per cell, each shown (energy distance / the floor's mean); **bold**: every "
        "seed within two floor standard deviations of the floor. *tuned*: `tune_grids` over all the budgets "
        f"at once ({pilot} pilot + {pilot} validation draws, at most {sweeps} sweeps, a seed of its own, never the "
        "judged draws). "
        "`gaussian_start` spends K evaluations on K + 1 steps.\n",
        "**At the floor** (mixtures x SDEs x seeds at the floor, out of all):\n",
        "| d | sampler | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    for dim in dims:
        for sampler, label in SAMPLERS.items():
            for grid_kind in ("logsnr", "tuned"):
                cells = []
                for b in budgets:
                    hits = reached[(dim, sampler, grid_kind, b)]
                    worst = max(ratios[(dim, sampler, grid_kind, b)])
                    cells.append(f"{sum(hits)} of {len(hits)} (worst {worst:.3g}x)")
                head.append(f"| {dim} | {label} | {grid_kind} | " + " | ".join(cells) + " |")
    evaluations = sorted(c[0] for c in costs)
    per_budget = {}
    for sample_evaluations, steps, _ in costs:
        per_budget.setdefault(steps, []).append(sample_evaluations)
    cost_lines = ", ".join(
        f"{k} steps: median {statistics.median(v) / 1e3:.0f}k ({statistics.median(v) / (10_000 * k):.1f}x sampling "
        f"10 000 samples at {k} steps)"
        for k, v in sorted(per_budget.items())
    )
    rates = {k: f"{same} of {total} pairs ({same / max(total, 1):.0%})" for k, (same, total) in agree.items()}
    tail = [
        "",
        f"Tuning cost in score evaluations of one sample (per budget, its share of the pilot and validation "
        f"reference solves included): {cost_lines}; overall median {statistics.median(evaluations) / 1e3:.0f}k.",
        "",
        "Do the candidate grids of each tuning rank the same way by the pathwise error to an accurate solve "
        "(512 prior draws of their own) as by their samples' energy distance? Mean distance (the tuner's "
        f"default objective): {rates['distance']}; RMS distance: {rates['rms']}.",
    ]
    return "\n".join(head + lines + tail) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="seed of the mixture family's draws (default: drawn, and printed)")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3, help="sampling seeds per cell, each judged on its own")
    parser.add_argument("--mixtures", type=int, default=2, help="mixtures per dimension")
    parser.add_argument("--quick", action="store_true", help="d = 2 and 16, four budgets, for a smoke run")
    parser.add_argument("--pilot", type=int, default=256, help="pilot draws of each tuning (as many validate)")
    parser.add_argument("--sweeps", type=int, default=4, help="most coordinate-descent sweeps of each search")
    parser.add_argument("--dims", type=int, nargs="+", help="dimensions (default: 2, 16 and 64)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10_000)
    print(f"mixtures drawn with seed {seed} (rerun with --seed {seed})", flush=True)
    quick = " --quick" if args.quick else ""
    options = f"--seed {seed} --n {args.n} --seeds {args.seeds} --mixtures {args.mixtures}{quick}"
    if args.pilot != 256 or args.sweeps != 4:
        options += f" --pilot {args.pilot} --sweeps {args.sweeps}"
    if args.dims:
        options += " --dims " + " ".join(map(str, args.dims))
    command = f"`python benchmarks/fewstep.py {options} --write docs/benchmarks.md`"
    body = f"Command: {command} (or `make bench`, with a new seed). Machine: {machine()}.\n\n" + run(
        seed, args.n, args.seeds, args.mixtures, args.quick, args.pilot, args.sweeps, tuple(args.dims or ())
    )
    print(body)
    if args.write:
        replace_section(args.write, HEADING, f"{HEADING}\n\n{body}\n")


if __name__ == "__main__":
    main()
