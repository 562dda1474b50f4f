"""Building what a config names: the data set, the network, and the score to sample from."""

from __future__ import annotations

from pathlib import Path

import torch

from sdeplug.checkpoint import CheckpointError
from sdeplug.config import Config
from sdeplug.data import Dataset, load_dataset
from sdeplug.errors import ConfigError
from sdeplug.interfaces import SDE, ScoreModel
from sdeplug.parameterization import ParameterizedScore
from sdeplug.plugins import get_registry
from sdeplug.trainer import load_ema_weights


def build_dataset(config: Config) -> Dataset:
    """The [data] set with its options."""
    return load_dataset(config.data.name, **config.data.options)


def build_network(config: Config, dataset: Dataset) -> torch.nn.Module:
    """The [model] network, shaped for the data unless the config gives event_shape."""
    options = dict(config.model.options)
    options.setdefault("event_shape", dataset.event_shape)
    return get_registry().create("score_model", config.model.name, **options)


def default_checkpoint(config: Config) -> Path:
    return Path(config.output.dir) / "checkpoint.safetensors"


def run_config_dict(config: Config) -> dict:
    """What a checkpoint records of the config, to refuse a mismatched one later."""
    return {
        "sde": {"name": config.sde.name, **config.sde.options},
        "model": {"name": config.model.name, **config.model.options},
        "data": {"name": config.data.name, **config.data.options},
    }


def build_score(
    config: Config, sde: SDE, dataset: Dataset, checkpoint: str | Path | None, device: torch.device,
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
    trained_with = meta.get("config", {})
    for section in ("sde", "model"):
        if trained_with.get(section) not in (None, run_config_dict(config)[section]):
            raise CheckpointError(
                f"{path} was trained with [{section}] {trained_with[section]}, but the config says "
                f"{run_config_dict(config)[section]}; sampling with another {section} would be wrong"
            )
    parameterization = meta["settings"]["parameterization"]
    return ParameterizedScore(network.to(device=device, dtype=dtype).eval(), sde, parameterization)
