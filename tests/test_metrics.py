"""FID, KID, precision/recall and the Inception Score against closed forms, known point
clouds and the reference implementations' own numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdeplug.metrics import FeatureStats, fid, frechet_distance, inception_score, kid, precision_recall

F64 = torch.float64


def random_rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=torch.Generator().manual_seed(seed)))
    return q


@given(d=st.integers(1, 12), seed=st.integers(0, 10**6))
def test_frechet_distance_of_gaussians_is_its_closed_form(d, seed):
    """With C1 = R diag(a) R^T and C2 = R diag(b) R^T (commuting), the distance is
    |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2. Each computed eigenvalue is off by about
    d 2^-52 max(a, b) = 1e-14, and its square root by that over 2 sqrt(a_i) (a_i >= 1e-6 but
    with probability 1e-6): far below 1e-8 of the distance's scale. The zero eigenvalue is
    held at 0 by the square root's rounding floor, or its noise would cost sqrt(1e-14)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(d, dtype=F64, generator=g) * 4, torch.rand(d, dtype=F64, generator=g) * 4
    a[0] = 0.0  # a singular covariance too
    mu1, mu2 = torch.randn(d, dtype=F64, generator=g), torch.randn(d, dtype=F64, generator=g)
    r = random_rotation(d, seed)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, r @ torch.diag(a) @ r.T, mu2, r @ torch.diag(b) @ r.T)
    assert got == pytest.approx(expected, rel=1e-8, abs=1e-8)
    assert 0 <= frechet_distance(mu1, r @ torch.diag(a) @ r.T, mu1, r @ torch.diag(a) @ r.T) <= 1e-10 * float(a.sum())


def gaussian_fit_of_samples(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of n samples in d dimensions with spreads over 4 decades: rank
    min(n - 1, d), as a feature set's Gaussian fit is when it has fewer samples than features."""
    g = torch.Generator().manual_seed(seed)
    scales = 10 ** (4 * torch.rand(d, dtype=F64, generator=g) - 2)
    x = torch.randn(n, d, dtype=F64, generator=g) * scales + torch.randn(d, dtype=F64, generator=g) * 3
    return x.mean(0), torch.cov(x.T).reshape(d, d)  # torch.cov gives a 0-d tensor for d = 1


@given(d=st.integers(1, 160), n=st.integers(2, 200), seed=st.integers(0, 10**6))
def test_the_frechet_distance_of_a_gaussian_to_itself_is_zero_full_rank_or_not(d, n, seed):
    """Rounding in the square roots and singular values is about d 2^-52 of the trace each:
    the distance of a fit to itself is within 1e-10 of its trace of 0, and never negative."""
    mean, cov = gaussian_fit_of_samples(n, d, seed)
    assert 0 <= frechet_distance(mean, cov, mean, cov) <= 1e-10 * float(torch.trace(cov))


@pytest.mark.slow
def test_fid_of_inception_sized_features_with_themselves_is_zero():
    """2048 features, as Inception-v3's, fitted on 700 samples (rank 699: the case where the
    square roots of rounding noise made FID negative; full rank is covered above)."""
    stats = FeatureStats.of(torch.randn(700, 2048, dtype=F64, generator=torch.Generator().manual_seed(7)) * 5)
    assert 0 <= fid(stats, stats) <= 1e-10 * float(torch.trace(stats.cov))


@given(d=st.integers(1, 40), n=st.integers(2, 60), seed=st.integers(0, 10**6), shift=st.floats(0, 1e-3))
def test_the_frechet_distance_is_never_negative(d, n, seed, shift):
    """Two nearly equal Gaussians (one fit, the other shifted by up to 1e-3 and scaled by a
    hair) give a small distance, but never a negative one."""
    mean, cov = gaussian_fit_of_samples(n, d, seed)
    assert frechet_distance(mean, cov, mean + shift, cov * (1 + shift)) >= 0


def reference_features() -> tuple[torch.Tensor, torch.Tensor]:
    """The features of tests/data/metrics/side_by_side.py, which ran pytorch-fid and torchmetrics."""
    rng = np.random.default_rng(20261201)
    mix = rng.standard_normal((32, 32)) / 4
    real = rng.standard_normal((400, 32)) @ mix + 1.0
    fake = rng.standard_normal((300, 32)) @ (1.3 * mix) + 0.8
    return torch.tensor(real), torch.tensor(fake)


# Recorded once by tests/data/metrics/side_by_side.py on 2026-12-01: pytorch-fid 0.3.0's
# calculate_frechet_distance (scipy.linalg.sqrtm, numpy 2.x) and torchmetrics 1.9.0's
# _compute_fid, on the statistics (mean, np.cov) of the features above.
PYTORCH_FID = 11.923483102387848
TORCHMETRICS = 11.92348310238745
# ... and with 20 samples of each in 32 dimensions (singular covariances)
PYTORCH_FID_SINGULAR = 65.06316128168324
TORCHMETRICS_SINGULAR = 65.06316130124245


def test_fid_equals_pytorch_fid_and_torchmetrics_on_the_same_features():
    real, fake = reference_features()
    ours = fid(FeatureStats.of(real), FeatureStats.of(fake))
    assert ours == pytest.approx(PYTORCH_FID, rel=1e-6) and ours == pytest.approx(TORCHMETRICS, rel=1e-6)
    singular = fid(FeatureStats.of(real[:20]), FeatureStats.of(fake[:20]))
    assert singular == pytest.approx(PYTORCH_FID_SINGULAR, rel=1e-6)
    assert singular == pytest.approx(TORCHMETRICS_SINGULAR, rel=1e-6)


def test_kid_is_unbiased_on_samples_of_one_law_and_positive_between_two():
    """The mean of KID over independent draws lies within 3 standard errors of 0 when both
    sets come from one law; it is many standard errors above 0 for two laws."""
    g = torch.Generator().manual_seed(0)
    same, other = [], []
    for _ in range(40):
        x, y = torch.randn(200, 8, generator=g, dtype=F64), torch.randn(200, 8, generator=g, dtype=F64)
        same.append(kid(x, y, subsets=10, subset_size=100, generator=g)[0])
        other.append(kid(x, y * 1.3 + 0.2, subsets=10, subset_size=100, generator=g)[0])
    mean, se = np.mean(same), np.std(same, ddof=1) / math.sqrt(len(same))
    assert abs(mean) < 3 * se, (mean, se)
    assert np.mean(other) > 10 * np.std(other, ddof=1) / math.sqrt(len(other))
    _, spread = kid(x, y, subsets=5, subset_size=50, generator=g)
    assert spread > 0


def disc(n: int, seed: int, centre=(0.0, 0.0)) -> torch.Tensor:
    """n points uniform in the unit disc."""
    g = torch.Generator().manual_seed(seed)
    r, angle = torch.rand(n, generator=g, dtype=F64).sqrt(), torch.rand(n, generator=g, dtype=F64) * 2 * math.pi
    return torch.stack([r * angle.cos() + centre[0], r * angle.sin() + centre[1]], 1)


def test_precision_and_recall_on_known_point_clouds():
    real = disc(2000, 0)
    same = precision_recall(real, disc(2000, 1))
    assert same[0] > 0.95 and same[1] > 0.95
    assert precision_recall(real, disc(2000, 2, centre=(5.0, 0.0))) == (0.0, 0.0)
    left_half = disc(4000, 3)
    left_half = left_half[left_half[:, 0] < 0][:2000]  # mode dropping: covers half the real disc
    precision, recall = precision_recall(real, left_half)
    assert precision > 0.95 and 0.4 < recall < 0.6, (precision, recall)


def test_inception_score_of_confident_balanced_and_of_constant_predictions():
    eye = torch.eye(10, dtype=F64).repeat(50, 1)  # 500 confident predictions, every class alike
    assert inception_score(eye, splits=5)[0] == pytest.approx(10.0)
    assert inception_score(torch.full((500, 10), 0.1, dtype=F64), splits=5) == pytest.approx((1.0, 0.0))


def test_bad_inputs_are_refused_with_what_is_accepted():
    with pytest.raises(ValueError, match=r"features of shape \(n >= 2, dim\); got \(3,\)"):
        FeatureStats.of(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        kid(torch.full((4, 2), math.nan), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="same dimension"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3))
    with pytest.raises(ValueError, match="k must be at least 1"):
        precision_recall(torch.zeros(3, 2), torch.zeros(3, 2), k=3)
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(torch.ones(4, 2, dtype=F64))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m, c: (m, c.clone().fill_diagonal_(float("nan"))), "holds NaN or inf values"),
        (lambda m, c: (m, -5 * torch.eye(len(m), dtype=F64)), r"not positive semi-definite \(smallest eigenvalue -5\)"),
        (lambda m, c: (m, c + torch.triu(torch.ones_like(c), 1)), "not symmetric"),
        (lambda m, c: (m[:-1], c), "a mean of shape \\(dim,\\) and a covariance \\(dim, dim\\)"),
    ],
)
def test_reference_statistics_that_no_features_have_are_refused_on_load(tmp_path, edit, message):
    """Written by save_stats (so the checksum holds), yet no set of features has them: a FID
    against them would be NaN, negative or wrong without a word."""
    from sdeplug.checkpoint import CheckpointError
    from sdeplug.metrics import load_stats, save_stats

    stats = FeatureStats.of(torch.randn(50, 6, dtype=F64, generator=torch.Generator().manual_seed(0)))
    mean, cov = edit(stats.mean, stats.cov)
    save_stats(tmp_path / "bad.safetensors", FeatureStats(mean, cov, 50), extractor={"name": "pixels"}, data={})
    with pytest.raises(CheckpointError, match=message):
        load_stats(tmp_path / "bad.safetensors")
    save_stats(tmp_path / "good.safetensors", stats, extractor={"name": "pixels"}, data={})
    assert torch.equal(load_stats(tmp_path / "good.safetensors")[0].cov, stats.cov)
