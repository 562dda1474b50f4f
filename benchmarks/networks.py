"""NCSN++ forward + backward: sdeplug's wrappers against the bare network, and against the
paper's own implementation on the same weights, in one run.

Each variant computes the same denoising score-matching loss on the same batch and noise
and back-propagates it, with the paper's NCSN++ cont. (VE) network at 32x32:

- bare: sdeplug's NCSN++ as a plain nn.Module, the loss written out by hand;
- sdeplug: the same network through ParameterizedScore and DenoisingScoreMatching;
- reference (with ``--reference PATH`` to a score_sde_pytorch checkout, whose ``op``
  CUDA package must import on this machine): the paper's NCSNpp with the same weights.

Variants alternate within each round so machine noise hits them alike; ratios are the
median of the rounds' ratios.

    python benchmarks/networks.py [--batch 4] [--rounds 5] [--reference PATH] [--device cpu]
        [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch

import sdeplug
from sdeplug.losses import DenoisingScoreMatching
from sdeplug.parameterization import ParameterizedScore
from sdeplug.score_sde_checkpoints import ReferenceCheckpoint, reference_weights
from sdeplug_models.ncsnpp import PRESETS

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402

PRESET = "ncsnpp_cifar10_ve"
SIGMA_MIN, SIGMA_MAX, EPS = 0.01, 50.0, 1e-5


def reference_network(path: Path, ours: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The paper's NCSNpp built from its config for the preset, holding ``ours``'s weights."""
    sys.path.insert(0, str(path))
    from models import ncsnpp  # the reference's own module

    options = {**PRESETS[PRESET][0], "fir_kernel": list(PRESETS[PRESET][0]["fir_kernel"])}
    model = types.SimpleNamespace(
        **options,
        sigma_min=SIGMA_MIN,
        sigma_max=SIGMA_MAX,
        num_scales=1000,
        nonlinearity="swish",
        attention_type="ddpm",
        conv_size=3,
    )
    data = types.SimpleNamespace(image_size=32, num_channels=3, centered=options["centered"])
    config = types.SimpleNamespace(model=model, data=data, training=types.SimpleNamespace(continuous=True))
    network = ncsnpp.NCSNpp(config).to(device)
    # ours -> theirs by the same order that maps a checkpoint of theirs onto ours
    theirs = {k: v for k, v in network.state_dict().items() if k != "sigmas"}
    reference_weights(ours, ReferenceCheckpoint(theirs, None, None), weights="model")  # refuses a misfit
    network.load_state_dict({"sigmas": network.sigmas, **dict(zip(theirs, ours.state_dict().values()))})
    return network.train()


def hand_loss(network, x0: torch.Tensor, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The denoising loss of a VE score network fed sigma, written out."""
    t = EPS + (1 - EPS) * u
    sigma = SIGMA_MIN * torch.exp(t * math.log(SIGMA_MAX / SIGMA_MIN))
    x_t = x0 + sigma[:, None, None, None] * z
    score = network(x_t, sigma)
    return ((sigma[:, None, None, None] * score + z) ** 2).reshape(len(x0), -1).mean(1).mean()


def timed(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reference", type=Path, help="a score_sde_pytorch checkout, to time its NCSNpp too")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "ncsnpp", preset=PRESET, event_shape=(3, 32, 32)).to(device).train()
    sde = sdeplug.create("sde", "ve", sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    score = ParameterizedScore(network, sde, "score")
    loss_fn = DenoisingScoreMatching(sde, eps=EPS)
    g = torch.Generator(device).manual_seed(1)
    x0 = torch.rand(args.batch, 3, 32, 32, generator=g, device=device)
    u, z = torch.rand(args.batch, generator=g, device=device), torch.randn(x0.shape, generator=g, device=device)

    def run(loss):
        def step():
            network.zero_grad(set_to_none=True)
            loss().backward()

        return step

    variants = {
        "bare": run(lambda: hand_loss(network, x0, u, z)),
        "sdeplug": run(lambda: loss_fn(score, x0, noise=(u, z))),
    }
    if args.reference:
        reference = reference_network(args.reference, network, device)
        with torch.no_grad():  # the same function before timing it
            torch.manual_seed(2)
            a, b = hand_loss(network.eval(), x0, u, z), hand_loss(reference.eval(), x0, u, z)
            assert torch.allclose(a, b, rtol=1e-4), (a, b)
        network.train(), reference.train()

        def reference_step():
            reference.zero_grad(set_to_none=True)
            hand_loss(reference, x0, u, z).backward()

        variants["reference"] = reference_step
    for step in variants.values():  # warm-up
        step()
    times = {name: [] for name in variants}
    for round_ in range(args.rounds):
        names = list(variants) if round_ % 2 == 0 else list(reversed(variants))
        for name in names:
            torch.manual_seed(round_)  # the same dropout masks for every variant of a round
            times[name].append(timed(variants[name], device))
    bare = times["bare"]
    lines = ["| variant | forward + backward (s per batch) | / bare |", "|---|---|---|"]
    for name, seconds in times.items():
        ratio = statistics.median(s / b for s, b in zip(seconds, bare))
        lines.append(f"| {name} | {statistics.median(seconds):.3f} | {ratio:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        machine = (
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, {where}"
        )
        command = f"python benchmarks/networks.py --batch {args.batch} --rounds {args.rounds}" + (
            " --reference PATH" if args.reference else ""
        )
        section = (
            "## Networks: NCSN++ forward and backward\n\n"
            f"Command: `{command} --write docs/benchmarks.md`. Machine: {machine}. The paper's NCSN++ cont. (VE) "
            f"preset at 32x32, batch {args.batch}, training mode; the same denoising loss on the same batch, noise "
            "and dropout masks in every variant; median of the rounds' ratios to the bare network. `reference` is "
            "the paper's own NCSNpp (score_sde_pytorch) holding the same weights.\n\n" + text + "\n"
        )
        replace_section(args.write, "## Networks", section)


if __name__ == "__main__":
    main()
