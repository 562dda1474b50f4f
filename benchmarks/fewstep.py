"""Few-step sampling: quality against 3 to 10 score evaluations, with and without tuned grids.

Every fast sampler on its default grid and, if it is deterministic, on a grid tuned for it
(``sdeplug.grid_tuning``, 256 pilot draws, a seed of its own), UniPC after a free Gaussian
first step with each mixture's mean and covariance (``gaussian_start``) among them, on the
bundled mixtures and on random mixtures drawn afresh with a seed the benchmark prints (2-D
and 16-D, VE and VP), so that nothing is tuned to one mixture. Quality is the energy
distance of n samples to n fresh true samples, over several seeds, divided by the noise
floor (the same statistic between two true sets); a cell is **bold** where it is within
two standard errors of the floor.

    python benchmarks/fewstep.py [--seed S] [--n 4000] [--reps 4] [--quick] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from pathlib import Path

import torch
from report import replace_section  # benchmarks/report.py: scripts run from this folder
from sampling import DEFAULT_GRID, SAMPLERS, floor, machine, quality, reaches

import sdeplug
from sdeplug.grid_tuning import tune_grid
from sdeplug.oracle import preset, random_mixture

F64 = torch.float64
BUDGETS = (3, 4, 5, 6, 8, 10)
FAST = ("unipc", "gaussian_start", "dpmpp_3m", "dpmpp_2m", "edm_heun", "sde_dpmpp_2m")
GRID = {**DEFAULT_GRID, "gaussian_start": "logsnr"}
#: Samplers that draw noise: a grid is tuned for deterministic ones only.
STOCHASTIC = ("sde_dpmpp_2m",)
HEADING = "## Sampling: few steps, tuned grids"


def spec_for(sampler: str, mixture) -> tuple:
    """How a sampler runs on this mixture: gaussian_start takes a free first step with the
    mixture's mean and covariance (what ``sdeplug moments`` computes from training data)."""
    if sampler != "gaussian_start":
        return SAMPLERS[sampler]
    options = {"predictor": "gaussian_start", "predictor_options": {"moments": mixture.moments()}, "free_steps": 1}
    return ("UniPC after a free Gaussian step (data moments)", "pc", 1, options)


def mixtures(seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    k2, k16 = rng.randint(3, 9), rng.randint(3, 9)
    return {
        "ring8 (2-D, bundled)": preset("ring8"),
        "blobs16 (16-D, bundled)": preset("blobs16"),
        f"random 2-D, {k2} components (seed {seed})": random_mixture(2, k2, seed=seed),
        f"random 16-D, {k16} components (seed {seed + 1})": random_mixture(16, k16, seed=seed + 1),
    }


def run(seed: int, n: int, reps: int, quick: bool) -> str:
    budgets = (3, 5, 8) if quick else BUDGETS
    lines = [
        f"n = {n} samples, {reps} seeds; each cell is energy distance / noise floor, **bold** within two "
        "standard errors of the floor; a sampler spends at most the column's NFE (EDM Heun, two per step, "
        "spends the even number below an odd budget). *tuned*: the default grid tuned for that sampler, "
        f"NFE and problem by `tune_grid` (256 pilot draws, seed 7). Random mixtures drawn with seed {seed}.\n"
    ]
    summary = [
        "| problem | SDE | sampler | fewest NFE at the floor, default grid | tuned grid |",
        "|---|---|---|---|---|",
    ]
    tuning_cost = []
    for label, mixture in mixtures(seed).items():
        mixture = mixture.to(F64)
        fl = floor(mixture, n, 8)
        for sde_name in ("ve", "vp"):
            sde = sdeplug.create("sde", sde_name)
            score = mixture.score_model(sde)
            lines.append(f"\n**{label}, {sde_name.upper()}** (floor {fl[0]:.2e} +- {fl[1]:.1e})\n")
            lines.append("| sampler | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
            lines.append("|---|---|" + "---|" * len(budgets))
            for sampler in FAST:
                spec = spec_for(sampler, mixture)
                label_of_sampler, _, per_step, spec_options = spec
                default = GRID[sampler]
                best = {"default": None, "tuned": None}
                rows = {"default": [], "tuned": []}
                kinds = ("default",) if sampler in STOCHASTIC else ("default", "tuned")
                for b in budgets:
                    steps = b // per_step + spec_options.get("free_steps", 0)
                    for kind in kinds:
                        grid = default
                        if kind == "tuned":
                            options = spec_options.get("predictor_options", {})
                            start = time.perf_counter()
                            tuned = tune_grid(
                                sde,
                                score,
                                (mixture.dim,),
                                steps,
                                predictor=spec_options["predictor"],
                                predictor_options=options,
                                start=default,
                                pilot=256,
                                seed=7,
                            )
                            tuning_cost.append((tuned.score_evaluations, time.perf_counter() - start))
                            grid = sdeplug.create("time_grid", "tuned", fractions=list(tuned.fractions))
                        mean, se = quality(sampler, sde, mixture, n, b, grid, reps, spec=spec)
                        ok = reaches(mean, se, fl)
                        if ok and best[kind] is None:
                            best[kind] = b
                        cell = "diverged" if not math.isfinite(mean) else f"{mean / fl[0]:.2f}"
                        rows[kind].append(f"**{cell}**" if ok else cell)
                for kind in kinds:
                    name = default if kind == "default" else f"{default}, tuned"
                    lines.append(f"| {label_of_sampler} | {name} | " + " | ".join(rows[kind]) + " |")
                    print(lines[-1], flush=True)
                summary.append(
                    f"| {label} | {sde_name.upper()} | {label_of_sampler} | "
                    f"{best['default'] or f'> {budgets[-1]}'} | "
                    + (
                        "(draws noise: not tuned)"
                        if sampler in STOCHASTIC
                        else f"{best['tuned'] or f'> {budgets[-1]}'}"
                    )
                    + " |"
                )
    evaluations = [e for e, _ in tuning_cost]
    seconds = [s for _, s in tuning_cost]
    cost = (
        f"\nTuning cost per grid (one sampler, one NFE, one problem; batches of 256 pilot draws, the two dopri5 "
        f"reference solves included): median {statistics.median(evaluations):.0f} score evaluations "
        f"(max {max(evaluations)}), median {statistics.median(seconds):.2f} s (max {max(seconds):.2f} s) "
        f"on this machine.\n"
    )
    return (
        "\n".join(lines)
        + "\n"
        + cost
        + "\nThe fewest NFE at which each sampler reaches the floor:\n\n"
        + "\n".join(summary)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, help="seed of the random mixtures (default: drawn, and printed)")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="three budgets only, for a smoke run")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10_000)
    print(f"random mixtures drawn with seed {seed} (rerun with --seed {seed})", flush=True)
    quick = " --quick" if args.quick else ""
    options = f"--seed {seed} --n {args.n} --reps {args.reps}{quick}"
    command = f"`python benchmarks/fewstep.py {options} --write docs/benchmarks.md`"
    body = f"Command: {command} (or `make bench`, with a new seed). Machine: {machine()}.\n\n" + run(
        seed, args.n, args.reps, args.quick
    )
    print(body)
    if args.write:
        replace_section(args.write, HEADING, f"{HEADING}\n\n{body}\n")


if __name__ == "__main__":
    main()
