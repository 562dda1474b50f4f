"""The ``sdeplug`` command: ``sdeplug plugins`` and ``sdeplug sample CONFIG``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch

from sdeplug.config import Config, load_config
from sdeplug.errors import ConfigError, SdeplugError
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.plugins import get_registry


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every registered part with its kind, plugin and distribution; then any problems."""
    registry = get_registry()
    rows = [(p.kind, p.name, p.plugin, p.distribution) for p in registry.parts()]
    header = ("kind", "name", "plugin", "distribution")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip())
    problems = [str(f) for f in registry.failures] + [str(d) for d in registry.duplicates()]
    if problems:
        print("\nproblems:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def _oracle_mixture(config: Config) -> GaussianMixture:
    if config.data.options:
        raise ConfigError(f"[data] {config.data.name!r} is a built-in mixture and takes no options")
    return preset(config.data.name)


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample from the config's score model, save the samples, a summary, and a plot for 2-D data."""
    config = load_config(args.config)
    overrides = {k: getattr(args, k) for k in ("num", "seed", "device") if getattr(args, k) is not None}
    if args.no_progress:
        overrides["progress"] = False
    config = attrs.evolve(config, sample=attrs.evolve(config.sample, **overrides))
    sde = config.check()
    run = config.sample
    dtype, device = run.torch_dtype, torch.device(run.device)
    mixture = _oracle_mixture(config).to(device)
    score = mixture.score_model(sde)
    generator = torch.Generator(device).manual_seed(run.seed)
    batch = run.batch_size or run.num
    chunks, nfe, start = [], 0, time.perf_counter()
    for first in range(0, run.num, batch):
        size = min(batch, run.num - first)
        result = config.sampler.run(
            sde, score, (size, *mixture.event_shape), generator=generator, device=device, dtype=dtype,
            progress=run.progress,
        )
        chunks.append(result.x.cpu())
        nfe = max(nfe, result.nfe)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)

    out = Path(args.out or config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "samples.npy", samples.numpy())
    summary = {
        "config": config.source,
        "sde": {"name": config.sde.name, **config.sde.options},
        "sampler": _sampler_summary(config),
        "num_samples": run.num,
        "nfe_per_sample": nfe,
        "seconds": round(seconds, 3),
    }
    summary.update(_quality(samples, mixture, run.seed))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    written = [out / "samples.npy", out / "summary.json"]
    if config.output.plot and mixture.dim == 2:
        from sdeplug.plotting import scatter_2d

        reference = mixture.cpu().sample(run.num, torch.Generator().manual_seed(run.seed + 1))
        title = f"{config.sde.name}, {_describe_sampler(config)}, NFE {nfe}"
        written.append(scatter_2d(samples, reference, out / "samples.png", title))
    print(f"{run.num} samples in {seconds:.1f} s, {nfe} score evaluations per sample")
    if "energy_distance" in summary:
        print(
            f"energy distance to fresh oracle samples: {summary['energy_distance']:.3g} "
            f"(noise floor: mean {summary['null_mean']:.3g}, std {summary['null_std']:.3g})"
        )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _sampler_summary(config: Config) -> dict:
    s = attrs.asdict(config.sampler)
    for unused in (("predictor", "corrector", "order") if config.sampler.kind == "ode" else ("solver",)):
        s.pop(unused)
    return s


def _describe_sampler(config: Config) -> str:
    s = config.sampler
    if s.kind == "ode":
        return f"ODE {s.solver.name}"
    return f"PC {s.predictor.name} + {s.corrector.name}"


def _quality(samples: torch.Tensor, mixture: GaussianMixture, seed: int) -> dict[str, float]:
    """Energy distance to fresh true samples, beside its own noise floor (skipped for huge runs)."""
    from sdeplug.testing.stats import energy_distance, energy_null

    n = samples.shape[0]
    if not 10 <= n <= 5000:
        return {}
    mixture = mixture.cpu().to(torch.float64)
    generator = torch.Generator().manual_seed(seed + 2)
    null = energy_null(lambda k, g: mixture.sample(k, g), n, reps=10, generator=generator)
    value = energy_distance(samples, mixture.sample(n, generator))
    return {"energy_distance": value, "null_mean": null.mean, "null_std": null.std}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdeplug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list every registered part and where it came from")
    plugins.set_defaults(func=cmd_plugins)
    sample = sub.add_parser("sample", help="sample with a TOML config")
    sample.add_argument("config", help="path to a TOML config")
    sample.add_argument("--out", help="output folder (default: [output] dir)")
    sample.add_argument("--num", type=int, help="number of samples (overrides [sample] num)")
    sample.add_argument("--seed", type=int, help="random seed (overrides [sample] seed)")
    sample.add_argument("--device", help="torch device, e.g. cpu or cuda (overrides [sample] device)")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=cmd_sample)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SdeplugError as exc:
        print(f"sdeplug: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
