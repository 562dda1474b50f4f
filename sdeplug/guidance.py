"""Controllable generation: guidance by a likelihood, and constraints by a linear measurement.

A guided score is an ordinary score function, so it works with every predictor,
corrector and ODE solver unchanged:

    s(x, t | y) = s(x, t) + w grad_x log p_t(y | x)

With w = 1 and the exact time-dependent likelihood this is the exact score of the
conditional law p_t(x | y) (Bayes' rule); w > 1 sharpens towards y. ``ClassifierGuidance``
takes p_t(y | x) from a time-dependent classifier, ``LikelihoodGuidance`` from any
log-likelihood (the oracle's exact measurement likelihood, for instance).

Inpainting and other linear inverse problems y = A x use the paper's replacement method
instead (``Replacement``, passed to ``sample_pc(constraint=...)``): after every update the
measured part of x is replaced by a freshly forward-noised copy of y, by projection
x + A^+ (y_t - A x) for a general A. It needs no likelihood, but it is an approximation:
it uses the score of p_t(x_u | y_t) where p_t(x_u | y) is needed, and on a multimodal
conditional it gets the modes' weights wrong (docs/sampling.md, "Inpainting and linear measurements").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sdeplug.interfaces import LinearSDE, ScoreFn
from sdeplug.tensors import per_sample, randn_like

Classifier = Callable[[Tensor, Tensor], Tensor]
"""``classifier(x, t) -> logits`` of shape (batch, classes), differentiable in x."""

LogLikelihood = Callable[[Tensor, Tensor], Tensor]
"""``log_likelihood(x, t) -> log p_t(y | x)`` of shape (batch,), differentiable in x."""


def _check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"the guidance scale must be a finite number; got {scale!r}")
    return float(scale)


def _grad(log_likelihood: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """grad_x of a per-sample log-likelihood, with autograd even inside the samplers' no_grad."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_likelihood(x_in).sum(), x_in)
    return grad


class LikelihoodGuidance:
    """The score s(x, t) + scale * grad_x log_likelihood(x, t), for any log p_t(y | x)."""

    def __init__(self, score: ScoreFn, log_likelihood: LogLikelihood, scale: float = 1.0) -> None:
        if not callable(log_likelihood):
            raise TypeError(
                f"log_likelihood must be callable as f(x, t) -> (batch,); got {type(log_likelihood).__name__}"
            )
        self.score, self.log_likelihood, self.scale = score, log_likelihood, _check_scale(scale)

    def _checked(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.log_likelihood(x, t)
        if out.shape != (x.shape[0],):
            raise ValueError(f"the log-likelihood returned shape {tuple(out.shape)}; it must return ({x.shape[0]},)")
        return out

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, t) + self.scale * _grad(lambda v: self._checked(v, t), x)


class ClassifierGuidance:
    """The score s(x, t) + scale * grad_x log softmax(classifier(x, t))[y].

    ``y`` is one class for every sample or a (batch,) tensor of classes. The gradient is
    taken with autograd even inside the samplers' ``no_grad``.
    """

    def __init__(self, score: ScoreFn, classifier: Classifier, y: int | Tensor, scale: float = 1.0) -> None:
        if not callable(classifier):
            raise TypeError(
                f"classifier must be callable as classifier(x, t) -> logits; got {type(classifier).__name__}"
            )
        scale = _check_scale(scale)
        if isinstance(y, Tensor):
            if y.ndim != 1 or y.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"y must be an int or a 1-D integer tensor of classes; got {y.dtype} {tuple(y.shape)}")
            if y.numel() and int(y.min()) < 0:  # one host read, here and never while sampling
                raise ValueError("class labels y must be non-negative")
        elif isinstance(y, bool) or not isinstance(y, int) or y < 0:
            raise ValueError(f"y must be a non-negative int or a 1-D integer tensor; got {y!r}")
        self.score, self.classifier, self.y, self.scale = score, classifier, y, scale
        self._checked = False

    def _labels(self, x: Tensor) -> Tensor:
        if isinstance(self.y, Tensor):
            if self.y.shape[0] != x.shape[0]:
                raise ValueError(f"y has {self.y.shape[0]} labels for a batch of {x.shape[0]}")
            return self.y.to(x.device)
        return torch.full((x.shape[0],), self.y, dtype=torch.int64, device=x.device)

    def log_likelihood(self, x: Tensor, t: Tensor) -> Tensor:
        """log p_t(y | x) per sample, from the classifier's logits."""
        logits = self.classifier(x, t)
        if not self._checked:
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(
                    f"the classifier returned shape {tuple(logits.shape)}; it must return logits "
                    f"of shape (batch, classes) = ({x.shape[0]}, C)"
                )
            if not isinstance(self.y, Tensor) and self.y >= logits.shape[1]:
                raise ValueError(f"class {self.y} does not exist: the classifier has {logits.shape[1]} classes")
            self._checked = True
        return torch.log_softmax(logits, dim=-1).gather(1, self._labels(x)[:, None])[:, 0]

    def log_likelihood_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(y | x), a tensor like x."""
        return _grad(lambda v: self.log_likelihood(v, t), x)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, t) + self.scale * self.log_likelihood_grad(x, t)


class Measurement:
    """A noiseless linear measurement y = A x of every sample.

    ``Measurement(y, mask=mask)``: inpainting. ``mask`` (like one sample or like the
    batch; 1 = known) selects the known entries and ``y`` holds them (like the batch,
    or like one sample for all), entries outside the mask ignored.
    ``Measurement(y, matrix=A)``: A is (M, D) on flattened samples with full row rank and
    y is (M,) or (batch, M); colorization is A = the mean over channels of each pixel.
    """

    def __init__(self, y: Tensor, *, mask: Tensor | None = None, matrix: Tensor | None = None) -> None:
        if (mask is None) == (matrix is None):
            raise ValueError("a Measurement needs exactly one of mask= or matrix=")
        self.y, self.mask, self.A = y, mask, matrix
        if matrix is not None:
            if matrix.ndim != 2 or matrix.shape[0] > matrix.shape[1]:
                raise ValueError(f"A must be a matrix (M, D) with M <= D; got shape {tuple(matrix.shape)}")
            if y.shape[-1] != matrix.shape[0] or y.ndim not in (1, 2):
                raise ValueError(f"y must be (M,) or (batch, M) with M = {matrix.shape[0]}; got {tuple(y.shape)}")
            gram = matrix @ matrix.T
            if int(torch.linalg.matrix_rank(gram)) < matrix.shape[0]:
                raise ValueError("A must have full row rank: its rows are linearly dependent")
            self._pinv_T = torch.linalg.solve(gram, matrix)  # (A^+)^T = (A A^T)^-1 A
        else:
            if not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError("the mask must hold only 0 (unknown) and 1 (known)")

    def _like(self, v: Tensor, x: Tensor) -> Tensor:
        v = v.to(device=x.device, dtype=x.dtype)
        if v.shape == x.shape[1:]:
            return v.expand_as(x)
        if v.shape != x.shape:
            raise ValueError(
                f"mask and y must have the shape of one sample {tuple(x.shape[1:])} or of the batch "
                f"{tuple(x.shape)}; got {tuple(v.shape)}"
            )
        return v

    def apply(self, x: Tensor) -> Tensor:
        """A x: the measured entries (masked x) or the measurement vector (batch, M)."""
        if self.mask is not None:
            return x * self._like(self.mask, x)
        return x.reshape(x.shape[0], -1) @ self.A.to(x).T

    def project(self, x: Tensor, target: Tensor) -> Tensor:
        """x moved, along the measured directions only, so that A x = target: x + A^+ (target - A x)."""
        if self.mask is not None:
            return x + self._like(self.mask, x) * (target - x)
        flat = x.reshape(x.shape[0], -1)
        return (flat + (target - self.apply(x)) @ self._pinv_T.to(x)).reshape(x.shape)

    def target(self, x: Tensor) -> Tensor:
        """y, shaped for ``project`` against a batch like x."""
        if self.mask is not None:
            return self._like(self.y, x)
        return self.y.to(x).expand(x.shape[0], -1)


class Replacement:
    """The paper's inpainting/imputation constraint for ``sample_pc(constraint=...)``.

    At time t the measured part of x is replaced by a forward-noised measurement
    A (alpha(t) x0 + sigma(t) z) = alpha(t) y + sigma(t) A z, fresh z each time, through
    ``Measurement.project``; ``final`` puts y itself back after the last denoising step.
    The noise is drawn at the time the state is at after each update (the paper's code
    noises to the time before the predictor's step).
    """

    def __init__(self, sde: LinearSDE, measurement: Measurement) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"the replacement method needs a LinearSDE (alpha(t), sigma(t)); got {type(sde).__name__}")
        self.sde, self.measurement = sde, measurement

    def __call__(self, x: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        m = self.measurement
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        noise = m.apply(randn_like(x, generator))
        y = m.target(x)
        return m.project(x, per_sample(alpha, y) * y + per_sample(sigma, noise) * noise)

    def final(self, x: Tensor) -> Tensor:
        return self.measurement.project(x, self.measurement.target(x))
