"""Scratch script (not part of sdeplug): runs the paper's own code (score_sde_pytorch at
cb1f359, with three crashes of its PyTorch port patched, see README) on tiny random networks
and records inputs, weights in the reference's key layout and reference outputs."""

import io
import json
import sys
import types
import zipfile

sys.path.insert(0, "/tmp/ref")
import losses
import numpy as np
import sde_lib
import torch
from models import ncsnpp as ref_ncsnpp
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from safetensors.torch import save_file

OUT = sys.argv[1]
BASE = dict(
    nf=8,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[4],
    resamp_with_conv=True,
    conditional=True,
    fir=False,
    fir_kernel=[1, 3, 3, 1],
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="none",
    progressive_combine="sum",
    embedding_type="positional",
    init_scale=0.0,
    fourier_scale=16,
    scale_by_sigma=False,
    centered=True,
    dropout=0.1,
)
CASES = {
    "ve": (
        "vesde",
        dict(fir=True, progressive_input="residual", embedding_type="fourier", scale_by_sigma=True, centered=False),
    ),
    "vp": ("vpsde", dict()),
    "subvp": (
        "subvpsde",
        dict(
            resblock_type="ddpm",
            fir=True,
            progressive="output_skip",
            progressive_input="input_skip",
            progressive_combine="cat",
            skip_rescale=False,
            init_scale=0.1,
            conditional=False,
        ),
    ),
    "vp_residual": ("vpsde", dict(fir=True, progressive="residual", progressive_input="residual", ch_mult=[1, 2, 1])),
}
SDE_PARAMS = dict(sigma_min=0.01, sigma_max=50.0, beta_min=0.1, beta_max=20.0, N=1000)


def config(opts, sde):
    m = dict(
        sigma_min=0.01,
        sigma_max=50,
        num_scales=1000,
        beta_min=0.1,
        beta_max=20.0,
        nonlinearity="swish",
        name="ncsnpp",
        normalization="GroupNorm",
        attention_type="ddpm",
        conv_size=3,
        **opts,
    )
    optim = types.SimpleNamespace(
        optimizer="Adam", lr=2e-4, beta1=0.9, eps=1e-8, weight_decay=0, warmup=5000, grad_clip=1.0
    )
    return types.SimpleNamespace(
        model=types.SimpleNamespace(**m),
        optim=optim,
        data=types.SimpleNamespace(image_size=8, num_channels=3, centered=opts["centered"]),
        training=types.SimpleNamespace(continuous=True, sde=sde),
    )


def make_sde(name):
    if name == "vesde":
        return sde_lib.VESDE(SDE_PARAMS["sigma_min"], SDE_PARAMS["sigma_max"], SDE_PARAMS["N"])
    cls = sde_lib.VPSDE if name == "vpsde" else sde_lib.subVPSDE
    return cls(SDE_PARAMS["beta_min"], SDE_PARAMS["beta_max"], SDE_PARAMS["N"])


tensors, meta = (
    {},
    {"reference": "yang-song/score_sde_pytorch@cb1f359 (patched, see README.md)", "sde": SDE_PARAMS, "cases": {}},
)
torch.manual_seed(0)
x = torch.randn(4, 3, 8, 8)
t = torch.tensor([0.01, 0.3, 0.7, 1.0])
tensors["x"], tensors["t"] = x, t
for case, (sde_name, opts) in CASES.items():
    o = {**BASE, **opts}
    cfg = config(o, sde_name)
    torch.manual_seed(1)
    model = torch.nn.DataParallel(ref_ncsnpp.NCSNpp(cfg))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(
                    torch.randn(p.shape, generator=g) * 0.3
                    + (1.0 if "GroupNorm" in name and name.endswith("weight") else 0.0)
                )
    sde = make_sde(sde_name)

    def score(sde=sde, model=model):
        return mutils.get_score_fn(sde, model, train=False, continuous=True)(x, t).detach().clone()

    with torch.no_grad():
        out_model = score()
    meta["cases"][case] = {"sde": sde_name, "options": dict(o), "keys": list(model.state_dict())}
    tensors[f"{case}.score"] = out_model
    if case == "ve":
        # a real training file: two optimiser steps (numpy learning rate from the warm-up) and EMA updates
        ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
        optimizer = losses.get_optimizer(cfg, model.parameters())
        optimize = losses.optimization_manager(cfg)
        for step in (1, 2):
            optimizer.zero_grad()
            model.train()
            (model(x, torch.full((4,), 0.5)) ** 2).mean().backward()
            optimize(optimizer, model.parameters(), step=step)
            ema.update(model.parameters())
        with torch.no_grad():
            tensors["ve.score"] = score()
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            tensors["ve.score_ema"] = score()
            ema.restore(model.parameters())
        state = {"optimizer": optimizer.state_dict(), "model": model.state_dict(), "ema": ema.state_dict(), "step": 2}
        assert isinstance(state["optimizer"]["param_groups"][0]["lr"], np.floating)
        buf = io.BytesIO()
        torch.save(state, buf)
        # the paper's files were written with numpy 1, which pickles its scalars under numpy.core
        src, dst = (
            zipfile.ZipFile(io.BytesIO(buf.getvalue())),
            zipfile.ZipFile(f"{OUT}/checkpoint_2.pth", "w", zipfile.ZIP_STORED),
        )
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray\nscalar" in data
            dst.writestr(info, data)
        dst.close()
    else:
        for k, v in model.state_dict().items():
            tensors[f"{case}.model.{k}"] = v.contiguous()
save_file(tensors, f"{OUT}/reference_outputs.safetensors")
json.dump(meta, open(f"{OUT}/cases.json", "w"), indent=1)
print({k: tuple(v.shape) for k, v in tensors.items() if "model." not in k})
