"""``sdeplug tune-grid``: tune the time grid of the config's deterministic predictor to its
model and SDE, and write it where a [sampler.grid] table can name it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sdeplug import distributed
from sdeplug.app.assemble import build_score, check_config, default_checkpoint, sampling_data
from sdeplug.app.config import Config, SamplerConfig
from sdeplug.errors import ConfigError
from sdeplug.files import file_digest
from sdeplug.grid_tuning import TuningResult, tune_grids
from sdeplug.grids import save_grid_file
from sdeplug.interfaces import LinearSDE, ScoreFn


def default_grid_file(config: Config, steps: int) -> Path:
    return Path(config.output.dir).expanduser() / f"grid-{config.sampler.predictor.name}-{steps}.json"


def tune_sampler_grids(
    sampler: SamplerConfig,
    sde: LinearSDE,
    score: ScoreFn,
    event_shape: tuple[int, ...],
    budgets: list[int],
    *,
    pilot: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype | None,
    start: str | None = None,
    progress=None,
) -> tuple[list[TuningResult], str, dict[str, Any]]:
    """Tune the grid of a [sampler]'s predictor (kind pc, corrector none) for each step count in
    ``budgets``, starting from ``start``, else its own grid, else logsnr; (results, start grid,
    its options)."""
    if sampler.kind != "pc" or sampler.corrector.name != "none":
        raise ConfigError(
            "tuning a grid tunes a predictor alone: give a [sampler] with kind = 'pc' and [sampler.corrector] "
            f"name = 'none' (got kind = {sampler.kind!r}, corrector {sampler.corrector.name!r})"
        )
    if not isinstance(sde, LinearSDE):
        raise ConfigError(f"tuning a grid needs an SDE with closed-form marginals (a LinearSDE); got {sde.name!r}")
    if start is not None:
        start_grid, start_options = start, {}
    elif sampler.grid is not None and sampler.grid.name != "tuned":
        start_grid, start_options = sampler.grid.name, dict(sampler.grid.options)
    else:
        start_grid, start_options = "logsnr", {}
    try:
        results = tune_grids(
            sde,
            score,
            event_shape,
            budgets,
            predictor=sampler.predictor.name,
            predictor_options=sampler.predictor.options,
            start=start_grid,
            start_options=start_options,
            eps=sampler.eps,
            denoise=sampler.denoise,
            pilot=pilot,
            seed=seed,
            device=device,
            dtype=dtype,
            progress=progress,
        )
    except ValueError as exc:
        raise ConfigError(f"tune-grid: {exc}") from None
    return results, start_grid, start_options


def tune_sampler_grid(sampler: SamplerConfig, sde, score, event_shape, steps: int, **options):
    """``tune_sampler_grids`` for one step count: (result, start grid, its options)."""
    results, start_grid, start_options = tune_sampler_grids(sampler, sde, score, event_shape, [steps], **options)
    return results[0], start_grid, start_options


def predictor_identity(options: dict[str, Any]) -> dict[str, Any]:
    """A predictor's options as a grid file records them: a file named by an option (the data
    moments of gaussian_start) also by its content's SHA-256, so other moments are noticed."""
    recorded: dict[str, Any] = {}
    for key, value in options.items():
        recorded[key] = value
        if isinstance(value, str) and key in ("moments",) and Path(value).expanduser().is_file():
            recorded[f"{key}_sha256"] = file_digest(Path(value).expanduser())
    return recorded


def pilot_score(config: Config, sde, score: ScoreFn, dataset, device, dtype) -> ScoreFn:
    """What the grid is tuned for: the model itself, or for a class-conditional model (or an
    autoguided one) the score sampling runs, at the [guidance] weight (the first of ``scale``),
    with the classes cycling over the rows of every batch the tuner evaluates."""
    from sdeplug.app.conditional_jobs import guided_scores, guiding_model, is_class_sampling, sampling_labels
    from sdeplug.conditioning import num_classes

    if not is_class_sampling(config, score):
        return score
    guidance = config.guidance
    kind = guidance.kind if guidance is not None else None
    weak = guiding_model(config, sde, dataset, device, dtype) if kind == "autoguidance" else None
    classes = num_classes(score)
    weight = guidance.scale[0] if kind in ("cfg", "autoguidance") else 1.0
    make = guided_scores(config, sde, score, weak, weight)
    if classes is None:
        return make(None)
    cycle = sampling_labels(guidance.classes if guidance else None, classes, classes)

    def cycled(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Row i of any batch the tuner evaluates gets the i-th class of the cycle."""
        labels = cycle.to(x.device)[torch.arange(x.shape[0], device=x.device) % len(cycle)]
        return make(labels)(x, t)

    return cycled


def grid_report(
    config: Config, result: TuningResult, checkpoint: str | None, start_grid: str, start_options: dict[str, Any]
) -> dict[str, Any]:
    """What a tuned-grid file holds: the grid, what it was tuned for, how it was chosen, its cost."""
    sampler = config.sampler
    return {
        "steps": result.steps,
        "fractions": list(result.fractions),
        "times": result.times.tolist(),
        "tuned_for": {
            "config": config.source,
            "sde": {"name": config.sde.name, **config.sde.options},
            "model": config.model.name,
            "checkpoint": None if config.model.name == "oracle" else str(checkpoint or default_checkpoint(config)),
            "predictor": {"name": sampler.predictor.name, **predictor_identity(dict(sampler.predictor.options))},
            "eps": result.eps,
            "denoise": sampler.denoise,
        },
        "start": {"grid": start_grid, **start_options, "times": result.start.tolist()},
        "won": result.won,
        "error_to_the_reference": {
            "objective": result.objective,
            "pilot": {"start": result.pilot_error_start, "tuned": result.pilot_error},
            "validation": {"start": result.validation_error_start, "tuned": result.validation_error},
        },
        "candidates": [
            {"name": c.name, "fractions": list(c.fractions), "pilot": c.pilot_error, "validation": c.validation_error}
            for c in result.candidates
        ],
        "cost": {
            "score_evaluations": result.score_evaluations,
            "pilot_samples": result.pilot,
            "validation_samples": result.validation,
            "seconds": round(result.seconds, 3),
            "sweeps": result.sweeps,
        },
    }


def tune_grid_job(
    config: Config,
    out_files: dict[int, Path],
    *,
    pilot: int,
    checkpoint: str | None = None,
    start: str | None = None,
    progress=None,
) -> list[dict[str, Any]]:
    """Tune the [sampler]'s predictor for each step count of ``out_files`` from ``pilot`` prior
    draws (and as many validation draws); write each grid to its file."""
    sde = check_config(config)
    run = config.sample
    dtype, device = run.torch_dtype, distributed.local_device(run.device)
    dataset, network = sampling_data(config)
    score = build_score(config, sde, dataset, checkpoint, device, dtype, network)
    score = pilot_score(config, sde, score, dataset, device, dtype)
    results, start_grid, start_options = tune_sampler_grids(
        config.sampler,
        sde,
        score,
        tuple(dataset.event_shape),
        sorted(out_files),
        pilot=pilot,
        seed=run.seed,
        device=device,
        dtype=dtype,
        start=start,
        progress=progress,
    )
    reports = []
    for result in results:
        report = grid_report(config, result, checkpoint, start_grid, start_options)
        save_grid_file(out_files[result.steps], report)
        reports.append({**report, "written": [str(out_files[result.steps])]})
    return reports
