"""sdeplug: score-based generative modelling through SDEs, with every part a plugin.

The public API a plugin codes against: ``hookimpl``, the interfaces (SDE,
LinearSDE, ScoreModel, Predictor, Corrector, ODESolver, TimeGrid, TimeClassifier, FeatureExtractor), the tensor
helpers, the data's Gaussian moments (DataMoments), the errors, and what samples a conditional
model (Conditioned, classifier-free guidance, autoguidance, dynamic thresholding). Concrete parts come from
plugins: see ``sdeplug.registry``.
"""

from sdeplug.conditioning import (
    NULL_LABEL,
    Conditioned,
    DynamicThresholding,
    Guided,
    autoguidance,
    classifier_free_guidance,
)
from sdeplug.errors import (
    ConfigError,
    DuplicatePartError,
    IncompatiblePartError,
    NonFiniteError,
    OptionError,
    PluginError,
    RegistrationError,
    SdeplugError,
    SdeplugWarning,
    UnknownPartError,
)
from sdeplug.hookspecs import hookimpl
from sdeplug.interfaces import (
    SDE,
    Corrector,
    DenseODESolution,
    FeatureExtractor,
    LinearSDE,
    ODESolution,
    ODESolver,
    Predictor,
    ReverseSDE,
    ScoreFn,
    ScoreModel,
    TimeClassifier,
    TimeGrid,
)
from sdeplug.moments import DataMoments
from sdeplug.registry import create, get_registry, part_name, register_plugin, resolve
from sdeplug.tensors import batch_time, per_sample, randn, randn_like, sum_except_batch, tweedie

__version__ = "0.1.0"

__all__ = [
    "NULL_LABEL",
    "SDE",
    "Conditioned",
    "DynamicThresholding",
    "Guided",
    "autoguidance",
    "classifier_free_guidance",
    "ConfigError",
    "Corrector",
    "DataMoments",
    "DuplicatePartError",
    "FeatureExtractor",
    "IncompatiblePartError",
    "LinearSDE",
    "NonFiniteError",
    "DenseODESolution",
    "ODESolution",
    "ODESolver",
    "OptionError",
    "PluginError",
    "Predictor",
    "RegistrationError",
    "ReverseSDE",
    "ScoreFn",
    "ScoreModel",
    "SdeplugError",
    "SdeplugWarning",
    "TimeClassifier",
    "TimeGrid",
    "UnknownPartError",
    "batch_time",
    "create",
    "get_registry",
    "hookimpl",
    "part_name",
    "per_sample",
    "randn",
    "randn_like",
    "register_plugin",
    "resolve",
    "sum_except_batch",
    "tweedie",
]
