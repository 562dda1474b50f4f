"""The data's mean and covariance, and the probability flow they give exactly for Gaussian data.

Near T the score is close to that of a Gaussian with the data's moments, whose
probability-flow ODE has a closed form: in the covariance's eigenbasis each coordinate
keeps its quantile, x' - alpha' mu = sqrt(alpha'^2 lam + sigma'^2) / sqrt(alpha^2 lam +
sigma^2) (x - alpha mu). A sampler can take its first step there without evaluating the
score (the fast plugin's ``gaussian_start`` predictor).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from sdeplug.files import write_safetensors
from sdeplug.interfaces import LinearSDE

F64 = torch.float64
#: The tensors of a moments file: ``basis`` only for a full covariance.
_KEYS = {"mean", "variances", "basis"}


def _check_tensors(mean: Tensor, variances: Tensor, basis: Tensor | None) -> None:
    for label, tensor in (("mean", mean), ("variances", variances), ("basis", basis)):
        if tensor is not None and (not isinstance(tensor, Tensor) or not bool(torch.isfinite(tensor).all())):
            raise ValueError(f"data moments: {label} must be a finite tensor")
    if bool((variances < 0).any()):
        raise ValueError("data moments: variances must be >= 0")
    if basis is None:
        if variances.dim() > 0 and variances.shape != mean.shape:
            raise ValueError(
                f"data moments: per-coordinate variances of shape {tuple(variances.shape)} need a mean of the same "
                f"shape; got {tuple(mean.shape)}"
            )
        return
    dim = mean.numel()
    if basis.shape != (dim, dim) or variances.shape != (dim,):
        raise ValueError(
            f"data moments: a mean of {dim} numbers needs basis ({dim}, {dim}) and variances ({dim},); got "
            f"{tuple(basis.shape)} and {tuple(variances.shape)}"
        )
    gram = basis.to(F64).T @ basis.to(F64)
    if not torch.allclose(gram, torch.eye(dim, dtype=F64, device=gram.device), atol=1e-4, rtol=0):
        raise ValueError("data moments: the columns of basis must be orthonormal (eigenvectors of the covariance)")


@attrs.frozen(eq=False)
class DataMoments:
    """A Gaussian approximation of the data: ``mean`` (the event shape, or a scalar), and the
    covariance as eigenvalues ``variances`` along the orthonormal columns of ``basis`` (D x D),
    or, without ``basis``, per-coordinate (the event shape) or one shared (a scalar) variance."""

    mean: Tensor
    variances: Tensor
    basis: Tensor | None = None

    def __attrs_post_init__(self) -> None:
        _check_tensors(self.mean, self.variances, self.basis)

    @classmethod
    def standard(cls) -> DataMoments:
        """Mean 0 and unit variance in every coordinate: standardised data, any event shape."""
        return cls(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))

    @classmethod
    def from_covariance(cls, mean: Tensor, covariance: Tensor) -> DataMoments:
        """From a mean (event shape) and a symmetric positive semi-definite covariance (D x D) over
        the flattened event. Eigenvalues below zero by rounding (a relative 1e-8) count as zero."""
        if not isinstance(mean, Tensor):
            raise ValueError(f"data moments: mean must be a finite tensor; got {type(mean).__name__}")
        dim = mean.numel()
        if not isinstance(covariance, Tensor) or covariance.shape != (dim, dim):
            shape = tuple(covariance.shape) if isinstance(covariance, Tensor) else type(covariance).__name__
            raise ValueError(
                f"data moments: a mean of {dim} numbers needs a covariance of shape ({dim}, {dim}); got {shape}"
            )
        covariance = covariance.to(F64)
        if not bool(torch.isfinite(covariance).all()):
            raise ValueError("data moments: covariance must be a finite tensor")
        scale = float(covariance.abs().max()) or 1.0
        if float((covariance - covariance.T).abs().max()) > 1e-8 * scale:
            raise ValueError("data moments: covariance must be symmetric")
        variances, basis = torch.linalg.eigh(0.5 * (covariance + covariance.T))
        if float(variances.min()) < -1e-8 * scale:
            raise ValueError(
                f"data moments: covariance must be positive semi-definite; its smallest eigenvalue is "
                f"{float(variances.min()):.3g}"
            )
        return cls(mean.to(F64), variances.clamp_min(0.0), basis)

    @classmethod
    def from_samples(cls, x: Tensor, *, full: bool = True) -> DataMoments:
        """The sample mean and covariance of x (batch, *event): full (D x D, for moderate D) or
        per-coordinate variances (``full=False``, for images)."""
        if x.dim() < 2 or x.shape[0] < 2:
            raise ValueError(f"data moments need a batch of at least 2 samples; got shape {tuple(x.shape)}")
        x = x.detach().to(F64)
        mean = x.mean(0)
        if not full:
            return cls(mean, x.var(0))
        return cls.from_covariance(mean, torch.cov(x.reshape(x.shape[0], -1).T).reshape(mean.numel(), -1))

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file that ``load`` (and the ``moments`` option of ``gaussian_start``) reads."""
        tensors = {"mean": self.mean, "variances": self.variances}
        if self.basis is not None:
            tensors["basis"] = self.basis
        return write_safetensors(path, tensors)

    @classmethod
    def load(cls, path: str | Path) -> DataMoments:
        """Read a file written by ``save`` (safetensors: no code runs)."""
        try:
            tensors = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ValueError(f"data moments: cannot read {str(path)!r} as a safetensors file: {exc}") from None
        if not {"mean", "variances"} <= set(tensors) or not set(tensors) <= _KEYS:
            raise ValueError(
                f"data moments: {str(path)!r} must hold 'mean' and 'variances' (and 'basis' for a full "
                f"covariance); it holds {sorted(tensors)}"
            )
        return cls(tensors["mean"], tensors["variances"], tensors.get("basis"))

    def fits(self, event_shape: tuple[int, ...]) -> bool:
        """Whether these moments describe samples of ``event_shape``."""
        if self.mean.dim() == 0 and self.basis is None and self.variances.dim() == 0:
            return True
        return tuple(self.mean.shape) == tuple(event_shape)

    def flow(self, sde: LinearSDE, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        """x (batch, *event) at times t moved to t_next (both (batch,)) along the probability-flow
        ODE of Gaussian data with these moments: exact for such data, in x's dtype."""
        if not self.fits(tuple(x.shape[1:])):
            raise ValueError(
                f"data moments for samples of shape {tuple(self.mean.shape)} cannot move samples of shape "
                f"{tuple(x.shape[1:])}"
            )
        view = (-1,) + (1,) * (x.dim() - 1)
        a, s = sde.alpha(t).to(F64), sde.sigma(t).to(F64)
        a_next, s_next = sde.alpha(t_next).to(F64), sde.sigma(t_next).to(F64)
        mean = self.mean.to(device=x.device, dtype=F64)
        lam = self.variances.to(device=x.device, dtype=F64)
        centred = x.to(F64) - a.reshape(view) * mean
        if self.basis is None:
            scale = torch.sqrt(a_next.reshape(view) ** 2 * lam + s_next.reshape(view) ** 2) / torch.sqrt(
                a.reshape(view) ** 2 * lam + s.reshape(view) ** 2
            )
            moved = scale * centred
        else:
            basis = self.basis.to(device=x.device, dtype=F64)
            coords = centred.reshape(x.shape[0], -1) @ basis
            scale = torch.sqrt(a_next[:, None] ** 2 * lam + s_next[:, None] ** 2) / torch.sqrt(
                a[:, None] ** 2 * lam + s[:, None] ** 2
            )
            moved = ((coords * scale) @ basis.T).reshape(x.shape)
        return (moved + a_next.reshape(view) * mean).to(x.dtype)
