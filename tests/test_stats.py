"""The energy distance and its null law: the statistic against a direct computation, the
distance variance against its closed form and without bias, the exact null against Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from sdeplug.oracle import preset, random_mixture
from sdeplug.stats import distance_variance, energy_distance, energy_null

#: The distance variance E[g(X, X')^2] of a standard normal in one dimension (Szekely, Rizzo
#: and Bakirov 2007): (4 / pi) (1 - sqrt(3) + pi / 3).
NORMAL_DISTANCE_VARIANCE = 4 / math.pi * (1 - math.sqrt(3) + math.pi / 3)


def _direct(x: torch.Tensor, y: torch.Tensor, unbiased: bool) -> float:
    """Every pair's distance from its differences, in one matrix."""

    def mean(a, b, same):
        d = (a[:, None, :] - b[None, :, :]).norm(dim=-1)
        return d.sum() / (len(a) * (len(a) - 1)) if same and unbiased else d.mean()

    return float(2 * mean(x, y, False) - mean(x, x, True) - mean(y, y, True))


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize(("n", "m", "dim", "offset"), [(600, 450, 2, 0.0), (300, 200, 40, 50.0), (5, 3, 9, 0.0)])
def test_energy_distance_is_the_direct_sum_over_pairs(n, m, dim, offset, unbiased):
    """Blocks and, from 8 dimensions on, distances from inner products (of centred sets): the
    statistic agrees with the direct one to float64 roundoff of the mean distance, which it
    is a difference of (a set far from the origin included)."""
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64) + offset
    y = 1.1 * torch.randn(m, dim, generator=g, dtype=torch.float64) + offset
    scale = float((x[:, None] - y[None]).norm(dim=-1).mean())
    assert abs(energy_distance(x, y, unbiased=unbiased) - _direct(x, y, unbiased)) < 1e-11 * scale


def test_the_distance_variance_of_a_normal_is_its_closed_form():
    """Eight independent sets of 2000: their mean within 4 of its standard errors of the
    closed form (and the standard error under 2% of it, so the check has power)."""
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([distance_variance(torch.randn(2000, 1, generator=g)) for _ in range(8)])
    standard_error = float(values.std() / math.sqrt(len(values)))
    assert standard_error < 0.02 * NORMAL_DISTANCE_VARIANCE
    assert abs(float(values.mean()) - NORMAL_DISTANCE_VARIANCE) < 4 * standard_error


def test_the_distance_variance_is_unbiased_even_from_six_samples():
    """U-centring: the mean over 3000 sets of six normal samples is the closed form within 4
    standard errors (about 2% here), where centring by the sample means would be about a
    third too small."""
    g = torch.Generator().manual_seed(1)
    values = torch.tensor([distance_variance(torch.randn(6, 1, generator=g)) for _ in range(3000)])
    standard_error = float(values.std() / math.sqrt(len(values)))
    assert standard_error < 0.03 * NORMAL_DISTANCE_VARIANCE
    assert abs(float(values.mean()) - NORMAL_DISTANCE_VARIANCE) < 4 * standard_error


@pytest.mark.slow
@pytest.mark.parametrize("mixture", [preset("mixture3"), random_mixture(8, 4, seed=5)])
def test_the_exact_null_is_what_pairs_of_true_sets_give(mixture):
    """4000 pairs of true sets of 40: their mean is 0 within 4 standard errors, and their spread
    is the exact null's within 4 standard errors of a standard deviation (the statistic is
    heavy-tailed, so the error comes from its measured kurtosis)."""
    n = 40
    g = torch.Generator().manual_seed(2)
    null = energy_null(lambda k, gen: mixture.sample(k, gen), n, generator=g)
    assert null.mean == 0.0 and null.reps == 0 and "exact" in null.source
    reps = 4000
    values = torch.tensor([energy_distance(mixture.sample(n, g), mixture.sample(n, g)) for _ in range(reps)])
    std = float(values.std())
    assert abs(float(values.mean())) < 4 * std / math.sqrt(reps)
    centred = values - values.mean()
    kurtosis = float((centred**4).mean() / (centred**2).mean() ** 2)
    std_error = std * math.sqrt((kurtosis - 1) / (4 * reps))
    assert abs(std - null.std) < 4 * std_error, (std, null.std, std_error)


def test_a_monte_carlo_null_is_still_available_and_says_so():
    mixture = preset("mixture3")
    null = energy_null(lambda k, g: mixture.sample(k, g), 50, reps=7)
    assert null.reps == 7 and null.source == "over 7 pairs" and null.mean != 0.0


def test_the_null_needs_two_samples_per_set_and_the_variance_four():
    with pytest.raises(ValueError, match="at least two samples"):
        energy_null(lambda k, g: torch.zeros(k, 2), 1)
    with pytest.raises(ValueError, match="at least 4 samples"):
        distance_variance(torch.zeros(3, 2))
