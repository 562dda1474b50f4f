"""Score networks (an MLP for vectors, a small U-Net and the paper's NCSN++/DDPM++ for
images, with the paper's CIFAR-10 configurations as presets) and time-dependent classifiers for guidance
(an MLP and a small CNN).

Score networks are registered through ``register_score_models`` and built as
``cls(event_shape=..., **options)``; their output is read through a parameterization
(noise prediction by default) by ``sdeplug.parameterization.ParameterizedScore``.
Classifiers are registered through ``register_classifiers`` and built as
``cls(event_shape=..., num_classes=..., **options)``.
"""

from sdeplug import hookimpl
from sdeplug_models.classifiers import ConvClassifier, MLPClassifier
from sdeplug_models.mlp import MLP
from sdeplug_models.ncsnpp import NCSNpp
from sdeplug_models.unet import UNet

__all__ = ["MLP", "ConvClassifier", "MLPClassifier", "NCSNpp", "UNet"]


@hookimpl
def register_score_models(register):
    register(MLP)
    register(UNet)
    register(NCSNpp)


@hookimpl
def register_classifiers(register):
    register(MLPClassifier)
    register(ConvClassifier)
