"""The ``sdeplug`` command: plugins, train, sample and likelihood, each driven by a TOML config."""

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

from sdeplug.assembly import (
    build_dataset,
    build_network,
    build_score,
    default_checkpoint,
    run_config_dict,
)
from sdeplug.config import Config, GuidanceConfig, SamplerConfig, load_config, tomllib
from sdeplug.errors import ConfigError, SdeplugError
from sdeplug.plugins import get_registry
from sdeplug.tensors import per_sample, randn_like

INTERRUPTED = 130


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


def _configured(args: argparse.Namespace) -> Config:
    """The config with the command-line overrides applied."""
    config = load_config(args.config)
    overrides = {k: getattr(args, k) for k in ("num", "seed", "device") if getattr(args, k, None) is not None}
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    config = attrs.evolve(config, sample=attrs.evolve(config.sample, **overrides))
    if getattr(args, "no_progress", False):
        config = attrs.evolve(config, train=attrs.evolve(config.train, progress=False))
    sampler_file = getattr(args, "sampler", None)
    if sampler_file:
        config = attrs.evolve(config, sampler=SamplerConfig.from_table(_read_section(sampler_file, "sampler")))
    guidance_file = getattr(args, "guidance", None)
    if guidance_file:
        config = attrs.evolve(config, guidance=GuidanceConfig.from_table(_read_section(guidance_file, "guidance")))
    if getattr(args, "scale", None):
        if config.guidance is None or config.guidance.kind != "classifier":
            raise ConfigError("--scale needs a [guidance] section with kind = 'classifier'")
        config = attrs.evolve(config, guidance=attrs.evolve(config.guidance, scale=tuple(args.scale)))
    return config


def _read_section(path: str, section: str) -> dict:
    """The one table of a TOML file that must hold only a [section] (--sampler, --guidance)."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the {section} file {path}: {exc}") from exc
    if set(raw) != {section}:
        raise ConfigError(f"{path} must hold only a [{section}] section; got {sorted(raw)}")
    return raw[section]


def _out_dir(args: argparse.Namespace, config: Config) -> Path:
    out = Path(args.out or config.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    """Train the [model] on the [data] (or with --classifier the [classifier] on its labels);
    resume from the checkpoint in [output] dir if there is one."""
    from sdeplug.guided_runs import build_classifier, classifier_run_config
    from sdeplug.plotting import loss_curve
    from sdeplug.trainer import Trainer

    config = _configured(args)
    sde = config.check()
    dataset = build_dataset(config)
    device, dtype = torch.device(config.sample.device), config.sample.torch_dtype
    out = _out_dir(args, config)
    if args.classifier:
        network = build_classifier(config, dataset).to(device=device, dtype=dtype)
        settings, run_config, prefix = config.classifier.train, classifier_run_config(config), "classifier"
        if args.no_progress:
            settings = attrs.evolve(settings, progress=False)
        checkpoint = out / "classifier.safetensors"
        trainer = Trainer(network, sde, dataset.train, settings, labels=dataset.train_labels,
                          checkpoint_path=checkpoint, config=run_config)
        what = f"{config.classifier.network.name} classifier"
    else:
        if config.model.name == "oracle":
            raise ConfigError("[model] 'oracle' is the exact score and needs no training; name a score network, e.g. 'mlp'")
        network = build_network(config, dataset).to(device=device, dtype=dtype)
        settings, run_config, prefix = config.train, run_config_dict(config), ""
        checkpoint = out / "checkpoint.safetensors"
        trainer = Trainer(
            network, sde, dataset.train, settings, checkpoint_path=checkpoint, config=run_config,
            on_sample=lambda tr: _sample_during_training(tr, config, dataset, out),
        )
        what = config.model.name
    if checkpoint.exists() and not args.restart:
        trainer.load()
        if trainer.config != run_config:
            raise ConfigError(
                f"{checkpoint} belongs to another run ({trainer.config}); use --restart to train afresh, "
                "or another [output] dir"
            )
        print(f"resuming from {checkpoint} at step {trainer.step} of {settings.steps}")
    start, first_step = time.perf_counter(), trainer.step
    trainer.fit()
    seconds = time.perf_counter() - start
    if trainer.interrupted:
        print(f"interrupted at step {trainer.step}; checkpoint saved to {checkpoint}. Run the same command to resume.")
        return INTERRUPTED
    history = trainer.history[: trainer.step].cpu()
    done = trainer.step - first_step
    summary = {
        "config": config.source,
        "steps": trainer.step,
        "final_loss": float(history[-100:].mean()) if len(history) else None,
        "seconds_this_run": round(seconds, 2),
        "steps_per_second": round(done / seconds, 1) if done and seconds > 0 else None,
        "parameters": sum(p.numel() for p in network.parameters()),
    }
    if args.classifier:
        summary["held_out_accuracy"] = _noisy_accuracy(trainer.trained_network(), sde, dataset, config.sample.seed)
    stem = f"{prefix}-" if prefix else ""
    (out / f"{stem}train.json").write_text(json.dumps(summary, indent=2) + "\n")
    if len(history):
        loss_curve(history, out / f"{stem}loss.png", title=f"{what} on {config.data.name}, {config.sde.name}")
    print(f"trained {trainer.step} steps ({done} now, {seconds:.1f} s); final loss {summary['final_loss']:.4f}")
    if args.classifier:
        print("held-out accuracy on noisy x_t: " + ", ".join(f"t = {t}: {a:.3f}" for t, a in
                                                              summary["held_out_accuracy"].items()))
    print(f"wrote {checkpoint}, {out / f'{stem}train.json'}, {out / f'{stem}loss.png'}")
    return 0


def _noisy_accuracy(network, sde, dataset, seed: int) -> dict[str, float]:
    """The classifier's accuracy on held-out points perturbed to a few times t."""
    network = network.eval()
    param = next(network.parameters())
    x0 = dataset.test.to(device=param.device, dtype=param.dtype)
    labels = dataset.test_labels.to(param.device)
    generator = torch.Generator(param.device).manual_seed(seed)
    accuracy = {}
    with torch.no_grad():
        for t in (0.01, 0.25, 0.5, 0.75):
            tt = torch.full((x0.shape[0],), t * sde.T, device=param.device, dtype=param.dtype)
            mean, std = sde.marginal_prob(x0, tt)
            xt = mean + per_sample(std, x0) * randn_like(x0, generator)
            accuracy[f"{t:g}T"] = float((network(xt, tt).argmax(-1) == labels).double().mean())
    return accuracy


def _sample_during_training(trainer, config: Config, dataset, out: Path) -> None:
    n = min(config.sample.num, 500)
    result = config.sampler.run(trainer.sde, trainer.score_model(), (n, *dataset.event_shape),
                                generator=torch.Generator(trainer.device).manual_seed(0), device=trainer.device,
                                dtype=trainer.dtype)
    _plot(result.x, dataset, out / f"samples-step{trainer.step}.png", f"step {trainer.step}")


def _plot(samples: torch.Tensor, dataset, path: Path, title: str) -> Path | None:
    from sdeplug.plotting import image_grid, scatter_2d

    shape = tuple(samples.shape[1:])
    if shape == (2,):
        return scatter_2d(samples, dataset.test[: samples.shape[0]], path, title)
    if len(shape) == 3:
        return image_grid(samples[:100], path, title)
    return None


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample with the config's sampler from the oracle or a trained checkpoint; save samples,
    a summary and a picture."""
    config = _configured(args)
    sde = config.check()
    run = config.sample
    dtype, device = run.torch_dtype, torch.device(run.device)
    dataset = build_dataset(config)
    score = build_score(config, sde, dataset, args.checkpoint, device, dtype)
    if config.guidance is not None:
        return _sample_guided(args, config, sde, score, dataset, device, dtype)
    generator = torch.Generator(device).manual_seed(run.seed)
    batch = run.batch_size or run.num
    chunks, nfe, start = [], 0, time.perf_counter()
    for first in range(0, run.num, batch):
        size = min(batch, run.num - first)
        result = config.sampler.run(sde, score, (size, *dataset.event_shape), generator=generator, device=device,
                                    dtype=dtype, progress=run.progress)
        chunks.append(result.x.cpu())
        nfe = max(nfe, result.nfe)
    seconds = time.perf_counter() - start
    samples = torch.cat(chunks)

    out = _out_dir(args, config)
    np.save(out / "samples.npy", samples.numpy())
    summary = {
        "config": config.source,
        "model": config.model.name,
        "checkpoint": None if config.model.name == "oracle" else str(args.checkpoint or default_checkpoint(config)),
        "sde": {"name": config.sde.name, **config.sde.options},
        "sampler": _sampler_summary(config),
        "num_samples": run.num,
        "nfe_per_sample": nfe,
        "seconds": round(seconds, 3),
    }
    summary.update(_quality(samples, dataset, run.seed))
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    written = [out / "samples.npy", out / "summary.json"]
    if config.output.plot:
        title = f"{config.model.name}, {config.sde.name}, {_describe_sampler(config)}, NFE {nfe}"
        picture = _plot(samples, dataset, out / "samples.png", title)
        if picture is not None:
            written.append(picture)
    print(f"{run.num} samples in {seconds:.1f} s, {nfe} score evaluations per sample")
    if "energy_distance" in summary:
        print(
            f"energy distance to fresh {summary['reference']}: {summary['energy_distance']:.3g} "
            f"(noise floor: mean {summary['null_mean']:.3g}, std {summary['null_std']:.3g})"
        )
    if "classifier" in summary:
        c = summary["classifier"]
        print(
            f"classifier confidence: samples {c['sample_confidence']:.3f}, held-out real {c['real_confidence']:.3f}; "
            f"class-frequency distance {c['class_frequency_tv_distance']:.3f}"
        )
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _sample_guided(args, config: Config, sde, score, dataset, device, dtype) -> int:
    """Conditional sampling as the [guidance] section says; writes guidance.json and pictures."""
    from sdeplug.guided_runs import run_classifier_guidance, run_inpainting

    out = _out_dir(args, config)
    run = run_classifier_guidance if config.guidance.kind == "classifier" else run_inpainting
    report = run(config, sde, score, dataset, out, device=device, dtype=dtype, progress=config.sample.progress)
    summary = {"config": config.source, "model": config.model.name, "sde": {"name": config.sde.name, **config.sde.options},
               "sampler": _sampler_summary(config), "num_samples": config.sample.num, **report}
    (out / "guidance.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    if report["kind"] == "classifier":
        print(f"classifier guidance: agreement of the {report['judge']} with the requested class "
              f"(chance {report['chance']:.2f})")
        print("  scale  agreement  NFE  seconds")
        for row in report["runs"]:
            print(f"  {row['scale']:5g}  {row['agreement']:9.3f}  {row['nfe_per_sample']:3d}  {row['seconds']:7.1f}")
    else:
        print(f"{report['kind']}: {report['num_points']} points x {report['per_point']} completions in "
              f"{report['seconds']:.1f} s, {report['nfe_per_sample']} score evaluations per sample; "
              f"RMS error to the original {report['rms_error_to_the_original']:.3f} "
              f"(mean imputation {report['rms_error_of_mean_imputation']:.3f})")
        if "class_kept_by_completions" in report:
            print(f"class of the original kept ({report['judge']}): completions "
                  f"{report['class_kept_by_completions']:.3f}, mean imputation {report['class_kept_by_mean_imputation']:.3f}")
    print(f"wrote {out / 'guidance.json'} and the samples beside it")
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


def _quality(samples: torch.Tensor, dataset, seed: int) -> dict[str, object]:
    """How close the samples are to the data: energy distance beside its noise floor for
    mixtures and small-dimensional data, a classifier's view for labelled images."""
    from sdeplug.evaluation import classifier_report
    from sdeplug.testing.stats import EnergyNull, energy_distance, energy_null

    n = samples.shape[0]
    report: dict[str, object] = {}
    if dataset.train_labels is not None and dataset.mixture is None:  # labelled real data (the digits)
        report["classifier"] = classifier_report(dataset, samples, seed)
    if not 10 <= n <= 5000 or samples[0].numel() > 64:
        return report
    generator = torch.Generator().manual_seed(seed + 2)
    if dataset.mixture is not None:
        mixture = dataset.mixture.cpu()
        null = energy_null(lambda k, g: mixture.sample(k, g), n, reps=10, generator=generator)
        reference, what = mixture.sample(n, generator), "oracle samples"
    elif min(len(dataset.test), len(dataset.train)) >= n:
        # The floor: random sets of n training points against the same held-out reference.
        reference, what = dataset.test[:n], "held-out data"
        floor = torch.tensor([
            energy_distance(dataset.train[torch.randperm(len(dataset.train), generator=generator)[:n]], reference)
            for _ in range(10)
        ], dtype=torch.float64)
        null = EnergyNull(n=n, mean=float(floor.mean()), std=float(floor.std()), reps=len(floor))
    else:
        return report
    report.update({"reference": what, "energy_distance": energy_distance(samples, reference),
                   "null_mean": null.mean, "null_std": null.std})
    return report


def cmd_likelihood(args: argparse.Namespace) -> int:
    """log p_eps and bits/dim through the probability-flow ODE, on a data file or the held-out data."""
    from sdeplug.datafiles import load_array
    from sdeplug.evaluation import gaussian_logp
    from sdeplug.likelihood import bits_per_dim, log_likelihood, uniform_dequantize

    config = _configured(args)
    sde = config.check(likelihood=True)
    run, lk = config.sample, config.likelihood
    dtype, device = run.torch_dtype, torch.device(run.device)
    dataset = build_dataset(config)
    score = build_score(config, sde, dataset, args.checkpoint, device, dtype)
    eps = sde.default_eps if lk.eps is None else lk.eps
    generator = torch.Generator(device).manual_seed(run.seed)
    if lk.data_file:
        x, source = load_array(lk.data_file)[: run.num], lk.data_file
    else:
        x, source = dataset.test[: run.num], f"the first {min(run.num, len(dataset.test))} held-out points of {dataset.name!r}"
    x = x.to(device=device, dtype=dtype)
    if tuple(x.shape[1:]) != dataset.event_shape:
        raise ConfigError(f"the data have event shape {tuple(x.shape[1:])}; the model expects {dataset.event_shape}")
    data_range = lk.data_range or dataset.data_range
    levels = lk.levels or dataset.levels or 256
    dequantize = lk.dequantize if lk.dequantize is not None else dataset.levels is not None
    if dequantize:
        if data_range == "none":
            raise ConfigError("[likelihood] dequantize = true needs data_range = '[0,1]' or '[-1,1]'")
        x = uniform_dequantize(x, data_range, generator, levels)
    batch = run.batch_size or x.shape[0]
    logps, nfe, start = [], 0, time.perf_counter()
    for first in range(0, x.shape[0], batch):
        result = log_likelihood(
            sde, score, x[first : first + batch], solver=lk.solver.name, solver_options=lk.solver.options, eps=eps,
            divergence=lk.divergence, probes=lk.probes, noise=lk.noise, generator=generator,
        )
        logps.append(result.logp.detach())
        nfe = max(nfe, result.nfe)
    seconds = time.perf_counter() - start
    logp, dim, n = torch.cat(logps), x[0].numel(), x.shape[0]
    bpd = bits_per_dim(logp, dim, data_range, levels)
    train = dataset.train.to(dtype)
    if dequantize:
        train = uniform_dequantize(train, data_range, torch.Generator().manual_seed(run.seed + 3), levels)
    gauss_bpd = bits_per_dim(gaussian_logp(train, x.cpu()), dim, data_range, levels)
    summary = {
        "config": config.source,
        "model": config.model.name,
        "data": source,
        "sde": {"name": config.sde.name, **config.sde.options},
        "likelihood": attrs.asdict(lk),
        "data_range": data_range,
        "levels": levels if data_range != "none" else None,
        "dequantized": dequantize,
        "num_samples": n,
        "nfe_per_batch": nfe,
        "seconds": round(seconds, 3),
        "mean_logp_nats": float(logp.mean()),
        "stderr_logp_nats": float(logp.std() / n**0.5) if n > 1 else None,
        "mean_bits_per_dim": float(bpd.mean()),
        "gaussian_baseline_bits_per_dim": float(gauss_bpd.mean()),
    }
    if dataset.mixture is not None:
        exact = dataset.mixture.to(device).log_prob(x, torch.full((n,), eps, device=device, dtype=dtype), sde)
        summary.update({
            "oracle_mean_logp_nats": float(exact.mean()),
            "mean_abs_error_nats_per_dim": float((logp - exact).abs().mean() / dim),
        })
    out = _out_dir(args, config)
    np.save(out / "logp.npy", logp.cpu().numpy())
    (out / "likelihood.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"{n} points: mean log p = {summary['mean_logp_nats']:.4f} nats, {summary['mean_bits_per_dim']:.4f} bits/dim "
          f"(Gaussian baseline {summary['gaussian_baseline_bits_per_dim']:.4f}); {nfe} score evaluations per batch, "
          f"{seconds:.1f} s")
    if dataset.mixture is not None:
        print(f"oracle mixture: exact mean log p_eps = {summary['oracle_mean_logp_nats']:.4f} nats; "
              f"mean |error| {summary['mean_abs_error_nats_per_dim']:.2e} nats/dim")
    print(f"wrote {out / 'likelihood.json'}, {out / 'logp.npy'}")
    return 0


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
    train = sub.add_parser("train", help="train a score model with a TOML config (resumes if interrupted)")
    _add_run_arguments(train)
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument("--classifier", action="store_true",
                       help="train the [classifier] (for guidance) on the data's labels instead of the score model")
    train.set_defaults(func=cmd_train)
    sample = sub.add_parser("sample", help="sample with a TOML config")
    _add_run_arguments(sample)
    sample.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
    sample.add_argument("--sampler", help="a TOML file whose [sampler] section replaces the config's")
    sample.add_argument("--guidance", help="a TOML file whose [guidance] section replaces the config's")
    sample.add_argument("--scale", type=float, nargs="+", help="classifier guidance scale(s) (overrides [guidance] scale)")
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=cmd_sample)
    likelihood = sub.add_parser("likelihood", help="log-likelihood and bits/dim with a TOML config")
    _add_run_arguments(likelihood)
    likelihood.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
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
