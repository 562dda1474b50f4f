"""The explicit predictor state: jumps reported by the sampler, the on_jump option, the callback.

A multistep predictor learns that a corrector or a constraint moved x only through
``jumped``; what it then does with its history is its ``on_jump`` option, never a guess
from tensor identities.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdeplug
from sdeplug.grids import log_snr_grid
from sdeplug.guidance import Measurement, Replacement
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import observed_order

F64 = torch.float64
DETERMINISTIC_MULTISTEP = [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("sde_dpmpp_2m", {"eta": 0.0})]


def _copying_constraint():
    """A constraint that moves nothing but returns a new tensor: it must not cost any order."""

    class Copy:
        def __call__(self, x, t, generator):
            return x.clone()

        def final(self, x):
            return x

    return Copy()


def _ddim(sde, score, x, times):
    """The first-order exponential integrator written out: what a multistep predictor is
    when it restarts at every step."""
    for i in range(len(times) - 1):
        t, t_next = times[i].expand(x.shape[0]), times[i + 1].expand(x.shape[0])
        a, s, a_n, s_n = sde.alpha(t), sde.sigma(t), sde.alpha(t_next), sde.sigma(t_next)
        denoised = sde.data_prediction(x, t, score(x, t))
        h = torch.log(a_n / s_n) - torch.log(a / s)
        x = (s_n / s)[:, None] * x - (a_n * torch.expm1(-h))[:, None] * denoised
    return x


@pytest.mark.parametrize("name, options", DETERMINISTIC_MULTISTEP)
def test_a_constraint_returning_a_new_tensor_keeps_the_order_when_asked(name, options):
    sde = sdeplug.create("sde", "vp")
    score = preset("mixture3").score_model(sde)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    common = dict(predictor=name, corrector="none", steps=12, grid="logsnr", denoise=False, x_init=x_T, dtype=F64)
    free = sample_pc(sde, score, **common, predictor_options=options).x
    kept = sample_pc(
        sde, score, **common, predictor_options={**options, "on_jump": "keep"}, constraint=_copying_constraint()
    ).x
    torch.testing.assert_close(kept, free, rtol=0, atol=0)
    # the documented default: a jump restarts the history, so every step is first order
    restarted = sample_pc(sde, score, **common, predictor_options=options, constraint=_copying_constraint())
    torch.testing.assert_close(restarted.x, _ddim(sde, score, x_T, restarted.grid), rtol=1e-10, atol=1e-10)
    assert (restarted.x - free).abs().max() > 1e-4


def _inpainting_order(on_jump: str, sde_name: str) -> tuple[float, list[float]]:
    """Error of the unknown coordinate against its exact probability flow, with the known one
    replaced after every step. The data law has independent coordinates, so the unknown one
    follows its own ODE exactly; only the predictor's order limits the error."""
    sde = sdeplug.create("sde", sde_name)
    means, stds = torch.tensor([0.7, 0.3], dtype=F64), torch.tensor([0.4, 0.5], dtype=F64)
    data = GaussianMixture([1.0], [means.tolist()], stds=[stds.tolist()])
    score = data.score_model(sde)
    known = Measurement(torch.tensor([0.9, 0.0], dtype=F64), mask=torch.tensor([1.0, 0.0], dtype=F64))
    t_end = sde.default_eps

    def spread(t: float) -> tuple[float, float]:
        tt = torch.tensor([t], dtype=F64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        return a, math.sqrt(a**2 * float(stds[1]) ** 2 + s**2)

    (a_T, S_T), (a_end, S_end) = spread(sde.T), spread(t_end)
    u = torch.linspace(-3, 3, 33, dtype=F64)
    x_T = torch.stack([torch.zeros_like(u), a_T * means[1] + S_T * u], dim=1)
    exact = a_end * means[1] + (S_end / S_T) * (x_T[:, 1] - a_T * means[1])
    steps, errors = (16, 32, 64, 128), []
    for k in steps:
        x = sample_pc(
            sde,
            score,
            predictor="dpmpp_2m",
            predictor_options={"on_jump": on_jump},
            corrector="none",
            grid=log_snr_grid(sde, k, t_end),
            denoise=False,
            x_init=x_T,
            constraint=Replacement(sde, known),
            generator=torch.Generator().manual_seed(0),
            dtype=F64,
        ).x
        errors.append(float((x[:, 1] - exact).abs().max() / S_end))
    return observed_order(steps, errors), errors


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_a_multistep_predictor_under_inpainting_keeps_its_order_when_asked(sde_name):
    kept, kept_errors = _inpainting_order("keep", sde_name)
    restarted, restarted_errors = _inpainting_order("restart", sde_name)
    assert kept > 1.7, (kept, kept_errors)
    assert restarted < 1.3, (restarted, restarted_errors)
    assert kept_errors[-1] < restarted_errors[-1] / 10


def test_on_jump_is_a_checked_option():
    sde = sdeplug.create("sde", "vp")
    with pytest.raises(sdeplug.OptionError, match="on_jump"):
        sdeplug.create("predictor", "unipc", sde, lambda x, t: x, on_jump="sometimes")


def test_a_corrector_is_reported_as_a_jump():
    """With Langevin after every step the multistep predictor restarts by default (first
    order, consistent) and goes on with its history when asked: the two runs differ."""
    sde = sdeplug.create("sde", "vp")
    score = preset("mixture3").score_model(sde)
    runs = {
        on_jump: sample_pc(
            sde,
            score,
            (200, 2),
            predictor="dpmpp_2m",
            predictor_options={"on_jump": on_jump},
            corrector="langevin",
            steps=20,
            generator=torch.Generator().manual_seed(0),
            dtype=F64,
        ).x
        for on_jump in ("restart", "keep")
    }
    assert (runs["restart"] - runs["keep"]).abs().max() > 1e-6


# The per-step callback -----------------------------------------------------------------------


def test_the_pc_callback_sees_every_step_with_its_data_prediction_at_no_extra_cost():
    sde = sdeplug.create("sde", "vp")
    mixture = preset("mixture3")
    score = mixture.score_model(sde)
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    seen = []
    common = dict(predictor="dpmpp_2m", corrector="none", steps=8, grid="logsnr", x_init=x_T, dtype=F64)
    result = sample_pc(sde, score, **common, callback=seen.append)
    plain = sample_pc(sde, score, **common)
    assert result.nfe == plain.nfe
    torch.testing.assert_close(result.x, plain.x, rtol=0, atol=0)
    assert [info["i"] for info in seen] == list(range(8))
    assert torch.equal(seen[0]["x"], x_T)
    for info in seen:
        assert set(info) == {"x", "i", "t", "denoised"}
        assert float(info["t"]) == float(result.grid[info["i"]])
        t = info["t"].expand(50)
        torch.testing.assert_close(info["denoised"], sde.data_prediction(info["x"], t, score(info["x"], t)))


def test_the_ode_callback_sees_every_evaluation():
    sde = sdeplug.create("sde", "ve")
    score = preset("mixture3").score_model(sde)
    seen = []
    result = sample_ode(
        sde,
        score,
        (20, 2),
        solver="heun",
        steps=5,
        dtype=F64,
        generator=torch.Generator().manual_seed(0),
        callback=seen.append,
    )
    assert len(seen) == result.nfe - 1  # every evaluation of the flow; the last one is the final denoising
    assert [info["i"] for info in seen] == list(range(len(seen)))
    info = seen[3]
    t = info["t"].expand(20)
    torch.testing.assert_close(info["denoised"], sde.data_prediction(info["x"], t, score(info["x"], t)))


def _callbacks(sde, score, predictor, corrector) -> list[dict]:
    """What the callback of a three-step run sees."""
    seen = []
    sample_pc(
        sde,
        score,
        (10, 2),
        predictor=predictor,
        corrector=corrector,
        steps=3,
        callback=seen.append,
        generator=torch.Generator().manual_seed(0),
    )
    return seen


def test_no_data_prediction_where_the_predictor_evaluated_nothing():
    sde = sdeplug.create("sde", "vp")
    seen = _callbacks(sde, preset("mixture3").score_model(sde), "none", "langevin")
    assert len(seen) == 3 and all(info["denoised"] is None for info in seen)


def test_a_non_linear_sde_gives_no_data_prediction():
    from problems import TanhSDE

    seen = _callbacks(TanhSDE(), lambda x, t: -x, "euler_maruyama", "none")
    assert len(seen) == 3 and all(info["denoised"] is None for info in seen)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp", "ddpm"])
@pytest.mark.parametrize("probability_flow", [False, True])
def test_euler_maruyama_rows_computed_once_per_grid_equal_its_per_step_formula(sde_name, probability_flow):
    """On a LinearSDE ``init`` computes each step's numbers for the whole grid; without that
    state (None) the step evaluates f and g itself: both are the same step."""
    sde = sdeplug.create("sde", sde_name)
    score = GaussianMixture([1.0], [[0.3, -0.2]], stds=[0.5]).score_model(sde)
    part = sdeplug.create("predictor", "euler_maruyama", sde, score, probability_flow=probability_flow)
    times = torch.linspace(sde.T, sde.default_eps, 9, dtype=torch.float64)
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state = part.init(x, times)
    assert state is not None
    for i in range(len(times) - 1):
        t, t_next = times[i].expand(16), times[i + 1].expand(16)
        with_rows, state = part.step(x, t, t_next, state, torch.Generator().manual_seed(i))
        per_step, _ = part.step(x, t, t_next, None, torch.Generator().manual_seed(i))
        torch.testing.assert_close(with_rows, per_step, rtol=1e-12, atol=1e-12)
        x = per_step


def test_linear_sde_drift_coefficient_is_the_drift_at_one():
    for name in ("ve", "vp", "subvp", "ddpm"):
        sde = sdeplug.create("sde", name)
        t = torch.linspace(0.01, 1, 7, dtype=torch.float64)
        x = torch.randn(7, 3, dtype=torch.float64)
        torch.testing.assert_close(sde.drift(x, t), sde.drift_coefficient(t)[:, None] * x)
