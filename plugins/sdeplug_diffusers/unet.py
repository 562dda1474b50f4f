"""A diffusers ``UNet2DModel`` as an sdeplug score network (see the package docstring)."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

import torch
from torch import Tensor

from sdeplug import NULL_LABEL, ScoreModel
from sdeplug.errors import load_refusal
from sdeplug.extras import require

CONVENTIONS = ("ve", "epsilon")


class DiffusersUNet(ScoreModel):
    """A pretrained diffusers UNet2DModel; its weights come from ``path``, not from an sdeplug checkpoint."""

    name = "diffusers_unet"
    #: the weights are loaded when the network is built
    pretrained = True

    def __init__(
        self,
        event_shape: Sequence[int] | None = None,
        path: str = "",
        subfolder: str | None = None,
        convention: str = "ve",
        num_train_timesteps: int = 1000,
        null_class: int | None = None,
    ) -> None:
        super().__init__()
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {', '.join(map(repr, CONVENTIONS))}; got {convention!r}")
        if not path:
            raise ValueError("path must name a folder holding a diffusers UNet2DModel (or a hub id)")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2; got {num_train_timesteps!r}")
        diffusers = require("diffusers", "a diffusers UNet2DModel")
        try:
            self.unet = diffusers.UNet2DModel.from_pretrained(path, subfolder=subfolder, low_cpu_mem_usage=False)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"cannot load a UNet2DModel from {path!r}: {load_refusal(exc)}") from None
        config = self.unet.config
        size = config.sample_size if isinstance(config.sample_size, Sequence) else (config.sample_size,) * 2
        own_shape = (config.in_channels, *size)
        if event_shape is not None and tuple(event_shape) != own_shape:
            raise ValueError(
                f"the UNet at {path} takes images of shape {own_shape}; the data have {tuple(event_shape)}"
            )
        fourier = config.time_embedding_type == "fourier"
        if (convention == "ve") != fourier:
            needed = "Fourier" if convention == "ve" else "positional"
            fitting = "ve" if fourier else "epsilon"
            raise ValueError(
                f"convention {convention!r} needs a UNet with {needed} time embeddings; the one at {path} has "
                f"{config.time_embedding_type!r} (use convention {fitting!r})"
            )
        self.event_shape, self.convention, self.num_train_timesteps = own_shape, convention, num_train_timesteps
        self.time_input = "sigma" if convention == "ve" else "t"
        self.parameterization = "score" if convention == "ve" else "noise"
        # a class-conditional UNet (num_class_embeds); classifier-free guidance needs the label it
        # was trained with for "no class", which diffusers does not record: null_class names it
        self.num_classes = int(config.num_class_embeds) if getattr(config, "num_class_embeds", None) else None
        if null_class is not None and (self.num_classes is None or not 0 <= null_class < self.num_classes):
            raise ValueError(
                f"null_class must be one of the UNet's classes 0 to {(self.num_classes or 0) - 1}; got {null_class}"
                if self.num_classes
                else f"null_class is for a class-conditional UNet; the one at {path} takes no classes"
            )
        self.null_class = null_class

    def timestep(self, t: Tensor) -> Tensor:
        """The discrete timestep of continuous t in [0, 1]: round(t (N - 1))."""
        return torch.round(t * (self.num_train_timesteps - 1)).clamp(0, self.num_train_timesteps - 1)

    def forward(self, x: Tensor, label: Tensor, labels: Tensor | None = None) -> Tensor:
        step = label if self.convention == "ve" else self.timestep(label)
        return self.unet(x, step, class_labels=class_labels(labels, self.num_classes, self.null_class, x)).sample


def class_labels(labels: Tensor | None, num_classes: int | None, null_class: int | None, x: Tensor) -> Tensor | None:
    """diffusers' class_labels for sdeplug's labels: NULL_LABEL (or no labels) becomes ``null_class``."""
    if num_classes is None:
        return None
    if labels is None:
        labels = torch.full((x.shape[0],), NULL_LABEL, device=x.device, dtype=torch.int64)
    if null_class is None:
        if bool((labels == NULL_LABEL).any()):  # one host read, for a UNet without a null class only
            raise ValueError(
                "this class-conditional UNet has no null class: set [model] null_class to the label it was "
                "trained with for 'no class' (classifier-free guidance needs it)"
            )
        return labels
    return torch.where(labels == NULL_LABEL, null_class, labels)
