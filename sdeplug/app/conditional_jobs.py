"""What ``sdeplug sample`` does with a class-conditional model, or with [guidance] kind = "cfg"
or "autoguidance".

- The samples are class-balanced: sample i gets class i mod C of the requested ``classes``
  (every class by default), so the labels follow their samples through batches and ranks.
- Without [guidance] a conditional model is sampled at w = 1 (the conditional model itself);
  with it, once per weight in ``scale``, from the same noise.
- Autoguidance takes its weaker model from another checkpoint: the network it records is
  rebuilt from that checkpoint's own [model] table, so a smaller network works as well as an
  earlier checkpoint of the same run.
- Each run reports steps, network evaluations per sample (a guided step costs two), and for
  labelled data how often an outside judge gives the requested class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from sdeplug.app.arrays import save_array
from sdeplug.app.assemble import (
    PerBatch,
    build_network,
    check_provenance,
    decoder_of,
    run_config_dict,
    sample_seeded,
)
from sdeplug.app.config import Config, PartSpec
from sdeplug.app.datasets import Dataset
from sdeplug.app.guided_jobs import Judge, requested_classes
from sdeplug.app.guided_jobs import _picture as guided_picture
from sdeplug.checkpoint import CheckpointError, load_checkpoint
from sdeplug.conditioning import (
    Conditioned,
    DynamicThresholding,
    autoguidance,
    classifier_free_guidance,
    evaluations_per_call,
    num_classes,
)
from sdeplug.errors import ConfigError
from sdeplug.interfaces import SDE, ScoreFn
from sdeplug.parameterization import ParameterizedScore
from sdeplug.trainer import load_ema_weights


def is_class_sampling(config: Config, score: ScoreFn) -> bool:
    """Whether this module samples the run: a conditional model, or a cfg/autoguidance section."""
    kind = config.guidance.kind if config.guidance is not None else None
    return kind in ("cfg", "autoguidance") or (kind is None and num_classes(score) is not None)


def sampling_labels(wanted: tuple[int, ...] | None, classes: int, num: int) -> Tensor:
    """Labels for ``num`` samples cycling through the wanted classes (every class by default)."""
    return requested_classes(wanted, classes, num, known_by="the model knows")


def guiding_model(config: Config, sde: SDE, dataset: Dataset, device: torch.device, dtype: torch.dtype) -> ScoreFn:
    """The weaker model of autoguidance, rebuilt from the [model] its checkpoint records."""
    path = Path(config.guidance.checkpoint).expanduser()
    if not path.exists():
        raise CheckpointError(f"[guidance] checkpoint not found: {path}")
    _, meta = load_checkpoint(path)
    recorded = meta.get("config", {}) if isinstance(meta, dict) else {}
    table = recorded.get("model")
    if not isinstance(table, dict) or "name" not in table:
        raise CheckpointError(f"{path} records no [model]: autoguidance needs a score model written by sdeplug train")
    model = PartSpec(table["name"], {k: v for k, v in table.items() if k != "name"})
    weak_config = attrs.evolve(config, model=model)
    network = build_network(weak_config, dataset)
    shape = tuple(getattr(network, "event_shape", dataset.event_shape))
    if shape != tuple(dataset.event_shape):
        raise ConfigError(
            f"autoguidance needs two models of the same data shape: the guiding model in {path} takes "
            f"{shape}, the model {tuple(dataset.event_shape)}"
        )
    try:
        meta = load_ema_weights(network, path)
    except CheckpointError as exc:  # most often a network for data of another shape
        raise CheckpointError(
            f"the guiding model does not load as a network for these data {tuple(dataset.event_shape)} (autoguidance "
            f"needs two models of the same data shape): {exc}"
        ) from None
    check_provenance(path, meta.get("config", {}), run_config_dict(weak_config), ("sde",), data=False)
    parameterization = meta["settings"]["parameterization"]
    return ParameterizedScore(network.to(device=device, dtype=dtype).eval(), sde, parameterization)


def guided_scores(
    config: Config, sde: SDE, score: ScoreFn, weak: ScoreFn | None, weight: float, kind: str | None = None
) -> Callable[[Tensor | None], ScoreFn]:
    """labels of a batch -> the score the sampler runs for them at this weight: the [guidance]
    kind (or ``kind``: "cfg" for a weight sweep without [guidance]), else the conditional model."""
    guidance = config.guidance
    kind = kind or (guidance.kind if guidance is not None else None)
    interval = guidance.interval if guidance is not None else None

    def make(labels: Tensor | None) -> ScoreFn:
        if kind == "cfg":
            made = classifier_free_guidance(score, labels, weight, sde=sde, interval=interval)
        elif kind == "autoguidance":
            made = autoguidance(score, weak, weight, labels, sde=sde, interval=interval)
        else:
            made = Conditioned(score, labels)
        if guidance is not None and guidance.threshold is not None:
            made = DynamicThresholding(made, sde, guidance.threshold, guidance.threshold_max)
        return made

    return make


def run_class_sampling(
    config: Config,
    sde: SDE,
    score: ScoreFn,
    dataset: Dataset,
    out: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
    sample_quality: Callable[[Tensor, Dataset, int, Tensor | None], dict[str, Any]],
    is_main: bool,
) -> tuple[dict[str, Any], list[Path]]:
    """One sampling run per guidance weight (w = 1 without [guidance]); samples, labels, a picture
    with a row per class and the judge's agreement for each. Every rank samples its share;
    ``is_main`` writes. Returns the report and the files written."""
    run, guidance = config.sample, config.guidance
    classes = num_classes(score)
    kind = guidance.kind if guidance is not None else None
    if kind == "cfg" and classes is None:
        raise ConfigError(
            "[guidance] kind = 'cfg' needs a class-conditional model ([model] num_classes = ..., trained on "
            "labelled data with label dropout); this model takes no labels"
        )
    if guidance is not None and guidance.classes is not None and classes is None:
        raise ConfigError("[guidance] classes are for a class-conditional model; this model takes no labels")
    weak = guiding_model(config, sde, dataset, device, dtype) if kind == "autoguidance" else None
    if weak is not None and num_classes(weak) != classes:
        raise ConfigError(
            f"autoguidance needs two models over the same classes: the model has {classes or 'no'} classes, "
            f"the guiding model in {guidance.checkpoint} {num_classes(weak) or 'no'}"
        )
    labels = sampling_labels(guidance.classes if guidance else None, classes, run.num) if classes else None
    judged = dataset.mixture is not None or (dataset.train_labels is not None and isinstance(dataset.train, Tensor))
    judge = Judge(dataset, run.seed) if classes and judged and is_main else None
    rows, written = [], []
    for weight in guidance.scale if kind in ("cfg", "autoguidance") else (1.0,):
        make = guided_scores(config, sde, score, weak, weight)

        def for_batch(first: int, size: int, make=make) -> ScoreFn:
            return make(None if labels is None else labels[first : first + size])

        start = time.perf_counter()
        x, nfe = sample_seeded(
            config.sampler,
            sde,
            PerBatch(for_batch),
            dataset.event_shape,
            run.num,
            run.batch_size,
            run.seed,
            device=device,
            dtype=dtype,
            progress=progress,
            decode=decoder_of(score),
        )
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "weight": weight,
            "nfe_per_sample": nfe,
            "network_evaluations_per_sample": nfe * evaluations_per_call(for_batch(0, 1)),
            "seconds": round(seconds, 3),
        }
        if not is_main:
            rows.append(row)
            continue
        stem = "samples" if kind is None else f"samples-w{weight:g}"
        written.append(save_array(out / f"{stem}.npy", x.numpy()))
        row["samples"] = f"{stem}.npy"
        if judge is not None:
            row["agreement"] = float((judge.labels(x) == labels).double().mean())
        row.update(sample_quality(x, dataset, run.seed, labels))
        if config.output.plot:
            picture = _picture(x, labels, dataset, out / f"{stem}.png", _title(kind, weight, row))
            written += [picture] if picture is not None else []
        rows.append(row)
    report: dict[str, Any] = {"kind": kind or "conditional", "runs": rows}
    if labels is not None:
        report["num_classes"] = classes
        if is_main:
            written.append(save_array(out / "labels.npy", labels.numpy()))
            report["labels"] = "labels.npy"
        if judge is not None:
            report["judge"] = judge.name
    return report, written


def _title(kind: str | None, weight: float, row: dict[str, Any]) -> str:
    what = {"cfg": "classifier-free guidance", "autoguidance": "autoguidance"}.get(kind, "conditional model")
    agreement = f": {100 * row['agreement']:.0f}% judged the requested class" if "agreement" in row else ""
    return f"{what}, w = {weight:g}, NFE {row['network_evaluations_per_sample']}{agreement}"


def _picture(x: Tensor, labels: Tensor | None, dataset: Dataset, path: Path, title: str) -> Path | None:
    """Images: up to 10 x 10, a row per class (the first 100 samples ordered by label); 2-D
    points: a scatter plot over the data."""
    if labels is not None and len(dataset.event_shape) == 3:
        x = x[:100][torch.argsort(labels[:100], stable=True)]
    return guided_picture(x, dataset, path, title)
