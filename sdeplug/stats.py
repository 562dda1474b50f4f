"""The energy distance two-sample statistic, with a tolerance taken from its own sampling noise.

The unbiased (U-statistic) energy distance
    E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|
is zero exactly when the two laws agree. Its spread under that null hypothesis is
measured by drawing independent pairs of true sample sets of the same sizes, so a
check says "indistinguishable from the truth at this sample size", not a magic number.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

TrueSampler = Callable[[int, torch.Generator], Tensor]
"""``sample_true(n, generator) -> n samples of the reference law``."""


#: Rows of the distance matrix computed at once: a block stays in cache, where the whole
#: matrix of thousands of samples does not (several times slower).
_BLOCK_ROWS = 256
#: From this dimension on, distances come from inner products (a matrix product), many times
#: faster than differences; the sets are centred first, so the cancellation this risks stays
#: at float64 roundoff of the sets' spread.
_MM_FROM_DIM = 8


def _pairwise_mean(a: Tensor, b: Tensor, exclude_diagonal: bool) -> Tensor:
    """Mean of |a_i - b_j| over all pairs (over i != j with ``exclude_diagonal``, a is b)."""
    mode = "use_mm_for_euclid_dist" if a.shape[1] >= _MM_FROM_DIM else "donot_use_mm_for_euclid_dist"
    total = a.new_zeros(())
    for start in range(0, a.shape[0], _BLOCK_ROWS):
        block = torch.cdist(a[start : start + _BLOCK_ROWS], b, compute_mode=mode)
        if exclude_diagonal:  # exactly 0, though inner products leave roundoff there
            block.diagonal(offset=start).zero_()
        total += block.sum()
    n, m = a.shape[0], b.shape[0]
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def energy_distance(x: Tensor, y: Tensor, *, unbiased: bool = True) -> float:
    """Energy distance between sample sets x (n, ...) and y (m, ...), in float64.

    ``unbiased=True`` (the tests' statistic) is centred on 0 when the laws agree;
    ``unbiased=False`` is the plain V-statistic, never negative, whose value between two
    true sets is the positive noise floor the benchmarks report beside it.
    """
    x = x.detach().reshape(x.shape[0], -1).to(dtype=torch.float64, device="cpu")
    y = y.detach().reshape(y.shape[0], -1).to(dtype=torch.float64, device="cpu")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"sample sets differ in dimension: {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("each sample set needs at least two samples")
    centre = x.mean(0)
    x, y = x - centre, y - centre
    value = 2 * _pairwise_mean(x, y, False) - _pairwise_mean(x, x, unbiased) - _pairwise_mean(y, y, unbiased)
    return float(value)


@attrs.frozen
class EnergyNull:
    """Mean and standard deviation of the energy distance between two independent true sets of size n."""

    n: int
    mean: float
    std: float
    reps: int

    def threshold(self, z: float) -> float:
        return self.mean + z * self.std


def energy_null(
    sample_true: TrueSampler, n: int, *, reps: int = 20, generator: torch.Generator | None = None
) -> EnergyNull:
    """Estimate the null spread of energy_distance at sample size n from ``reps`` independent pairs."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = torch.tensor(
        [energy_distance(sample_true(n, generator), sample_true(n, generator)) for _ in range(reps)],
        dtype=torch.float64,
    )
    return EnergyNull(n=n, mean=float(values.mean()), std=float(values.std()), reps=reps)


@attrs.frozen
class TwoSampleResult:
    """The statistic, the null it was judged against, and the verdict."""

    statistic: float
    null: EnergyNull
    z: float

    @property
    def threshold(self) -> float:
        return self.null.threshold(self.z)

    @property
    def passed(self) -> bool:
        return self.statistic <= self.threshold

    @property
    def z_score(self) -> float:
        return (self.statistic - self.null.mean) / self.null.std

    def __str__(self) -> str:
        return (
            f"energy distance {self.statistic:.3g} vs the truth; null (two true sets of {self.null.n}): "
            f"mean {self.null.mean:.3g}, std {self.null.std:.3g} over {self.null.reps} pairs; "
            f"{self.z_score:.1f} null stds (threshold {self.z:g})"
        )


def assert_same_law(
    samples: Tensor,
    sample_true: TrueSampler,
    *,
    null: EnergyNull | None = None,
    z: float = 5.0,
    generator: torch.Generator | None = None,
    what: str = "samples",
) -> TwoSampleResult:
    """Assert ``samples`` are indistinguishable from the reference law by the energy distance.

    Fails when the statistic against a fresh true set exceeds the null mean by ``z`` null
    standard deviations. Returns the result so callers can report it.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(12345)
    if not bool(torch.isfinite(samples).all()):
        raise AssertionError(f"{what} contain NaN or inf")
    n = samples.shape[0]
    if null is None:
        null = energy_null(sample_true, n, generator=generator)
    elif null.n != n:
        raise ValueError(f"the null was estimated for {null.n} samples; got {n}")
    result = TwoSampleResult(energy_distance(samples, sample_true(n, generator)), null, z)
    if not result.passed:
        raise AssertionError(f"{what} do not match the reference law: {result}")
    return result
