"""The contracts of networks: score models, time-dependent classifiers and feature extractors."""

from __future__ import annotations

import json
from typing import Any

import torch

from sdeplug.testing.kit_base import ContractReport, _fail, _resolve

F64 = torch.float64


def check_score_model(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with ``options``, else with each option set its class's ``example_options()``
    lists (for networks whose defaults are too large to build in a test), else with its
    defaults, the network maps (x, t) to a tensor like x."""
    name, cls, resolved = _resolve("score_model", spec, options)
    report = ContractReport(f"score_model {name!r}")
    declared = list(getattr(cls, "example_options", lambda: [])()) if options is None else []
    option_list = [_resolve("score_model", spec, dict(example))[2] for example in declared] or [resolved]
    for chosen in option_list:
        model = cls(**chosen)
        shape = tuple(getattr(model, "event_shape", (2,)))
        for dtype in (torch.float32, F64):
            x = torch.randn(3, *shape, dtype=dtype)
            out = model.to(dtype)(x, torch.rand(3, dtype=dtype))
            if out.shape != x.shape or out.dtype != dtype:
                _fail(
                    f"score_model {name!r}: forward(x, t) returned shape {tuple(out.shape)}, {out.dtype} for x of "
                    f"shape {tuple(x.shape)}, {dtype}"
                )
        report.passed.append(f"forward(x, t) keeps the shape {shape} and dtype")
    return report


def check_classifier(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with its defaults (or ``options``), the network maps (x, t) to finite logits of
    shape (batch, num_classes) in x's dtype, with a gradient in x (guidance needs it), and
    each sample's logits depend on that sample alone."""
    name, cls, options = _resolve("classifier", spec, options)
    report = ContractReport(f"classifier {name!r}")
    model = cls(**options).eval()
    shape, classes = tuple(getattr(model, "event_shape", (2,))), getattr(model, "num_classes", None)
    if not isinstance(classes, int) or classes < 2:
        _fail(f"classifier {name!r}: num_classes must be an int >= 2; got {classes!r}")
    for dtype in (torch.float32, F64):
        model = model.to(dtype)
        x = torch.randn(3, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
        logits = model(x, t)
        if logits.shape != (3, classes) or logits.dtype != dtype:
            _fail(
                f"classifier {name!r}: forward(x, t) returned shape {tuple(logits.shape)}, {logits.dtype} for x of "
                f"shape {tuple(x.shape)}, {dtype}; it must return logits of shape (batch, num_classes) = (3, {classes})"
            )
        if not bool(torch.isfinite(logits).all()):
            _fail(f"classifier {name!r}: forward(x, t) returned non-finite logits")
        (grad,) = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 0].sum(), x)
        if not bool(torch.isfinite(grad).all()) or not bool((grad.reshape(3, -1).abs().sum(1) > 0).all()):
            _fail(f"classifier {name!r}: grad_x log p(y | x) is zero or non-finite; guidance needs a gradient in x")
        with torch.no_grad():
            alone = model(x[:1].detach(), t[:1])
        if not torch.allclose(alone, logits[:1].detach(), rtol=1e-4, atol=1e-4):
            _fail(
                f"classifier {name!r}: a sample's logits change with the rest of the batch "
                "(batch statistics in eval mode?)"
            )
    report.passed.append(
        f"forward(x, t) gives finite logits (batch, {classes}) for {shape}, float32 and float64, "
        "differentiable in x, per sample"
    )
    return report


def check_feature_extractor(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with ``options``, else with each set its ``example_options()`` lists, else its
    defaults: finite features (batch, dim) with the same dim for float32 and float64 input
    (the extractor is not converted: samples come in either dtype),
    the same features on a second call (metrics are computed once), each sample's features
    independent of the rest of the batch, and an ``identity()`` that is a JSON-able dict
    naming the extractor (statistics files record it)."""
    name, cls, resolved = _resolve("feature_extractor", spec, options)
    report = ContractReport(f"feature_extractor {name!r}")
    declared = list(getattr(cls, "example_options", lambda: [])()) if options is None else []
    for chosen in [_resolve("feature_extractor", spec, dict(e))[2] for e in declared] or [resolved]:
        extractor = cls(**chosen).eval()
        shape = tuple(getattr(extractor, "event_shape", (2,)))
        dims = set()
        for dtype in (torch.float32, F64):
            x = torch.rand(4, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 2 - 1
            with torch.no_grad():
                f, again, alone = extractor(x), extractor(x), extractor(x[:1])
            if f.ndim != 2 or f.shape[0] != 4 or not bool(torch.isfinite(f).all()):
                _fail(
                    f"feature_extractor {name!r}: forward(x) must give finite features of shape (batch, dim) = "
                    f"(4, dim) for x of shape {tuple(x.shape)}; got {tuple(f.shape)}"
                )
            if not torch.equal(f, again):
                _fail(f"feature_extractor {name!r}: two calls on the same batch gave different features")
            if not torch.allclose(alone, f[:1], rtol=1e-4, atol=1e-5):
                _fail(f"feature_extractor {name!r}: a sample's features change with the rest of the batch")
            dims.add(f.shape[1])
        if len(dims) != 1:
            _fail(f"feature_extractor {name!r}: the feature dimension depends on the input dtype: {sorted(dims)}")
        identity = extractor.identity()
        try:
            named = isinstance(identity, dict) and identity.get("name") == name and json.dumps(identity) is not None
        except (TypeError, ValueError):
            named = False
        if not named:
            _fail(
                f"feature_extractor {name!r}: identity() must be a JSON-able dict with name {name!r}; got {identity!r}"
            )
        report.passed.append(f"finite per-sample features (batch, {dims.pop()}) for {shape}, repeatable, identity")
    return report
