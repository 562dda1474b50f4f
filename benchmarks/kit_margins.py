"""How far correct predictors sit from the testing kit's law-check threshold and one-step bound,
and how far a wrong one lands past the law check's.

The kit's law check samples its three-component mixture in 500 steps from exact samples of
p_T with the exact score, and fails above 5 null standard deviations of the energy distance
(the null exact: mean 0, variance from the mixture's distance variance). This measures the
statistic in null standard deviations for every bundled predictor on every bundled SDE, over
three sampling seeds, and for the same predictors given a score 20% too weak. The one-step
check (one step of log-SNR 0.1 from exact samples of Gaussian p_t must give p_t_next's mean and
variance within 5%) is measured for every bundled predictor, option set and SDE.

    python benchmarks/kit_margins.py [--part law|one-step] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import machine, replace_section  # noqa: E402

import sdeplug  # noqa: E402
from sdeplug.sampling import sample_pc  # noqa: E402
from sdeplug.stats import assert_same_law  # noqa: E402
from sdeplug.testing.kit_base import _accepted, _default_sdes, _mixture_and_null  # noqa: E402
from sdeplug.testing.predictor_contract import ONE_STEP_TOLERANCE, one_step_errors  # noqa: E402

SEEDS = (0, 1, 2)
ONE_STEP_SEEDS = (1, 2, 3)
STEPS = 500
THRESHOLD = 5.0


def law_z(predictor: str, sde, seed: int, score_scale: float = 1.0) -> float:
    """The law check's statistic in null standard deviations, for one predictor, SDE and seed."""
    mixture, null = _mixture_and_null()
    exact = mixture.score_model(sde)
    g = torch.Generator().manual_seed(seed)
    x = sample_pc(
        sde,
        exact if score_scale == 1.0 else (lambda x, t: score_scale * exact(x, t)),
        predictor=predictor,
        corrector="none",
        steps=STEPS,
        x_init=mixture.sample(null.n, g, sde, sde.T),
        generator=g,
        dtype=torch.float64,
    ).x
    fresh = torch.Generator().manual_seed(seed)  # the true set compared against, fresh per seed
    return assert_same_law(x, lambda k, gen: mixture.sample(k, gen), null=null, z=float("inf"), generator=fresh).z_score


def law_section(sdes: list, predictors: list[str]) -> str:
    rows = []
    for predictor in predictors:
        for scale, what in ((1.0, "exact"), (0.8, "0.8 x exact")):
            cells = []
            for sde in sdes:
                zs = [law_z(predictor, sde, seed, scale) for seed in SEEDS]
                cells.append(f"{min(zs):.1f} to {max(zs):.1f}")
            rows.append(f"| {predictor} | {what} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    header = "| predictor | score | " + " | ".join(type(s).__name__ for s in sdes) + " |"
    return (
        "## Testing kit: the law check's margin\n\n"
        f"Command: `python benchmarks/kit_margins.py --part law --write docs/benchmarks.md`. Machine: {machine()}.\n\n"
        f"The kit's law check (its three-component mixture, {STEPS} steps from exact samples of p_T, 2000 "
        f"samples) fails above {THRESHOLD:g} null standard deviations of the energy distance. Each cell is the "
        f"statistic in null standard deviations, lowest to highest over sampling seeds {', '.join(map(str, SEEDS))}: "
        "with the exact score (a correct part must pass) and with a score 20% too weak (a wrong part should "
        "fail). Deterministic predictors start from the same draws of p_T, so their rows nearly agree. Where a "
        "wrong-score cell reaches below the threshold, the law check alone misses that fault on some seeds at this "
        "sample size.\n\n" + header + "\n|" + "---|" * (2 + len(sdes)) + "\n" + "\n".join(rows) + "\n"
    )


def one_step_section(sdes: list, predictors: list[str]) -> str:
    registry = sdeplug.get_registry()
    rows = []
    for predictor in predictors:
        cls = registry.get("predictor", predictor).cls
        for options in [{}, *getattr(cls, "example_options", list)()]:
            cells = []
            for sde in sdes:
                if not _accepted(cls, [sde]):
                    cells.append("-")
                    continue
                worst = [
                    max(max(abs(ratio - 1), abs(shift)) for _, _, ratio, shift in one_step_errors(cls, sde, options, s))
                    for s in ONE_STEP_SEEDS
                ]
                cells.append(f"{min(worst):.4f} to {max(worst):.4f} ({max(worst) / ONE_STEP_TOLERANCE:.0%})")
            shown = ", ".join(f"{k} = {v!r}" for k, v in options.items()) or "defaults"
            rows.append(f"| {predictor} | {shown} | " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    header = "| predictor | options | " + " | ".join(type(s).__name__ for s in sdes) + " |"
    return (
        "## Testing kit: the one-step check's margin\n\n"
        "Command: `python benchmarks/kit_margins.py --part one-step --write docs/benchmarks.md`. "
        f"Machine: {machine()}.\n\n"
        "The kit's one-step check takes one step of log-SNR 0.1 from 100 000 exact samples of p_t for Gaussian "
        "data, at log-SNR 2, at log-SNR 0 and at 0.3 T, and fails where the variance after the step is off that "
        f"of p_t_next by more than {ONE_STEP_TOLERANCE:.0%}, or its mean by more than {ONE_STEP_TOLERANCE:.0%} of "
        "its std. Each cell is the largest of those errors over the three times, lowest to highest over the "
        f"step's noise seeds {', '.join(map(str, ONE_STEP_SEEDS))}, and in brackets the highest one's share of "
        "the bound. "
        "gaussian_start without `moments` assumes standardised data, which these Gaussian data are not.\n\n"
        + header
        + "\n|"
        + "---|" * (2 + len(sdes))
        + "\n"
        + "\n".join(rows)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("law", "one-step", "all"), default="all", help="which margins to measure")
    parser.add_argument("--write", type=Path, help="write the tables into this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sdes = _default_sdes()
    predictors = [n for n in sdeplug.get_registry().names("predictor") if n != "none"]
    if args.part in ("law", "all"):
        section = law_section(sdes, predictors)
        print(section)
        if args.write:
            replace_section(args.write, "## Testing kit: the law check's margin", section)
    if args.part in ("one-step", "all"):
        section = one_step_section(sdes, predictors)
        print(section)
        if args.write:
            replace_section(args.write, "## Testing kit: the one-step check's margin", section)


if __name__ == "__main__":
    main()
