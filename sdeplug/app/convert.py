"""``sdeplug convert``: a checkpoint of the paper's code, once, into sdeplug's checksummed
safetensors, so that sample and likelihood read it as they read a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdeplug.app.assemble import build_dataset, build_network, check_config, run_config_dict
from sdeplug.app.config import Config
from sdeplug.errors import ConfigError
from sdeplug.files import file_digest
from sdeplug.score_sde_checkpoints import (
    PAPER_PARAMETERIZATION,
    Weights,
    read_reference_checkpoint,
    reference_weights,
)
from sdeplug.trainer import save_weights


def convert_job(config: Config, source: str | Path, out: Path, weights: Weights = "ema") -> dict[str, Any]:
    """Read a score_sde_pytorch ``checkpoint_*.pth`` into the config's [model] network and
    write its EMA (or model) weights to ``out``."""
    check_config(config)
    if config.sde.name not in PAPER_PARAMETERIZATION:
        raise ConfigError(
            f"score_sde_pytorch checkpoints are VE, VP or sub-VP models; [sde] name is {config.sde.name!r} "
            f"(use one of {', '.join(map(repr, PAPER_PARAMETERIZATION))})"
        )
    source = Path(source)
    checkpoint = read_reference_checkpoint(source)
    # the data are read only for their shape, and not at all when [model] gives event_shape
    dataset = None if "event_shape" in config.model.options else build_dataset(config)
    network = build_network(config, dataset)
    state = reference_weights(network, checkpoint, weights, source=str(source))
    network.load_state_dict(state)  # every tensor has its place: shapes and count were checked
    parameterization = PAPER_PARAMETERIZATION[config.sde.name]
    provenance = {"file": source.name, "sha256": file_digest(source), "step": checkpoint.step, "weights": weights}
    recorded = run_config_dict(config)
    if not config.data_named:
        del recorded["data"]  # no default data set is recorded as if the model had been trained on it
    save_weights(out, state, parameterization=parameterization, config=recorded, source=provenance)
    return {
        "checkpoint": str(out),
        "source": provenance,
        "parameterization": parameterization,
        "parameters": sum(p.numel() for p in network.parameters()),
        "written": [str(out)],
    }
