"""A diffusers pipeline folder, as ``save_pretrained`` writes it, as an sdeplug score model.

The folder's ``model_index.json`` names the pipeline and its parts; the scheduler's config
gives the DDPM chain (``num_train_timesteps``, ``beta_schedule``, ``beta_start``,
``beta_end``), which is the ``ddpm`` SDE with the same betas computed as diffusers computes
them (``table_dtype = "float32"``), and the ``prediction_type`` (epsilon, v_prediction,
sample), which is the parameterization. The denoiser is the ``unet`` (a UNet2DModel) or the
``transformer`` (DiT); a class-conditional one takes labels, the null label being DiT's extra
class (index ``num_classes``) or a UNet's ``null_class``. A latent pipeline (one with a
``vae``) samples latents, which ``decode`` turns into images through the VAE, its scaling
factor applied; a learned-variance output (DiT's second half of channels) is dropped, as
diffusers' pipelines drop it.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeplug import ScoreModel, SdeplugWarning
from sdeplug.errors import load_refusal
from sdeplug.extras import require
from sdeplug_diffusers.unet import class_labels

#: What the folder's parts may be, by the class names model_index.json gives them.
DENOISERS = {"unet": ("UNet2DModel",), "transformer": ("DiTTransformer2DModel", "Transformer2DModel")}
VAES = ("AutoencoderKL",)
#: The scheduler's prediction_type -> sdeplug's parameterization.
PREDICTIONS = {"epsilon": "noise", "v_prediction": "velocity", "sample": "data"}
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class SchedulerClippingWarning(SdeplugWarning):
    """The pipeline's scheduler clips or thresholds its data prediction, which a score cannot express."""


def scheduler_clipping(scheduler: dict[str, Any]) -> str | None:
    """What the scheduler does to each step's data prediction beyond the model (diffusers'
    ``thresholding`` or ``clip_sample``), in words; None when it leaves it alone."""
    if scheduler.get("thresholding"):
        ratio, largest = scheduler.get("dynamic_thresholding_ratio", 0.995), scheduler.get("sample_max_value", 1.0)
        return (
            f"thresholds each step's data prediction dynamically (thresholding = true, ratio {ratio}, "
            f"sample_max_value {largest})"
        )
    if scheduler.get("clip_sample"):
        bound = scheduler.get("clip_sample_range", 1.0)
        return f"clips each step's data prediction to [-{bound}, {bound}] (clip_sample = true)"
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} not found: a diffusers pipeline folder has it (save_pretrained writes it)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON: {exc}") from None


def read_pipeline(path: str | Path) -> dict[str, Any]:
    """What a pipeline folder holds, checked: its class, denoiser part, VAE, scheduler config,
    the ddpm SDE's options and the parameterization. A ValueError names what is unsupported."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; name a diffusers pipeline folder (with model_index.json)")
    index = _read_json(folder / "model_index.json")
    kind = index.get("_class_name", "?")
    denoiser = next((part for part in DENOISERS if part in index), None)
    if denoiser is None:
        raise ValueError(
            f"{folder} holds a {kind}, which has neither a unet nor a transformer; sdeplug samples pipelines "
            "whose denoiser is a UNet2DModel or a DiT transformer (DDPMPipeline, DDIMPipeline, DiTPipeline)"
        )
    cls = index[denoiser][1] if isinstance(index[denoiser], list) and len(index[denoiser]) == 2 else None
    if cls not in DENOISERS[denoiser]:
        raise ValueError(
            f"{folder} ({kind}) has a {denoiser} of class {cls}; sdeplug takes {' or '.join(DENOISERS[denoiser])}"
        )
    vae = None
    if "vae" in index and index["vae"] and index["vae"][0] is not None:
        vae = index["vae"][1]
        if vae not in VAES:
            raise ValueError(f"{folder} ({kind}) has a VAE of class {vae}; sdeplug decodes with {' or '.join(VAES)}")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    schedule = scheduler.get("beta_schedule", "linear")
    if scheduler.get("trained_betas") is not None:
        raise ValueError(f"{folder}: the scheduler gives trained_betas; sdeplug reads only {', '.join(SCHEDULES)}")
    if schedule not in SCHEDULES:
        raise ValueError(f"{folder}: beta_schedule {schedule!r} is not one of {', '.join(SCHEDULES)}")
    if scheduler.get("rescale_betas_zero_snr"):
        raise ValueError(f"{folder}: the scheduler rescales its betas to zero terminal SNR, which sdeplug does not")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"{folder}: prediction_type {prediction!r} is not one of {', '.join(PREDICTIONS)}")
    sde = {
        "name": "ddpm",
        "beta_start": float(scheduler.get("beta_start", 1e-4)),
        "beta_end": float(scheduler.get("beta_end", 0.02)),
        "N": int(scheduler.get("num_train_timesteps", 1000)),
        "beta_schedule": schedule,
        "table_dtype": "float32",
    }
    return {
        "folder": folder,
        "kind": kind,
        "denoiser": denoiser,
        "denoiser_class": cls,
        "vae": vae,
        "sde": sde,
        "parameterization": PREDICTIONS[prediction],
        "clipping": scheduler_clipping(scheduler),
    }


class DiffusersPipeline(ScoreModel):
    """The denoiser of a diffusers pipeline folder, with the SDE and parameterization its
    scheduler declares (``declared_sde``); its weights come from ``path``."""

    name = "diffusers_pipeline"
    pretrained = True

    def __init__(self, event_shape: Sequence[int] | None = None, path: str = "", null_class: int | None = None) -> None:
        super().__init__()
        if not path:
            raise ValueError("path must name a diffusers pipeline folder (with model_index.json)")
        info = read_pipeline(path)
        if info["clipping"]:
            warnings.warn(
                f"the scheduler of the pipeline at {info['folder']} {info['clipping']}; sdeplug's samplers follow "
                "the model's score and do not, so their samples differ from the pipeline's own wherever that "
                "bites",
                SchedulerClippingWarning,
                stacklevel=2,
            )
        diffusers = require("diffusers", "a diffusers pipeline")
        folder = info["folder"]
        try:
            model = getattr(diffusers, info["denoiser_class"]).from_pretrained(
                folder, subfolder=info["denoiser"], low_cpu_mem_usage=False
            )
            vae = diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae") if info["vae"] else None
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"cannot load the {info['kind']} at {folder}: {load_refusal(exc)}") from None
        self.model, self.vae, self.kind = model.eval(), None if vae is None else vae.eval(), info["kind"]
        self.sde_name, self.sde_options = "ddpm", {k: v for k, v in info["sde"].items() if k != "name"}
        self.parameterization, self.time_input = info["parameterization"], "t"
        self.num_train_timesteps = self.sde_options["N"]
        config = model.config
        size = config.sample_size if isinstance(config.sample_size, Sequence) else (config.sample_size,) * 2
        self.channels = config.in_channels
        own_shape = (config.in_channels, *size)
        if event_shape is not None and tuple(event_shape) != own_shape:
            raise ValueError(
                f"the pipeline at {folder} samples shape {own_shape}; the config says {tuple(event_shape)}"
            )
        self.event_shape = own_shape
        self.is_dit = info["denoiser"] == "transformer"
        if self.is_dit:
            self.num_classes, self.null_index = int(config.num_embeds_ada_norm), int(config.num_embeds_ada_norm)
        elif getattr(config, "num_class_embeds", None):
            self.num_classes, self.null_index = int(config.num_class_embeds), null_class
            if null_class is not None and not 0 <= null_class < self.num_classes:
                raise ValueError(f"null_class must be one of the UNet's {self.num_classes} classes; got {null_class}")
        else:
            if null_class is not None:
                raise ValueError(f"null_class is for a class-conditional UNet; the one at {folder} takes no classes")
            self.num_classes, self.null_index = None, None
        self.scaling_factor = float(vae.config.scaling_factor) if vae is not None else None

    @classmethod
    def declared_sde(cls, path: str = "", **_options: Any) -> dict[str, Any] | None:
        """The [sde] table of the pipeline at ``path`` (from its scheduler config alone)."""
        return read_pipeline(path)["sde"] if path else None

    def timestep(self, t: Tensor) -> Tensor:
        """The discrete timestep of continuous t in [0, 1]: round(t (N - 1))."""
        n = self.num_train_timesteps
        return torch.round(t * (n - 1)).clamp(0, n - 1)

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        step = self.timestep(t)
        classes = class_labels(labels, self.num_classes, self.null_index, x)
        if self.is_dit:
            out = self.model(x, timestep=step, class_labels=classes).sample
        else:
            out = self.model(x, step, class_labels=classes).sample
        return out[:, : self.channels] if out.shape[1] == 2 * self.channels else out  # learned variance: dropped

    def decode(self, latents: Tensor) -> Tensor:
        """Images from latents through the VAE (latents / scaling_factor), as the pipeline decodes
        them; in [-1, 1] up to the VAE's overshoot. A pipeline without a VAE returns its samples."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.scaling_factor).sample
