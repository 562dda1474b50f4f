"""The ``sdeplug`` command: plugins, train, sample, likelihood, evaluate and convert, each driven by a TOML config.

Each command reads the config with its command-line overrides, runs a job of
``sdeplug.app.jobs`` and prints its report.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from sdeplug import distributed
from sdeplug.app.assemble import check_config
from sdeplug.app.config import Config, GuidanceConfig, SamplerConfig, load_config, parse_section, read_toml
from sdeplug.app.fingerprint import data_fingerprint
from sdeplug.app.jobs import likelihood_job, sample_job, train_job
from sdeplug.app.limits import check_device
from sdeplug.errors import ConfigError, SdeplugError, SdeplugWarning, error_text
from sdeplug.registry import get_registry
from sdeplug.tensors import check_seed

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


def configured(args: argparse.Namespace) -> Config:
    """The config with the command-line overrides applied."""
    config = load_config(args.config)
    if getattr(args, "seed", None) is not None:
        try:
            check_seed(args.seed, "--seed")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if getattr(args, "device", None) is not None:
        check_device(args.device, "--device")
    overrides = {k: getattr(args, k) for k in ("num", "seed", "device") if getattr(args, k, None) is not None}
    if getattr(args, "command", None) == "train" and "seed" in overrides:
        # for train, --seed seeds the run being trained: its initial weights, data order and loss noise
        seed = overrides.pop("seed")
        if getattr(args, "classifier", False):
            config = attrs.evolve(
                config,
                classifier=attrs.evolve(config.classifier, train=attrs.evolve(config.classifier.train, seed=seed)),
            )
        else:
            config = attrs.evolve(config, train=attrs.evolve(config.train, seed=seed))
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
        config = attrs.evolve(config, train=attrs.evolve(config.train, progress=False))
    for key, value in overrides.items():
        try:
            config = attrs.evolve(config, sample=attrs.evolve(config.sample, **{key: value}))
        except ValueError as exc:
            raise ConfigError(f"--{key.replace('_', '-')}: {error_text(exc)}") from None
    sampler_file = getattr(args, "sampler", None)
    if sampler_file:
        config = attrs.evolve(
            config, sampler=parse_section(_read_section(sampler_file, "sampler"), SamplerConfig, "sampler")
        )
    guidance_file = getattr(args, "guidance", None)
    if guidance_file:
        config = attrs.evolve(
            config, guidance=parse_section(_read_section(guidance_file, "guidance"), GuidanceConfig, "guidance")
        )
    if getattr(args, "scale", None):
        if config.guidance is None or config.guidance.kind != "classifier":
            raise ConfigError("--scale needs a [guidance] section with kind = 'classifier'")
        config = attrs.evolve(config, guidance=attrs.evolve(config.guidance, scale=tuple(args.scale)))
    return config


def _read_section(path: str, section: str) -> dict:
    """The one table of a TOML file that must hold only a [section] (--sampler, --guidance)."""
    raw = read_toml(path, f"{section} file")
    if set(raw) != {section}:
        raise ConfigError(f"{path} must hold only a [{section}] section; got {sorted(raw)}")
    return raw[section]


def _out_dir(args: argparse.Namespace, config: Config) -> Path:
    """The output folder (``~`` expanded), checked before any work: a folder, or a path whose
    nearest existing folder is writable. It is made when the first file is written, so a
    command that stops at its inputs leaves no empty folder behind."""
    given = "--out" if args.out else "[output] dir"
    out = Path(args.out or config.output.dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{given} = {str(out)!r} is an existing file; give a folder (it is made if missing)")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{given} = {str(out)!r}: cannot make the folder ({str(existing)!r} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == out:
            raise ConfigError(f"{given} = {str(out)!r} is not writable; give a folder you can write to")
        raise ConfigError(f"{given} = {str(out)!r}: cannot make the folder ({str(existing)!r} is not writable)")
    return out


def _checkpoint(args: argparse.Namespace, out: Path) -> str | None:
    """The checkpoint a command reads: --checkpoint; else the one in the --out folder if
    there is one (where `train --out` wrote it); else None, the [output] dir's."""
    if getattr(args, "checkpoint", None):
        return args.checkpoint
    if getattr(args, "out", None) and (out / "checkpoint.safetensors").is_file():
        return str(out / "checkpoint.safetensors")
    return None


def _toml_string(value: object) -> str:
    """``value`` as a TOML basic string (a JSON string is one: quotes, backslashes and control
    characters escaped), for lines a user copies into a config."""
    return json.dumps(str(value))


def _written(report: dict[str, Any]) -> None:
    print("wrote " + ", ".join(report["written"]))


@contextlib.contextmanager
def _processes(config: Config, args: argparse.Namespace) -> Iterator[int]:
    """Join torchrun's process group for the block if torchrun started this command; yields
    this process's rank (0 alone)."""
    joined = distributed.init_from_environment(config.sample.device, backend=getattr(args, "backend", None))
    try:
        if joined:
            distributed.check_same_everywhere(_run_settings(config, args), "settings")
        yield distributed.rank()
    except BaseException as exc:
        lost = distributed.lost_peer(exc) if joined else None  # e.g. DDP's all-reduce in backward()
        if joined:  # without waiting: the other ranks may never arrive
            distributed.shutdown()
        if lost is not None:
            raise lost from None
        raise
    if joined:
        distributed.shutdown(wait_for_all=True)


def _run_settings(config: Config, args: argparse.Namespace) -> dict[str, str]:
    """What the ranks of one run must agree on: a hash of each config section (with the
    command-line overrides applied), of the command line, and of the data's content."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

    resolved = attrs.asdict(config)
    settings = {f"[{section}]": digest(resolved[section]) for section in Config.SECTIONS}
    options = {k: v for k, v in vars(args).items() if k not in ("func", "config")}
    settings["the command line"] = digest(options)
    settings["the data"] = digest(data_fingerprint(config.data.name, config.data.options))
    return settings


def cmd_train(args: argparse.Namespace) -> int:
    """Train the [model] on the [data] (or with --classifier the [classifier] on its labels);
    resume from the checkpoint in [output] dir if there is one. Under torchrun, every process
    trains its share of each batch with DDP and rank 0 reports."""
    config = configured(args)
    check_config(config)
    out = _out_dir(args, config)
    with _processes(config, args) as rank:
        report = train_job(config, out, classifier=args.classifier, restart=args.restart)
    if rank != 0:
        return INTERRUPTED if report["interrupted"] else 0
    if report["resumed_at"] is not None:
        print(f"resuming from {report['checkpoint']} at step {report['resumed_at']} of {report['total_steps']}")
    if report["interrupted"]:
        print(
            f"interrupted at step {report['steps']}; checkpoint saved to {report['checkpoint']}. "
            "Run the same command to resume."
        )
        return INTERRUPTED
    print(
        f"trained {report['steps']} steps ({report['steps_this_run']} now, {report['seconds_this_run']:.1f} s); "
        f"final loss {report['final_loss']:.4f}"
    )
    if "held_out_accuracy" in report:
        print(
            "held-out accuracy on noisy x_t: "
            + ", ".join(f"t = {t}: {a:.3f}" for t, a in report["held_out_accuracy"].items())
        )
    _written(report)
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample with the config's sampler from the oracle or a trained checkpoint; save samples,
    a summary and a picture."""
    config = configured(args)
    check_config(config)
    out = _out_dir(args, config)
    with _processes(config, args) as rank:
        report = sample_job(config, out, _checkpoint(args, out))
    if rank != 0:
        return 0
    if report.get("kind") in ("cfg", "autoguidance", "conditional"):
        _print_class_sampling(report)
    elif config.guidance is not None:
        _print_guided(report)
    else:
        print(
            f"{report['num_samples']} samples in {report['seconds']:.1f} s, {report['nfe_per_sample']} score "
            "evaluations per sample" + (f", from {report['checkpoint']}" if report.get("checkpoint") else "")
        )
        if "energy_distance" in report:
            print(
                f"energy distance to fresh {report['reference']}: {report['energy_distance']:.3g} "
                f"(noise floor: mean {report['null_mean']:.3g}, std {report['null_std']:.3g})"
            )
        if "classifier" in report:
            c = report["classifier"]
            print(
                f"classifier confidence: samples {c['sample_confidence']:.3f}, held-out real "
                f"{c['real_confidence']:.3f}; class-frequency distance {c['class_frequency_tv_distance']:.3f}"
            )
    _written(report)
    return 0


def _print_class_sampling(report: dict[str, Any]) -> None:
    what = {"cfg": "classifier-free guidance", "autoguidance": "autoguidance"}.get(report["kind"], "conditional model")
    classes = f", {report['num_classes']} classes" if "num_classes" in report else ""
    print(f"{what}: {report['num_samples']} samples per weight{classes}, from {report['checkpoint']}")
    judged = "judge" in report
    if judged:
        print(f"agreement: how often the {report['judge']} gives the requested class")
    print("  weight  steps  network evals  " + ("agreement  " if judged else "") + "energy distance (floor)  seconds")
    for row in report["runs"]:
        energy = (
            f"{row['energy_distance']:.3g} ({row['null_mean']:.2g} +- {row['null_std']:.2g})"
            if "energy_distance" in row
            else "-"
        )
        agreement = f"{row['agreement']:9.3f}  " if judged else ""
        print(
            f"  {row['weight']:6g}  {row['nfe_per_sample']:5d}  {row['network_evaluations_per_sample']:13d}  "
            f"{agreement}{energy:23s}  {row['seconds']:7.1f}"
        )


def _print_guided(report: dict[str, Any]) -> None:
    if report["kind"] == "classifier":
        print(
            f"classifier guidance: agreement of the {report['judge']} with the requested class "
            f"(chance {report['chance']:.2f})"
        )
        print("  scale  agreement  NFE  seconds")
        for row in report["runs"]:
            print(f"  {row['scale']:5g}  {row['agreement']:9.3f}  {row['nfe_per_sample']:3d}  {row['seconds']:7.1f}")
        return
    print(
        f"{report['kind']}: {report['num_points']} points x {report['per_point']} completions in "
        f"{report['seconds']:.1f} s, {report['nfe_per_sample']} score evaluations per sample; "
        f"RMS error to the original {report['rms_error_to_the_original']:.3f} "
        f"(mean imputation {report['rms_error_of_mean_imputation']:.3f})"
    )
    if "class_kept_by_completions" in report:
        print(
            f"class of the original kept ({report['judge']}): completions "
            f"{report['class_kept_by_completions']:.3f}, mean imputation {report['class_kept_by_mean_imputation']:.3f}"
        )


def cmd_likelihood(args: argparse.Namespace) -> int:
    """log p_eps and bits/dim through the probability-flow ODE, on a data file or the held-out data."""
    config = configured(args)
    check_config(config, likelihood=True)
    out = _out_dir(args, config)
    with _processes(config, args) as rank:
        report = likelihood_job(config, out, _checkpoint(args, out))
    if rank != 0:
        return 0
    print(
        f"{report['num_samples']} points: mean log p = {report['mean_logp_nats']:.4f} nats, "
        f"{report['mean_bits_per_dim']:.4f} bits/dim (Gaussian baseline "
        f"{report['gaussian_baseline_bits_per_dim']:.4f}); {report['nfe_per_batch']} score evaluations per batch, "
        f"{report['seconds']:.1f} s"
    )
    if report.get("gaussian_baseline_caveat"):
        print(f"note: the Gaussian baseline {report['gaussian_baseline_caveat']}")
    if "oracle_mean_logp_nats" in report:
        print(
            f"oracle mixture: exact mean log p_eps = {report['oracle_mean_logp_nats']:.4f} nats; "
            f"mean |error| {report['mean_abs_error_nats_per_dim']:.2e} nats/dim"
        )
    _written(report)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Sample-quality metrics of the model's samples against the data ([evaluate])."""
    from sdeplug.app.evaluate import evaluate_job

    config = configured(args)
    if args.num is not None:  # --num sets the samples per seed of the evaluation
        try:
            config = attrs.evolve(config, evaluate=attrs.evolve(config.evaluate, num=args.num))
        except ValueError as exc:
            raise ConfigError(f"--num: {error_text(exc)}") from None
    if args.seed is not None:  # --seed evaluates with that one seed
        config = attrs.evolve(config, evaluate=attrs.evolve(config.evaluate, seeds=(args.seed,)))
    check_config(config)
    out = _out_dir(args, config)
    with _processes(config, args) as rank:
        report = evaluate_job(config, out, _checkpoint(args, out), sweep_file=args.sweep)
    if rank != 0:
        return 0
    if args.sweep:
        print(report["table"])
        _written(report)
        return 0
    identity = report["features"]
    print(
        f"{report['num_samples']} samples x {len(report['seeds'])} seeds, {report['nfe_per_sample']} score evaluations "
        f"per sample, features {identity['name']!r}"
        + ("" if report["comparable_with_published"] else " (not comparable with published numbers)")
    )
    if "weight" in report:
        guidance = report.get("guidance", {}).get("kind", "the conditional model")
        print(f"class-balanced samples, guidance weight w = {report['weight']:g} ({guidance})")
    print(f"  {'metric':16} {'samples (mean ± std)':>24} {'training data':>14} {'noise':>12}")
    for key, value in report["metrics"].items():
        if key.endswith("_std"):
            continue
        real, noise = (_number(report[row].get(key)) for row in ("real_data", "uniform_noise"))
        print(f"  {key:16} {value['mean']:>13.4g} ± {value['std']:<8.2g} {real:>14} {noise:>12}")
    _written(report)
    return 0


def _number(value: float | None) -> str:
    """A metric for a table: 4 significant digits, or "-" where it does not apply (noise's accuracy)."""
    return "-" if value is None else f"{value:.4g}"


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert a score_sde_pytorch checkpoint for the config's [sde] and [model] into an sdeplug
    weights checkpoint, checkpoint.safetensors in the output folder, where sample and
    likelihood look for it."""
    from sdeplug.app.convert import convert_job

    config = configured(args)
    out = _out_dir(args, config) / "checkpoint.safetensors"
    if out.exists():
        raise ConfigError(f"{out} exists already; remove it or convert into another folder (--out)")
    report = convert_job(config, args.source, out, weights=args.weights)
    source = report["source"]
    print(
        f"converted {source['file']} (step {source['step']}, {source['weights']} weights, "
        f"{report['parameters']:,} parameters, read as {report['parameterization']}) to {report['checkpoint']}"
    )
    return 0


def _budgets(text: str) -> list[int]:
    """--steps: one step count K, a range "K1-K2", or a list "K1,K2,..."."""
    try:
        if "-" in text.strip()[1:]:
            low, high = (int(part) for part in text.split("-", 1))
            budgets = list(range(low, high + 1))
        else:
            budgets = [int(part) for part in text.split(",")]
    except ValueError:
        budgets = []
    if not budgets or any(b < 1 for b in budgets):
        raise ConfigError(f'--steps takes a positive step count K, a range "3-8" or a list "3,5,8"; got {text!r}')
    return sorted(set(budgets))


def cmd_tune_grid(args: argparse.Namespace) -> int:
    """Tune the [sampler]'s time grid for --steps steps and write it to a file a config can name."""
    from sdeplug.app.tune import default_grid_file, tune_grid_job

    config = configured(args)
    check_config(config)
    budgets = _budgets(args.steps)
    if args.pilot < 2:
        raise ConfigError(f"--pilot must be at least 2 prior draws; got {args.pilot}")
    if args.out and len(budgets) > 1:
        raise ConfigError("--out names one grid file; with several step counts leave it out (grid-PREDICTOR-K.json)")
    out_files = {k: Path(args.out).expanduser() if args.out else default_grid_file(config, k) for k in budgets}
    for out in out_files.values():
        if out.exists() and out.is_dir():
            raise ConfigError(f"--out {str(out)!r} is a folder; give the grid file's path")
    progress = None if args.no_progress else (lambda message: print(f"  {message}", flush=True))
    reports = tune_grid_job(
        config, out_files, pilot=args.pilot, checkpoint=args.checkpoint, start=args.start, progress=progress
    )
    for report in reports:
        error, cost, steps = report["error_to_the_reference"], report["cost"], report["steps"]
        predictor, start = report["tuned_for"]["predictor"]["name"], report["start"]["grid"]
        print(
            f"tuned a {steps}-step grid for {predictor!r}: {report['won']} won; error to the reference solve "
            f"({error['objective']}) {error['validation']['start']:.4g} from {start!r} -> "
            f"{error['validation']['tuned']:.4g} on {cost['validation_samples']} validation draws "
            f"({error['pilot']['start']:.4g} -> {error['pilot']['tuned']:.4g} on the "
            f"{cost['pilot_samples']} pilot draws)"
        )
        print(
            f"cost: {cost['score_evaluations']} score evaluations of {cost['pilot_samples']} samples each, "
            f"{cost['seconds']:.1f} s"
        )
        print(
            f'use it: [sampler] steps = {steps}; [sampler.grid] name = "tuned", file = {_toml_string(out_files[steps])}'
        )
        _written(report)
    return 0


def cmd_moments(args: argparse.Namespace) -> int:
    """Write the training data's mean and covariance for the gaussian_start predictor."""
    from sdeplug.app.moments import default_moments_file, moments_job

    config = configured(args)
    if args.num is not None and args.num < 2:
        raise ConfigError(f"--num must be at least 2 training samples; got {args.num}")
    out = Path(args.out).expanduser() if args.out else default_moments_file(config)
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give the moments file's path")
    report = moments_job(config, out, num=args.num, full=args.full)
    print(
        f"the mean and {report['covariance']} covariance of {report['samples']} training samples "
        f"({report['dim']} numbers each)"
    )
    print(f'use it: [sampler.predictor] name = "gaussian_start", moments = {_toml_string(out)}')
    _written(report)
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser, seed_help: str = "random seed of the samples") -> None:
    """The config path and the flags that override its [sample] (or [train]) and [output] keys."""
    parser.add_argument("config", help="path to a TOML config")
    parser.add_argument("--out", help="output folder (default: [output] dir)")
    parser.add_argument("--num", type=int, help="number of samples or data points (overrides [sample] num)")
    parser.add_argument("--seed", type=int, help=seed_help)
    parser.add_argument("--device", help="torch device, e.g. cpu or cuda (overrides [sample] device)")
    parser.add_argument(
        "--backend",
        choices=("gloo", "nccl"),
        help="torch.distributed backend under torchrun (default: nccl on CUDA, gloo on CPU)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdeplug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list every registered part and where it came from")
    plugins.set_defaults(func=cmd_plugins)
    train = sub.add_parser("train", help="train a score model with a TOML config (resumes if interrupted)")
    _add_run_arguments(
        train,
        "seed of the training run: initial weights, data order and loss noise (overrides [train] seed, or "
        "[classifier.train] seed with --classifier); the same config and seed give the same checkpoint",
    )
    train.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start afresh")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--classifier",
        action="store_true",
        help="train the [classifier] (for guidance) on the data's labels instead of the score model",
    )
    train.set_defaults(func=cmd_train)
    sample = sub.add_parser("sample", help="sample with a TOML config")
    _add_run_arguments(sample, "random seed of the samples (overrides [sample] seed)")
    sample.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
    sample.add_argument("--sampler", help="a TOML file whose [sampler] section replaces the config's")
    sample.add_argument("--guidance", help="a TOML file whose [guidance] section replaces the config's")
    sample.add_argument(
        "--scale", type=float, nargs="+", help="guidance scale(s) or weight(s) (overrides [guidance] scale)"
    )
    sample.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    sample.set_defaults(func=cmd_sample)
    likelihood = sub.add_parser("likelihood", help="log-likelihood and bits/dim with a TOML config")
    _add_run_arguments(likelihood, "random seed of the dequantisation and the probes (overrides [sample] seed)")
    likelihood.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
    likelihood.add_argument("--no-progress", action="store_true", help="hide progress output (as the other commands)")
    likelihood.set_defaults(func=cmd_likelihood)
    evaluate = sub.add_parser("evaluate", help="FID, KID, precision/recall of the model's samples ([evaluate])")
    _add_run_arguments(evaluate, "evaluate with this one seed (overrides [evaluate] seeds)")
    evaluate.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
    evaluate.add_argument("--sampler", help="a TOML file whose [sampler] section replaces the config's")
    evaluate.add_argument(
        "--guidance", help="a TOML file whose [guidance] section (cfg or autoguidance) replaces the config's"
    )
    evaluate.add_argument(
        "--sweep", help="a sweep file (examples/sweeps/): every sampler in it at every NFE budget, a table and a plot"
    )
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate.set_defaults(func=cmd_evaluate)
    tune = sub.add_parser(
        "tune-grid", help="tune the time grid of the config's deterministic predictor to its model and SDE"
    )
    tune.add_argument("config", help="path to a TOML config; its [sampler] names the predictor (corrector none)")
    tune.add_argument(
        "--steps", required=True, help='steps K of the tuned grid, or several: a range "3-8" or a list "3,5,8"'
    )
    tune.add_argument("--pilot", type=int, default=256, help="prior draws the grid is tuned on (default 256)")
    tune.add_argument("--start", help="registered grid to start from (default: [sampler.grid], else logsnr)")
    tune.add_argument("--out", help="the grid file to write (default: [output] dir/grid-PREDICTOR-K.json)")
    tune.add_argument("--seed", type=int, help="seed of the pilot draws (overrides [sample] seed)")
    tune.add_argument("--device", help="torch device, e.g. cpu or cuda (overrides [sample] device)")
    tune.add_argument("--checkpoint", help="trained checkpoint (default: [output] dir/checkpoint.safetensors)")
    tune.add_argument("--sampler", help="a TOML file whose [sampler] section replaces the config's")
    tune.add_argument("--guidance", help="a TOML file whose [guidance] (cfg, autoguidance) the grid is tuned for")
    tune.add_argument("--no-progress", action="store_true", help="print only the result")
    tune.set_defaults(func=cmd_tune_grid)
    moments = sub.add_parser(
        "moments", help="the training data's mean and covariance, for the gaussian_start predictor's free first step"
    )
    moments.add_argument("config", help="path to a TOML config; its [data] is read")
    moments.add_argument("--out", help="the file to write (default: [output] dir/moments.safetensors)")
    moments.add_argument("--num", type=int, help="use the first NUM training samples (default: all)")
    covariance = moments.add_mutually_exclusive_group()
    covariance.add_argument(
        "--full", dest="full", action="store_true", default=None, help="a full covariance (default up to 4096 numbers)"
    )
    covariance.add_argument(
        "--per-coordinate", dest="full", action="store_false", help="per-coordinate variances (default above 4096)"
    )
    moments.set_defaults(func=cmd_moments)
    convert = sub.add_parser(
        "convert", help="convert a checkpoint of the paper's code (score_sde_pytorch) into sdeplug's format"
    )
    convert.add_argument("config", help="path to a TOML config whose [sde] and [model] match the checkpoint")
    convert.add_argument("source", help="a score_sde_pytorch checkpoint_*.pth (read with weights_only loading)")
    convert.add_argument("--out", help="output folder (default: [output] dir); writes checkpoint.safetensors there")
    convert.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="the EMA weights the paper samples with (default) or the raw model weights",
    )
    convert.set_defaults(func=cmd_convert)
    return parser


def _line(text: str) -> None:
    """One line on stderr in one write, so that the lines of several ranks never interleave."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """sdeplug's own warnings as one line on stderr; others as Python prints them."""
    if issubclass(category, SdeplugWarning):
        _line(f"sdeplug: warning: {message}")
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    try:
        return args.func(args)
    except SdeplugError as exc:
        _line(f"sdeplug: error: {exc}")
        return 2
    finally:
        warnings.showwarning = _show_warning
