"""``torch.compile`` for training and sampling: a check that this platform can compile, made
once per device kind, and a score model whose network runs compiled."""

from __future__ import annotations

import torch

from sdeplug.errors import PlatformError, error_text
from sdeplug.interfaces import ScoreModel

_COMPILE_WORKS: dict[str, str | None] = {}


def check_compile(device: torch.device) -> None:
    """Raise PlatformError, in one line, if ``torch.compile`` cannot compile and run a small
    function on ``device``'s kind here (no C++ compiler, no Triton, an unsupported Python); the
    answer is kept for the process."""
    device = torch.device(device)
    if device.type not in _COMPILE_WORKS:
        try:
            probe = torch.compile(lambda x: x * 2 + 1, dynamic=False)
            probe(torch.ones(4, device=device))
            _COMPILE_WORKS[device.type] = None
        except Exception as exc:  # whatever the platform lacks, torch says it in its first line
            lines = [line.strip() for line in error_text(exc).splitlines() if line.strip()]
            _COMPILE_WORKS[device.type] = (lines[0] if lines else type(exc).__name__)[:300]
    reason = _COMPILE_WORKS[device.type]
    if reason is not None:
        raise PlatformError(
            f"compile = true, but torch.compile cannot compile for {device.type} on this machine ({reason}); "
            "set compile = false"
        )


def compile_score(score: ScoreModel, device: torch.device | str = "cpu", *, mode: str | None = None) -> ScoreModel:
    """``score`` with its ``network`` run through ``torch.compile`` (checked first with
    ``check_compile``); ``mode="reduce-overhead"`` adds CUDA graphs on a GPU. The first calls at
    each new batch shape compile; samples equal the eager ones to float32 rounding."""
    network = getattr(score, "network", None)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(
            f"compile_score needs a score model with a network (a ParameterizedScore); got {type(score).__name__}"
        )
    check_compile(torch.device(device))
    if not hasattr(network, "_orig_mod"):  # not compiled already
        score.network = torch.compile(network, mode=mode)
    return score
