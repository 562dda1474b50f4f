"""What ``sdeplug train --classifier`` and ``sdeplug sample`` do with [classifier] and [guidance].

- The classifier is a registered ``classifier`` part shaped for the data (event shape and
  number of classes), trained by the Trainer with the noisy cross-entropy and stored
  beside the score model as ``classifier.safetensors``.
- Classifier guidance runs the config's sampler once per guidance scale, the samples
  cycling through the requested classes, and reports how often an outside judge agrees
  with the requested class: the exact posterior for oracle mixtures, a logistic
  regression fitted on the real training data for labelled real data (the digits).
- Inpainting and linear measurements complete held-out points (or a data file) with the
  paper's replacement method and report how often a completion keeps the class of the
  point it came from.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeplug.app.arrays import load_array, save_array
from sdeplug.app.assemble import check_provenance, in_batches, run_sampler
from sdeplug.app.config import IMAGE_MASKS, Config, GuidanceConfig
from sdeplug.app.datasets import Dataset, mean_row, rows
from sdeplug.checkpoint import CheckpointError
from sdeplug.errors import ConfigError
from sdeplug.guidance import ClassifierGuidance, Measurement, Replacement
from sdeplug.interfaces import SDE, LinearSDE, ScoreFn
from sdeplug.registry import get_registry
from sdeplug.trainer import load_ema_weights


def num_classes(dataset: Dataset) -> int:
    if dataset.train_labels is None:
        raise ConfigError(f"classifier guidance needs labelled data; the data set {dataset.name!r} has no labels")
    return int(dataset.train_labels.max()) + 1


def build_classifier(config: Config, dataset: Dataset) -> torch.nn.Module:
    """The [classifier] network, shaped for the data's event shape and number of classes."""
    if config.classifier is None:
        raise ConfigError(
            "the config has no [classifier] section naming a classifier network, e.g. name = 'conv_classifier'"
        )
    options = dict(config.classifier.network.options)
    options.setdefault("event_shape", dataset.event_shape)
    options.setdefault("num_classes", num_classes(dataset))
    return get_registry().create("classifier", config.classifier.network.name, **options)


def classifier_checkpoint(config: Config) -> Path:
    if config.guidance is not None and config.guidance.checkpoint:
        return Path(config.guidance.checkpoint)
    return Path(config.output.dir).expanduser() / "classifier.safetensors"


def classifier_run_config(config: Config) -> dict[str, Any]:
    """What a classifier checkpoint records of the config, to refuse a mismatched one later."""
    net = config.classifier.network
    return {
        "sde": {"name": config.sde.name, **config.sde.options},
        "classifier": {"name": net.name, **net.options},
        "data": {"name": config.data.name, **config.data.options},
    }


def load_classifier(config: Config, dataset: Dataset, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The trained classifier's EMA weights, checked against the config it was trained with."""
    path = classifier_checkpoint(config)
    if not path.exists():
        raise CheckpointError(
            f"classifier checkpoint not found: {path}; train it first with `sdeplug train {config.source} --classifier`"
        )
    network = build_classifier(config, dataset)
    meta = load_ema_weights(network, path, kind="classifier")
    check_provenance(path, meta.get("config", {}), classifier_run_config(config), ("sde", "classifier"))
    return network.to(device=device, dtype=dtype).eval()


def requested_classes(wanted: tuple[int, ...] | None, classes: int, n: int, known_by: str = "the data have") -> Tensor:
    """Labels for n samples cycling through the wanted classes (every class by default); a class
    outside [0, classes) is one line naming who knows which (the data, or the model)."""
    wanted = tuple(range(classes)) if wanted is None else wanted
    bad = [c for c in wanted if not 0 <= c < classes]
    if bad:
        raise ConfigError(f"[guidance] classes {bad} do not exist: {known_by} classes 0 to {classes - 1}")
    return torch.tensor(wanted, dtype=torch.int64).repeat(n // len(wanted) + 1)[:n]


class Judge:
    """Labels samples from outside the model: the exact posterior component of an oracle
    mixture, or a logistic regression fitted on the real training data."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.mixture = dataset.mixture
        if self.mixture is None:
            from sdeplug.app.evaluation import reference_classifier

            self.clf = reference_classifier(dataset, seed)
            self.name = "logistic regression on the real training data"
        else:
            self.name = "exact posterior component of the oracle mixture"

    def labels(self, x: Tensor) -> Tensor:
        if self.mixture is not None:
            return self.mixture.posterior_weights(x.double().cpu()).argmax(-1)
        from sdeplug.app.evaluation import predicted_labels

        return predicted_labels(self.clf, x)


def run_classifier_guidance(
    config: Config,
    sde: SDE,
    score: ScoreFn,
    dataset: Dataset,
    out: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
) -> dict[str, Any]:
    """One sampling run per guidance scale; samples, a picture and the judge's agreement for each."""
    guidance, run = config.guidance, config.sample
    classifier = load_classifier(config, dataset, device, dtype)
    labels = requested_classes(guidance.classes, num_classes(dataset), run.num)
    judge = Judge(dataset, run.seed)
    rows = []
    for scale in guidance.scale:
        generator = torch.Generator(device).manual_seed(run.seed)  # the same noise at every scale

        def guided_batch(first: int, size: int, scale: float = scale, generator: torch.Generator = generator):
            guided = ClassifierGuidance(score, classifier, labels[first : first + size].to(device), scale)
            return run_sampler(
                config.sampler,
                sde,
                guided,
                (size, *dataset.event_shape),
                generator=generator,
                device=device,
                dtype=dtype,
                progress=progress,
            )

        start = time.perf_counter()
        x, nfe = in_batches(run.num, run.batch_size, guided_batch)
        seconds = time.perf_counter() - start
        agreement = float((judge.labels(x) == labels).double().mean())
        stem = f"samples-scale{scale:g}"
        _save(out / f"{stem}.npy", x)
        if config.output.plot:
            _picture(
                x,
                dataset,
                out / f"{stem}.png",
                f"classifier guidance, scale {scale:g}: {100 * agreement:.0f}% judged the requested class",
            )
        rows.append(
            {
                "scale": scale,
                "agreement": agreement,
                "nfe_per_sample": nfe,
                "seconds": round(seconds, 2),
                "samples": f"{stem}.npy",
            }
        )
    return {
        "kind": "classifier",
        "judge": judge.name,
        "chance": 1 / num_classes(dataset),
        "classes": labels[: num_classes(dataset)].tolist(),
        "runs": rows,
    }


def _save(path: Path, x: Tensor) -> None:
    save_array(path, x.numpy())


def _picture(x: Tensor, dataset: Dataset, path: Path, title: str, ncols: int = 10) -> Path | None:
    """Images: the first rows of ``ncols``; 2-D points: a scatter plot over the held-out data."""
    from sdeplug.app.plotting import image_grid, scatter_2d

    if len(dataset.event_shape) == 3:
        return image_grid(x[: 10 * ncols], path, title, ncols=ncols)
    if tuple(dataset.event_shape) == (2,) and len(dataset.test):
        return scatter_2d(x, rows(dataset.test, x.shape[0]), path, title)
    return None


# Inpainting and linear measurements ----------------------------------------------------


def image_mask(name: str, event_shape: tuple[int, ...]) -> Tensor:
    """A built-in mask for images (C, H, W) naming the known region; 1 = known."""
    if len(event_shape) != 3:
        raise ConfigError(
            f"the mask {name!r} is for images (C, H, W); these data have event shape {event_shape}. "
            "Give a list or a file like one sample instead"
        )
    _, h, w = event_shape
    mask = torch.zeros(event_shape, dtype=torch.float64)
    if name == "upper_half":
        mask[:, : h // 2] = 1
    elif name == "lower_half":
        mask[:, h // 2 :] = 1
    elif name == "left_half":
        mask[:, :, : w // 2] = 1
    elif name == "right_half":
        mask[:, :, w // 2 :] = 1
    elif name == "border":
        mask[:] = 1
        mask[:, h // 4 : h - h // 4, w // 4 : w - w // 4] = 0
    else:
        raise ConfigError(f"unknown mask {name!r}; built-in masks: {', '.join(IMAGE_MASKS)}, or a .npy/.pt file")
    return mask


def _array(value: str | tuple, what: str) -> Tensor:
    if isinstance(value, str):
        return load_array(value).to(torch.float64)
    try:
        return torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[guidance] {what} must be a rectangular list of numbers: {exc}") from exc


def build_mask(guidance: GuidanceConfig, event_shape: tuple[int, ...]) -> Tensor:
    if isinstance(guidance.mask, str) and guidance.mask in IMAGE_MASKS:
        return image_mask(guidance.mask, event_shape)
    if isinstance(guidance.mask, str) and not guidance.mask.endswith((".npy", ".pt")):
        raise ConfigError(
            f"unknown mask {guidance.mask!r}; built-in masks: {', '.join(IMAGE_MASKS)}, or a .npy/.pt file"
        )
    mask = _array(guidance.mask, "mask")
    if mask.ndim == len(event_shape) + 1 and mask.shape[0] == 1:
        mask = mask[0]
    if tuple(mask.shape) != event_shape:
        raise ConfigError(f"[guidance] mask has shape {tuple(mask.shape)}; it must be like one sample {event_shape}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ConfigError("[guidance] mask must hold only 0 (unknown) and 1 (known)")
    return mask


def build_matrix(guidance: GuidanceConfig, event_shape: tuple[int, ...]) -> Tensor:
    dim = torch.Size(event_shape).numel()
    if guidance.matrix == "grey":
        if len(event_shape) != 3 or event_shape[0] < 2:
            raise ConfigError(
                f"matrix = 'grey' (colorization) needs colour images (C >= 2, H, W); got event shape {event_shape}"
            )
        c, hw = event_shape[0], dim // event_shape[0]
        return torch.eye(hw, dtype=torch.float64).repeat(1, c) / c  # channel-major flattening
    A = _array(guidance.matrix, "matrix")
    if A.ndim != 2 or A.shape[1] != dim:
        raise ConfigError(f"[guidance] matrix has shape {tuple(A.shape)}; it must be (M, {dim}) on flattened samples")
    return A


def run_inpainting(
    config: Config,
    sde: SDE,
    score: ScoreFn,
    dataset: Dataset,
    out: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    progress: bool,
) -> dict[str, Any]:
    """Complete held-out points (or a data file) from their known part, ``per_image`` times each."""
    guidance, run = config.guidance, config.sample
    if not isinstance(sde, LinearSDE):
        raise ConfigError(f"the replacement method needs a LinearSDE; [sde] {config.sde.name!r} is not one")
    points, labels, source = _points(guidance, dataset, run.num)
    truth = points.repeat_interleave(guidance.per_image, 0).to(device=device, dtype=dtype)
    mean = mean_row(dataset.train).to(device=device, dtype=dtype)
    if guidance.kind == "inpaint":
        mask = build_mask(guidance, dataset.event_shape).to(device=device, dtype=dtype)
        measurement = Measurement(truth * mask, mask=mask)
        shown = truth * mask  # the known part, unknown entries at 0 (mid-grey)
    else:
        A = build_matrix(guidance, dataset.event_shape).to(device=device, dtype=dtype)
        measurement = Measurement(truth.reshape(truth.shape[0], -1) @ A.T, matrix=A)
        shown = measurement.project(torch.zeros_like(truth), measurement.target(truth))  # A^+ y
    # the baseline: the training mean, moved to agree with the measurement (mean imputation)
    imputed = measurement.project(mean.expand_as(truth), measurement.target(truth)).cpu()
    generator = torch.Generator(device).manual_seed(run.seed)
    start = time.perf_counter()
    x, nfe = in_batches(
        truth.shape[0],
        run.batch_size,
        lambda first, size: run_sampler(
            config.sampler,
            sde,
            score,
            (size, *dataset.event_shape),
            generator=generator,
            device=device,
            dtype=dtype,
            progress=progress,
            constraint=Replacement(sde, _rows(measurement, first, size)),
        ),
    )
    seconds = time.perf_counter() - start
    _save(out / "samples.npy", x)
    summary: dict[str, Any] = {
        "kind": guidance.kind,
        "points": source,
        "num_points": points.shape[0],
        "per_point": guidance.per_image,
        "nfe_per_sample": nfe,
        "seconds": round(seconds, 2),
        "rms_error_to_the_original": float((x - truth.cpu()).pow(2).mean().sqrt()),
        "rms_error_of_mean_imputation": float((imputed - truth.cpu()).pow(2).mean().sqrt()),
    }
    if labels is not None:
        judge = Judge(dataset, run.seed)
        kept = labels.repeat_interleave(guidance.per_image)
        summary.update(
            {
                "judge": judge.name,
                "class_kept_by_completions": float((judge.labels(x) == kept).double().mean()),
                "class_kept_by_mean_imputation": float((judge.labels(imputed) == kept).double().mean()),
            }
        )
    if config.output.plot and len(dataset.event_shape) == 3:
        from sdeplug.app.plotting import image_grid

        per = guidance.per_image
        rows = [
            torch.cat([shown.cpu()[i * per : i * per + 1], x[i * per : (i + 1) * per], points[i : i + 1]])
            for i in range(min(points.shape[0], 10))
        ]
        image_grid(
            torch.cat(rows),
            out / "samples.png",
            f"{guidance.kind}: known part | {per} completions | original",
            ncols=per + 2,
        )
    return summary


def _rows(measurement: Measurement, first: int, size: int) -> Measurement:
    """The measurement of samples first .. first + size (the batches of a chunked run)."""
    if measurement.mask is not None:
        return Measurement(measurement.y[first : first + size], mask=measurement.mask)
    return Measurement(measurement.y[first : first + size], matrix=measurement.A)


def _points(guidance: GuidanceConfig, dataset: Dataset, num: int) -> tuple[Tensor, Tensor | None, str]:
    count = max(1, num // guidance.per_image)
    if guidance.data_file:
        points = load_array(guidance.data_file)[:count].to(torch.float64)
        if tuple(points.shape[1:]) != dataset.event_shape:
            raise ConfigError(
                f"{guidance.data_file} holds points of shape {tuple(points.shape[1:])}; "
                f"the model's are {dataset.event_shape}"
            )
        return points, None, guidance.data_file
    labels = None if dataset.test_labels is None else dataset.test_labels[:count]
    return rows(dataset.test, count), labels, f"the first {count} held-out points of {dataset.name!r}"
