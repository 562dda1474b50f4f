"""Optional dependencies: which extra of the ``sdeplug`` distribution brings each, and one
clear error when a command needs one that is not installed.

Sampling, likelihoods, guidance and training need none of them. ``sdeplug[testing]``
(pytest, hypothesis) is the testing kit, ``sdeplug[plots]`` (matplotlib) the pictures the
commands write, ``sdeplug[eval]`` (scikit-learn) the outside judge of labelled data,
``sdeplug[images]`` (Pillow) folders of images as data; ``sdeplug[all]`` is all four.
``sdeplug[diffusers]`` brings diffusers, for its UNet2DModels as score models.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sdeplug.errors import SdeplugError

#: module -> the extra that installs it
EXTRAS = {
    "hypothesis": "testing",
    "pytest": "testing",
    "matplotlib": "plots",
    "sklearn": "eval",
    "PIL": "images",
    "diffusers": "diffusers",
}


class MissingExtraError(SdeplugError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise MissingExtraError naming what needs it and the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise MissingExtraError(
            f"{purpose} needs {top}, which is not installed: pip install 'sdeplug[{extra}]'"
        ) from exc
