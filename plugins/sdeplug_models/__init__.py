"""Score networks: an MLP for vectors and a small U-Net for images.

Registered through ``register_score_models``; built as ``cls(event_shape=..., **options)``.
Their output is read through a parameterization (noise prediction by default) by
``sdeplug.parameterization.ParameterizedScore``.
"""

from sdeplug import hookimpl
from sdeplug_models.mlp import MLP
from sdeplug_models.unet import UNet

__all__ = ["MLP", "UNet"]


@hookimpl
def register_score_models(register):
    register(MLP)
    register(UNet)
