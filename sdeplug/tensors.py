"""Small tensor helpers every part uses: broadcasting per-sample times, seeded noise."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

#: Seeds sdeplug takes are integers in [0, SEED_LIMIT): torch takes up to 64 bits, and a run
#: derives a few more seeds from its own by adding small offsets.
SEED_LIMIT = 2**63


def check_seed(value: object, what: str = "seed") -> int:
    """``value`` if it is a seed sdeplug takes, else a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
        raise ValueError(f"{what} must be an integer in [0, 2**63); got {value!r}")
    return value


def derived_seed(purpose: str, *parts: int) -> int:
    """A seed for one purpose of a run (a step's batch, a rank's global generator), hashed from
    the run's seed and indices: unrelated streams, the same on every machine."""
    text = " ".join(["sdeplug", purpose, *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % SEED_LIMIT


def per_sample(v: Tensor, x: Tensor) -> Tensor:
    """View a per-sample tensor of shape (batch,) so it broadcasts over x's event shape."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Times as a (batch,) tensor on x's device and dtype; a scalar is expanded without copying."""
    t = torch.as_tensor(t, device=x.device, dtype=x.dtype)
    if t.ndim == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape (batch,) = ({x.shape[0]},); got {tuple(t.shape)}")
    return t


def tweedie(x: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's formula E[x_0 | x_t = x] = (x + sigma^2 score) / alpha for x_t = alpha x_0 + sigma z,
    with alpha and sigma broadcastable to x (0-dim, or viewed with ``per_sample``)."""
    return (x + sigma**2 * score) / alpha


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise like x, drawn from ``generator`` when one is given."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def sum_except_batch(v: Tensor) -> Tensor:
    """Sum over every dimension but the first."""
    return v.reshape(v.shape[0], -1).sum(dim=1)


def non_finite_rows(x: Tensor) -> Tensor:
    """Indices of the rows (along the first dimension) of x that hold NaN or inf, in order."""
    return (~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)).nonzero().flatten()


def event_size(x: Tensor) -> int:
    """Number of entries in one sample (the dimension D)."""
    return x[0].numel()


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Standard normal noise of ``shape``; on the generator's device unless ``device`` is given."""
    if device is None and generator is not None:
        device = generator.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
