"""Training overhead: the Trainer's steps per second against a hand-written loop, in one run.

Both train the same network on the same data with the same loss, batch size,
optimiser, warm-up, gradient clipping and EMA; the hand-written loop is what a user
would write around ``DenoisingScoreMatching`` alone. The two alternate in rounds so
machine noise hits both alike; the ratio is Trainer / hand loop (1.0 = no overhead).

    python benchmarks/training.py [--steps 150] [--rounds 12] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.losses import DenoisingScoreMatching
from sdeplug.parameterization import ParameterizedScore
from sdeplug.trainer import Trainer, TrainSettings

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402


def hand_loop(network, sde, data, settings: TrainSettings, steps: int) -> float:
    """A plain training loop with the same arithmetic as the Trainer; returns seconds."""
    ema = [p.detach().clone() for p in network.parameters()]
    params = list(network.parameters())
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    loss_fn = DenoisingScoreMatching(sde, eps=settings.eps)
    score = ParameterizedScore(network, sde, settings.parameterization)
    g_data, g_loss = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for step in range(steps):
        batch = data[torch.randint(len(data), (settings.batch_size,), generator=g_data)]
        loss = loss_fn(score, batch, g_loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, settings.grad_clip)
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * min(1.0, (step + 1) / settings.warmup)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - settings.ema_decay)
    return time.perf_counter() - start


def trainer_run(network, sde, data, settings: TrainSettings, steps: int) -> float:
    trainer = Trainer(network, sde, data, attrs_evolve(settings, steps=steps))
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def attrs_evolve(settings, **changes):
    import attrs

    return attrs.evolve(settings, **changes)


def measure(name: str, make_network, data: torch.Tensor, steps: int, rounds: int) -> dict:
    sde = sdeplug.create("sde", "vp")
    settings = TrainSettings(steps=steps, batch_size=128, lr=1e-3, warmup=50, progress=False, checkpoint_every=None)
    hand, ours = [], []
    for _ in range(rounds):
        torch.manual_seed(0)
        hand.append(steps / hand_loop(make_network(), sde, data, settings, steps))
        torch.manual_seed(0)
        ours.append(steps / trainer_run(make_network(), sde, data, settings, steps))
    # each round's ratio compares two runs seconds apart, so slow drifts of the machine cancel
    ratios = [o / h for h, o in zip(hand, ours)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {
        "problem": name,
        "hand": statistics.median(hand),
        "trainer": statistics.median(ours),
        "ratio": statistics.median(ratios),
        "spread": (quartiles[0], quartiles[2]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    moons = load_dataset("moons").train.float()
    digits = load_dataset("digits").train.float()
    rows = [
        measure(
            "MLP 128x3 on moons (2-D)",
            lambda: sdeplug.create("score_model", "mlp", event_shape=(2,), width=128, depth=3),
            moons,
            args.steps,
            args.rounds,
        ),
        measure(
            "U-Net 16 ch on digits (1x8x8)",
            lambda: sdeplug.create("score_model", "unet", event_shape=(1, 8, 8), channels=16),
            digits,
            args.steps // 3,
            args.rounds,
        ),
    ]
    lines = [
        "| model and data | hand-written loop (steps/s) | Trainer (steps/s) | Trainer / hand | middle half |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        low, high = r["spread"]
        lines.append(
            f"| {r['problem']} | {r['hand']:.1f} | {r['trainer']:.1f} | {r['ratio']:.3f} | {low:.3f} to {high:.3f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        machine = (
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, CPU"
        )
        section = (
            "## Training: the Trainer against a hand-written loop\n\n"
            f"Command: `python benchmarks/training.py --steps {args.steps} --rounds {args.rounds} "
            "--write docs/benchmarks.md` "
            f"(or `make bench`). Machine: {machine}. Batch 128, Adam with warm-up, gradient clipping and EMA in both; "
            f"{args.rounds} alternating rounds; the ratio is the median of the rounds' ratios, beside the "
            "range of the middle half of them (the machine's noise).\n\n" + text + "\n"
        )
        replace_section(args.write, "## Training", section)


if __name__ == "__main__":
    main()
