"""diffusers pipeline folders as sdeplug score models, checked against diffusers' own loops.

Tiny random pipelines are built here and written with ``save_pretrained`` (no hub). With the
same initial noise and labels, sdeplug's DDIM (eta = 0) on the ``ddpm`` SDE the folder declares
must give what DDIMPipeline and DiTPipeline (with a DDIMScheduler) give, with and without
classifier-free guidance as DiTPipeline applies it, to float32 rounding.
"""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from test_diffusers import ancestral_over_the_chain

import sdeplug
from conftest import LazyModule, needs
from sdeplug import Conditioned, classifier_free_guidance
from sdeplug.parameterization import ParameterizedScore
from sdeplug.sampling import sample_pc

diffusers = LazyModule("diffusers")
pytestmark = needs("diffusers", "the diffusers extra is not installed (`make test` installs it)")

STEPS = 10
N = 1000


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Weights away from their initialisation (zero output layers would hide every error)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _scheduler(schedule: str = "linear", prediction: str = "epsilon"):
    return diffusers.DDIMScheduler(
        num_train_timesteps=N,
        beta_schedule=schedule,
        beta_start=0.00085 if schedule == "scaled_linear" else 1e-4,
        beta_end=0.012 if schedule == "scaled_linear" else 0.02,
        clip_sample=False,
        prediction_type=prediction,
    )


def _unet(**extra):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        **extra,
    )
    _randomise(unet, 1)
    return unet


@pytest.fixture(scope="module")
def ddim_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddim") / "pipe"
    diffusers.DDIMPipeline(unet=_unet(), scheduler=_scheduler("squaredcos_cap_v2")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit") / "pipe"
    torch.manual_seed(0)
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,  # a learned variance beside the noise, as DiT-XL/2 has
        num_layers=2,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=1000,  # DiTPipeline's null class is 1000
        norm_num_groups=8,
    )
    _randomise(transformer, 2)
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=8,
        scaling_factor=0.7,
    )
    _randomise(vae, 3)
    diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=_scheduler()).save_pretrained(folder)
    return folder


def _ddim_grid(scheduler) -> torch.Tensor:
    """The scheduler's timesteps as sdeplug times k / (N - 1): DDIM steps through them and then
    to the data (Tweedie's formula at the last, sdeplug's final denoising step)."""
    scheduler.set_timesteps(STEPS)
    return scheduler.timesteps.to(torch.float64) / (N - 1)


def _folder_score(folder):
    """The folder's model, the SDE it declares and its score, as a config naming the path alone gets them."""
    model = sdeplug.create("score_model", "diffusers_pipeline", path=str(folder))
    declared = model.declared_sde(path=str(folder))
    sde = sdeplug.create("sde", declared["name"], **{k: v for k, v in declared.items() if k != "name"})
    return model, sde, ParameterizedScore(model, sde, model.parameterization)


def _sdeplug_ddim(folder, score_for, noise: torch.Tensor) -> tuple[torch.Tensor, object]:
    model, sde, score = _folder_score(folder)
    scheduler = diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    grid = _ddim_grid(scheduler).to(torch.float32)
    with torch.no_grad():
        x = sample_pc(
            sde, score_for(score), predictor="ddim", corrector="none", grid=grid, x_init=noise, denoise=True
        ).x
    return x, model


def test_the_folder_declares_the_scheduler_chain_and_prediction(ddim_folder):
    declared = (
        sdeplug.registry.get_registry().get("score_model", "diffusers_pipeline").cls.declared_sde(path=str(ddim_folder))
    )
    assert declared == {
        "name": "ddpm",
        "beta_start": 1e-4,
        "beta_end": 0.02,
        "N": N,
        "beta_schedule": "squaredcos_cap_v2",
        "table_dtype": "float32",
    }
    sde = sdeplug.create("sde", declared["name"], **{k: v for k, v in declared.items() if k != "name"})
    scheduler = diffusers.DDIMScheduler.from_pretrained(ddim_folder, subfolder="scheduler")
    t = torch.arange(N, dtype=torch.float64) / (N - 1)
    torch.testing.assert_close(sde.alpha(t) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_ddpm_sde_follows_every_diffusers_beta_schedule(schedule):
    reference = diffusers.DDPMScheduler(
        beta_schedule=schedule,
        beta_start=0.00085 if schedule == "scaled_linear" else 1e-4,
        beta_end=0.012 if schedule == "scaled_linear" else 0.02,
    )
    t = torch.arange(N, dtype=torch.float64) / (N - 1)
    for table, rtol in (("float32", 1e-12), ("float64", 1e-4)):  # float32 cumprod drifts by ~1e-5
        sde = sdeplug.create(
            "sde",
            "ddpm",
            beta_schedule=schedule,
            beta_start=reference.config.beta_start,
            beta_end=reference.config.beta_end,
            table_dtype=table,
        )
        torch.testing.assert_close(sde.alpha(t) ** 2, reference.alphas_cumprod.double(), rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def velocity_folder(tmp_path_factory):
    """A v-prediction pipeline on the scaled-linear schedule (latent diffusion's)."""
    folder = tmp_path_factory.mktemp("velocity") / "pipe"
    scheduler = _scheduler("scaled_linear", prediction="v_prediction")
    diffusers.DDIMPipeline(unet=_unet(), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("which", ["ddim_folder", "velocity_folder"])
def test_ddim_equals_diffusers_ddim_pipeline(which, request):
    ddim_folder = request.getfixturevalue(which)
    pipe = diffusers.DDIMPipeline.from_pretrained(ddim_folder)
    expected = pipe(
        batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, eta=0.0, output_type="np"
    ).images
    noise = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    x, _ = _sdeplug_ddim(ddim_folder, lambda score: score, noise)
    got = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert 0.05 < float(np.abs(expected - 0.5).mean())  # images, not a constant
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)


@pytest.mark.parametrize(("variance_type", "variance"), [("fixed_small", "posterior"), ("fixed_large", "transition")])
def test_ancestral_sampling_equals_diffusers_ddpm_pipeline(tmp_path, variance_type, variance):
    """A DDPMPipeline folder: sdeplug's ancestral predictor with the scheduler's variance, over
    the whole chain (every one of the N timesteps, as DDPMPipeline runs it at N inference steps)
    and with one generator for the initial noise and then each step's, gives the pipeline's
    images to float32 rounding."""
    n = 20
    folder = tmp_path / "ddpm"
    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=n, beta_start=1e-3, beta_end=0.2, variance_type=variance_type, clip_sample=False
    )
    diffusers.DDPMPipeline(unet=_unet(), scheduler=scheduler).save_pretrained(folder)
    expected = diffusers.DDPMPipeline.from_pretrained(folder)(
        batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=n, output_type="np"
    ).images
    _, sde, score = _folder_score(folder)
    assert sde.N == n  # the chain the folder's scheduler declares
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((3, 3, 8, 8), generator=generator)
    with torch.no_grad():
        x = ancestral_over_the_chain(sde, score, noise, variance, generator)
    got = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert 0.05 < float(np.abs(expected - 0.5).mean())  # images, not a constant
    np.testing.assert_allclose(got, expected, rtol=0, atol=5e-5)


def _dit_pipeline_latents(folder, labels, guidance_scale, generator_seed):
    """DiTPipeline's own loop; the latents come out through a hook on the VAE's decode."""
    pipe = diffusers.DiTPipeline.from_pretrained(folder)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    seen = {}
    decode = pipe.vae.decode

    def spy(latents, *args, **kwargs):
        seen["latents"] = latents.clone()
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = spy
    images = pipe(
        class_labels=labels,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(generator_seed),
        num_inference_steps=STEPS,
        output_type="np",
    ).images
    return images, seen["latents"] * pipe.vae.config.scaling_factor


@pytest.mark.parametrize("guidance_scale", [1.0, 4.0])
def test_ddim_with_classifier_free_guidance_equals_diffusers_dit_pipeline(dit_folder, guidance_scale):
    labels = [3, 999, 0]
    expected_images, expected_latents = _dit_pipeline_latents(dit_folder, labels, guidance_scale, 0)
    noise = torch.randn((3, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    y = torch.tensor(labels)
    if guidance_scale > 1:  # DiTPipeline guides only above 1
        guide = lambda score: classifier_free_guidance(score, y, guidance_scale)  # noqa: E731
    else:
        guide = lambda score: Conditioned(score, y)  # noqa: E731
    latents, model = _sdeplug_ddim(dit_folder, guide, noise)
    scale = expected_latents.abs().max()
    torch.testing.assert_close(latents, expected_latents, rtol=0, atol=1e-5 * float(scale))
    with torch.no_grad():
        images = model.decode(latents)
    got = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected_images, rtol=0, atol=2e-5)


def _with_scheduler(folder, tmp_path, **changes):
    """A copy of a pipeline folder whose scheduler config has ``changes``."""
    copy = tmp_path / f"pipe-{'-'.join(changes)}"
    shutil.copytree(folder, copy)
    path = copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return copy


def test_a_scheduler_that_clips_its_data_prediction_is_named_in_one_warning(ddim_folder, tmp_path):
    """diffusers' DDPM and DDIM schedulers clip each step's data prediction by default, which no
    score expresses: sdeplug warns, naming the setting, and its samples differ from the
    pipeline's where the clip bites (they are equal without it: the test above)."""
    from sdeplug_diffusers.pipeline import SchedulerClippingWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", SchedulerClippingWarning)
        sdeplug.create("score_model", "diffusers_pipeline", path=str(ddim_folder))  # clip_sample = false: silent
    clipped = _with_scheduler(ddim_folder, tmp_path, clip_sample=True, clip_sample_range=0.5)
    with pytest.warns(SchedulerClippingWarning, match=r"clips each step's data prediction to \[-0.5, 0.5\]") as seen:
        noise = torch.randn((3, 3, 8, 8), generator=torch.Generator().manual_seed(0))
        x, _ = _sdeplug_ddim(clipped, lambda score: score, noise)
    assert len([w for w in seen if w.category is SchedulerClippingWarning]) == 1
    assert "\n" not in str(seen[0].message) and "(clip_sample = true)" in str(seen[0].message)
    expected = diffusers.DDIMPipeline.from_pretrained(clipped)(
        batch_size=3, generator=torch.Generator().manual_seed(0), num_inference_steps=STEPS, eta=0.0, output_type="np"
    ).images
    got = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert float(np.abs(got - expected).max()) > 0.01  # the clip changes diffusers' samples; sdeplug's follow the score
    thresholded = _with_scheduler(ddim_folder, tmp_path, thresholding=True)
    with pytest.warns(SchedulerClippingWarning, match=r"thresholds each step's data prediction dynamically"):
        sdeplug.create("score_model", "diffusers_pipeline", path=str(thresholded))


def test_a_pipeline_folder_of_an_unsupported_kind_is_one_clear_line(tmp_path, ddim_folder):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "text_encoder": []}))
    with pytest.raises(
        sdeplug.OptionError, match="holds a StableDiffusionPipeline, which has neither a unet nor a transformer"
    ):
        sdeplug.create("score_model", "diffusers_pipeline", path=str(folder))
    with pytest.raises(sdeplug.OptionError, match="model_index.json not found"):
        sdeplug.create("score_model", "diffusers_pipeline", path=str(tmp_path))
    bad = _with_scheduler(ddim_folder, tmp_path, beta_schedule="sigmoid")
    with pytest.raises(sdeplug.OptionError, match="beta_schedule .sigmoid' is not one of linear, scaled_linear"):
        sdeplug.create("score_model", "diffusers_pipeline", path=str(bad))


def test_the_command_line_samples_a_pipeline_folder_from_its_path_alone(dit_folder, tmp_path, capsys):
    from sdeplug.app.cli import main

    config = tmp_path / "dit.toml"
    body = (
        f'[model]\nname = "diffusers_pipeline"\npath = "{dit_folder}"\n'
        '[sampler]\nkind = "pc"\nsteps = 8\n[sampler.predictor]\nname = "ddim"\n[sampler.corrector]\nname = "none"\n'
        "[sample]\nnum = 6\nprogress = false\n"
    )
    config.write_text(body)  # no [sde]: the pipeline's scheduler gives it
    guidance = tmp_path / "cfg.toml"
    guidance.write_text('[guidance]\nkind = "cfg"\nscale = [1, 4]\nclasses = [3, 0]\n')
    out = tmp_path / "out"
    assert main(["sample", str(config), "--guidance", str(guidance), "--out", str(out)]) == 0
    report = json.loads((out / "guidance.json").read_text())
    assert report["sde"]["name"] == "ddpm" and report["num_classes"] == 1000
    images = np.load(out / "samples-w4.npy")
    assert images.shape == (6, 3, 8, 8)  # decoded by the pipeline's VAE from (4, 4, 4) latents
    np.testing.assert_array_equal(np.load(out / "labels.npy"), [3, 0, 3, 0, 3, 0])
    assert not np.allclose(images, np.load(out / "samples-w1.npy"))
    capsys.readouterr()
    for sde, message in (
        ('[sde]\nname = "vp"\n', "is made for the SDE 'ddpm', but [sde] name is 'vp'"),
        ('[sde]\nname = "ddpm"\nbeta_end = 0.03\n', "[sde] beta_end = 0.03 where the model has 0.02"),
    ):
        config.write_text(sde + body)
        assert main(["sample", str(config), "--out", str(out)]) != 0
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_a_class_conditional_unet_takes_labels_and_its_declared_null_class(tmp_path):
    unet = _unet(num_class_embeds=5)
    unet.save_pretrained(tmp_path / "unet")
    model = sdeplug.create(
        "score_model", "diffusers_unet", path=str(tmp_path / "unet"), convention="epsilon", null_class=4
    )
    assert model.num_classes == 5
    x, t = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([0.2, 0.5, 0.9])
    labels = torch.tensor([0, sdeplug.NULL_LABEL, 3])
    with torch.no_grad():
        got = model(x, t, labels)
        expected = unet(x, model.timestep(t), class_labels=torch.tensor([0, 4, 3])).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    plain = sdeplug.create("score_model", "diffusers_unet", path=str(tmp_path / "unet"), convention="epsilon")
    with pytest.raises(ValueError, match="has no null class: set \\[model\\] null_class"):
        plain(x, t, labels)
    with pytest.raises(sdeplug.OptionError, match="null_class must be one of the UNet's classes 0 to 4; got 7"):
        sdeplug.create("score_model", "diffusers_unet", path=str(tmp_path / "unet"), convention="epsilon", null_class=7)
