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
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch
from torch import Tensor

from sdeplug.checkpoint import CheckpointError, is_pickle

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
            f"{path} holds objects that weights-only loading refuses, so it was not loaded ({_reason(exc)}); "
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


def _reason(exc: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful[0] if useful else type(exc).__name__)[:200]


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
