"""Controllable generation: classifier guidance (more to come: inpainting, linear inverse problems).

A guided score is an ordinary score function, so it works with every predictor,
corrector and ODE solver unchanged:

    s(x, t | y) = s(x, t) + w grad_x log p_t(y | x)

With w = 1 and the exact time-dependent classifier this is the exact score of the
class-conditional law p_t(x | y) (Bayes' rule); w > 1 sharpens towards the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sdeplug.interfaces import ScoreFn

Classifier = Callable[[Tensor, Tensor], Tensor]
"""``classifier(x, t) -> logits`` of shape (batch, classes), differentiable in x."""


class ClassifierGuidance:
    """The score s(x, t) + scale * grad_x log softmax(classifier(x, t))[y].

    ``y`` is one class for every sample or a (batch,) tensor of classes. The gradient is
    taken with autograd even inside the samplers' ``no_grad``.
    """

    def __init__(self, score: ScoreFn, classifier: Classifier, y: int | Tensor, scale: float = 1.0) -> None:
        if not callable(classifier):
            raise TypeError(f"classifier must be callable as classifier(x, t) -> logits; got {type(classifier).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"the guidance scale must be a finite number; got {scale!r}")
        if isinstance(y, Tensor):
            if y.ndim != 1 or y.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"y must be an int or a 1-D integer tensor of classes; got {y.dtype} {tuple(y.shape)}")
            if y.numel() and int(y.min()) < 0:  # one host read, here and never while sampling
                raise ValueError("class labels y must be non-negative")
        elif isinstance(y, bool) or not isinstance(y, int) or y < 0:
            raise ValueError(f"y must be a non-negative int or a 1-D integer tensor; got {y!r}")
        self.score, self.classifier, self.y, self.scale = score, classifier, y, float(scale)
        self._checked = False

    def _labels(self, x: Tensor) -> Tensor:
        if isinstance(self.y, Tensor):
            if self.y.shape[0] != x.shape[0]:
                raise ValueError(f"y has {self.y.shape[0]} labels for a batch of {x.shape[0]}")
            return self.y.to(x.device)
        return torch.full((x.shape[0],), self.y, dtype=torch.int64, device=x.device)

    def log_likelihood_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p_t(y | x), a tensor like x."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = self.classifier(x_in, t)
            if not self._checked:
                if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                    raise ValueError(f"the classifier returned shape {tuple(logits.shape)}; it must return logits "
                                     f"of shape (batch, classes) = ({x.shape[0]}, C)")
                if not isinstance(self.y, Tensor) and self.y >= logits.shape[1]:
                    raise ValueError(f"class {self.y} does not exist: the classifier has {logits.shape[1]} classes")
                self._checked = True
            log_py = torch.log_softmax(logits, dim=-1).gather(1, self._labels(x)[:, None]).sum()
            (grad,) = torch.autograd.grad(log_py, x_in)
        return grad

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.score(x, t) + self.scale * self.log_likelihood_grad(x, t)
