"""diffusers UNet2DModels as sdeplug score models, against diffusers' own schedulers on the
same random weights and the same noise."""

from __future__ import annotations

import pytest
import torch

from conftest import LazyModule, needs
from sdeplug.parameterization import ParameterizedScore
from sdeplug.registry import get_registry
from sdeplug.sampling import sample_pc
from sdeplug_diffusers import DiffusersUNet
from sdeplug_reference.sdes import DDPMSDE, VESDE

diffusers = LazyModule("diffusers")
pytestmark = [
    needs("diffusers", "the diffusers extra is not installed (`make test` installs it)"),
    pytest.mark.xdist_group("diffusers"),
]


def tiny_unet(folder, embedding: str) -> str:
    """A small random UNet2DModel (8x8 RGB) saved to ``folder``, as a user's download would be."""
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
        time_embedding_type=embedding,
    )
    with torch.no_grad():  # weights away from their initialisation, so that every layer counts
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    unet.save_pretrained(folder)
    return str(folder)


def test_one_ve_step_equals_score_sde_ve_scheduler_langevin_then_reverse_diffusion(tmp_path):
    """diffusers' ScoreSdeVePipeline step: Langevin correction then the reverse-diffusion
    prediction, at the first time of an N-step grid, with the same generator."""
    n, sigma_min, sigma_max, snr = 10, 0.01, 50.0, 0.16
    network = DiffusersUNet(path=tiny_unet(tmp_path / "ve", "fourier"), convention="ve")
    sde = VESDE(sigma_min=sigma_min, sigma_max=sigma_max)
    score = ParameterizedScore(network.eval(), sde, network.parameterization)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * sigma_max

    scheduler = diffusers.ScoreSdeVeScheduler(
        num_train_timesteps=n, snr=snr, sigma_min=sigma_min, sigma_max=sigma_max, sampling_eps=1e-5
    )
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sigma = scheduler.sigmas[0] * torch.ones(3)
        theirs = scheduler.step_correct(network.unet(x, sigma).sample, x, generator=generator).prev_sample
        theirs = scheduler.step_pred(network.unet(theirs, sigma).sample, scheduler.timesteps[0], theirs, generator)
        theirs = theirs.prev_sample

        # the same step in sdeplug: its step uses the discrete sigmas of the grid k / (n - 1)
        registry, generator = get_registry(), torch.Generator().manual_seed(2)
        corrector = registry.create("corrector", "langevin", sde, score, snr=snr)
        predictor = registry.create("predictor", "reverse_diffusion", sde, score)
        t, t_next = torch.ones(3), torch.full((3,), (n - 2) / (n - 1))
        ours = corrector.step(x, t, generator)
        ours, _ = predictor.step(ours, t, t_next, None, generator)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item())
    assert not torch.allclose(ours, x)


def ancestral_over_the_chain(sde: DDPMSDE, score, x_init: torch.Tensor, variance: str, generator) -> torch.Tensor:
    """sdeplug's ancestral predictor with ``variance`` over every step of the ``ddpm`` SDE's chain
    (its grid k / (N - 1) down to 0, no corrector): what DDPMScheduler runs at N inference steps."""
    return sample_pc(
        sde,
        score,
        predictor="ancestral",
        predictor_options={"variance": variance},
        corrector="none",
        steps=sde.N - 1,
        eps=0.0,
        x_init=x_init,
        generator=generator,
    ).x


@pytest.mark.parametrize("variance", ["transition", "posterior"])
def test_ddpm_ancestral_sampling_equals_ddpm_scheduler(tmp_path, variance):
    """The whole chain: sdeplug's ancestral predictor on the ``ddpm`` SDE's grid k / (N - 1)
    against DDPMScheduler with the matching variance (beta: fixed_large; beta-tilde:
    fixed_small), its last step (no noise) against sdeplug's final denoising step."""
    n, beta_start, beta_end = 20, 1e-3, 0.2
    network = DiffusersUNet(
        path=tiny_unet(tmp_path / "ddpm", "positional"), convention="epsilon", num_train_timesteps=n
    )
    sde = DDPMSDE(beta_start=beta_start, beta_end=beta_end, N=n)
    score = ParameterizedScore(network.eval(), sde, network.parameterization)
    x_init = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))

    scheduler = diffusers.DDPMScheduler(
        num_train_timesteps=n,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        variance_type="fixed_large" if variance == "transition" else "fixed_small",
        clip_sample=False,
    )
    scheduler.set_timesteps(n)
    generator, theirs = torch.Generator().manual_seed(2), x_init
    with torch.no_grad():
        for k in scheduler.timesteps:
            theirs = scheduler.step(network.unet(theirs, k).sample, k, theirs, generator=generator).prev_sample
        ours = ancestral_over_the_chain(sde, score, x_init, variance, torch.Generator().manual_seed(2))
    assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours - x_init).abs().mean() > 0.1


def test_timesteps_are_rounded_from_continuous_time(tmp_path):
    network = DiffusersUNet(
        path=tiny_unet(tmp_path / "u", "positional"), convention="epsilon", num_train_timesteps=1000
    )
    t = torch.tensor([0.0, 0.5, 1.0, 0.0004, 0.0006])
    assert network.timestep(t).tolist() == [0, 500, 999, 0, 1]


def test_a_unet_of_the_other_convention_or_shape_is_refused(tmp_path):
    folder = tiny_unet(tmp_path / "u", "positional")
    with pytest.raises(
        ValueError, match="convention 've' needs a UNet with Fourier time embeddings.*use convention 'epsilon'"
    ):
        DiffusersUNet(path=folder, convention="ve")
    with pytest.raises(ValueError, match=r"takes images of shape \(3, 8, 8\); the data have \(1, 8, 8\)"):
        DiffusersUNet(event_shape=(1, 8, 8), path=folder, convention="epsilon")
    with pytest.raises(ValueError, match="convention must be one of 've', 'epsilon'"):
        DiffusersUNet(path=folder, convention="x0")


def test_the_sample_command_runs_a_diffusers_folder_without_an_sdeplug_checkpoint(tmp_path, capsys):
    import numpy as np

    from sdeplug_cli import main

    folder = tiny_unet(tmp_path / "unet", "positional")
    np.save(tmp_path / "images.npy", np.random.default_rng(0).uniform(-1, 1, (20, 3, 8, 8)))
    config = tmp_path / "config.toml"
    config.write_text(
        '[sde]\nname = "ddpm"\nbeta_start = 0.001\nbeta_end = 0.2\nN = 20\n\n'
        f'[data]\nname = "file"\npath = "{tmp_path / "images.npy"}"\n\n'
        f'[model]\nname = "diffusers_unet"\npath = "{folder}"\nconvention = "epsilon"\nnum_train_timesteps = 20\n\n'
        '[sampler]\nkind = "pc"\nsteps = 19\neps = 0.0\n\n[sampler.predictor]\nname = "ancestral"\n\n'
        '[sampler.corrector]\nname = "none"\n\n'
        f'[sample]\nnum = 4\nseed = 0\n\n[output]\ndir = "{tmp_path / "run"}"\n'
    )
    assert main(["sample", str(config), "--no-progress"]) == 0
    assert "4 samples" in capsys.readouterr().out
    samples = np.load(tmp_path / "run" / "samples.npy")
    assert samples.shape == (4, 3, 8, 8) and np.isfinite(samples).all()
    assert main(["sample", str(config), "--checkpoint", str(tmp_path / "x.safetensors")]) == 2
    assert "brings its own weights; --checkpoint does not apply" in capsys.readouterr().err
    # without [data] the UNet's own shape is enough, and no default data set stands in
    text = config.read_text()
    config.write_text(text[: text.index("[data]")] + text[text.index("[model]") :])
    assert main(["sample", str(config), "--no-progress", "--out", str(tmp_path / "no-data")]) == 0
    assert np.load(tmp_path / "no-data" / "samples.npy").shape == (4, 3, 8, 8)


def test_a_unet_folder_whose_bin_holds_code_is_one_line_and_runs_nothing(tmp_path, capsys):
    """Weights as a pickle (pytorch_model.bin) that would run a command when unpickled: diffusers
    loads them weights-only and refuses; the command says so in one line, and nothing ran."""
    import os

    from sdeplug_cli import main

    folder = tiny_unet(tmp_path / "unet", "positional")
    for weights in (tmp_path / "unet").glob("*.safetensors"):
        weights.unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"conv_in.weight": Payload()}, tmp_path / "unet" / "diffusion_pytorch_model.bin", pickle_protocol=2)
    config = tmp_path / "config.toml"
    config.write_text(
        '[sde]\nname = "ddpm"\nbeta_start = 0.001\nbeta_end = 0.2\nN = 20\n'
        f'[model]\nname = "diffusers_unet"\npath = "{folder}"\nconvention = "epsilon"\nnum_train_timesteps = 20\n'
        f'[output]\ndir = "{tmp_path / "run"}"\n'
    )
    assert main(["sample", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load a UNet2DModel from" in err[0], err
    assert not (tmp_path / "pwned").exists()
