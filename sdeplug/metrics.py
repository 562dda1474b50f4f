"""Sample-quality metrics on features: Fréchet distance (FID), kernel inception distance
(KID), precision and recall, and the Inception Score.

Every metric takes features (batch, dim) from a FeatureExtractor and computes in float64.
The Fréchet distance needs tr sqrt(C1 C2). With symmetric square roots S1, S2 (from
eigendecompositions, eigenvalues clipped at 0) the eigenvalues of C1 C2 are the squared
singular values of S1 S2, so the trace is the sum of those singular values. Unlike the square
roots of the eigenvalues of C1 C2 (or of S1 C2 S1), which turn every rounding-level eigenvalue
of a singular covariance into sqrt(2^-52) of its scale, singular values carry rounding error
only: a Gaussian's distance to itself is 0 to rounding, full rank or not.
"""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import torch
from torch import Tensor

from sdeplug.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdeplug.errors import SdeplugError

F64 = torch.float64


def _features(f: Tensor, what: str) -> Tensor:
    if not isinstance(f, Tensor) or f.ndim != 2 or f.shape[0] < 2:
        got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
        raise ValueError(f"{what} must be features of shape (n >= 2, dim); got {got}")
    if not torch.isfinite(f).all():
        raise ValueError(f"{what} hold NaN or inf values")
    return f.to(F64)


@attrs.frozen(eq=False)
class FeatureStats:
    """The mean and covariance (unbiased, as pytorch-fid's np.cov) of n feature vectors."""

    mean: Tensor
    cov: Tensor
    n: int

    @classmethod
    def of(cls, features: Tensor) -> FeatureStats:
        f = _features(features, "features")
        return cls(f.mean(0), torch.cov(f.T), f.shape[0])


def _sqrt_psd(m: Tensor) -> Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix. Eigenvalues
    within rounding of 0 (dim * 2^-52 of the largest) are 0: their computed values are noise,
    and their square roots would be noise of size sqrt(2^-52)."""
    values, vectors = torch.linalg.eigh((m + m.T) / 2)
    floor = len(values) * torch.finfo(values.dtype).eps * values.abs().max()
    values = torch.where(values > floor, values, torch.zeros_like(values))
    return (vectors * values.sqrt()) @ vectors.T


def frechet_distance(mean1: Tensor, cov1: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 sqrt(C1 C2)): the Fréchet (2-Wasserstein) distance
    of two Gaussians, squared, in float64."""
    mean1, mean2, cov1, cov2 = (a.to(F64) for a in (mean1, mean2, cov1, cov2))
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mean1), len(mean1)):
        raise ValueError(
            f"the two Gaussians must have the same dimension; got means {tuple(mean1.shape)}, "
            f"{tuple(mean2.shape)} and covariances {tuple(cov1.shape)}, {tuple(cov2.shape)}"
        )
    cross = torch.linalg.svdvals(_sqrt_psd(cov1) @ _sqrt_psd(cov2)).sum()
    distance = ((mean1 - mean2) ** 2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return max(float(distance), 0.0)  # a distance: rounding below 0 is 0


def fid(a: FeatureStats, b: FeatureStats) -> float:
    """The Fréchet distance of two feature sets' Gaussian fits (FID with Inception features)."""
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid(
    real: Tensor,
    fake: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel inception distance: the unbiased estimator of MMD^2 with the cubic polynomial
    kernel (x.y / d + 1)^3 on ``subsets`` random subsets of ``subset_size`` from each set
    (drawn without replacement); returns its mean and standard deviation over the subsets."""
    x, y = _features(real, "real features"), _features(fake, "fake features")
    m = min(subset_size, len(x), len(y))
    if subsets < 1 or m < 2:
        raise ValueError(f"need subsets >= 1 and subsets of at least 2 points; got {subsets}, {m}")
    values = torch.empty(subsets, dtype=F64)
    for i in range(subsets):
        xs = x[torch.randperm(len(x), generator=generator)[:m]]
        ys = y[torch.randperm(len(y), generator=generator)[:m]]
        kxx, kyy, kxy = _polynomial_kernel(xs, xs), _polynomial_kernel(ys, ys), _polynomial_kernel(xs, ys)
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        values[i] = off - 2 * kxy.mean()
    return float(values.mean()), float(values.std()) if subsets > 1 else 0.0


def _kth_neighbour_radii(x: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Each point's distance to its k-th nearest other point of the same set."""
    radii = torch.empty(len(x), dtype=F64)
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start : start + chunk], x)
        radii[start : start + chunk] = d.kthvalue(k + 1, dim=1).values  # the 0 to itself is the first
    return radii


def _inside_any_ball(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    inside = torch.empty(len(points), dtype=torch.bool)
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start : start + chunk], centres)
        inside[start : start + chunk] = (d <= radii).any(dim=1)
    return inside


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019): precision is the fraction of
    fake points inside the real manifold (the union of balls reaching each real point's k-th
    nearest real neighbour), recall the fraction of real points inside the fake manifold."""
    x, y = _features(real, "real features"), _features(fake, "fake features")
    if not 1 <= k < min(len(x), len(y)):
        raise ValueError(f"k must be at least 1 and below both set sizes ({len(x)}, {len(y)}); got {k}")
    precision = _inside_any_ball(y, x, _kth_neighbour_radii(x, k)).double().mean()
    recall = _inside_any_ball(x, y, _kth_neighbour_radii(y, k)).double().mean()
    return float(precision), float(recall)


def inception_score(probabilities: Tensor, *, splits: int = 10) -> tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) of class probabilities (batch, classes), over ``splits``
    equal parts: mean and standard deviation, as the Inception Score is reported."""
    p = _features(probabilities, "class probabilities")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones((), dtype=F64), atol=1e-4):
        raise ValueError("class probabilities must be non-negative and sum to 1 in each row")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be between 1 and the number of samples ({len(p)}); got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(0, keepdim=True)
        kl = (part * (torch.log(part.clamp(min=1e-30)) - torch.log(marginal.clamp(min=1e-30)))).sum(1).mean()
        scores.append(math.exp(float(kl)))
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
    return mean, std


# Reference statistics on disk --------------------------------------------------------------


def save_stats(path: str | Path, stats: FeatureStats, *, extractor: dict, data: dict) -> Path:
    """Write (atomically, checksummed) a feature set's statistics with how they were made:
    the extractor's identity (name, settings, preprocessing, weights) and the data."""
    meta = {"kind": "feature_stats", "n": stats.n, "extractor": extractor, "data": data}
    return save_checkpoint(path, {"mean": stats.mean, "cov": stats.cov}, meta)


def load_stats(path: str | Path, *, extractor: dict | None = None) -> tuple[FeatureStats, dict]:
    """Read statistics written by ``save_stats``; with ``extractor``, refuse them unless they
    were made with exactly that extractor identity."""
    tensors, meta = load_checkpoint(path)
    if not isinstance(meta, dict) or meta.get("kind") != "feature_stats" or {"mean", "cov"} - tensors.keys():
        raise CheckpointError(f"{path} is not a feature-statistics file (written by sdeplug.metrics.save_stats)")
    if extractor is not None:
        check_comparable(meta["extractor"], extractor, f"{path}")
    n = meta.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise CheckpointError(f"{path}: its statistics must be of n >= 2 feature vectors; got n = {n!r}")
    mean, cov = tensors["mean"].to(F64), tensors["cov"].to(F64)
    check_gaussian(mean, cov, str(path))
    return FeatureStats(mean, cov, n), meta


def check_gaussian(mean: Tensor, cov: Tensor, what: str) -> None:
    """Refuse, in one line, a mean and covariance that no set of features has: other shapes,
    NaN or inf, an asymmetric covariance, or a negative eigenvalue. Rounding leaves both far
    below the relative 1e-8 allowed (as DataMoments allows)."""
    if mean.ndim != 1 or cov.shape != (len(mean), len(mean)):
        raise CheckpointError(
            f"{what}: a mean of shape (dim,) and a covariance (dim, dim) are needed; got "
            f"{tuple(mean.shape)} and {tuple(cov.shape)}"
        )
    if not bool(torch.isfinite(mean).all() & torch.isfinite(cov).all()):
        raise CheckpointError(f"{what}: its mean or covariance holds NaN or inf values")
    scale = float(cov.abs().max()) or 1.0
    tolerance = 1e-8 * scale
    if float((cov - cov.T).abs().max()) > tolerance:
        raise CheckpointError(f"{what}: its covariance is not symmetric, so it is no covariance")
    smallest = float(torch.linalg.eigvalsh(cov).min())
    if smallest < -tolerance:
        raise CheckpointError(
            f"{what}: its covariance is not positive semi-definite (smallest eigenvalue {smallest:.3g}), "
            "so it is no covariance"
        )


def check_comparable(recorded: dict, current: dict, what: str = "the reference statistics") -> None:
    """Refuse to compare features from different extractors, settings or preprocessings."""
    if recorded != current:
        differ = sorted(k for k in recorded.keys() | current.keys() if recorded.get(k) != current.get(k))
        raise MetricsMismatchError(
            f"{what} were computed with other features ({', '.join(differ)} differ: {recorded} against {current}); "
            "compute them again with this extractor"
        )


class MetricsMismatchError(SdeplugError, ValueError):
    """Statistics made with other features (extractor, settings, preprocessing or weights)."""
