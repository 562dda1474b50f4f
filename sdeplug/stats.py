"""The energy distance two-sample statistic, with a tolerance taken from its own sampling noise.

The unbiased (U-statistic) energy distance
    E = 2 E|X - Y| - E|X - X'| - E|Y - Y'|
is zero exactly when the two laws agree. Under that null hypothesis its mean is 0 and its
variance has a closed form in the law's distance variance, estimated without bias from one
true sample set; so a check says "indistinguishable from the truth at this sample size",
not a magic number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

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


def _distance_blocks(a: Tensor, b: Tensor, zero_diagonal: bool) -> Iterator[tuple[int, Tensor]]:
    """(first row, |a_i - b_j| for a block of rows i), the diagonal set to 0 with ``zero_diagonal``."""
    mode = "use_mm_for_euclid_dist" if a.shape[1] >= _MM_FROM_DIM else "donot_use_mm_for_euclid_dist"
    for start in range(0, a.shape[0], _BLOCK_ROWS):
        block = torch.cdist(a[start : start + _BLOCK_ROWS], b, compute_mode=mode)
        if zero_diagonal:  # exactly 0, though inner products leave roundoff there
            block.diagonal(offset=start).zero_()
        yield start, block


def _pairwise_mean(a: Tensor, b: Tensor, exclude_diagonal: bool) -> Tensor:
    """Mean of |a_i - b_j| over all pairs (over i != j with ``exclude_diagonal``, a is b)."""
    total = sum((block.sum() for _, block in _distance_blocks(a, b, a is b)), a.new_zeros(()))
    n, m = a.shape[0], b.shape[0]
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def _as_rows(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).to(dtype=torch.float64, device="cpu")


def energy_distance(x: Tensor, y: Tensor, *, unbiased: bool = True) -> float:
    """Energy distance between sample sets x (n, ...) and y (m, ...), in float64.

    ``unbiased=True`` (the tests' statistic) is centred on 0 when the laws agree;
    ``unbiased=False`` is the plain V-statistic, never negative, whose value between two
    true sets is the positive noise floor the benchmarks report beside it.
    """
    x, y = _as_rows(x), _as_rows(y)
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
    """Mean and standard deviation of the energy distance between two independent true sets of
    size n: exact (mean 0, the variance from the distance variance of ``reference`` true
    samples) or estimated from ``reps`` pairs of true sets."""

    n: int
    mean: float
    std: float
    reps: int = 0
    reference: int = 0

    def threshold(self, z: float) -> float:
        return self.mean + z * self.std

    @property
    def source(self) -> str:
        """Where the spread comes from, for messages."""
        if self.reps:
            return f"over {self.reps} pairs"
        return f"exact, from the distance variance of {self.reference} true samples"


#: True samples from which energy_null estimates the law's distance variance (a few percent).
NULL_REFERENCE_SAMPLES = 2000


def distance_variance(x: Tensor) -> float:
    """Unbiased estimate of the distance variance E[g(X, X')^2] of the law of the rows of x,
    g the doubly centred distance g(a, b) = |a - b| - E|a - X| - E|X - b| + E|X - X'|
    (Szekely and Rizzo's U-centring; at least 4 rows)."""
    x = _as_rows(x)
    m = x.shape[0]
    if m < 4:
        raise ValueError(f"the distance variance needs at least 4 samples; got {m}")
    x = x - x.mean(0)
    blocks = list(_distance_blocks(x, x, True))  # the row sums centre each block: kept, not computed twice
    rows = torch.cat([block.sum(1) for _, block in blocks])
    total = rows.sum()
    squares = x.new_zeros(())
    for start, block in blocks:
        centred = block - rows[start : start + block.shape[0], None] / (m - 2) - rows / (m - 2)
        centred += total / ((m - 1) * (m - 2))
        centred.diagonal(offset=start).zero_()
        squares += centred.square().sum()
    return float(squares / (m * (m - 3)))


def energy_null(
    sample_true: TrueSampler,
    n: int,
    *,
    reps: int | None = None,
    generator: torch.Generator | None = None,
    reference: int = NULL_REFERENCE_SAMPLES,
) -> EnergyNull:
    """The null law of energy_distance between two independent true sets of size n.

    Exact by default: the statistic is unbiased, so its mean is 0, and its variance is
    4 V (1 / (n (n - 1)) + 1 / n^2), V the law's distance variance estimated from
    ``reference`` true samples. With ``reps``, a Monte-Carlo estimate from that many pairs
    of true sets instead (its spread is itself uncertain by tens of percent at 20 pairs:
    the statistic is heavy-tailed).
    """
    if n < 2:
        raise ValueError(f"the energy distance needs at least two samples per set; got n = {n}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if reps is not None:
        values = torch.tensor(
            [energy_distance(sample_true(n, generator), sample_true(n, generator)) for _ in range(reps)],
            dtype=torch.float64,
        )
        return EnergyNull(n=n, mean=float(values.mean()), std=float(values.std()), reps=reps)
    variance = 4 * distance_variance(sample_true(reference, generator)) * (1 / (n * (n - 1)) + 1 / n**2)
    return EnergyNull(n=n, mean=0.0, std=math.sqrt(variance), reference=reference)


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
            f"mean {self.null.mean:.3g}, std {self.null.std:.3g} ({self.null.source}); "
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
