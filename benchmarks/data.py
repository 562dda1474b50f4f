"""Streamed data: training steps per second when the data are held in memory, memory-mapped
from a .npy, or decoded from a folder of PNG files, with and without DataLoader workers.

The digits, upscaled to 32x32 (nearest), are written as a .npy and as PNG files in a
temporary folder; a small U-Net trains on each form in turn, the forms alternating in rounds
so machine noise hits them alike. The ratio is steps/s against the held tensor (1.0 = the
loader costs nothing).

    python benchmarks/data.py [--steps 40] [--rounds 3] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import sdeplug
from sdeplug.app.datasets import load_dataset
from sdeplug.data import ArraySource, ImageFolder, load_all
from sdeplug.trainer import Trainer, TrainSettings

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402

SIZE = 32


def write_forms(folder: Path) -> tuple[Path, Path]:
    """The digits at SIZE x SIZE as one .npy (values in [-1, 1]) and as 8-bit grey PNG files."""
    digits = load_dataset("digits").train  # (n, 1, 8, 8) in [-1, 1]
    pixels = np.round((digits.numpy()[:, 0] + 1) * 127.5).astype(np.uint8)
    pixels = pixels.repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)
    images = folder / "png"
    images.mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p, "L").save(images / f"{i:05d}.png")
    array = folder / "digits.npy"
    np.save(array, pixels[:, None].astype(np.float32) / 127.5 - 1)
    return array, images


def steps_per_second(data, steps: int, workers: int) -> float:
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "unet", event_shape=(1, SIZE, SIZE), channels=16)
    settings = TrainSettings(steps=steps, batch_size=64, progress=False, checkpoint_every=None)
    trainer = Trainer(network, sdeplug.create("sde", "vp"), data, settings, flip=True, workers=workers)
    trainer.fit(until=2)  # start-up (and the workers' first batches) outside the clock
    start = time.perf_counter()
    trainer.fit()
    return (steps - 2) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        array, images = write_forms(Path(tmp))
        held = load_all(ArraySource(array))
        forms = {
            "held in memory (tensor)": (held, 0),
            "memory-mapped .npy, read in the loop": (ArraySource(array), 0),
            "memory-mapped .npy, 2 workers": (ArraySource(array), 2),
            "PNG folder, read in the loop": (ImageFolder(images), 0),
            "PNG folder, 2 workers": (ImageFolder(images), 2),
        }
        rates: dict[str, list[float]] = {name: [] for name in forms}
        for _ in range(args.rounds):
            for name, (data, workers) in forms.items():
                rates[name].append(steps_per_second(data, args.steps, workers))
    base = statistics.median(rates["held in memory (tensor)"])
    lines = ["| data | steps/s | against held |", "|---|---|---|"]
    for name, values in rates.items():
        rate = statistics.median(values)
        lines.append(f"| {name} | {rate:.2f} | {rate / base:.3f} |")
    text = "\n".join(lines)
    print(text)
    if args.write:
        machine = (
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
            f"threads, torch {torch.__version__}, CPU"
        )
        section = (
            "## Streamed data: held, memory-mapped and image folders\n\n"
            f"Command: `python benchmarks/data.py --steps {args.steps} --rounds {args.rounds} --write "
            f"docs/benchmarks.md` (or `make bench`). Machine: {machine}. U-Net 16 ch on the digits upscaled "
            f"to {SIZE}x{SIZE} ({len(held)} images), batch 64 with random flips; median of {args.rounds} "
            "rounds, the forms alternating. Workers are processes beside the training threads: where "
            "there are no spare cores they compete with them, where there are they take reading off the "
            "loop.\n\n" + text + "\n"
        )
        replace_section(args.write, "## Streamed data", section)


if __name__ == "__main__":
    main()
