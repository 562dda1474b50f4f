"""The ``sdeplug`` command: ``sdeplug plugins``, ``sdeplug sample CONFIG``, ``sdeplug likelihood CONFIG``."""

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
    config = _configured(args)
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


def cmd_likelihood(args: argparse.Namespace) -> int:
    """log p_eps and bits/dim through the probability-flow ODE, on a data file or oracle samples."""
    from sdeplug.datafiles import load_array
    from sdeplug.likelihood import bits_per_dim, log_likelihood, uniform_dequantize

    config = _configured(args)
    sde = config.check(likelihood=True)
    run, lk = config.sample, config.likelihood
    dtype, device = run.torch_dtype, torch.device(run.device)
    mixture = _oracle_mixture(config).to(device)
    score = mixture.score_model(sde)
    eps = sde.default_eps if lk.eps is None else lk.eps
    generator = torch.Generator(device).manual_seed(run.seed)
    if lk.data_file:
        x = load_array(lk.data_file)[: run.num].to(device=device, dtype=dtype)
        source = lk.data_file
    else:
        x = mixture.sample(run.num, torch.Generator(device).manual_seed(run.seed + 1), sde, eps).to(dtype)
        source = f"{run.num} exact samples of p_eps of the oracle mixture {config.data.name!r}"
    if tuple(x.shape[1:]) != mixture.event_shape:
        raise ConfigError(f"the data have event shape {tuple(x.shape[1:])}; the model expects {mixture.event_shape}")
    if lk.dequantize:
        x = uniform_dequantize(x, lk.data_range, generator)
    batch = run.batch_size or x.shape[0]
    logps, zs, nfe, start = [], [], 0, time.perf_counter()
    for first in range(0, x.shape[0], batch):
        result = log_likelihood(
            sde, score, x[first : first + batch], solver=lk.solver.name, solver_options=lk.solver.options, eps=eps,
            divergence=lk.divergence, probes=lk.probes, noise=lk.noise, generator=generator,
        )
        logps.append(result.logp.detach())
        zs.append(result.z.detach())
        nfe = max(nfe, result.nfe)
    seconds = time.perf_counter() - start
    logp, z, dim = torch.cat(logps), torch.cat(zs), mixture.dim
    bpd = bits_per_dim(logp, dim, lk.data_range)
    n = logp.shape[0]
    summary = {
        "config": config.source,
        "data": source,
        "sde": {"name": config.sde.name, **config.sde.options},
        "likelihood": attrs.asdict(lk),
        "num_samples": n,
        "nfe_per_batch": nfe,
        "seconds": round(seconds, 3),
        "mean_logp_nats": float(logp.mean()),
        "stderr_logp_nats": float(logp.std() / n**0.5) if n > 1 else None,
        "mean_bits_per_dim": float(bpd.mean()),
    }
    t_eps = torch.full((n,), eps, device=device, dtype=dtype)
    exact = mixture.log_prob(x, t_eps, sde)
    terminal = mixture.log_prob(z, torch.full((n,), sde.T, device=device, dtype=dtype), sde)
    summary.update({
        "oracle_mean_logp_nats": float(exact.mean()),
        "mean_abs_error_nats_per_dim": float((logp - exact).abs().mean() / dim),
        "mean_prior_gap_nats_per_dim": float((sde.prior_logp(z) - terminal).abs().mean() / dim),
    })
    out = Path(args.out or config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "logp.npy", logp.cpu().numpy())
    (out / "likelihood.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"{n} samples: mean log p = {summary['mean_logp_nats']:.4f} nats, {summary['mean_bits_per_dim']:.4f} bits/dim "
          f"({nfe} score evaluations per batch, {seconds:.1f} s)")
    print(f"oracle mixture: exact mean log p_eps = {summary['oracle_mean_logp_nats']:.4f} nats; mean |error| "
          f"{summary['mean_abs_error_nats_per_dim']:.2e} nats/dim, of which the prior p_T != prior gap is "
          f"{summary['mean_prior_gap_nats_per_dim']:.2e}")
    print(f"wrote {out / 'likelihood.json'}, {out / 'logp.npy'}")
    return 0


def _configured(args: argparse.Namespace) -> Config:
    """The config with the command-line overrides applied."""
    config = load_config(args.config)
    overrides = {k: getattr(args, k) for k in ("num", "seed", "device") if getattr(args, k) is not None}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    return attrs.evolve(config, sample=attrs.evolve(config.sample, **overrides))


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


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The config path and the flags that override its [sample] and [output] keys."""
    parser.add_argument("config", help="path to a TOML config")
    parser.add_argument("--out", help="output folder (default: [output] dir)")
    parser.add_argument("--num", type=int, help="number of samples or data points (overrides [sample] num)")
    parser.add_argument("--seed", type=int, help="random seed (overrides [sample] seed)")
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (overrides [sample] device)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdeplug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list every registered part and where it came from")
    plugins.set_defaults(func=cmd_plugins)
    sample = sub.add_parser("sample", help="sample with a TOML config")
    _add_run_arguments(sample)
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=cmd_sample)
    likelihood = sub.add_parser("likelihood", help="log-likelihood and bits/dim with a TOML config")
    _add_run_arguments(likelihood)
    likelihood.set_defaults(func=cmd_likelihood)
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
