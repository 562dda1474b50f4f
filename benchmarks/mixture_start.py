"""Does a free start along a fitted mixture's flow beat one along a fitted Gaussian's?

``gaussian_start`` takes the first step, from T, along the exact probability flow of a Gaussian
with the data's mean and covariance, at no score evaluation. A Gaussian mixture fitted to the
data (scikit-learn, a few components) is a closer surrogate whose flow, solved with dopri5 on its
closed-form score, also costs no evaluation of the model. This compares the two on mixtures of
the few-step benchmark's family (``fewstep.hard_mixture``), each on grids tuned for it
(``tune_grids``), with the mixture's exact score as the model, judged seed by seed as fewstep.py
does. The data are themselves mixtures: a fit with as many components as the data would be the
truth, so the fit uses fewer (``--components``).

    python benchmarks/mixture_start.py [--seed S] [--dim 16] [--mixtures 2] [--components 3] [--write FILE]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import attrs
import torch
from fewstep import hard_mixture, judge, noise_floor
from report import machine, replace_section

import sdeplug
from sdeplug import LinearSDE, Predictor, ScoreFn, resolve
from sdeplug.grid_tuning import tune_grids
from sdeplug.oracle import GaussianMixture
from sdeplug.sampling import sample_ode, sample_pc

F64 = torch.float64
HEADING = "## Sampling: a fitted mixture's flow as the free start"


def fitted_mixture(data: torch.Tensor, components: int, seed: int) -> GaussianMixture:
    from sklearn.mixture import GaussianMixture as SklearnMixture

    fit = SklearnMixture(components, covariance_type="full", random_state=seed).fit(data.numpy())
    return GaussianMixture(
        torch.from_numpy(fit.weights_), torch.from_numpy(fit.means_), covs=torch.from_numpy(fit.covariances_)
    )


@attrs.define
class MixtureStart(Predictor):
    """The first step along the fitted mixture's probability flow (dopri5 on its exact score,
    no evaluation of the model), then UniPC."""

    name = "mixture_start"
    sde_types = (LinearSDE,)
    sde: LinearSDE
    score: ScoreFn
    surrogate: GaussianMixture = attrs.field(kw_only=True)
    _then: Predictor = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._then = resolve("predictor", "unipc", self.sde, self.score)

    def init(self, x, grid):
        return (self._then.init(x, grid[1:]) if grid.numel() > 2 else None, False)

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        then, started = state
        if not started:
            t0, t1 = float(t.reshape(-1)[0]), float(t_next.reshape(-1)[0])
            grid = torch.tensor([t0, t1], dtype=F64, device=x.device)
            solve = sample_ode(
                self.sde, self.surrogate.score_model(self.sde), x_init=x.to(F64), grid=grid, solver="dopri5",
                solver_options={"rtol": 1e-7, "atol": 1e-7}, denoise=False,
            )  # fmt: skip
            return solve.x.to(x.dtype), (then, True)
        x, then = self._then.step(x, t, t_next, then, generator, jumped=jumped)
        return x, (then, True)


def run(seed: int, dim: int, mixtures: int, components: int, n: int, seeds: int, budgets: tuple[int, ...]) -> str:
    rng = random.Random(seed)
    lines = [
        f"d = {dim}, {mixtures} mixtures of the family drawn with seed {seed}, a {components}-component fit "
        f"(full covariances, 20 000 data samples) as the surrogate; n = {n}, {seeds} sampling seeds per cell, each "
        "shown as energy distance / the floor's mean; **bold**: every seed within two floor standard deviations. "
        "Both starts on grids tuned for them at each budget (NFE = score evaluations; both take NFE + 1 steps).",
        "",
        "| mixture | SDE | start | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    wins = total = 0
    for _ in range(mixtures):
        mixture_seed = rng.randrange(1_000_000)
        mixture = hard_mixture(dim, mixture_seed)
        floor_mean, floor_std = noise_floor(mixture, n)
        data = mixture.sample(20_000, torch.Generator().manual_seed(mixture_seed))
        surrogate = fitted_mixture(data, components, mixture_seed)
        for sde_name in ("ve", "vp"):
            sde = sdeplug.create("sde", sde_name)
            score = mixture.score_model(sde)
            means = {}
            for label, predictor, options in (
                ("Gaussian", "gaussian_start", {"moments": sdeplug.DataMoments.from_samples(data)}),
                (f"{components}-component mixture", MixtureStart, {"surrogate": surrogate}),
            ):
                tuned = tune_grids(
                    sde, score, dim, [b + 1 for b in budgets], predictor=predictor, predictor_options=options,
                    pilot=256, seed=rng.randrange(1_000_000),
                )  # fmt: skip
                cells, means[label] = [], []
                for result in tuned:
                    values = []
                    for s in range(seeds):
                        x = sample_pc(
                            sde, score, (n, dim), predictor=predictor, predictor_options=options, corrector="none",
                            grid=result.times, denoise=False, generator=torch.Generator().manual_seed(s), dtype=F64,
                        ).x  # fmt: skip
                        values.append(judge(x, mixture, s) / floor_mean)
                    at = all(v <= 1 + 2 * floor_std / floor_mean for v in values)
                    text = " / ".join(f"{v:.2f}" for v in values)
                    cells.append(f"**{text}**" if at else text)
                    means[label].append(sum(values) / len(values))
                lines.append(f"| {mixture_seed} | {sde_name.upper()} | {label} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
            gaussian, fitted = means.values()
            wins += sum(f < g for f, g in zip(fitted, gaussian))
            total += len(budgets)
    lines += ["", f"The mixture start's mean over seeds is lower than the Gaussian start's in {wins} of {total} cells."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--mixtures", type=int, default=2)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10_000)
    command = (
        f"`python benchmarks/mixture_start.py --seed {seed} --dim {args.dim} --mixtures {args.mixtures} "
        f"--components {args.components} --n {args.n} --seeds {args.seeds} --write docs/benchmarks.md`"
    )
    body = f"{HEADING}\n\nCommand: {command}. Machine: {machine()}.\n\n" + run(
        seed, args.dim, args.mixtures, args.components, args.n, args.seeds, (3, 4, 5)
    )
    print(body)
    if args.write:
        replace_section(args.write, HEADING, body)


if __name__ == "__main__":
    main()
