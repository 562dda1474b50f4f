"""Score models from diffusers (the ``sdeplug[diffusers]`` extra): a ``UNet2DModel`` loaded
from a local folder, or a hub id for users with the network, read in one of two conventions.

- ``convention = "ve"``: score-SDE VE models (NCSN++ with Fourier features, diffusers'
  ScoreSdeVePipeline). The UNet is given the noise level sigma(t) and already divides its
  output by it, so its output is the score itself.
- ``convention = "epsilon"``: DDPM-style noise predictors on a discrete schedule of
  ``num_train_timesteps`` steps. Continuous t maps to the timestep k = round(t (N - 1)),
  the score_sde_pytorch convention, and the output is read as the noise: score =
  -output / sigma(t). With the ``ddpm`` SDE (whose sigma(k / (N - 1)) is DDPM's
  sqrt(1 - alphabar_k) exactly) and the ``ancestral`` predictor on the grid k / (N - 1),
  sampling is DDPMScheduler's step for step; with the continuous ``vp`` SDE (beta_min =
  N beta_start, beta_max = N beta_end) it is its continuous-time approximation.

``diffusers_pipeline`` reads a whole pipeline folder (model_index.json, its scheduler, unet or
transformer, and VAE): see ``sdeplug_diffusers.pipeline``.

diffusers is imported only when such a model is built, so the plugin costs nothing to
register without the extra.
"""

from sdeplug import hookimpl
from sdeplug_diffusers.pipeline import DiffusersPipeline
from sdeplug_diffusers.unet import DiffusersUNet

__all__ = ["DiffusersPipeline", "DiffusersUNet"]


@hookimpl
def register_score_models(register):
    register(DiffusersUNet)
    register(DiffusersPipeline)
