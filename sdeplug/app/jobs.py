"""What the ``sdeplug`` commands compute: train, sample and likelihood from a checked config.

Each job writes its files into an output folder and returns a report (a JSON-ready dict);
printing it is the command line's business (``sdeplug.app.cli``).
"""

from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from sdeplug import distributed
from sdeplug.app.arrays import save_array
from sdeplug.app.assemble import (
    build_dataset,
    build_network,
    build_score,
    check_config,
    check_sizes,
    decoder_of,
    default_checkpoint,
    in_seeded_batches,
    run_config_dict,
    run_sampler,
    same_run,
    sample_seeded,
    sampling_data,
    summary_header,
)
from sdeplug.app.config import Config
from sdeplug.app.datasets import Dataset, rows, take
from sdeplug.app.fingerprint import data_fingerprint, describe_change, same_data
from sdeplug.conditioning import NULL_LABEL, Conditioned, num_classes
from sdeplug.errors import ConfigError, DataError, DataMismatchWarning
from sdeplug.files import write_atomically
from sdeplug.sampling import SampleResult
from sdeplug.tensors import non_finite_rows, per_sample, randn_like

#: The Gaussian baseline of ``likelihood`` is fitted to at most this many training rows.
GAUSSIAN_FIT_ROWS = 50_000


def write_json(path: Path, report: dict[str, Any]) -> Path:
    """Write a report whole or not at all."""
    text = json.dumps(report, indent=2, default=str) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def plot_samples(samples: torch.Tensor, dataset: Dataset, path: Path, title: str) -> Path | None:
    """A scatter plot against the data for 2-D samples, a grid for images; None otherwise."""
    from sdeplug.app.plotting import image_grid, scatter_2d

    shape = tuple(samples.shape[1:])
    if shape == (2,):
        return scatter_2d(samples, rows(dataset.test, samples.shape[0]), path, title)
    if len(shape) == 3:
        return image_grid(samples[:100], path, title)
    return None


# Training -------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Networks draw their initial weights from torch's global generator: seed it from the
    run's seed for the build, then put it back, so the same config gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def train_job(config: Config, out: Path, *, classifier: bool = False, restart: bool = False) -> dict[str, Any]:
    """Train the [model] on the [data] (or the [classifier] on its labels); resume from the
    checkpoint in ``out`` unless ``restart``. The report says whether Ctrl-C stopped it."""

    sde = check_config(config)
    settings = config.classifier.train if classifier and config.classifier else config.train
    from sdeplug.trainer import check_batch_split

    try:  # before the data are read
        check_batch_split(settings, distributed.world_size())
    except ValueError as exc:
        raise ConfigError(f"{'[classifier.train]' if classifier else '[train]'} {exc}") from None
    dataset = build_dataset(config)
    check_sizes(config, dataset, train=settings)
    device, dtype = distributed.local_device(config.sample.device), config.sample.torch_dtype
    try:
        return _train(config, sde, dataset, device, dtype, out, classifier=classifier, restart=restart)
    except DataError as exc:
        options = "".join(f", {k} = {v!r}" for k, v in config.data.options.items())
        raise DataError(f"[data] {config.data.name!r}{options}: {exc}") from exc


def class_labels(config: Config, network: torch.nn.Module, dataset: Dataset) -> torch.Tensor | None:
    """The training labels of a class-conditional [model] (None for an unconditional one),
    refused in one line when the data have none or more classes than the network."""
    classes = num_classes(network)
    if classes is None:
        if config.train.label_dropout is not None:
            raise ConfigError("[train] label_dropout is for a class-conditional [model] (set num_classes)")
        return None
    if dataset.train_labels is None:
        raise ConfigError(
            f"[model] num_classes = {classes} needs labelled data; [data] {config.data.name!r} has no labels "
            "(labelled: the digits, the oracle mixtures, arrays with a labels file, image folders of class folders)"
        )
    if len(dataset.train_labels) and int(dataset.train_labels.max()) >= classes:
        raise ConfigError(
            f"[model] num_classes = {classes}, but the labels of [data] {config.data.name!r} run up to "
            f"{int(dataset.train_labels.max())}; set num_classes = {int(dataset.train_labels.max()) + 1}"
        )
    return dataset.train_labels


def _train(config, sde, dataset, device, dtype, out: Path, *, classifier: bool, restart: bool) -> dict[str, Any]:
    """train_job's work once the config is checked and the data loaded."""
    from sdeplug.app.guided_jobs import build_classifier, classifier_run_config
    from sdeplug.trainer import Trainer, training_lock

    if config.output.plot:  # matplotlib only where it draws; a missing plots extra fails before training
        from sdeplug.app import plotting

    if classifier:
        with _seeded(config.classifier.train.seed):
            network = build_classifier(config, dataset).to(device=device, dtype=dtype)
        settings, run_config, stem = config.classifier.train, classifier_run_config(config), "classifier-"
        if not config.train.progress:
            settings = attrs.evolve(settings, progress=False)
        checkpoint = out / "classifier.safetensors"
        trainer = Trainer(
            network,
            sde,
            dataset.train,
            settings,
            labels=dataset.train_labels,
            flip=dataset.flip,
            checkpoint_path=checkpoint,
            config=run_config,
        )
        what = f"{config.classifier.network.name} classifier"
    else:
        if config.model.name == "oracle":
            raise ConfigError(
                "[model] 'oracle' is the exact score and needs no training; name a score network, e.g. 'mlp'"
            )
        with _seeded(config.train.seed):
            network = build_network(config, dataset).to(device=device, dtype=dtype)
        settings, run_config, stem = config.train, run_config_dict(config), ""
        checkpoint = out / "checkpoint.safetensors"
        trainer = Trainer(
            network,
            sde,
            dataset.train,
            settings,
            labels=class_labels(config, network, dataset),
            flip=dataset.flip,
            workers=dataset.workers,
            checkpoint_path=checkpoint,
            config=run_config,
            on_sample=lambda tr: _sample_during_training(tr, config, dataset, out),
        )
        what = config.model.name
    fingerprint = data_fingerprint(config.data.name, config.data.options)
    with training_lock(checkpoint):  # one run per checkpoint, from loading it to the last save
        resumed_at = None
        if checkpoint.exists() and not restart:
            trainer.load()
            recorded = {k: v for k, v in trainer.config.items() if k != "data_fingerprint"}
            if same_run(recorded, run_config, run_config):
                raise ConfigError(
                    f"{checkpoint} belongs to another run ({recorded}); use --restart to train "
                    "afresh, or another [output] dir"
                )
            if not same_data(trainer.config.get("data_fingerprint"), fingerprint):
                warnings.warn(
                    f"the data of [data] {config.data.name!r} at {config.data.options['path']} changed since "
                    f"{checkpoint} was written ({describe_change(trainer.config['data_fingerprint'], fingerprint)}); "
                    "training goes on with the data as they are now (--restart to train afresh on them)",
                    DataMismatchWarning,
                    stacklevel=2,
                )
            resumed_at = trainer.step
        trainer.config = {**run_config, "data_fingerprint": fingerprint}  # what its checkpoints record
        start, first_step = time.perf_counter(), trainer.step
        trainer.fit()
        seconds = time.perf_counter() - start
        report: dict[str, Any] = {
            "checkpoint": str(checkpoint),
            "resumed_at": resumed_at,
            "total_steps": settings.steps,
            "interrupted": trainer.interrupted,
            "steps": trainer.step,
        }
        if trainer.interrupted:
            return report
        history = distributed.mean_over_ranks(trainer.history[: trainer.step]).cpu()  # the global batch's loss
        done = trainer.step - first_step
        summary = {
            "config": config.source,
            "steps": trainer.step,
            "final_loss": float(history[-100:].mean()) if len(history) else None,
            "seconds_this_run": round(seconds, 2),
            "steps_per_second": round(done / seconds, 1) if done and seconds > 0 else None,
            "parameters": sum(p.numel() for p in network.parameters()),
        }
        if classifier:
            summary["held_out_accuracy"] = noisy_accuracy(trainer.trained_network(), sde, dataset, config.sample.seed)
        if not distributed.is_main():  # rank 0 reports and writes
            return {**report, **summary, "steps_this_run": done, "written": []}
        summary_file = out / f"{stem}train.json"
        if done == 0 and summary_file.exists():  # a finished run run again: its summary stays as it was
            return {**report, **summary, "steps_this_run": 0, "written": []}
        written = [checkpoint, write_json(summary_file, summary)]
        if len(history) and config.output.plot:
            written.append(
                plotting.loss_curve(
                    history, out / f"{stem}loss.png", title=f"{what} on {config.data.name}, {config.sde.name}"
                )
            )
        return {**report, **summary, "steps_this_run": done, "written": [str(p) for p in written]}


def noisy_accuracy(network: torch.nn.Module, sde, dataset: Dataset, seed: int) -> dict[str, float]:
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


def _sample_during_training(trainer, config: Config, dataset: Dataset, out: Path) -> None:
    if not distributed.is_main():
        return
    n = min(config.sample.num, 500)
    result = run_sampler(
        config.sampler,
        trainer.sde,
        trainer.score_model(),
        (n, *dataset.event_shape),
        generator=torch.Generator(trainer.device).manual_seed(0),
        device=trainer.device,
        dtype=trainer.dtype,
    )
    plot_samples(result.x, dataset, out / f"samples-step{trainer.step}.png", f"step {trainer.step}")


# Sampling -------------------------------------------------------------------------------


def sampler_summary(config: Config) -> dict[str, Any]:
    s = attrs.asdict(config.sampler)
    for unused in ("predictor", "corrector", "order") if config.sampler.kind == "ode" else ("solver",):
        s.pop(unused)
    return s


def describe_sampler(config: Config) -> str:
    s = config.sampler
    return f"ODE {s.solver.name}" if s.kind == "ode" else f"PC {s.predictor.name} + {s.corrector.name}"


def sample_job(config: Config, out: Path, checkpoint: str | None = None) -> dict[str, Any]:
    """Sample with the config's sampler from the oracle or a trained checkpoint (with the
    [guidance] section, conditionally); save samples, a report and a picture."""
    sde = check_config(config)
    run = config.sample
    dtype, device = run.torch_dtype, distributed.local_device(run.device)
    dataset, network = sampling_data(config)
    check_sizes(config, dataset)
    score = build_score(config, sde, dataset, checkpoint, device, dtype, network)
    header = {**summary_header(config), "sampler": sampler_summary(config), "num_samples": run.num}
    from sdeplug.app.conditional_jobs import is_class_sampling, run_class_sampling

    if is_class_sampling(config, score):
        report, files = run_class_sampling(
            config,
            sde,
            score,
            dataset,
            out,
            device=device,
            dtype=dtype,
            progress=run.progress and distributed.is_main(),
            sample_quality=sample_quality,
            is_main=distributed.is_main(),
        )
        report = {**header, "checkpoint": str(checkpoint or default_checkpoint(config)), **report}
        if not distributed.is_main():
            return {**report, "written": []}
        name = "guidance.json" if config.guidance is not None else "summary.json"
        written = [*files, write_json(out / name, report)]
        return {**report, "written": [str(p) for p in written]}
    if config.guidance is not None:
        if not distributed.is_main():  # guided sampling runs in one process: rank 0
            return {**header, "written": []}
        from sdeplug.app.guided_jobs import run_classifier_guidance, run_inpainting

        guided = run_classifier_guidance if config.guidance.kind == "classifier" else run_inpainting
        report = {
            **header,
            **guided(config, sde, score, dataset, out, device=device, dtype=dtype, progress=run.progress),
        }
        write_json(out / "guidance.json", report)
        return {**report, "written": [str(out / "guidance.json")]}
    start = time.perf_counter()
    samples, nfe = sample_seeded(
        config.sampler,
        sde,
        score,
        dataset.event_shape,
        run.num,
        run.batch_size,
        run.seed,
        device=device,
        dtype=dtype,
        progress=run.progress,
        decode=decoder_of(score),
    )
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # rank 0 evaluates and writes
        return {**header, "nfe_per_sample": nfe, "seconds": round(seconds, 3), "written": []}
    save_array(out / "samples.npy", samples.numpy())
    report = {
        **header,
        "checkpoint": None if config.model.name == "oracle" else str(checkpoint or default_checkpoint(config)),
        "nfe_per_sample": nfe,
        "seconds": round(seconds, 3),
        **sample_quality(samples, dataset, run.seed),
    }
    written = [out / "samples.npy", write_json(out / "summary.json", report)]
    if config.output.plot:
        title = f"{config.model.name}, {config.sde.name}, {describe_sampler(config)}, NFE {nfe}"
        picture = plot_samples(samples, dataset, out / "samples.png", title)
        if picture is not None:
            written.append(picture)
    return {**report, "written": [str(p) for p in written]}


def _conditional_truth(mixture, labels: torch.Tensor):
    """n -> exact samples of the mixture's components named by ``labels``, taken in turn (for
    n other than their number, the law of a label drawn from them)."""

    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        out = torch.empty(n, *mixture.event_shape, dtype=mixture.means.dtype)
        wanted = labels.repeat(-(-n // len(labels)))[:n]
        for k in range(mixture.num_components):
            rows = wanted == k
            if rows.any():
                out[rows] = mixture.component(k).sample(int(rows.sum()), generator)
        return out

    return sample


def sample_quality(
    samples: torch.Tensor, dataset: Dataset, seed: int, labels: torch.Tensor | None = None
) -> dict[str, Any]:
    """How close the samples are to the data: energy distance beside its noise floor for
    mixtures and small-dimensional data, a classifier's view for labelled images. Samples of
    requested ``labels`` from an oracle mixture are compared with its components drawn with
    the same labels: the exact conditional law."""
    from sdeplug.app.evaluation import classifier_report
    from sdeplug.stats import EnergyNull, energy_distance, energy_null

    n = samples.shape[0]
    report: dict[str, Any] = {}
    # labelled real data held in memory (the digits); a streamed set is not read whole to judge
    if dataset.train_labels is not None and dataset.mixture is None and isinstance(dataset.train, torch.Tensor):
        report["classifier"] = classifier_report(dataset, samples, seed)
    if not 10 <= n <= 5000 or samples[0].numel() > 64:
        return report
    generator = torch.Generator().manual_seed(seed + 2)
    if dataset.mixture is not None:
        mixture = dataset.mixture.cpu()
        truth = (lambda k, g: mixture.sample(k, g)) if labels is None else _conditional_truth(mixture, labels)
        null = energy_null(truth, n, generator=generator)
        reference = truth(n, generator)
        what = "oracle samples" if labels is None else "oracle samples of the requested components"
    elif min(len(dataset.test), len(dataset.train)) >= n:
        # The floor: random sets of n training points against the same held-out reference.
        reference, what = rows(dataset.test, n), "held-out data"
        floor = torch.tensor(
            [
                energy_distance(
                    take(dataset.train, torch.randperm(len(dataset.train), generator=generator)[:n]), reference
                )
                for _ in range(10)
            ],
            dtype=torch.float64,
        )
        null = EnergyNull(n=n, mean=float(floor.mean()), std=float(floor.std()), reps=len(floor))
    else:
        return report
    report.update(
        {
            "reference": what,
            "energy_distance": energy_distance(samples, reference),
            "null_mean": null.mean,
            "null_std": null.std,
        }
    )
    return report


# Likelihood -----------------------------------------------------------------------------


def likelihood_job(config: Config, out: Path, checkpoint: str | None = None) -> dict[str, Any]:
    """log p_eps and bits/dim through the probability-flow ODE, on a data file or the held-out data."""
    from sdeplug.app.arrays import load_array
    from sdeplug.app.evaluation import gaussian_logp
    from sdeplug.likelihood import LIKELIHOOD_EPS, bits_per_dim, log_likelihood, uniform_dequantize

    sde = check_config(config, likelihood=True)
    run, lk = config.sample, config.likelihood
    dtype, device = run.torch_dtype, distributed.local_device(run.device)
    dataset = build_dataset(config)
    score = build_score(config, sde, dataset, checkpoint, device, dtype)
    eps = LIKELIHOOD_EPS if lk.eps is None else lk.eps
    labels = None
    if lk.data_file:
        x, source = load_array(lk.data_file)[: run.num], lk.data_file
    else:
        x, source = (
            rows(dataset.test, run.num),
            f"the first {min(run.num, len(dataset.test))} held-out points of {dataset.name!r}",
        )
        if dataset.test_labels is not None:
            labels = dataset.test_labels[: x.shape[0]]
    conditioned_on = None
    if num_classes(score) is not None:  # log p(x | y) with the points' own labels, else log p(x)
        conditioned_on = "each point's own label" if labels is not None else "no class (the null label)"
        labels = labels if labels is not None else torch.full((x.shape[0],), NULL_LABEL, dtype=torch.int64)
    bad = non_finite_rows(x)
    if len(bad):
        raise DataError(
            f"{source}: row {int(bad[0])} has NaN or inf values (the first of {len(bad)} such rows); a likelihood "
            "needs finite data"
        )
    x = x.to(device=device, dtype=dtype)
    if tuple(x.shape[1:]) != dataset.event_shape:
        raise ConfigError(f"the data have event shape {tuple(x.shape[1:])}; the model expects {dataset.event_shape}")
    data_range = lk.data_range or dataset.data_range
    levels = lk.levels or dataset.levels or 256
    # quantised data (a data set's own levels, or [likelihood] levels given) are dequantised
    # unless the config says otherwise: bits/dim of a discrete law's points under a density mean nothing
    quantised = dataset.levels is not None or lk.levels is not None
    dequantize = lk.dequantize if lk.dequantize is not None else quantised
    if dequantize:
        if data_range == "none":
            raise ConfigError("[likelihood] dequantize = true needs data_range = '[0,1]' or '[-1,1]'")
        # every rank dequantises all points alike; each batch then draws its probes from its own seed
        x = uniform_dequantize(x, data_range, torch.Generator(device).manual_seed(run.seed), levels)
    start = time.perf_counter()
    logp, nfe = in_seeded_batches(
        x.shape[0],
        run.batch_size,
        run.seed,
        device,
        lambda first, size, generator: _logp_batch(
            log_likelihood(
                sde,
                score if conditioned_on is None else Conditioned(score, labels[first : first + size]),
                x[first : first + size],
                solver=lk.solver.name,
                solver_options=lk.solver.options,
                eps=eps,
                divergence=lk.divergence,
                probes=lk.probes,
                noise=lk.noise,
                generator=generator,
                quadrature=lk.quadrature,
            )
        ),
    )
    seconds = time.perf_counter() - start
    if not distributed.is_main():  # rank 0 evaluates and writes
        return {"nfe_per_batch": nfe, "seconds": round(seconds, 3), "written": []}
    dim, n = x[0].numel(), x.shape[0]
    bpd = bits_per_dim(logp, dim, data_range, levels)
    train = rows(dataset.train, GAUSSIAN_FIT_ROWS).to(dtype)
    if dequantize:
        train = uniform_dequantize(train, data_range, torch.Generator().manual_seed(run.seed + 3), levels)
    gauss_bpd = bits_per_dim(gaussian_logp(train, x.cpu()), dim, data_range, levels)
    caveat = None
    if len(train) <= dim:
        caveat = (
            f"is fitted on {len(train)} training rows in {dim} dimensions: its covariance is singular (held "
            "up by 1e-6 I), so its bits/dim are no reference; give more training data for a meaningful baseline"
        )
    report: dict[str, Any] = {
        **summary_header(config),
        "data": source,
        **({"conditioned_on": conditioned_on} if conditioned_on else {}),
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
        "gaussian_baseline_caveat": caveat,
    }
    if dataset.mixture is not None:
        exact = dataset.mixture.to(device).log_prob(x, torch.full((n,), eps, device=device, dtype=dtype), sde).cpu()
        report.update(
            {
                "oracle_mean_logp_nats": float(exact.mean()),
                "mean_abs_error_nats_per_dim": float((logp - exact).abs().mean() / dim),
            }
        )
    save_array(out / "logp.npy", logp.numpy())
    written = [write_json(out / "likelihood.json", report), out / "logp.npy"]
    return {**report, "written": [str(p) for p in written]}


def _logp_batch(result) -> SampleResult:
    """A likelihood batch as ``in_batches`` reads it: the log-densities as ``x``, with the evaluations."""
    return SampleResult(x=result.logp, nfe=result.nfe)
