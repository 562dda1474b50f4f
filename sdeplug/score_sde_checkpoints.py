"""Checkpoints of the paper's code (score_sde_pytorch's ``checkpoint_*.pth``), read without
unpickling code, and their weights matched onto an sdeplug network.

Such a file is a ``torch.save`` of ``{"model": state dict ("module."-prefixed by
DataParallel), "ema": {"decay", "num_updates", "shadow_params"}, "optimizer": ..., "step"}``.
It is read with ``torch.load(weights_only=True)``; the optimizer's param groups carry numpy
scalars (the learning-rate warm-up multiplies by ``np.minimum``), so exactly the numpy
scalar and dtype types are allowed on top, nothing else.

The EMA's ``shadow_params`` is an unnamed list over the trainable parameters in
``parameters()`` order. A network whose submodules are registered in the reference's
order (sdeplug's NCSN++) therefore receives both the model weights and the EMA weights
entry by entry, with every shape checked.

``load_score_sde_model`` goes from such a file and the paper's config (its ml_collections
config as a dict or JSON file) to the SDE and the score, as the paper's ``get_score_fn``
reads the network.
"""

from __future__ import annotations

import importlib
import json
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from sdeplug.checkpoint import CheckpointError, is_pickle
from sdeplug.errors import ConfigError, load_refusal
from sdeplug.interfaces import LinearSDE
from sdeplug.parameterization import ParameterizedScore
from sdeplug.registry import get_registry

#: State-dict entries of the reference's networks that sdeplug's networks do not keep:
#: NCSN++'s table of discrete VE noise levels, which continuous-time models never read.
UNUSED_REFERENCE_KEYS = frozenset({"sigmas"})

_SCALAR = importlib.import_module("numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray").scalar
NUMPY_SAFE_GLOBALS = [
    # numpy 1 (the paper's files) and numpy 2 pickle the scalar constructor under different module names
    (_SCALAR, "numpy.core.multiarray.scalar"),
    (_SCALAR, "numpy._core.multiarray.scalar"),
    np.dtype,
    type(np.dtype(np.float64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.int64)),
]

Weights = Literal["ema", "model"]


@attrs.frozen
class ReferenceCheckpoint:
    """What sdeplug reads of a score_sde_pytorch checkpoint."""

    model: dict[str, Tensor]  # the network's state dict, without the "module." prefix
    shadow_params: list[Tensor] | None  # the EMA weights, in trainable-parameter order
    step: int | None


def read_reference_checkpoint(path: str | Path) -> ReferenceCheckpoint:
    """Read a score_sde_pytorch ``checkpoint_*.pth`` (or ``checkpoint_meta.pth``) safely."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        what = "a bare pickle" if is_pickle(path) else "not a zip archive"
        raise CheckpointError(f"{path} is {what}; a score_sde_pytorch checkpoint is a torch.save zip file")
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} holds objects that weights-only loading refuses, so it was not loaded ({load_refusal(exc)}); "
            "sdeplug reads score_sde_pytorch checkpoints, which hold only tensors, numbers and numpy scalars"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable torch.save file: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        keys = sorted(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a score_sde_pytorch checkpoint: expected a dict with 'model', 'ema', 'optimizer' "
            f"and 'step'; got {keys}"
        )
    model = {}
    for key, value in state["model"].items():
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{path}: model entry {key!r} is not a tensor")
        model[key.removeprefix("module.")] = value
    ema = state.get("ema")
    shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
    if shadow is not None and not (isinstance(shadow, list) and all(isinstance(p, Tensor) for p in shadow)):
        raise CheckpointError(f"{path}: 'ema' 'shadow_params' must be a list of tensors")
    step = state.get("step")
    return ReferenceCheckpoint(model, shadow, int(step) if isinstance(step, int | np.integer) else None)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def reference_weights(
    network: torch.nn.Module, checkpoint: ReferenceCheckpoint, weights: Weights = "ema", source: str = "checkpoint"
) -> dict[str, Tensor]:
    """``network``'s state dict filled from ``checkpoint``: the model weights, with the EMA
    shadow parameters over the trainable ones when ``weights`` is "ema"."""
    if weights not in ("ema", "model"):
        raise ValueError(f"weights must be 'ema' or 'model'; got {weights!r}")
    ours = network.state_dict()
    plain = {k.removeprefix("module."): v for k, v in checkpoint.model.items()}
    theirs = {k: v for k, v in plain.items() if k not in UNUSED_REFERENCE_KEYS}
    for (their_key, their_value), (our_key, our_value) in zip(theirs.items(), ours.items()):
        if _shape(their_value) != _shape(our_value):
            raise CheckpointError(
                f"{source} does not fit this network: its {their_key!r} has shape {_shape(their_value)} where the "
                f"network's {our_key!r} has {_shape(our_value)} (is it the right preset?)"
            )
    if len(theirs) != len(ours):
        extra = list(theirs)[len(ours)] if len(theirs) > len(ours) else None
        raise CheckpointError(
            f"{source} does not fit this network: it holds {len(theirs)} tensors where the network has {len(ours)}"
            + (f"; the first without a match is {extra!r}" if extra else f"; {list(ours)[len(theirs)]!r} is missing")
        )
    state = {k: v.to(ours[k].dtype) for k, v in zip(ours, theirs.values())}
    if weights == "model":
        return state
    if checkpoint.shadow_params is None:
        raise CheckpointError(f"{source} holds no EMA weights ('ema' 'shadow_params'); use weights 'model'")
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    if len(trainable) != len(checkpoint.shadow_params):
        raise CheckpointError(
            f"{source}: its EMA holds {len(checkpoint.shadow_params)} tensors where the network has "
            f"{len(trainable)} trainable parameters"
        )
    for index, (name, shadow) in enumerate(zip(trainable, checkpoint.shadow_params)):
        if _shape(shadow) != _shape(state[name]):
            raise CheckpointError(
                f"{source}: EMA tensor {index} has shape {_shape(shadow)} where {name!r} has {_shape(state[name])}"
            )
        state[name] = shadow.to(state[name].dtype)
    return state


#: How the paper's get_score_fn reads its continuous-time networks on each SDE: VE models
#: output the score, VP and sub-VP models the noise (score = -output / std).
PAPER_PARAMETERIZATION = {"ve": "score", "vp": "noise", "subvp": "noise"}
#: The paper's ``config.training.sde`` names, as sdeplug's registered SDEs with their options.
PAPER_SDES = {"vesde": ("ve", ("sigma_min", "sigma_max")), "vpsde": ("vp", ("beta_min", "beta_max"))}
PAPER_SDES["subvpsde"] = ("subvp", PAPER_SDES["vpsde"][1])
#: ``config.model`` entries that are NCSN++ options of the same name.
NCSNPP_OPTIONS = (
    "nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resamp_with_conv", "conditional", "fir",
    "fir_kernel", "skip_rescale", "resblock_type", "progressive", "progressive_input", "progressive_combine",
    "embedding_type", "fourier_scale", "init_scale", "scale_by_sigma",
)  # fmt: skip
#: ``config.model`` settings the paper's code offers beside NCSN++'s, with the one value it
#: uses for every continuous-time model and sdeplug implements.
FIXED_SETTINGS = {"name": "ncsnpp", "normalization": "GroupNorm", "nonlinearity": "swish", "attention_type": "ddpm"}


def _paper_config(config: Mapping[str, Any] | str | Path | Any) -> Mapping[str, Any]:
    """The paper's config as nested mappings: given as one, as a JSON file, or as an
    ml_collections ConfigDict (anything with ``to_dict``)."""
    if isinstance(config, str | Path):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the paper's config {str(config)!r} as JSON: {exc}") from None
    elif not isinstance(config, Mapping) and callable(getattr(config, "to_dict", None)):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        kind = type(config).__name__
        raise ConfigError(f"the paper's config must be a dict, a JSON file or a ConfigDict; got {kind}")
    return config


def _setting(config: Mapping[str, Any], section: str, key: str) -> Any:
    table = config.get(section)
    if not isinstance(table, Mapping) or key not in table:
        raise ConfigError(f"the paper's config has no {section}.{key}; give the whole config of the run")
    return table[key]


def _options(config: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The sdeplug SDE name, its options and the NCSN++ options of a paper config."""
    paper_sde = _setting(config, "training", "sde")
    if paper_sde not in PAPER_SDES:
        raise ConfigError(f"training.sde must be one of {', '.join(map(repr, PAPER_SDES))}; got {paper_sde!r}")
    if _setting(config, "training", "continuous") is not True:
        raise ConfigError(
            "training.continuous is false: sdeplug reads the paper's continuous-time models (its *_continuous "
            "configs), whose networks take sigma(t) or 999 t; a discrete model's noise labels differ"
        )
    for key, value in FIXED_SETTINGS.items():
        if config["model"].get(key, value) != value:
            raise ConfigError(
                f"model.{key} = {config['model'][key]!r}: sdeplug has the paper's NCSN++ with {key} = {value!r} only"
            )
    name, sde_keys = PAPER_SDES[paper_sde]
    sde_options = {key: float(_setting(config, "model", key)) for key in sde_keys}

    def value(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    network = {key: value(_setting(config, "model", key)) for key in NCSNPP_OPTIONS}
    size, channels = _setting(config, "data", "image_size"), _setting(config, "data", "num_channels")
    network.update(event_shape=(channels, size, size), centered=bool(_setting(config, "data", "centered")))
    return name, sde_options, network


def load_score_sde_model(
    checkpoint: str | Path,
    config: Mapping[str, Any] | str | Path | Any,
    *,
    weights: Weights = "ema",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[LinearSDE, ParameterizedScore]:
    """The SDE and the score of one of the paper's continuous-time models: its
    ``checkpoint_*.pth`` (read without running code) and its config (the ml_collections
    config as a dict, e.g. ``config.to_dict()``, a JSON file of it, or the ConfigDict).

    The network is NCSN++ with the config's options, holding the EMA weights (``weights =
    "model"``: the raw ones), in eval mode (dropout off), on ``device`` in ``dtype``. The score
    reads it as the paper's ``get_score_fn(continuous=True)`` does: the output is the score
    for VE, the noise for VP and sub-VP (score = -output / sigma(t)).
    """
    paper = _paper_config(config)
    sde_name, sde_options, network_options = _options(paper)
    registry = get_registry()
    sde = registry.create("sde", sde_name, **sde_options)
    network = registry.create("score_model", "ncsnpp", **network_options)
    state = reference_weights(network, read_reference_checkpoint(checkpoint), weights, source=str(checkpoint))
    network.load_state_dict(state)
    network = network.to(device=device, dtype=dtype).eval()
    return sde, ParameterizedScore(network, sde, PAPER_PARAMETERIZATION[sde_name])
