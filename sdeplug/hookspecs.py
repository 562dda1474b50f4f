"""The plugin contract: pluggy hook specifications of the ``sdeplug`` project.

Each hook hands the plugin a ``register`` callback; the plugin calls
``register(cls)`` or ``register(cls, name="...")`` for every part it offers, or
``register(cls, name="...", **options)`` for a configured preset whose options are
fixed. How the toolkit builds each kind ("built as ...") is ``sdeplug.registry.KINDS``;
a test keeps these docstrings and the plugin guide in step with it. These names are
stable: hooks may be added, never renamed.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT_NAME = "sdeplug"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_sdes(register: Register) -> None:
    """Register SDE classes (subclasses of sdeplug.SDE), built as ``cls(**options)``."""


@hookspec
def register_predictors(register: Register) -> None:
    """Register Predictor classes, built as ``cls(sde, score, **options)``."""


@hookspec
def register_correctors(register: Register) -> None:
    """Register Corrector classes, built as ``cls(sde, score, **options)``."""


@hookspec
def register_ode_solvers(register: Register) -> None:
    """Register ODESolver classes, built as ``cls(**options)``."""


@hookspec
def register_score_models(register: Register) -> None:
    """Register ScoreModel classes (torch modules), built as ``cls(event_shape=..., **options)``."""


@hookspec
def register_classifiers(register: Register) -> None:
    """Register TimeClassifier classes (torch modules for guidance), built as
    ``cls(event_shape=..., num_classes=..., **options)``."""


@hookspec
def register_feature_extractors(register: Register) -> None:
    """Register FeatureExtractor classes (torch modules giving the features of sample-quality
    metrics), built as ``cls(event_shape=..., **options)``."""


@hookspec
def register_time_grids(register: Register) -> None:
    """Register TimeGrid classes (where the sampling times fall), built as ``cls(**options)``."""
