"""Building what a config names and checking it against the registry: the SDE, the
sampler, the data set, the network, and the score to sample from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeplug.app.config import Config, LikelihoodConfig, SamplerConfig
from sdeplug.app.datasets import Dataset, load_dataset
from sdeplug.checkpoint import CheckpointError
from sdeplug.errors import ConfigError
from sdeplug.interfaces import SDE, ScoreFn, ScoreModel
from sdeplug.oracle import PRESETS
from sdeplug.parameterization import ParameterizedScore
from sdeplug.registry import Registry, get_registry
from sdeplug.sampling import Constraint, SampleResult, sample_ode, sample_pc
from sdeplug.trainer import load_ema_weights


def build_sde(config: Config, registry: Registry | None = None) -> SDE:
    """The [sde] part with its options."""
    return (registry or get_registry()).create("sde", config.sde.name, **config.sde.options)


def check_sampler(sampler: SamplerConfig, sde: SDE, registry: Registry | None = None) -> None:
    """Build every part the [sampler] names once, so a wrong name or option fails before any work."""
    registry = registry or get_registry()

    def placeholder(x, t):
        return x

    if sampler.grid is not None:
        registry.resolve("time_grid", sampler.grid.name, options=sampler.grid.options, sde=sde)
    if sampler.kind == "ode":
        solver = registry.create("ode_solver", sampler.solver.name, **sampler.solver.options)
        if sampler.grid is not None and sampler.steps is None and getattr(solver, "steps", None) is None:
            raise ConfigError(f"[sampler.grid] needs [sampler] steps: ODE solver {sampler.solver.name!r} has no steps")
    else:
        registry.create("predictor", sampler.predictor.name, sde, placeholder, **sampler.predictor.options)
        registry.create("corrector", sampler.corrector.name, sde, placeholder, **sampler.corrector.options)


def check_config(config: Config, registry: Registry | None = None, *, likelihood: bool = False) -> SDE:
    """Validate every part name and option against the registry; return the built SDE.

    The [likelihood] solver is checked when the section is given or ``likelihood`` is set.
    """
    registry = registry or get_registry()
    sde = build_sde(config, registry)
    check_sampler(config.sampler, sde, registry)
    if likelihood or config.likelihood != LikelihoodConfig():
        registry.create("ode_solver", config.likelihood.solver.name, **config.likelihood.solver.options)
    if config.model.name == "oracle":
        if config.model.options:
            raise ConfigError("[model] 'oracle' (the exact score of the [data] mixture) takes no options")
        if config.data.name not in PRESETS:
            raise ConfigError(
                f"[model] 'oracle' needs an oracle mixture as [data] ({', '.join(sorted(PRESETS))}); "
                f"got {config.data.name!r}. Train a score model for other data"
            )
    else:
        registry.check_options("score_model", config.model.name, config.model.options)
    if config.classifier is not None:
        registry.check_options("classifier", config.classifier.network.name, config.classifier.network.options)
    guidance = config.guidance
    if guidance is not None:
        if guidance.kind == "classifier" and config.classifier is None:
            raise ConfigError(
                "[guidance] kind = 'classifier' needs a [classifier] section naming the network, "
                "e.g. name = 'conv_classifier'"
            )
        if guidance.kind != "classifier" and config.sampler.kind != "pc":
            raise ConfigError(
                f"[guidance] kind = {guidance.kind!r} uses the replacement method, which needs [sampler] kind = 'pc'"
            )
    return sde


def run_sampler(
    sampler: SamplerConfig,
    sde: SDE,
    score: ScoreFn,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    constraint: Constraint | None = None,
) -> SampleResult:
    """Sample ``shape`` with the [sampler] (``constraint``, e.g. inpainting: pc only)."""
    common: dict[str, Any] = dict(
        eps=sampler.eps, denoise=sampler.denoise, generator=generator, device=device, dtype=dtype
    )
    if sampler.grid is not None:
        common.update(grid=sampler.grid.name, grid_options=sampler.grid.options)
    if sampler.kind == "ode":
        if constraint is not None:
            raise ConfigError("a constraint (inpainting, measurements) needs [sampler] kind = 'pc'")
        return sample_ode(
            sde,
            score,
            shape,
            solver=sampler.solver.name,
            solver_options=sampler.solver.options,
            steps=sampler.steps,
            **common,
        )
    return sample_pc(
        sde,
        score,
        shape,
        predictor=sampler.predictor.name,
        predictor_options=sampler.predictor.options,
        corrector=sampler.corrector.name,
        corrector_options=sampler.corrector.options,
        steps=sampler.steps if sampler.steps is not None else 1000,
        order=sampler.order,
        progress=progress,
        constraint=constraint,
        **common,
    )


def in_batches(num: int, batch_size: int | None, run: Callable[[int, int], Any]) -> tuple[Tensor, int]:
    """``run(first, size)`` over batches of ``num`` items, each returning a result with ``x``
    and ``nfe`` (a SampleResult); the ``x`` joined on the CPU, and the largest ``nfe``."""
    batch = batch_size or num
    chunks, nfe = [], 0
    for first in range(0, num, batch):
        result = run(first, min(batch, num - first))
        chunks.append(result.x.detach().cpu())
        nfe = max(nfe, int(result.nfe))
    return torch.cat(chunks), nfe


def summary_header(config: Config) -> dict[str, Any]:
    """What every report of a run starts with: the config file, the model and the SDE."""
    return {"config": config.source, "model": config.model.name, "sde": {"name": config.sde.name, **config.sde.options}}


def check_provenance(
    path: Path, recorded: Mapping[str, Any], expected: Mapping[str, Any], sections: tuple[str, ...]
) -> None:
    """Refuse a checkpoint trained with other [sections] than the config says (sections it
    does not record are not checked)."""
    for section in sections:
        if recorded.get(section) not in (None, expected[section]):
            raise CheckpointError(
                f"{path} was trained with [{section}] {recorded[section]}, but the config says "
                f"{expected[section]}; using it with another {section} would be wrong"
            )


def build_dataset(config: Config) -> Dataset:
    """The [data] set with its options."""
    return load_dataset(config.data.name, **config.data.options)


def build_network(config: Config, dataset: Dataset) -> torch.nn.Module:
    """The [model] network, shaped for the data unless the config gives event_shape."""
    options = dict(config.model.options)
    options.setdefault("event_shape", dataset.event_shape)
    return get_registry().create("score_model", config.model.name, **options)


def default_checkpoint(config: Config) -> Path:
    return Path(config.output.dir).expanduser() / "checkpoint.safetensors"


def run_config_dict(config: Config) -> dict:
    """What a checkpoint records of the config, to refuse a mismatched one later."""
    return {
        "sde": {"name": config.sde.name, **config.sde.options},
        "model": {"name": config.model.name, **config.model.options},
        "data": {"name": config.data.name, **config.data.options},
    }


def build_score(
    config: Config,
    sde: SDE,
    dataset: Dataset,
    checkpoint: str | Path | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> ScoreModel:
    """The exact oracle score, or the trained network's EMA weights from a checkpoint."""
    if config.model.name == "oracle":
        if dataset.mixture is None:
            raise ConfigError(f"[model] 'oracle' needs an oracle mixture as [data]; got {config.data.name!r}")
        return dataset.mixture.to(device).score_model(sde)
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(config)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; train first with `sdeplug train {config.source}`")
    network = build_network(config, dataset)
    meta = load_ema_weights(network, path)
    check_provenance(path, meta.get("config", {}), run_config_dict(config), ("sde", "model"))
    parameterization = meta["settings"]["parameterization"]
    return ParameterizedScore(network.to(device=device, dtype=dtype).eval(), sde, parameterization)
