"""Classifier-free guidance's cost per sampling step, against one unguided step on a doubled batch.

A CFG step evaluates the conditional and the unconditional score of every sample; sdeplug runs
both through the network as one batch of twice the size. So its baseline is an unguided step
(the same predictor, the same network) on a batch of 2B: the ratio measures everything guidance
adds beyond the doubled forward pass (the concatenation, the split and the combination).
Variants alternate within each round so machine noise hits them alike; the ratio is the
median of the rounds' ratios, with their spread.

    python benchmarks/guidance.py [--batch 64] [--rounds 7] [--device cpu] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import sdeplug
from sdeplug import Conditioned, classifier_free_guidance
from sdeplug.parameterization import ParameterizedScore
from sdeplug.sampling import sample_pc

sys.path.insert(0, str(Path(__file__).parent))
from report import machine, replace_section  # noqa: E402

NETWORKS = {
    "U-Net (digits, 8x8)": (
        "unet",
        {"event_shape": (1, 8, 8), "channels": 16, "channel_mult": (1, 2), "attention_resolutions": (4,)},
    ),
    "NCSN++ (DDPM++ preset, nf 32, 16x16)": (
        "ncsnpp",
        {"event_shape": (3, 16, 16), "preset": "ddpmpp_cifar10_vp", "nf": 32, "ch_mult": (1, 2), "dropout": 0.0},
    ),
}
STEPS = 5


def timed(run, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(name: str, options: dict, batch: int, rounds: int, device: torch.device) -> dict:
    sde = sdeplug.create("sde", "vp")
    torch.manual_seed(0)
    network = sdeplug.create("score_model", name, **options, num_classes=10).to(device).eval()
    model = ParameterizedScore(network, sde, "noise")
    shape = tuple(options["event_shape"])
    labels = torch.arange(batch, device=device) % 10
    doubled = torch.arange(2 * batch, device=device) % 10

    def sampler(score, n):
        def run():
            with torch.no_grad():
                sample_pc(
                    sde,
                    score,
                    (n, *shape),
                    predictor="dpmpp_2m",
                    corrector="none",
                    steps=STEPS,
                    denoise=False,
                    generator=torch.Generator(device).manual_seed(0),
                    device=device,
                )

        return run

    guided = sampler(classifier_free_guidance(model, labels, 2.0), batch)
    baseline = sampler(Conditioned(model, doubled), 2 * batch)
    guided(), baseline()  # warm-up
    ratios, times = [], {"guided": [], "baseline": []}
    for _ in range(rounds):
        g, b = timed(guided, device), timed(baseline, device)
        times["guided"].append(g / STEPS)
        times["baseline"].append(b / STEPS)
        ratios.append(g / b)
    return {
        "ratio": statistics.median(ratios),
        "low": min(ratios),
        "high": max(ratios),
        "guided_ms": 1e3 * statistics.median(times["guided"]),
        "baseline_ms": 1e3 * statistics.median(times["baseline"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else machine()
    lines = [
        "## Guidance: a classifier-free guidance step against an unguided step on a doubled batch",
        "",
        f"`python benchmarks/guidance.py --batch {args.batch} --rounds {args.rounds} --device {args.device}` "
        f"({where}, torch {torch.__version__}). DPM-Solver++(2M), {STEPS} steps; batch {args.batch} guided "
        f"(w = 2) against batch {2 * args.batch} unguided; the ratio is the median over {args.rounds} rounds "
        "(min-max beside it). The target is at most 1.1.",
        "",
        "| network | device | guided step (ms) | unguided step, 2x batch (ms) | ratio | min-max |",
        "|---|---|---|---|---|---|",
    ]
    for label, (name, options) in NETWORKS.items():
        row = measure(name, options, args.batch, args.rounds, device)
        lines.append(
            f"| {label} | {args.device} | {row['guided_ms']:.1f} | {row['baseline_ms']:.1f} | "
            f"{row['ratio']:.3f} | {row['low']:.3f}-{row['high']:.3f} |"
        )
        print(lines[-1], flush=True)
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        replace_section(args.write, lines[0], section)


if __name__ == "__main__":
    main()
