"""Streamed data: training steps per second when the data are held in memory, memory-mapped
from a .npy, or decoded from a folder of PNG files, with and without DataLoader workers.

The digits, upscaled to 32x32 (nearest), are written as a .npy and as PNG files in a
temporary folder; a small U-Net trains on each form in turn, the forms alternating in rounds
so machine noise hits them alike. The ratio is steps/s against the held tensor (1.0 = the
loader costs nothing).

Then the peak resident memory of training from a memory-mapped .npy of N rows against one
of 10 N rows (each in a fresh process): only the rows the batches touch are read, so it
should not grow with the file.

    python benchmarks/data.py [--steps 40] [--rounds 3] [--rows 20000] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
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
    for _ in range(2):  # start-up (and the workers' start) outside the clock; they keep running
        trainer.train_step()
    start = time.perf_counter()
    trainer.fit()
    return (steps - 2) / (time.perf_counter() - start)


def write_random_rows(path: Path, rows: int) -> None:
    """A .npy of ``rows`` random 1 x SIZE x SIZE float32 images, written in chunks."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 1, SIZE, SIZE))
    generator = np.random.default_rng(0)
    for first in range(0, rows, 10_000):
        chunk = array[first : first + 10_000]
        chunk[...] = generator.uniform(-1, 1, size=chunk.shape).astype(np.float32)
    array.flush()
    del array


def peak_memory_mib(path: Path, steps: int) -> float:
    """Peak resident memory (MiB) of a fresh process training ``steps`` steps on ``path``."""
    run = subprocess.run(
        [sys.executable, __file__, "--peak-of", str(path), "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(run.stdout.strip().splitlines()[-1])


def train_and_report_peak(path: Path, steps: int) -> None:
    torch.manual_seed(0)
    network = sdeplug.create("score_model", "unet", event_shape=(1, SIZE, SIZE), channels=16)
    settings = TrainSettings(steps=steps, batch_size=64, progress=False, checkpoint_every=None)
    Trainer(network, sdeplug.create("sde", "vp"), ArraySource(path), settings, flip=True).fit()
    # VmHWM, the peak of this process's own memory: ru_maxrss would also count the parent's
    # resident memory at the fork that started it
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)  # KiB


def memory_rows(rows: int, steps: int) -> list[str]:
    lines = [
        "| memory-mapped .npy | file size (MiB) | peak resident memory (MiB) | against the small file |",
        "|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        peaks = []
        for n in (rows, 10 * rows):
            path = Path(tmp) / f"rows{n}.npy"
            write_random_rows(path, n)
            peaks.append(peak_memory_mib(path, steps))
            lines.append(
                f"| {n} rows | {path.stat().st_size / 2**20:.0f} | {peaks[-1]:.0f} | {peaks[-1] / peaks[0]:.3f} |"
            )
            path.unlink()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the smaller memory-mapped file")
    parser.add_argument("--write", type=Path)
    parser.add_argument("--peak-of", type=Path, help=argparse.SUPPRESS)  # the child of the memory rows
    args = parser.parse_args()
    if args.peak_of:
        return train_and_report_peak(args.peak_of, args.steps)
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
    memory = memory_rows(args.rows, 4 * args.steps)
    text = "\n".join(lines) + "\n\n" + "\n".join(memory)
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
            f"loop. The peak memory rows train {4 * args.steps} steps in a fresh process per file.\n\n" + text + "\n"
        )
        replace_section(args.write, "## Streamed data", section)


if __name__ == "__main__":
    main()
