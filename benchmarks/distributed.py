"""Training and sampling in several processes: what DDP itself costs, and fp32 against bf16.

Every run trains the same MLP (compute dominates its step) on the same data in processes
of one thread each, launched by torchrun where there are several:

- one process with the global batch B;
- two processes with DDP (gloo), B / 2 each;
- two independent processes, B / 2 each, no process group: the same per-rank work without
  the gradient all-reduce. DDP's own cost is (DDP time / independent time) - 1;
- one process with [train] precision = "bf16".

Sampling: `sdeplug sample` of an oracle mixture with 1 and 2 processes (batches shared out).

    python benchmarks/distributed.py [--steps 30] [--batch 2048] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402

WIDTH, DEPTH, DIM = 512, 4, 32


def worker(steps: int, batch: int, precision: str) -> None:
    """Train (inside torchrun or alone) and print rank 0's steps per second as JSON."""
    import sdeplug
    from sdeplug import distributed
    from sdeplug.trainer import Trainer, TrainSettings

    torch.set_num_threads(1)
    distributed.init_from_environment("cpu")
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "mlp", event_shape=(DIM,), width=WIDTH, depth=DEPTH)
    data = torch.randn(4096, DIM, generator=torch.Generator().manual_seed(0))
    settings = TrainSettings(
        steps=steps + 10,
        batch_size=batch,
        lr=1e-4,
        warmup=10,
        checkpoint_every=None,
        progress=False,
        precision=precision,
    )
    trainer = Trainer(network, sdeplug.create("sde", "vp"), data, settings)
    trainer.fit(until=10)  # warm-up steps, not timed
    distributed.barrier()
    start = time.perf_counter()
    trainer.fit()
    distributed.barrier()
    seconds = time.perf_counter() - start
    if distributed.is_main():
        print(json.dumps({"steps_per_second": steps / seconds}))
    distributed.shutdown()


def _launch(processes: int, steps: int, batch: int, precision: str = "fp32", ddp: bool = True) -> float:
    """Steps per second of rank 0 (or of the first of ``processes`` independent processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [__file__, "--worker", "--steps", str(steps), "--batch", str(batch), "--precision", precision]
    if processes > 1 and ddp:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        runs = [subprocess.Popen([*command, *args], env=env, stdout=subprocess.PIPE, text=True)]
    else:
        runs = [
            subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, text=True)
            for _ in range(processes)
        ]
    outputs = [run.communicate(timeout=1800)[0] for run in runs]
    rates = [
        json.loads(line)["steps_per_second"] for out in outputs for line in out.splitlines() if "steps_per" in line
    ]
    return min(rates)  # the slowest process sets the pace


def _sampling(processes: int, folder: Path) -> float:
    """Samples per second of `sdeplug sample` (oracle ring8, 4000 samples in 8 batches), from the
    sampling time the command reports (start-up and evaluation left out)."""
    config = folder / "ring.toml"
    config.write_text(
        '[sde]\nname = "vp"\n[sampler]\nsteps = 500\n[sample]\nnum = 4000\nbatch_size = 500\nprogress = false\n'
        f'[output]\ndir = "{folder / "out"}"\nplot = false\n'
    )
    command = [str(Path(sys.executable).parent / "sdeplug"), "sample", str(config)]
    if processes > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={processes}",
            *command,
        ]
    subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, capture_output=True)
    return 4000 / json.loads((folder / "out" / "summary.json").read_text())["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch, args.precision)
        return
    b = args.batch
    rounds = {"one": [], "ddp": [], "independent": []}
    for _ in range(args.rounds):  # alternating, so that machine noise hits every run alike
        rounds["one"].append(_launch(1, args.steps, b))
        rounds["ddp"].append(_launch(2, args.steps, b))
        rounds["independent"].append(_launch(2, args.steps, b // 2, ddp=False))
    one, ddp, independent = (statistics.median(rounds[k]) for k in ("one", "ddp", "independent"))
    bf16 = _launch(1, max(5, args.steps // 6), b, precision="bf16")  # slow on CPUs without bf16 units
    with tempfile.TemporaryDirectory() as folder:
        sample_one, sample_two = _sampling(1, Path(folder)), _sampling(2, Path(folder))
    rows = [
        ("1 process, batch B, fp32", one, 1.0),
        ("2 processes with DDP, B / 2 each, fp32", ddp, ddp / one),
        ("2 independent processes, B / 2 each (no all-reduce), fp32", independent, independent / one),
        ("1 process, batch B, bf16 autocast", bf16, bf16 / one),
    ]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, CPU, one thread per process"
    lines = [
        "## Distributed training and sampling",
        "",
        f"Command: `python benchmarks/distributed.py --steps {args.steps} --batch {b} --rounds {args.rounds} "
        "--write docs/benchmarks.md` "
        f"(or `make bench`). Machine: {machine}. MLP {DEPTH} x {WIDTH} on {DIM}-D data, global batch B = {b}, "
        f"{args.steps} timed steps after 10 untimed; median of {args.rounds} alternating rounds.",
        "",
        "| training run | steps/s | vs 1 process |",
        "|---|---|---|",
        *[f"| {label} | {rate:.1f} | {ratio:.2f}x |" for label, rate, ratio in rows],
        "",
        f"DDP's own cost per step (2 DDP processes against 2 independent ones doing the same work): "
        f"{independent / ddp - 1:+.0%} (target: at most +15%).",
        "",
        "| sampling (`sdeplug sample`, ring8 oracle, 4000 samples in 8 batches of 500, 500 steps) | samples/s |",
        "|---|---|",
        f"| 1 process | {sample_one:.0f} |",
        f"| 2 processes (batches shared out) | {sample_two:.0f} ({sample_two / sample_one:.2f}x) |",
        "",
        "On 2 cores the gradient all-reduce has no core of its own, so its cost shows unless the",
        "per-rank batch makes compute dominate (at B = 256 it was +59% here). bf16 autocast on a CPU",
        "without bf16 units is far slower than fp32; it is for GPUs.",
        "",
        "Not measured here: GPU rows (steps/s with fp32, bf16 and compile, samples/s of the fast",
        "samplers; no GPU was lent to this task) and several nodes. Streamed data: the next section.",
        "",
    ]
    section = "\n".join(lines)
    print(section)
    if args.write:
        replace_section(args.write, "## Distributed training and sampling", section)


if __name__ == "__main__":
    main()
