"""Sampling benchmarks: quality against score evaluations, solver error, overhead, scaling.

Every number comes from the exact (oracle) score of a Gaussian mixture, so what is
measured is the sampler alone. Parts:

- ``quality``: energy distance (the V-statistic, never negative) between n samples and n
  fresh true samples, mean over R seeds, divided by the noise floor: the same statistic
  between two independent true sets. A sampler "reaches the floor" when its mean is
  within two standard errors (of the difference of the two means) of the floor's.
- ``error``: deterministic samplers, RMS distance of the state at eps to a reference
  solve of the probability-flow ODE from the same noise (torchdiffeq dopri5, rtol = atol
  = 1e-10, float64).
- ``pc16``: the predictor-corrector sampler in 16 dimensions from 100 to 2000 steps.
- ``overhead``: wall time of sdeplug's samplers against a hand-written torch loop doing the
  same arithmetic with the same tiny network, alternating in one process.
- ``scaling``: time and peak memory as the batch and the dimension grow.

    python benchmarks/sampling.py [--parts quality,error,pc16,overhead,scaling] [--quick]
                                  [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from report import replace_section  # benchmarks/report.py: scripts run from this folder

import sdeplug
from sdeplug.oracle import preset, random_mixture
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.stats import energy_distance

F64 = torch.float64
REPO = Path(__file__).resolve().parents[1]
IMG = REPO / "docs" / "img"

MIXTURES = {
    "ring8 (2-D, broad: std 0.15)": lambda: preset("ring8"),
    "ring8_tight (2-D, tight: std 0.05)": lambda: preset("ring8_tight"),
    "blobs16 (16-D, broad: std 0.2-0.5)": lambda: preset("blobs16"),
    "tight16 (16-D, tight: std 0.05-0.15)": lambda: random_mixture(16, 8, seed=3, std_range=(0.05, 0.15)),
}

# name: (label, how it samples, score evaluations per step, options)
SAMPLERS = {
    "unipc": ("UniPC-2 + UniC (bh2)", "pc", 1, {"predictor": "unipc"}),
    "dpmpp_3m": ("DPM-Solver++(3M)", "pc", 1, {"predictor": "dpmpp_3m"}),
    "dpmpp_2m": ("DPM-Solver++(2M)", "pc", 1, {"predictor": "dpmpp_2m"}),
    "sde_dpmpp_2m": ("SDE-DPM-Solver++(2M)", "pc", 1, {"predictor": "sde_dpmpp_2m"}),
    "edm_heun": ("EDM Heun", "pc", 2, {"predictor": "edm_heun"}),
    "heun": ("Heun on the PF-ODE in t", "ode", 2, {"solver": "heun"}),
    "euler": ("Euler on the PF-ODE in t", "ode", 1, {"solver": "euler"}),
    "ddim": (
        "reverse diffusion, probability flow",
        "pc",
        1,
        {"predictor": "reverse_diffusion", "predictor_options": {"probability_flow": True}},
    ),
    "ancestral": ("ancestral sampling", "pc", 1, {"predictor": "ancestral"}),
    "euler_maruyama": ("Euler-Maruyama", "pc", 1, {"predictor": "euler_maruyama"}),
    "pc_langevin": (
        "PC: reverse diffusion + Langevin (snr 0.16)",
        "pc",
        2,
        {"predictor": "reverse_diffusion", "corrector": "langevin"},
    ),
}
GRIDS = ("uniform", "quadratic", "logsnr", "edm")
DEFAULT_GRID = {
    "unipc": "logsnr",
    "dpmpp_3m": "logsnr",
    "dpmpp_2m": "logsnr",
    "sde_dpmpp_2m": "logsnr",
    "edm_heun": "edm",
}


def machine(device: torch.device | None = None) -> str:
    on_cpu = device is None or device.type == "cpu"
    return (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, " + ("CPU" if on_cpu else torch.cuda.get_device_name(device))
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def draw(
    sampler: str, sde, score, n: int, dim: int, nfe: int, grid: str, seed: int, spec: tuple | None = None
) -> torch.Tensor:
    """n samples spending at most ``nfe`` score evaluations.

    Deterministic and fast samplers end at eps without the Tweedie step (every evaluation
    goes to a step); the paper's PC sampler keeps its final denoising step, counted.
    ``spec`` replaces SAMPLERS[sampler]; its options' ``free_steps`` are steps that cost no
    evaluation (added to the grid).
    """
    label, how, per_step, options = spec or SAMPLERS[sampler]
    options = dict(options)
    free = options.pop("free_steps", 0)
    generator = torch.Generator().manual_seed(seed)
    denoise = sampler in ("pc_langevin", "ancestral", "euler_maruyama")
    steps = max((nfe - int(denoise)) // per_step, 1) + free
    common = dict(
        grid=None if grid == "uniform" else grid, steps=steps, denoise=denoise, generator=generator, dtype=F64
    )
    if how == "ode":
        result = sample_ode(sde, score, (n, dim), **options, **common)
    else:
        result = sample_pc(
            sde,
            score,
            (n, dim),
            corrector=options.get("corrector", "none"),
            **{k: v for k, v in options.items() if k != "corrector"},
            **common,
        )
    if result.nfe > nfe:
        raise RuntimeError(f"{sampler} spent {result.nfe} score evaluations over a budget of {nfe}")
    return result.x


def floor(mixture, n: int, reps: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(10_000)
    values = [energy_distance(mixture.sample(n, g), mixture.sample(n, g), unbiased=False) for _ in range(reps)]
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(reps)


def quality(sampler, sde, mixture, n, nfe, grid, reps, spec: tuple | None = None) -> tuple[float, float]:
    values = []
    for r in range(reps):
        x = draw(sampler, sde, mixture.score_model(sde), n, mixture.dim, nfe, grid, seed=r, spec=spec)
        true = mixture.sample(n, torch.Generator().manual_seed(20_000 + r))
        values.append(energy_distance(x, true, unbiased=False) if torch.isfinite(x).all() else float("inf"))
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(reps) if math.isfinite(mean) else float("inf")
    return mean, se


def reaches(mean: float, se: float, fl: tuple[float, float]) -> bool:
    """Whether a mean energy distance is within two standard errors of the noise floor."""
    return math.isfinite(mean) and mean - fl[0] <= 2 * math.sqrt(se**2 + fl[1] ** 2)


def _cell(mean, se, fl) -> str:
    if not math.isfinite(mean):
        return "diverged"
    return f"**{mean / fl[0]:.2f}**" if reaches(mean, se, fl) else f"{mean / fl[0]:.2f}"


# Parts ------------------------------------------------------------------------------------


def part_quality(quick: bool) -> tuple[str, dict]:
    n = 2000
    budgets = (5, 10, 20, 50, 100) if quick else (5, 10, 20, 50, 100, 200)
    headline_budgets = (5, 10, 20, 50, 100)
    lines, curves = [], {}
    lines.append(
        f"n = {n} samples, mean over 3 seeds; each cell is energy distance / noise floor, "
        "**bold** where it is within two standard errors of the floor. Columns are the "
        "score-evaluation budget (NFE); a sampler spends at most that many.\n"
    )
    for mixture_label, make in MIXTURES.items():
        mixture = make().to(F64)
        headline = mixture_label.startswith("ring8 (")
        reps = 2 if quick else 3
        fl = floor(mixture, n, max(reps, 8))
        for sde_name in ("ve", "vp"):
            sde = sdeplug.create("sde", sde_name)
            lines.append(f"\n**{mixture_label}, {sde_name.upper()}** (floor {fl[0]:.2e} +- {fl[1]:.1e})\n")
            row_budgets = headline_budgets if headline else budgets
            lines.append("| sampler | grid | " + " | ".join(f"NFE {b}" for b in row_budgets) + " |")
            lines.append("|---|---|" + "---|" * len(row_budgets))
            for sampler in SAMPLERS:
                if not headline and sampler in ("euler", "ddim"):
                    continue
                grids = GRIDS if headline else (DEFAULT_GRID.get(sampler, "uniform"),)
                for grid in grids:
                    cells, ratios = [], []
                    for b in row_budgets:
                        if b < SAMPLERS[sampler][2] + (1 if sampler in ("pc_langevin",) else 0):
                            cells.append("-")
                            ratios.append(float("nan"))
                            continue
                        mean, se = quality(sampler, sde, mixture, n, b, grid, reps)
                        cells.append(_cell(mean, se, fl))
                        ratios.append(mean / fl[0])
                    lines.append(f"| {SAMPLERS[sampler][0]} | {grid} | " + " | ".join(cells) + " |")
                    if grid == DEFAULT_GRID.get(sampler, "uniform"):
                        curves[(mixture_label, sde_name, sampler)] = (row_budgets, ratios)
                    print(lines[-1], flush=True)
    return "\n".join(lines) + "\n", curves


def reference_solve(sde, score, x_T: torch.Tensor) -> torch.Tensor:
    return sample_ode(
        sde, score, x_init=x_T, solver="dopri5", solver_options={"rtol": 1e-10, "atol": 1e-10}, denoise=False, dtype=F64
    ).x


def part_error(quick: bool) -> tuple[str, dict]:
    budgets = (5, 10, 20, 50, 100, 200)
    deterministic = ("unipc", "dpmpp_3m", "dpmpp_2m", "edm_heun", "heun", "euler", "ddim")
    lines = [
        "RMS distance (per coordinate) of the state at eps to a dopri5 solve at rtol = atol = 1e-10 "
        "from the same prior draw (512 draws), against the score-evaluation budget; each sampler on its "
        "default grid (fast samplers: log-SNR, EDM Heun: EDM, others: uniform).\n"
    ]
    curves = {}
    for mixture_name, sde_name in (("ring8", "ve"), ("ring8", "vp"), ("blobs16", "vp")):
        mixture = preset(mixture_name).to(F64)
        sde = sdeplug.create("sde", sde_name)
        score = mixture.score_model(sde)
        x_T = sde.prior_sampling((512, mixture.dim), torch.Generator().manual_seed(0), dtype=F64)
        ref = reference_solve(sde, score, x_T)
        lines.append(f"\n**{mixture_name}, {sde_name.upper()}**\n")
        lines.append("| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        for sampler in deterministic:
            label, how, per_step, options = SAMPLERS[sampler]
            grid = DEFAULT_GRID.get(sampler, "uniform")
            row = []
            for b in budgets:
                steps = max(b // per_step, 1)
                common = dict(
                    grid=None if grid == "uniform" else grid, steps=steps, denoise=False, x_init=x_T, dtype=F64
                )
                if how == "ode":
                    x = sample_ode(sde, score, **options, **common).x
                else:
                    x = sample_pc(sde, score, corrector="none", **options, **common).x
                row.append(float(((x - ref) ** 2).mean().sqrt()))
            curves[(mixture_name, sde_name, sampler)] = (budgets, row)
            lines.append(f"| {label} | " + " | ".join(f"{e:.1e}" for e in row) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n", curves


def part_pc16(quick: bool) -> str:
    n, reps = 1000, 2
    steps_list = (125, 500, 2000)
    lines = [
        f"Energy distance / noise floor, n = {n}, mean over {reps} seeds (**bold**: within two standard errors "
        "of the floor). The paper's PC sampler: reverse diffusion + one Langevin step per time, snr 0.16; "
        "sdeplug's batch-norm step rule, exact grid steps and final Tweedie step.\n"
    ]
    configs = [
        ("reverse diffusion alone", {}, "none"),
        ("+ Langevin snr 0.16 (paper)", {"snr": 0.16}, "langevin"),
        ("+ Langevin snr 0.08", {"snr": 0.08}, "langevin"),
    ]
    for label in ("blobs16 (16-D, broad: std 0.2-0.5)", "tight16 (16-D, tight: std 0.05-0.15)"):
        mixture = MIXTURES[label]().to(F64)
        fl = floor(mixture, n, 8)
        for sde_name in ("ve", "vp"):
            sde = sdeplug.create("sde", sde_name)
            lines.append(f"\n**{label}, {sde_name.upper()}** (floor {fl[0]:.2e})\n")
            lines.append("| sampler | " + " | ".join(f"{s} steps" for s in steps_list) + " |")
            lines.append("|---|" + "---|" * len(steps_list))
            for name, options, corrector in configs:
                cells = []
                for steps in steps_list:
                    values = []
                    for r in range(reps):
                        x = sample_pc(
                            sde,
                            mixture.score_model(sde),
                            (n, mixture.dim),
                            predictor="reverse_diffusion",
                            corrector=corrector,
                            corrector_options=options,
                            steps=steps,
                            generator=torch.Generator().manual_seed(r),
                            dtype=F64,
                        ).x
                        values.append(
                            energy_distance(
                                x, mixture.sample(n, torch.Generator().manual_seed(30_000 + r)), unbiased=False
                            )
                        )
                    mean = statistics.fmean(values)
                    cells.append(_cell(mean, statistics.stdev(values) / math.sqrt(reps), fl))
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


class TinyScore(torch.nn.Module):
    """A 2-hidden-layer MLP on (x, t): the same network for both sides of the overhead race."""

    def __init__(self, dim: int, width: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, width),
            torch.nn.SiLU(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def vp_levels(sde, times: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """alpha, sigma and lam = log(alpha / sigma) of the VP SDE at each time, as Python floats."""
    b0, b1 = sde.beta_min, sde.beta_max
    alphas, sigmas = [], []
    for t in times.double().tolist():
        log_mean = -0.25 * t * t * (b1 - b0) - 0.5 * t * b0
        alphas.append(math.exp(log_mean))
        sigmas.append(math.sqrt(-math.expm1(2 * log_mean)))
    return alphas, sigmas, [math.log(a / s) for a, s in zip(alphas, sigmas)]


def hand_em(sde, net, batch, times, generator):
    """Euler-Maruyama on the reverse VP SDE, written out with every per-step number a Python float."""
    b0, b1 = sde.beta_min, sde.beta_max
    grid = times.tolist()
    coefficients = []
    for t, t_next in zip(grid[:-1], grid[1:]):
        beta, dt = b0 + t * (b1 - b0), t_next - t
        coefficients.append((1 - 0.5 * beta * dt, -beta * dt, math.sqrt(-beta * dt)))
    x = torch.randn(batch, 2, generator=generator, device=generator.device)
    batch_times = [t.expand(batch) for t in times.unbind()]
    for i, (scale_x, scale_score, noise) in enumerate(coefficients):
        noise_draw = torch.randn(x.shape, generator=generator, device=x.device)
        x = x * scale_x + scale_score * net(x, batch_times[i]) + noise * noise_draw
    return x


def hand_dpmpp_2m(sde, net, batch, times, generator):
    """DPM-Solver++(2M) on the VP SDE, written out with every per-step number a Python float."""
    alphas, sigmas, lams = vp_levels(sde, times)
    x = torch.randn(batch, 2, generator=generator, device=generator.device)
    batch_times = [t.expand(batch) for t in times.unbind()]
    previous = None
    for i in range(len(lams) - 1):
        h = lams[i + 1] - lams[i]
        scale_d = -alphas[i + 1] * math.expm1(-h)
        denoised = (x + sigmas[i] ** 2 * net(x, batch_times[i])) * (1 / alphas[i])
        if previous is None:
            x_next = x * (sigmas[i + 1] / sigmas[i]) + scale_d * denoised
        else:
            half_inv_r = h / (lams[i] - lams[i - 1]) / 2
            x_next = (
                x * (sigmas[i + 1] / sigmas[i])
                + (scale_d * (1 + half_inv_r)) * denoised
                - (scale_d * half_inv_r) * previous
            )
        x, previous = x_next, denoised
    return x


def hand_unipc(sde, net, batch, times, generator):
    """UniPC-2 with UniC (B(h) = e^h - 1) on the VP SDE, written out with Python floats; the
    rho of the order-2 corrector solves its 2 x 2 system in closed form."""
    alphas, sigmas, lams = vp_levels(sde, times)

    def weights(h):
        hphi_1 = math.expm1(-h)
        b_1 = (hphi_1 / -h - 1) / hphi_1
        b_2 = ((hphi_1 / -h - 1) / -h - 0.5) * 2 / hphi_1
        return hphi_1, b_1, b_2

    x = torch.randn(batch, 2, generator=generator, device=generator.device)
    batch_times = [t.expand(batch) for t in times.unbind()]
    history = []  # data predictions D_i, D_{i-1}, ... newest first
    x_prev = None
    for i in range(len(lams) - 1):
        denoised = (x + sigmas[i] ** 2 * net(x, batch_times[i])) * (1 / alphas[i])
        if i >= 1:  # UniC: redo the step from i - 1 with D_i known
            h = lams[i] - lams[i - 1]
            hphi_1, b_1, b_2 = weights(h)
            base = x_prev * (sigmas[i] / sigmas[i - 1]) - (alphas[i] * hphi_1) * history[0]
            if i == 1:
                x = base - (alphas[i] * hphi_1 * 0.5) * (denoised - history[0])
            else:
                r = (lams[i - 2] - lams[i - 1]) / h
                rho_1 = (b_1 - b_2) / (1 - r)
                rho_new = b_1 - rho_1
                x = base - (alphas[i] * hphi_1) * (
                    (rho_1 / r) * (history[1] - history[0]) + rho_new * (denoised - history[0])
                )
        h = lams[i + 1] - lams[i]
        hphi_1 = math.expm1(-h)
        x_next = x * (sigmas[i + 1] / sigmas[i]) - (alphas[i + 1] * hphi_1) * denoised
        if i >= 1:
            r = (lams[i - 1] - lams[i]) / h
            x_next = x_next - (alphas[i + 1] * hphi_1 * 0.5 / r) * (history[0] - denoised)
        history = [denoised, *history][:2]
        x_prev, x = x, x_next
    return x


def part_overhead(quick: bool, device: torch.device) -> str:
    torch.manual_seed(0)
    sde = sdeplug.create("sde", "vp")
    batch, steps, rounds = 1024, 100, (7 if quick else 41)
    lines = [
        f"Batch {batch}, {steps} steps, float32, an MLP (2 x 64 hidden) on 2-D inputs, on "
        f"{'the CPU' if device.type == 'cpu' else device.type.upper()}; median of {rounds} "
        "alternating rounds; ratio = the median over rounds of sdeplug / hand-written loop, each round "
        "timing both back to back (1.00 is no overhead). The hand-written loops compute every per-step "
        "number as a Python float and do the least tensor arithmetic a step needs; each is checked "
        "to give sdeplug's samples (same noise) before it is timed.\n",
        "| sampler | hand-written (ms) | sdeplug (ms) | ratio |",
        "|---|---|---|---|",
    ]
    net = TinyScore(2).eval().to(device)
    times = torch.linspace(1.0, sde.default_eps, steps + 1, device=device)

    def ours(predictor, network=net, dim=2, **options):
        return lambda: (
            sample_pc(
                sde,
                network,
                (batch, dim),
                predictor=predictor,
                corrector="none",
                steps=steps,
                denoise=False,
                generator=torch.Generator(device).manual_seed(0),
                **options,
            ).x
        )

    def hand(loop, network=net):
        return lambda: loop(sde, network, batch, times, torch.Generator(device).manual_seed(0))

    cases = {
        "Euler-Maruyama": (hand(hand_em), ours("euler_maruyama")),
        "Euler-Maruyama, check_finite=False": (hand(hand_em), ours("euler_maruyama", check_finite=False)),
        "DPM-Solver++(2M)": (hand(hand_dpmpp_2m), ours("dpmpp_2m")),
        "UniPC-2 + UniC (bh2)": (hand(hand_unipc), ours("unipc")),
    }
    with torch.no_grad():
        for name, (hand_loop, sdeplug_loop) in cases.items():
            torch.testing.assert_close(sdeplug_loop(), hand_loop(), rtol=1e-4, atol=1e-4)  # the same sampler
            t_hand, t_ours = [], []
            for r in range(rounds):
                pair = ((hand_loop, t_hand), (sdeplug_loop, t_ours))
                for fn, store in pair if r % 2 else pair[::-1]:  # each goes first in half the rounds
                    synchronize(device)
                    start = time.perf_counter()
                    fn()
                    synchronize(device)
                    store.append(time.perf_counter() - start)
            h, o = statistics.median(t_hand) * 1e3, statistics.median(t_ours) * 1e3
            ratio = statistics.median(b / a for a, b in zip(t_hand, t_ours))  # paired rounds: drift cancels
            lines.append(f"| {name} | {h:.1f} | {o:.1f} | {ratio:.3f} |")
            print(lines[-1], flush=True)
    if device.type == "cpu":
        lines.append(
            "\nThe CUDA overhead is in its own section when measured: "
            "`python benchmarks/sampling.py --parts overhead --device cuda --write docs/benchmarks.md`."
        )
    return "\n".join(lines) + "\n"


SCALING_CHILD = """
import resource, sys, time, torch
import sdeplug
from sdeplug.sampling import sample_pc
torch.manual_seed(0)
batch, dim, steps = int(sys.argv[1]), int(sys.argv[2]), 20
net = torch.nn.Sequential(torch.nn.Linear(dim, 256), torch.nn.SiLU(), torch.nn.Linear(256, dim)).eval()
score = lambda x, t: net(x)
sde = sdeplug.create("sde", "vp")
torch.set_num_threads(2)
run = lambda b: sample_pc(sde, score, (b, dim), predictor=sys.argv[3], corrector="none", steps=steps, denoise=False,
                          grid="logsnr")
with torch.no_grad():
    run(2)  # plugins loaded, kernels warm: what is left is the sampling itself
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(3):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
elapsed = sorted(times)[1]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(elapsed, (after - before) / 1024)
"""


def part_scaling(quick: bool) -> str:
    lines = [
        "20 steps of DPM-Solver++(2M) and of UniPC with an MLP (one hidden layer of 256) on the VP SDE, "
        "float32, 2 threads; each configuration in a fresh process after a warm-up run, median of 3. Peak memory "
        "is the growth of the process's peak resident set during sampling (MiB); the sampler state is a few "
        "tensors of the batch's size.\n",
        "| sampler | batch | dim | time (ms) | ms per 1k samples | peak memory growth (MiB) "
        "| batch x dim x 4 B (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    configs = [(b, 64) for b in (256, 1024, 4096, 16384)] + [(1024, d) for d in (2, 256, 1024, 4096)]
    for predictor in ("dpmpp_2m", "unipc"):
        for batch, dim in configs:
            out = subprocess.run(
                [sys.executable, "-c", SCALING_CHILD, str(batch), str(dim), predictor],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()
            elapsed, mem = float(out[0]), float(out[1])
            lines.append(
                f"| {predictor} | {batch} | {dim} | {elapsed * 1e3:.1f} | {elapsed * 1e6 / batch:.2f} | "
                f"{mem:.1f} | {batch * dim * 4 / 2**20:.2f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


# Plots and the report ------------------------------------------------------------------------


def plot_quality(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(m, s) for m, s, _ in curves})
    colours = {name: plt.get_cmap("tab20")(i) for i, name in enumerate(SAMPLERS)}  # one colour per sampler
    fig, axes = plt.subplots(2, (len(panels) + 1) // 2, figsize=(5 * ((len(panels) + 1) // 2), 8), squeeze=False)
    for ax, (mixture, sde_name) in zip(axes.flat, panels):
        for (m, s, sampler), (budgets, ratios) in curves.items():
            if (m, s) == (mixture, sde_name):
                ax.plot(budgets, ratios, marker="o", color=colours[sampler], label=SAMPLERS[sampler][0])
        ax.axhline(1.0, color="k", ls="--", lw=1)
        ax.set(
            xscale="log",
            yscale="log",
            title=f"{mixture.split(' (')[0]}, {sde_name.upper()}",
            xlabel="score evaluations",
            ylabel="energy distance / noise floor",
        )
    handles = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=6, fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)


def plot_error(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(m, s) for m, s, _ in curves})
    colours = {name: plt.get_cmap("tab20")(i) for i, name in enumerate(SAMPLERS)}
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (mixture, sde_name) in zip(axes.flat, panels):
        for (m, s, sampler), (budgets, errors) in curves.items():
            if (m, s) == (mixture, sde_name):
                ax.plot(budgets, errors, marker="o", color=colours[sampler], label=SAMPLERS[sampler][0])
        ax.set(
            xscale="log",
            yscale="log",
            title=f"{mixture}, {sde_name.upper()}",
            xlabel="score evaluations",
            ylabel="RMS error vs reference solve",
        )
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="quality,error,pc16,overhead,scaling")
    parser.add_argument("--quick", action="store_true", help="fewer seeds and budgets, for a smoke run")
    parser.add_argument("--device", default="cpu", help="torch device of the overhead part alone, e.g. cuda")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    parts = args.parts.split(",")
    device = torch.device(args.device)
    if device.type != "cpu" and parts != ["overhead"]:
        parser.error("--device other than cpu is for --parts overhead alone")
    quick = " --quick" if args.quick else ""
    on_device = "" if device.type == "cpu" else f" --device {args.device}"
    command = f"`python benchmarks/sampling.py --parts {args.parts}{quick}{on_device} --write docs/benchmarks.md`"
    header = f"Command: {command}" + (" (or `make bench`)" if device.type == "cpu" else "")
    header += f". Machine: {machine(device)}.\n\n"
    sections = {}
    if "quality" in parts:
        text, curves = part_quality(args.quick)
        IMG.mkdir(parents=True, exist_ok=True)
        plot_quality(curves, IMG / "quality_vs_nfe.png")
        sections["## Sampling: quality against score evaluations"] = (
            header + text + "\n![quality against NFE](img/quality_vs_nfe.png)\n"
        )
    if "error" in parts:
        text, curves = part_error(args.quick)
        IMG.mkdir(parents=True, exist_ok=True)
        plot_error(curves, IMG / "solver_error.png")
        sections["## Sampling: solver error against a reference solve"] = (
            header + text + "\n![solver error against NFE](img/solver_error.png)\n"
        )
    if "pc16" in parts:
        sections["## Sampling: predictor-corrector in 16 dimensions"] = header + part_pc16(args.quick)
    if "overhead" in parts:
        heading = "## Sampling: overhead against a hand-written loop"
        heading += "" if device.type == "cpu" else f" on {device.type.upper()}"
        sections[heading] = header + part_overhead(args.quick, device)
    if "scaling" in parts:
        sections["## Sampling: scaling with batch and dimension"] = header + part_scaling(args.quick)
    for heading, body in sections.items():
        print(f"\n{heading}\n\n{body}")
        if args.write:
            replace_section(args.write, heading, f"{heading}\n\n{body}\n")


if __name__ == "__main__":
    main()
