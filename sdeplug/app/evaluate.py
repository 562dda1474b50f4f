"""``sdeplug evaluate``: sample-quality metrics with a fixed protocol.

The model draws [evaluate] num samples for each seed with the config's sampler. The
samples' features (a registered feature extractor) are compared with the reference
split of the data. Each metric is reported with its mean, its std and the per-seed
values. Two rows give the scale: as many points of the other split of the data (what a
model that reproduced its training data would get), and uniform noise in the data's range.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor
from tqdm import tqdm

from sdeplug import distributed
from sdeplug.app.assemble import (
    PerBatch,
    build_dataset,
    build_score,
    check_config,
    decoder_of,
    sample_seeded,
    summary_header,
)
from sdeplug.app.conditional_jobs import guided_scores, guiding_model, sampling_labels
from sdeplug.app.config import Config, PartSpec, SamplerConfig
from sdeplug.app.datasets import Dataset, rows
from sdeplug.app.jobs import sampler_summary, write_json
from sdeplug.app.sweep import WeightSweep, read_sweep, sweep_runs, sweep_table, weight_table
from sdeplug.conditioning import evaluations_per_call, num_classes
from sdeplug.errors import ConfigError, DataMismatchWarning, SdeplugWarning
from sdeplug.files import write_atomically
from sdeplug.metrics import (
    FeatureStats,
    fid,
    inception_score,
    kid,
    load_stats,
    precision_recall,
    save_stats,
)
from sdeplug.registry import get_registry

#: Features are computed this many samples at a time.
FEATURE_BATCH = 500


def _tuned(
    entry,
    sampler: SamplerConfig,
    budgets: list[int],
    cache: dict,
    sde,
    score,
    dataset: Dataset,
    seed: int,
    device,
    dtype,
):
    """The sweep sampler with its grid tuned for its steps, and the cost. The grids of all of an
    entry's ``budgets`` (step counts) are tuned together once (on rank 0, then shared), so more
    steps are not worse than fewer on the validation draws."""
    from sdeplug.app.tune import tune_sampler_grids

    if entry.label not in cache:
        found = None
        if distributed.is_main():
            results, start, _ = tune_sampler_grids(
                sampler,
                sde,
                score,
                tuple(dataset.event_shape),
                budgets,
                pilot=entry.pilot,
                seed=seed,
                device=device,
                dtype=dtype,
            )
            found = {
                result.steps: (
                    list(result.fractions),
                    {
                        "start": start,
                        "won": result.won,
                        "score_evaluations": result.score_evaluations,
                        "pilot_samples": result.pilot,
                        "seconds": round(result.seconds, 3),
                        "objective": result.objective,
                        "validation_error_start": result.validation_error_start,
                        "validation_error_tuned": result.validation_error,
                    },
                )
                for result in results
            }
        cache[entry.label] = distributed.broadcast_object(found)
    fractions, tuning = cache[entry.label][sampler.steps]
    return attrs.evolve(sampler, grid=PartSpec("tuned", {"fractions": fractions})), tuning


class SmallSampleWarning(SdeplugWarning):
    """Too few samples for FID to be comparable with FIDs at other sample sizes."""


def build_extractor(config: Config, dataset: Dataset, out: Path) -> torch.nn.Module:
    """The [evaluate.features] extractor. One that learns from the data (``fit``) is trained
    on the training split's labels once and kept in ``out``/features.safetensors."""
    spec = config.evaluate.features
    options = {"event_shape": dataset.event_shape, **spec.options}
    cls = get_registry().get("feature_extractor", spec.name).cls
    if getattr(cls, "needs_weights", False) and not spec.options.get("weights"):
        raise ConfigError(
            f'[evaluate.features] {spec.name!r} needs its weights file: weights = "path" (sdeplug never downloads '
            "weights; for 'inception', pytorch-fid's pt_inception-2015-12-05-6726825d.pth)"
        )
    extractor = get_registry().create("feature_extractor", spec.name, **options)
    if hasattr(extractor, "fit") and "weights" not in spec.options:
        path = out / "features.safetensors"
        if path.exists():
            extractor.load(str(path))
        else:
            if dataset.train_labels is None:
                raise ConfigError(
                    f"[evaluate] features {spec.name!r} learns from the data's labels; {dataset.name!r} has none "
                    "(use features 'pixels', or an extractor with weights)"
                )
            extractor.fit(rows(dataset.train).float(), dataset.train_labels, seed=0)
            if distributed.is_main():
                path.parent.mkdir(parents=True, exist_ok=True)  # a plugin's save() writes where it is told
                extractor.save(str(path))
    return extractor.eval()


@attrs.frozen
class Extracted:
    """The features of a set of samples, and their class probabilities when asked for."""

    features: Tensor
    probabilities: Tensor | None


def features_of(extractor: torch.nn.Module, x: Tensor, device: torch.device, probabilities: bool = False) -> Extracted:
    """Features of ``x`` (every rank holds all of it), computed on ``device`` (where the
    extractor is), and with ``probabilities`` its class probabilities too; under torchrun
    each rank extracts its share and every rank gets the whole, in order. A collective:
    every rank must call it."""
    mine = x.tensor_split(distributed.world_size())[distributed.rank()].to(device)
    with torch.no_grad():
        features = [extractor(part) for part in mine.split(FEATURE_BATCH)]
        probs = [extractor.class_probabilities(part) for part in mine.split(FEATURE_BATCH)] if probabilities else []
        if not features:  # more ranks than samples: an empty share of the right width
            width = extractor(x[:1].to(device)).shape[1]
            features = [torch.empty((0, width), device=device)]
            if probabilities:
                classes = extractor.class_probabilities(x[:1].to(device)).shape[1]
                probs = [torch.empty((0, classes), device=device)]
    gathered = distributed.gather_rows(torch.cat(features).double())
    gathered_probs = distributed.gather_rows(torch.cat(probs).double()) if probabilities else None
    return Extracted(gathered.cpu(), gathered_probs.cpu() if gathered_probs is not None else None)


def reference_features(
    config: Config, dataset: Dataset, extractor, out: Path, device: torch.device
) -> tuple[Tensor, FeatureStats]:
    """Features of the reference split and the statistics FID compares with: those of
    [evaluate] reference_stats when given (refused if made with other features), else the
    split's own, which are kept in ``out`` as a statistics file naming how they were made."""
    run = config.evaluate
    split = dataset.test if run.reference == "test" else dataset.train
    features = features_of(extractor, rows(split).float(), device).features
    data = {"name": config.data.name, **config.data.options, "split": run.reference}
    if run.reference_stats is not None:
        stats, meta = load_stats(Path(run.reference_stats).expanduser(), extractor=extractor.identity())
        if stats.mean.shape != (features.shape[1],):
            raise ConfigError(f"[evaluate] reference_stats {run.reference_stats} has {len(stats.mean)} features")
        if meta.get("data") and meta["data"] != data:
            warnings.warn(
                f"[evaluate] reference_stats {run.reference_stats} were computed on {meta['data']}, but the config "
                f"evaluates against {data}; the distances compare with that other data",
                DataMismatchWarning,
                stacklevel=2,
            )
        return features, stats
    stats = FeatureStats.of(features)
    path = out / f"reference-stats-{run.reference}.safetensors"
    if distributed.is_main():
        save_stats(path, stats, extractor=extractor.identity(), data=data)
    return features, stats


def metrics_of(
    config: Config,
    reference: Tensor,
    stats: FeatureStats,
    extracted: Extracted,
    seed: int,
    labels: Tensor | None = None,
) -> dict:
    """Every [evaluate] metric of extracted samples against the reference features; with
    ``labels`` (the classes asked for, or real data's own) and class probabilities, the
    ``accuracy``: how often the data classifier gives that class."""
    run = config.evaluate
    features = extracted.features
    result: dict[str, float] = {}
    if labels is not None and extracted.probabilities is not None:
        result["accuracy"] = float((extracted.probabilities.argmax(1) == labels).double().mean())
    if "fid" in run.metrics:
        result["fid"] = fid(FeatureStats.of(features), stats)
        if run.extrapolate:
            result["fid_infinity"] = extrapolated_fid(features, stats)
    if "kid" in run.metrics:
        generator = torch.Generator().manual_seed(seed)
        result["kid"], result["kid_std"] = kid(
            reference, features, subsets=run.kid_subsets, subset_size=run.kid_subset_size, generator=generator
        )
    if "precision_recall" in run.metrics:
        result["precision"], result["recall"] = precision_recall(reference, features, k=run.k)
    if "inception_score" in run.metrics:
        result["inception_score"], result["inception_score_std"] = inception_score(extracted.probabilities)
    return result


def extrapolated_fid(features: Tensor, stats: FeatureStats) -> float:
    """FID at n = infinity: the intercept of a least-squares line through FID against 1/n over
    nested subsets of n/8, n/4, n/2 and n samples (FID's bias falls as 1/n)."""
    n = len(features)
    sizes = sorted({m for m in (n // 8, n // 4, n // 2, n) if m >= 2})
    values = [fid(FeatureStats.of(features[:m]), stats) for m in sizes]
    if len(sizes) == 1:  # too few samples for a line: the FID itself
        return values[0]
    # The line's intercept in closed form, in Python's floats: the same bits on every run (LAPACK's
    # least squares may round differently with its buffers' alignment).
    inverse = [1.0 / m for m in sizes]
    mean_x, mean_y = math.fsum(inverse) / len(sizes), math.fsum(values) / len(sizes)
    slope = math.fsum((a - mean_x) * (b - mean_y) for a, b in zip(inverse, values)) / math.fsum(
        (a - mean_x) ** 2 for a in inverse
    )
    return mean_y - slope * mean_x


def _summarise(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    out = {}
    for key in per_seed[0]:
        values = torch.tensor([row[key] for row in per_seed], dtype=torch.float64)
        spread = float(values.std()) if len(values) > 1 else 0.0
        out[key] = {"mean": float(values.mean()), "std": spread, "per_seed": [float(v) for v in values]}
    return out


def evaluate_job(
    config: Config, out: Path, checkpoint: str | None = None, sweep_file: str | None = None
) -> dict[str, Any]:
    """Sample, extract features, compare with the reference split; write evaluate.json, or
    with ``sweep_file`` run every sampler of the sweep at every budget and write sweep.json,
    sweep.md and a plot of each metric against NFE and wall time."""
    sde = check_config(config)
    run, sample = config.evaluate, config.sample
    sweep = read_sweep(sweep_file) if sweep_file is not None else None
    dtype, device = sample.torch_dtype, distributed.local_device(sample.device)
    dataset = build_dataset(config)
    extractor = build_extractor(config, dataset, out).to(device)
    if "inception_score" in run.metrics and not hasattr(extractor, "class_probabilities"):
        raise ConfigError(
            f"[evaluate] metrics has 'inception_score', which needs class probabilities; features "
            f"{run.features.name!r} has none (use 'data_classifier' or an Inception extractor)"
        )
    score = build_score(config, sde, dataset, checkpoint, device, dtype)
    classes = num_classes(score)
    kind = config.guidance.kind if config.guidance is not None else None
    kind = kind if kind in ("cfg", "autoguidance") else None  # evaluate samples without other guidance
    if isinstance(sweep, WeightSweep) and classes is None and kind != "autoguidance":
        raise ConfigError(
            "a sweep of guidance weights needs a class-conditional model ([model] num_classes) or "
            "[guidance] kind = 'autoguidance'"
        )
    weak = guiding_model(config, sde, dataset, device, dtype) if kind == "autoguidance" else None
    labels = (
        sampling_labels(config.guidance.classes if config.guidance else None, classes, run.num) if classes else None
    )
    decode = decoder_of(score)

    def score_at(weight: float | None):
        """What the sampler runs: the model, or per batch its guided score at ``weight``."""
        if weight is None:
            return score
        sweeping = isinstance(sweep, WeightSweep) and kind is None  # a sweep without [guidance]: cfg
        make = guided_scores(config, sde, score, weak, weight, "cfg" if sweeping else None)
        return PerBatch(lambda first, size: make(None if labels is None else labels[first : first + size]))

    if isinstance(sweep, WeightSweep):
        default_weight = None
    elif kind is not None:
        if len(config.guidance.scale) != 1:
            raise ConfigError(
                "[guidance] scale lists several weights; sdeplug evaluate takes one (sweep them with --sweep and "
                "a file holding [sweep] weights = [...])"
            )
        default_weight = config.guidance.scale[0]
    else:
        default_weight = 1.0 if classes is not None else None
    reference, stats = reference_features(config, dataset, extractor, out, device)
    dim = reference.shape[1]
    notes = []
    if "fid" in run.metrics and run.num < 10 * dim:
        notes.append(
            f"FID from {run.num} samples of {dim}-dimensional features is biased upward; it compares only with "
            f"FIDs at the same n (published image FIDs use 50000 samples)"
        )
        warnings.warn(notes[-1], SmallSampleWarning, stacklevel=2)

    wants_probabilities = "inception_score" in run.metrics or (
        labels is not None and hasattr(extractor, "class_probabilities")
    )

    def measure(sampler, progress: bool, weight: float | None = default_weight) -> tuple[dict[str, Any], int, float]:
        """Every seed's metrics with ``sampler`` (at guidance ``weight``); the NFE per sample and
        the seconds spent sampling."""
        per_seed, nfe, seconds = [], 0, 0.0
        for seed in run.seeds:
            start = time.perf_counter()
            x, nfe = sample_seeded(
                sampler,
                sde,
                score_at(weight),
                dataset.event_shape,
                run.num,
                sample.batch_size,
                seed,
                device=device,
                dtype=dtype,
                progress=progress,
                decode=decode,
            )
            seconds += time.perf_counter() - start
            extracted = features_of(extractor, x, device, wants_probabilities)  # every rank takes part
            if distributed.is_main():
                per_seed.append(metrics_of(config, reference, stats, extracted, seed, labels))
        return (_summarise(per_seed) if per_seed else {}), nfe, seconds

    header = {
        **summary_header(config),
        "features": extractor.identity(),
        "comparable_with_published": bool(getattr(extractor, "comparable_with_published", False)),
        "reference": {"split": run.reference, "n": stats.n, "stats_file": run.reference_stats},
        "num_samples": run.num,
        "seeds": list(run.seeds),
    }
    if labels is not None:
        header["classes"] = {"num_classes": classes, "balanced_over": sorted(set(labels.tolist()))}
    if kind is not None or isinstance(sweep, WeightSweep):
        header["guidance"] = {"kind": kind or "cfg", "interval": config.guidance.interval if config.guidance else None}
    if sweep is None:
        summary, nfe, seconds = measure(config.sampler, sample.progress)
        body = {"sampler": sampler_summary(config), "nfe_per_sample": nfe, "seconds": round(seconds, 3)}
        if default_weight is not None:
            body["weight"] = default_weight
        body["metrics"] = summary
    elif isinstance(sweep, WeightSweep):
        rows = []
        for weight in tqdm(sweep.weights, desc="weights", disable=not (sample.progress and distributed.is_main())):
            summary, nfe, seconds = measure(config.sampler, False, weight)
            per_call = evaluations_per_call(score_at(weight).make(0, 1))  # 2 for a guided step, 1 at w = 0 or 1
            rows.append(
                {
                    "weight": weight,
                    "nfe": nfe,
                    "network_evaluations": nfe * per_call,
                    "seconds": round(seconds, 3),
                    "metrics": summary,
                }
            )
        body = {"sampler": sampler_summary(config), "weight_sweep": rows}
    else:
        runs = sweep_runs(sweep)
        rows = []
        bar = tqdm(runs, desc="sweep", disable=not (sample.progress and distributed.is_main()))
        tuned_grids: dict = {}
        for entry, budget, sampler in bar:
            bar.set_postfix_str(f"{entry.label}, NFE {budget}")
            tuning = None
            if entry.tune and sampler.steps <= entry.tune_max_steps:
                budgets = sorted({s.steps for e, _, s in runs if e is entry and s.steps <= entry.tune_max_steps})
                sampler, tuning = _tuned(
                    entry, sampler, budgets, tuned_grids, sde, score, dataset, sample.seed, device, dtype
                )
            elif entry.tune:
                tuning = {"skipped": f"{sampler.steps} steps > tune_max_steps = {entry.tune_max_steps}"}
            summary, nfe, seconds = measure(sampler, progress=False)
            rows.append(
                {
                    "label": entry.label,
                    "budget": budget,
                    "steps": sampler.steps,
                    "nfe": nfe,
                    "seconds": round(seconds, 3),
                    "metrics": summary,
                    **({"tuning": tuning} if tuning is not None else {}),
                }
            )
        body = {"sweep": rows}
    scale = _scale(config, dataset, extractor, reference, stats, device, labelled=labels is not None)
    if not distributed.is_main():
        return {"written": []}
    report = {**header, **body, **scale, "notes": notes}
    if sweep is None:
        return {**report, "written": [str(write_json(out / "evaluate.json", report))]}
    if isinstance(sweep, WeightSweep):
        keys = [k for k in rows[0]["metrics"] if not k.endswith("_std")]
        table = weight_table(rows, keys)
        written = [
            write_json(out / "sweep.json", report),
            write_atomically(out / "sweep.md", lambda t: t.write_text(table + "\n")),
        ]
        if config.output.plot:
            from sdeplug.app.plotting import weight_sweep_plot

            written.append(weight_sweep_plot(rows, keys, report["real_data"], out / "sweep.png", describe(header)))
        return {**report, "table": table, "written": [str(p) for p in written]}
    keys = [k for k in rows[0]["metrics"] if not k.endswith("_std")]
    table = sweep_table(rows, keys)
    markdown = out / "sweep.md"
    written = [write_json(out / "sweep.json", report), write_atomically(markdown, lambda t: t.write_text(table + "\n"))]
    if config.output.plot:
        from sdeplug.app.plotting import sweep_plot

        written.append(sweep_plot(rows, keys, report["real_data"], out / "sweep.png", describe(header)))
    return {**report, "table": table, "written": [str(p) for p in written]}


def describe(header: dict[str, Any]) -> str:
    """A plot title: the model, the SDE and the protocol."""
    runs = f"{header['num_samples']} samples x {len(header['seeds'])} seeds"
    return f"{header['model']}, {header['sde']['name']}: {runs}, features {header['features']['name']}"


def _scale(
    config: Config,
    dataset: Dataset,
    extractor,
    reference: Tensor,
    stats: FeatureStats,
    device: torch.device,
    *,
    labelled: bool = False,
) -> dict[str, Any]:
    """The metrics of as many points of the other split of the data, and of uniform noise (a
    collective: every rank takes part). With ``labelled``, the accuracy of held-out real data."""
    run, seed = config.evaluate, config.evaluate.seeds[0]
    with_labels = labelled and dataset.test_labels is not None and hasattr(extractor, "class_probabilities")
    probs = "inception_score" in run.metrics
    train = rows(dataset.train)  # read once: the real row (reference "test") and the noise's range
    real = train if run.reference == "test" else rows(dataset.test)
    generator = torch.Generator().manual_seed(seed)
    real = real[torch.randperm(len(real), generator=generator)[: run.num]]
    low, high = float(train.min()), float(train.max())
    noise = torch.rand((run.num, *dataset.event_shape), generator=generator, dtype=torch.float64) * (high - low) + low
    real_metrics = metrics_of(config, reference, stats, features_of(extractor, real.float(), device, probs), seed)
    if with_labels:  # on held-out data: learnt features have seen the training split's labels
        held = rows(dataset.test)[: run.num].float()
        extracted = features_of(extractor, held, device, True)
        real_metrics = {
            "accuracy": metrics_of(config, reference, stats, extracted, seed, dataset.test_labels[: run.num])[
                "accuracy"
            ],
            **real_metrics,
        }
    return {
        "real_data": real_metrics,
        "uniform_noise": metrics_of(
            config, reference, stats, features_of(extractor, noise.float(), device, probs), seed
        ),
    }
