"""Class-conditional score models, and the guidance that samples them: classifier-free guidance,
autoguidance, a guidance interval and dynamic thresholding.

A conditional score model has ``num_classes`` set and takes the labels as a third argument,
``model(x, t, labels)``, with one integer label per sample in [0, num_classes) or
``NULL_LABEL`` for "no class" (the unconditional score, which the model learns by label
dropout). Predictors, correctors and ODE solvers never see labels: they sample a score
function ``score(x, t)``, so a conditional model is sampled through one of

- ``Conditioned(model, labels)``: the conditional score s(x, t, y);
- ``classifier_free_guidance(model, labels, w)``: s(x, t, null) + w (s(x, t, y) - s(x, t, null))
  (Ho & Salimans 2021), both evaluations in one batch through the network;
- ``autoguidance(model, weak_model, w)``: s_good + (w - 1) (s_good - s_bad) with a weaker
  model as the guide (Karras et al. 2024);

each an ordinary score function. Because the data prediction, the noise prediction and the
score are affine in one another at a given (x, t), these combinations are the same whether
written on scores, on noise or on data predictions (as EDM writes autoguidance).

A batch that holds k whole copies of the run's batch (as the likelihood's quadrature
evaluates it) gets the labels repeated k times, the copies one after another.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, ScoreFn, ScoreModel
from sdeplug.tensors import per_sample

#: The label meaning "no class": a conditional model given it returns the unconditional score.
NULL_LABEL = -1


def num_classes(model: object) -> int | None:
    """The number of classes a conditional score model takes, or None for an unconditional one
    (looking through torch.compile's and DDP's wrappers)."""
    for wrapped in ("_orig_mod", "module"):
        modules = getattr(model, "_modules", None) or {}
        if wrapped in modules and getattr(model, "num_classes", None) is None:
            model = modules[wrapped]
    classes = getattr(model, "num_classes", None)
    return None if classes is None else int(classes)


def check_labels(labels: int | Sequence[int] | Tensor, classes: int | None, what: str = "the score model") -> Tensor:
    """``labels`` as an int64 tensor (0-dim for one label for every sample, else 1-D), checked
    against the model's classes with one host read; a ValueError names what was wrong."""
    if classes is None:
        raise ValueError(f"{what} is unconditional: it takes no class labels (a conditional model sets num_classes)")
    if isinstance(labels, bool) or (isinstance(labels, Tensor) and labels.dtype == torch.bool):
        raise ValueError(f"class labels must be integers; got {labels!r}")
    if isinstance(labels, Tensor):
        if labels.is_floating_point() or labels.is_complex() or labels.ndim > 1:
            raise ValueError(
                f"class labels must be an int or a 1-D integer tensor; got {labels.dtype} "
                f"of shape {tuple(labels.shape)}"
            )
        tensor = labels.to(torch.int64)
    else:
        try:
            tensor = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"class labels must be an int or a 1-D sequence of ints; got {labels!r}") from None
        if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.ndim > 1:
            raise ValueError(f"class labels must be an int or a 1-D sequence of ints; got {labels!r}")
        tensor = tensor.to(torch.int64)
    if tensor.numel():
        bad = tensor[(tensor < NULL_LABEL) | (tensor >= classes)]
        if bad.numel():
            raise ValueError(
                f"class label {int(bad[0])} is out of range: {what} knows classes 0 to {classes - 1} "
                f"(and {NULL_LABEL} for no class)"
            )
    return tensor


def _check_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"the guidance weight must be a finite number; got {weight!r}")
    return float(weight)


def evaluations_per_call(score: ScoreFn) -> int:
    """Network evaluations per sample that one call of ``score`` costs (2 for a guided score)."""
    return int(getattr(score, "evaluations_per_call", 1))


class Conditioned(ScoreModel):
    """The score of a conditional model given labels: ``score(x, t) = model(x, t, labels)``.

    ``labels`` is one label for every sample (an int, or ``NULL_LABEL`` for the unconditional
    score) or one per sample (1-D). It is an unconditional score to whoever calls it.
    """

    num_classes = None

    def __init__(self, model: ScoreFn, labels: int | Sequence[int] | Tensor) -> None:
        super().__init__()
        classes = num_classes(model)
        self.model, self.classes = model, classes
        self.labels = check_labels(labels, classes)

    def labels_for(self, x: Tensor) -> Tensor:
        """The labels of the batch x, shape (batch,), on x's device."""
        if self.labels.device != x.device:
            self.labels = self.labels.to(x.device)
        n = x.shape[0]
        if self.labels.ndim == 0:
            return self.labels.expand(n)
        m = self.labels.shape[0]
        if n == m:
            return self.labels
        if m and n % m == 0:
            return self.labels.repeat(n // m)
        raise ValueError(f"{m} class labels for a batch of {n}: give one label per sample, or one for all")

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t, self.labels_for(x))


class GuidanceInterval:
    """Where guidance applies: noise levels sigma(t) / alpha(t) (EDM's sigma) in (low, high];
    the weight is 1 (the main model alone) outside (Kynkäänniemi et al. 2024)."""

    def __init__(self, sde: SDE, low: float, high: float) -> None:
        if not isinstance(sde, LinearSDE):
            raise TypeError(
                f"a guidance interval is given in noise levels sigma(t)/alpha(t) and needs a LinearSDE; "
                f"got {type(sde).__name__}"
            )
        for name, value in (("low", low), ("high", high)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"the guidance interval's {name} end must be a number; got {value!r}")
        if not 0 <= low < high:
            raise ValueError(f"the guidance interval must satisfy 0 <= low < high; got ({low}, {high})")
        self.sde, self.low, self.high = sde, float(low), float(high)

    def contains(self, t: Tensor) -> Tensor:
        """Whether guidance applies at each time, shape like t."""
        level = self.sde.sigma(t) / self.sde.alpha(t)
        return (level > self.low) & (level <= self.high)


class Guided(ScoreModel):
    """s_main + (w - 1) (s_main - s_reference): w = 1 is the main score, w = 0 the reference.

    Classifier-free guidance takes the conditional score as main and the unconditional one as
    reference; autoguidance a good model as main and a weaker one as reference. When both are
    ``Conditioned`` on the same model they run as one doubled batch through it. With an
    ``interval`` the weight is w inside it and 1 outside. w = 1, and w = 0 without an interval,
    evaluate only the score they equal (one network evaluation per call, not two).
    """

    num_classes = None

    def __init__(
        self, main: ScoreFn, reference: ScoreFn, weight: float, *, interval: GuidanceInterval | None = None
    ) -> None:
        super().__init__()
        self.main, self.reference = main, reference
        self.weight, self.interval = _check_weight(weight), interval
        self._one_batch = (
            isinstance(main, Conditioned) and isinstance(reference, Conditioned) and main.model is reference.model
        )
        # the one score w = 1 or w = 0 equals, by name (not a second reference to a submodule); an
        # interval keeps w = 1 at 1 everywhere, but turns w = 0 into 1 outside it
        self._alone = "main" if self.weight == 1 else "reference" if self.weight == 0 and interval is None else None
        self.evaluations_per_call = 1 if self._alone is not None else 2

    def weight_at(self, t: Tensor) -> Tensor | float:
        """The guidance weight at each time (a float when there is no interval)."""
        if self.interval is None:
            return self.weight
        return torch.where(self.interval.contains(t), self.weight, 1.0).to(t.dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self._alone is not None:
            return getattr(self, self._alone)(x, t)
        if self._one_batch:
            n = x.shape[0]
            labels = torch.cat([self.main.labels_for(x), self.reference.labels_for(x)])
            both = self.main.model(torch.cat([x, x]), torch.cat([t, t]), labels)
            main, reference = both[:n], both[n:]
        else:
            main, reference = self.main(x, t), self.reference(x, t)
        w = self.weight_at(t)
        scale = w - 1.0 if isinstance(w, float) else per_sample(w - 1.0, x)
        return main + scale * (main - reference)


def _interval(sde: SDE | None, interval: tuple[float, float] | None) -> GuidanceInterval | None:
    if interval is None:
        return None
    if sde is None:
        raise ValueError("a guidance interval needs the SDE (sde=...) to read noise levels off times")
    try:
        low, high = interval
    except (TypeError, ValueError):
        raise ValueError(
            f"the guidance interval must be a pair (low, high) of noise levels; got {interval!r}"
        ) from None
    return GuidanceInterval(sde, low, high)


def classifier_free_guidance(
    model: ScoreFn,
    labels: int | Sequence[int] | Tensor,
    weight: float,
    *,
    sde: SDE | None = None,
    interval: tuple[float, float] | None = None,
) -> Guided:
    """s(x, t, null) + w (s(x, t, y) - s(x, t, null)) for a conditional model (Ho & Salimans 2021).

    w = 1 is the conditional model, w = 0 the unconditional one. ``interval`` = (low, high)
    applies w only at noise levels sigma/alpha in (low, high] of ``sde``, 1 elsewhere.
    """
    if num_classes(model) is None:
        raise ValueError(
            "classifier-free guidance needs a conditional model (one that sets num_classes and was trained "
            "with label dropout); this score model is unconditional"
        )
    return Guided(Conditioned(model, labels), Conditioned(model, NULL_LABEL), weight, interval=_interval(sde, interval))


def autoguidance(
    model: ScoreFn,
    weak_model: ScoreFn,
    weight: float,
    labels: int | Sequence[int] | Tensor | None = None,
    *,
    sde: SDE | None = None,
    interval: tuple[float, float] | None = None,
) -> Guided:
    """D_good + (w - 1) (D_good - D_bad) with a weaker model as the guide (Karras et al. 2024),
    here on scores; conditional models take ``labels`` (both models then given the same)."""
    classes, weak_classes = num_classes(model), num_classes(weak_model)
    if classes != weak_classes:
        raise ValueError(
            f"autoguidance needs two models over the same classes; the model has {classes or 'no'} classes "
            f"and the guiding model {weak_classes or 'no'}"
        )
    if classes is None and labels is not None:
        raise ValueError("labels were given, but the models are unconditional (they take no class labels)")
    if classes is not None:
        if labels is None:
            raise ValueError(f"the models are conditional ({classes} classes): give labels (NULL_LABEL for none)")
        main, reference = Conditioned(model, labels), Conditioned(weak_model, labels)
    else:
        main, reference = model, weak_model
    for name, part in (("model", model), ("guiding model", weak_model)):
        if not callable(part):
            raise TypeError(f"the {name} must be a score model, callable as score(x, t); got {type(part).__name__}")
    shapes = [getattr(m, "event_shape", None) for m in (model, weak_model)]
    if None not in shapes and tuple(shapes[0]) != tuple(shapes[1]):
        raise ValueError(
            f"autoguidance needs two models of the same data shape; got {tuple(shapes[0])} and {tuple(shapes[1])}"
        )
    return Guided(main, reference, weight, interval=_interval(sde, interval))


def threshold_data(x0: Tensor, ratio: float = 0.995, max_value: float = 1.0) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022) as diffusers applies it: per sample, s is the
    ``ratio`` quantile of |x0| clamped to [1, max_value], and x0 becomes clamp(x0, -s, s) / s."""
    dtype = x0.dtype
    flat = x0.reshape(x0.shape[0], -1)
    if dtype not in (torch.float32, torch.float64):
        flat = flat.float()  # quantile has no half-precision kernels
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1.0, max=max_value)[:, None]
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


class DynamicThresholding(ScoreModel):
    """A score whose data prediction is dynamically thresholded, for data in [-1, 1]
    (``threshold_data``; DPM-Solver++ uses it at large guidance weights). Needs a LinearSDE:
    the score goes to Tweedie's x0 and back, s = (alpha x0 - x) / sigma^2."""

    num_classes = None

    def __init__(self, score: ScoreFn, sde: SDE, ratio: float = 0.995, max_value: float = 1.0) -> None:
        super().__init__()
        if not isinstance(sde, LinearSDE):
            raise TypeError(f"dynamic thresholding needs a LinearSDE (alpha(t), sigma(t)); got {type(sde).__name__}")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"the thresholding ratio must be a quantile in (0, 1]; got {ratio!r}")
        if isinstance(max_value, bool) or not isinstance(max_value, (int, float)) or not max_value >= 1:
            raise ValueError(f"the thresholding max_value must be a number >= 1; got {max_value!r}")
        self.score, self.sde, self.ratio, self.max_value = score, sde, float(ratio), float(max_value)
        self.evaluations_per_call = evaluations_per_call(score)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        x0 = threshold_data(self.sde.data_prediction(x, t, self.score(x, t)), self.ratio, self.max_value)
        alpha, sigma = per_sample(self.sde.alpha(t), x), per_sample(self.sde.sigma(t), x)
        return (alpha * x0 - x) / sigma**2
