"""Scratch script (not part of sdeplug): runs the paper's own code in float64 on the weights and
inputs of reference_outputs.safetensors and records its scores (reference_outputs_float64.safetensors).

The reference copy at /tmp/ref is score_sde_pytorch at cb1f359 with the three patches of
README.md, plus two so that it computes in the input's dtype: get_timestep_embedding builds
its frequencies and angles in the time steps' dtype instead of float32, and the FIR helpers of
up_or_down_sampling.py make their kernel tensor in x's dtype. Its float32 run is checked
against the recorded float32 outputs before the float64 outputs are written.

usage: python make_fixture_float64.py tests/data/score_sde tests/data/score_sde/reference_outputs_float64.safetensors
"""

import json
import sys
import types

sys.path.insert(0, "/tmp/ref")
import sde_lib
import torch
from models import ncsnpp as ref_ncsnpp
from models import utils as mutils
from models.ema import ExponentialMovingAverage
from safetensors.torch import load_file, save_file

FIXTURE, OUT = sys.argv[1], sys.argv[2]
CASES = json.load(open(f"{FIXTURE}/cases.json"))
RECORDED = load_file(f"{FIXTURE}/reference_outputs.safetensors")
SDE = CASES["sde"]


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
    return types.SimpleNamespace(
        model=types.SimpleNamespace(**m),
        data=types.SimpleNamespace(image_size=8, num_channels=3, centered=opts["centered"]),
        training=types.SimpleNamespace(continuous=True, sde=sde),
    )


def make_sde(name):
    if name == "vesde":
        return sde_lib.VESDE(SDE["sigma_min"], SDE["sigma_max"], SDE["N"])
    cls = sde_lib.VPSDE if name == "vpsde" else sde_lib.subVPSDE
    return cls(SDE["beta_min"], SDE["beta_max"], SDE["N"])


def ema_state(cfg, checkpoint):
    """The model's state with the checkpoint's EMA weights copied in, as the paper evaluates."""
    model = torch.nn.DataParallel(ref_ncsnpp.NCSNpp(cfg))
    model.load_state_dict(checkpoint["model"])
    ema = ExponentialMovingAverage(model.parameters(), decay=0.999)
    ema.load_state_dict(checkpoint["ema"])
    ema.copy_to(model.parameters())
    return model.state_dict()


out = {}
checkpoint = torch.load(f"{FIXTURE}/checkpoint_2.pth", weights_only=False)  # our own fixture
for case, spec in CASES["cases"].items():
    cfg = config(spec["options"], spec["sde"])
    model = torch.nn.DataParallel(ref_ncsnpp.NCSNpp(cfg))
    sde = make_sde(spec["sde"])
    if case == "ve":
        states = {"score": checkpoint["model"], "score_ema": ema_state(cfg, checkpoint)}
    else:
        states = {"score": {k: RECORDED[f"{case}.model.{k}"] for k in spec["keys"]}}
    for name, state in states.items():
        for dtype in (torch.float32, torch.float64):
            model.load_state_dict(state)
            model.to(dtype).eval()
            x, t = RECORDED["x"].to(dtype), RECORDED["t"].to(dtype)
            with torch.no_grad():
                score = mutils.get_score_fn(sde, model, train=False, continuous=True)(x, t)
            recorded = RECORDED[f"{case}.{name}"]
            error = ((score.double() - recorded.double()).abs().max() / recorded.abs().max()).item()
            print(case, name, dtype, f"relative to the recorded float32 output: {error:.2e}")
            if dtype == torch.float32:
                assert error < 1e-5, error  # the same float32 code on another CPU
            else:
                out[f"{case}.{name}"] = score.contiguous()
save_file(out, OUT, metadata={"reference": "yang-song/score_sde_pytorch@cb1f359 in float64 (patched, see README.md)"})
