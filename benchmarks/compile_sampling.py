"""Compiled sampling: sampling steps per second through ``torch.compile`` against the eager network.

The same sampler (DPM-Solver++(2M) on a fixed log-SNR grid), the same network and weights,
the same batch; the compiled score is ``sdeplug.compiling.compile_score`` (what ``[sample]
compile = true`` uses; on CUDA with ``mode="reduce-overhead"``, CUDA graphs). Compile time is the
first run's wall time minus an eager run's, with an empty compile cache. Eager and compiled runs
alternate within each round so machine noise hits them alike; the speed-up is the median of the
rounds' ratios, with their spread, and the largest difference between the two runs' samples is
shown beside the samples' scale.

    python benchmarks/compile_sampling.py [--batch 16] [--rounds 5] [--device cpu] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import sdeplug
from sdeplug.compiling import compile_score
from sdeplug.parameterization import ParameterizedScore
from sdeplug.sampling import sample_pc

sys.path.insert(0, str(Path(__file__).parent))
from report import machine, replace_section  # noqa: E402

NETWORKS = {
    "U-Net (3x32x32, channels 32)": ("unet", {"event_shape": (3, 32, 32), "channels": 32}),
    "NCSN++ (DDPM++ preset, nf 32, 3x32x32)": (
        "ncsnpp",
        {"event_shape": (3, 32, 32), "preset": "ddpmpp_cifar10_vp", "nf": 32, "num_res_blocks": 2, "dropout": 0.0},
    ),
}
STEPS = 10
HEADING = "## Sampling: compiled against eager"


def timed(run, device: torch.device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def measure(name: str, options: dict, batch: int, rounds: int, device: torch.device) -> dict:
    sde = sdeplug.create("sde", "vp")

    def score() -> ParameterizedScore:
        torch.manual_seed(0)
        network = sdeplug.create("score_model", name, **options).eval()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():  # off the initialisation, whose zero output layer predicts no noise at all
            for parameter in network.parameters():
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=g))
        return ParameterizedScore(network.to(device), sde, "noise")

    eager = score()
    compiled = compile_score(score(), device, mode="reduce-overhead" if device.type == "cuda" else None)

    def sampler(model):
        def run() -> torch.Tensor:
            with torch.no_grad():
                return sample_pc(
                    sde, model, (batch, *options["event_shape"]), predictor="dpmpp_2m", corrector="none",
                    steps=STEPS, grid="logsnr", denoise=False, generator=torch.Generator(device).manual_seed(0),
                    device=device,
                ).x  # fmt: skip

        return run

    run_eager, run_compiled = sampler(eager), sampler(compiled)
    first_eager, x_eager = timed(run_eager, device)
    first_compiled, x_compiled = timed(run_compiled, device)
    ratios, times = [], {"eager": [], "compiled": []}
    for _ in range(rounds):
        e, _ = timed(run_eager, device)
        c, _ = timed(run_compiled, device)
        times["eager"].append(STEPS / e)
        times["compiled"].append(STEPS / c)
        ratios.append(e / c)
    return {
        "eager": statistics.median(times["eager"]),
        "compiled": statistics.median(times["compiled"]),
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "compile_s": first_compiled - first_eager,
        "difference": float((x_compiled - x_eager).abs().max()),
        "scale": float(x_eager.abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    # A fresh compile cache, so that the compile time is a first compilation's, not a cache hit's.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="sdeplug-inductor-")
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    lines = [
        HEADING,
        "",
        f"`python benchmarks/compile_sampling.py --batch {args.batch} --rounds {args.rounds} --device {args.device}` "
        f"({where}, torch {torch.__version__}). DPM-Solver++(2M), {STEPS} steps on the log-SNR grid, batch "
        f"{args.batch}, float32; steps per second are medians over {args.rounds} rounds, the speed-up the median of "
        "the rounds' ratios (min-max beside it). Compile time: the first compiled run less the first eager one.",
        "",
        "| network | device | eager steps/s | compiled steps/s | speed-up | min-max | compile time (s) | "
        "max sample difference (of max abs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, (name, options) in NETWORKS.items():
        row = measure(name, options, args.batch, args.rounds, device)
        lines.append(
            f"| {label} | {args.device} | {row['eager']:.2f} | {row['compiled']:.2f} | {row['ratio']:.2f} | "
            f"{row['low']:.2f}-{row['high']:.2f} | {row['compile_s']:.0f} | "
            f"{row['difference']:.1e} (of {row['scale']:.2f}) |"
        )
        print(lines[-1], flush=True)
    if device.type == "cpu":
        lines += ["", "`--device cuda` rows (CUDA graphs): not measured, no GPU was lent to this run."]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        replace_section(args.write, HEADING, section)


if __name__ == "__main__":
    main()
