"""Sample quality on the digits with the digits' own learnt features: the trained model of
examples/digits.toml and a barely trained one (the same config, fewer steps), beside the
other split's real digits and uniform noise, through `sdeplug evaluate`.

    python benchmarks/quality.py [--out bench-output/quality] [--write docs/benchmarks.md]

The fully trained model is the one `make demo` leaves in demo-output/digits (trained here
if it is missing); the barely trained one is trained into --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from sdeplug_cli import main as sdeplug

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "digits.toml"
BARELY_STEPS = 500


def run(*args: str) -> None:
    if sdeplug(list(args)) != 0:
        raise SystemExit(f"sdeplug {' '.join(args)} failed")


def evaluate(config: Path, out: Path, *sampler: str) -> dict:
    run("evaluate", str(config), "--out", str(out), "--no-progress", *sampler)
    return json.loads((out / "evaluate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-output/quality"))
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trained_dir = ROOT / "demo-output" / "digits"
    if not (trained_dir / "checkpoint.safetensors").exists():
        run("train", str(CONFIG), "--no-progress")
    # the barely trained model: the same config with fewer steps, into its own folder
    barely = args.out / "digits-barely.toml"
    text = CONFIG.read_text().replace("steps = 1500\n", f"steps = {BARELY_STEPS}\n", 1)
    barely.write_text(text.replace('dir = "demo-output/digits"', f'dir = "{args.out / "barely"}"'))
    run("train", str(barely), "--no-progress")
    # both evaluated with the same learnt features: the trained model's folder keeps them
    pc = ("--sampler", str(ROOT / "examples" / "samplers" / "pc.toml"))
    trained = evaluate(CONFIG, trained_dir)
    trained_pc = evaluate(CONFIG, trained_dir, *pc)
    (args.out / "barely").mkdir(exist_ok=True)
    features = (trained_dir / "features.safetensors").read_bytes()
    (args.out / "barely" / "features.safetensors").write_bytes(features)
    weak = evaluate(barely, args.out / "barely", *pc)
    assert weak["features"] == trained["features"], "the two runs must use the same features"

    # the frontier: fast samplers at small budgets, on the trained model, with the same features
    sweep_dir = args.out / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    (sweep_dir / "features.safetensors").write_bytes(features)
    sweep_file = ROOT / "examples" / "sweeps" / "fast_samplers.toml"
    run("evaluate", str(CONFIG), "--out", str(sweep_dir), "--sweep", str(sweep_file), "--no-progress")
    frontier = (sweep_dir / "sweep.md").read_text()
    if args.write:
        shutil.copyfile(sweep_dir / "sweep.png", args.write.parent / "sweep-digits.png")

    keys = ("fid", "kid", "precision", "recall", "inception_score")
    lines = ["| samples | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]

    def row(label: str, values: dict) -> str:
        cells = []
        for key in keys:
            v = values[key]
            cells.append(f"{v['mean']:.4g} ± {v['std']:.2g}" if isinstance(v, dict) else f"{v:.4g}")
        return f"| {label} | " + " | ".join(cells) + " |"

    lines.append(row("real digits (training split, as many)", trained["real_data"]))
    lines.append(row("trained U-Net (1500 steps), dopri5 ODE", trained["metrics"]))
    lines.append(row("trained U-Net (1500 steps), PC 500 steps", trained_pc["metrics"]))
    lines.append(row(f"barely trained U-Net ({BARELY_STEPS} steps), PC 500 steps", weak["metrics"]))
    lines.append(row("uniform noise", trained["uniform_noise"]))
    text = "\n".join(lines)
    print(text)
    if args.write:
        section = (
            "## Sample quality on the digits\n\n"
            "Command: `python benchmarks/quality.py --write docs/benchmarks.md` (after `make demo`). "
            "`sdeplug evaluate "
            f"examples/digits.toml`: {trained['num_samples']} samples per seed, seeds {trained['seeds']} (mean ± std "
            f"over seeds), against the {trained['reference']['n']} held-out digits, on features learnt from the "
            "digits' labels (`data_classifier`: not comparable with published FIDs). The barely trained model is the "
            f"same config stopped at {BARELY_STEPS} steps (its probability-flow ODE diverges, so both are also "
            "sampled with the predictor-corrector sampler of examples/samplers/pc.toml).\n\n" + text + "\n\n"
            "The frontier on the trained model: `sdeplug evaluate examples/digits.toml --sweep "
            "examples/sweeps/fast_samplers.toml` (same protocol and features; seconds are the sampling time of all "
            "seeds; the plot is [sweep-digits.png](sweep-digits.png)).\n\n" + frontier
        )
        replace_section(args.write, "## Sample quality", section)


if __name__ == "__main__":
    main()
