"""The fast samplers (plugins/sdeplug_fast) and time grids as a registered kind of part.

Each sampler's order is checked by the testing kit (tests/test_contracts.py runs the
contract of every part of the ``fast`` plugin); here: the grids' formulas, the
multistep bookkeeping, the third-order weight of DPM-Solver++(3M), and the few-step
quality the fast samplers exist for.
"""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdeplug
from sdeplug import ConfigError, IncompatiblePartError, UnknownPartError
from sdeplug.app.assemble import check_config
from sdeplug.app.config import Config
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import ContractError, assert_same_law, check_predictor, energy_null, ode_order
from tests.problems import TanhSDE

F64 = torch.float64
REGISTRY = sdeplug.get_registry()


def _sde(name: str):
    return sdeplug.create("sde", name)


def _times(grid: str, sde_name: str, steps: int, **options) -> torch.Tensor:
    sde = _sde(sde_name)
    return REGISTRY.create("time_grid", grid, **options).times(sde, steps, sde.default_eps, dtype=F64)


# Grids ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_logsnr_grid_takes_equal_steps_in_log_snr(sde_name):
    sde = _sde(sde_name)
    steps = _times("logsnr", sde_name, 12)
    gaps = sde.log_snr(steps).diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, float(gaps.mean())), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
@pytest.mark.parametrize("rho", [1.0, 7.0])
def test_edm_grid_spaces_the_noise_level_evenly_in_its_rho_root(sde_name, rho):
    sde = _sde(sde_name)
    times = _times("edm", sde_name, 10, rho=rho)
    level = sde.sigma(times) / sde.alpha(times)  # EDM's sigma
    gaps = (level ** (1 / rho)).diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, float(gaps.mean())), rtol=1e-8, atol=1e-12)


def test_quadratic_and_uniform_grids_follow_their_formulas():
    sde = _sde("vp")
    u = torch.linspace(1, 0, 9, dtype=F64)
    torch.testing.assert_close(_times("quadratic", "vp", 8), 1e-3 + (1 - 1e-3) * u**2)
    torch.testing.assert_close(_times("quadratic", "vp", 8, power=3.0), 1e-3 + (1 - 1e-3) * u**3)
    torch.testing.assert_close(_times("uniform", "vp", 8), torch.linspace(sde.T, 1e-3, 9, dtype=F64))


@given(t=st.floats(1e-4, 1.0), name=st.sampled_from(["ve", "vp", "subvp"]))
def test_t_from_log_snr_inverts_log_snr(t, name):
    sde = _sde(name)
    times = torch.tensor([t], dtype=F64)
    torch.testing.assert_close(sde.t_from_log_snr(sde.log_snr(times)), times, rtol=1e-10, atol=1e-12)


def test_samplers_take_a_grid_by_name_with_options():
    sde, mixture = _sde("vp"), preset("ring8")
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (4, 2),
        predictor="dpmpp_2m",
        corrector="none",
        steps=6,
        grid="edm",
        grid_options={"rho": 3.0},
        dtype=F64,
    )
    torch.testing.assert_close(result.grid, _times("edm", "vp", 6, rho=3.0))
    ode = sample_ode(sde, mixture.score_model(sde), (4, 2), solver="heun", grid="logsnr", steps=5, dtype=F64)
    torch.testing.assert_close(ode.grid, _times("logsnr", "vp", 5))
    assert ode.nfe == 2 * 5 + 1  # Heun's two evaluations per step, plus the final denoising step
    named_steps = sample_ode(
        sde, mixture.score_model(sde), (4, 2), solver="euler", solver_options={"steps": 7}, grid="quadratic", dtype=F64
    )
    assert len(named_steps.grid) == 8  # a named grid with no steps takes the solver's own


def test_grid_errors_name_what_is_wrong():
    sde, mixture = _sde("vp"), preset("ring8")
    score = mixture.score_model(sde)
    with pytest.raises(UnknownPartError, match="logsnr"):
        sample_pc(sde, score, (4, 2), grid="logsrn", steps=3)
    with pytest.raises(sdeplug.OptionError, match="rho"):
        sample_pc(sde, score, (4, 2), grid="edm", grid_options={"roh": 2.0}, steps=3)
    with pytest.raises(IncompatiblePartError, match="time_grid 'logsnr' needs an SDE of type LinearSDE"):
        sample_pc(TanhSDE(), lambda x, t: -x, (4, 2), predictor="euler_maruyama", grid="logsnr", steps=3)
    with pytest.raises(ValueError, match="grid_options"):
        sample_pc(sde, score, (4, 2), grid=torch.linspace(1, 0.1, 4), grid_options={"rho": 2.0})


def test_config_picks_a_grid_by_name_or_table():
    table = Config.from_dict({"sde": {"name": "vp"}, "sampler": {"grid": "logsnr", "steps": 5}})
    assert table.sampler.grid.name == "logsnr"
    config = Config.from_dict({"sde": {"name": "ve"}, "sampler": {"steps": 5, "grid": {"name": "edm", "rho": 2.0}}})
    assert (config.sampler.grid.name, dict(config.sampler.grid.options)) == ("edm", {"rho": 2.0})
    check_config(config)
    with pytest.raises(sdeplug.OptionError, match="rho"):
        check_config(Config.from_dict({"sde": {"name": "ve"}, "sampler": {"grid": {"name": "edm", "rh": 2.0}}}))
    with pytest.raises(ConfigError, match="grid"):
        Config.from_dict({"sde": {"name": "ve"}, "sampler": {"grid": 3}})


# Multistep bookkeeping -------------------------------------------------------------------


def _gaussian_problem(sde_name: str = "vp"):
    sde = _sde(sde_name)
    data = GaussianMixture([1.0], [[0.3]], stds=[0.5])
    return sde, data.score_model(sde)


def _run(part, x, times, jumped=False):
    """The sampler's protocol by hand: init once, then step with the state."""
    state = part.init(x, times)
    for i in range(len(times) - 1):
        x, state = part.step(x, times[i].expand(len(x)), times[i + 1].expand(len(x)), state, jumped=jumped)
    return x


def test_a_part_reused_for_a_second_run_starts_afresh():
    sde, score = _gaussian_problem()
    times = _times("logsnr", "vp", 6)
    x0 = torch.linspace(-2, 2, 5, dtype=F64)[:, None]

    def run(part):
        return _run(part, x0, times)

    for name in ("dpmpp_2m", "dpmpp_3m", "sde_dpmpp_2m", "unipc"):
        options = {"eta": 0.0} if name == "sde_dpmpp_2m" else {}
        reused = REGISTRY.create("predictor", name, sde, score, **options)
        first = run(reused)
        torch.testing.assert_close(run(reused), first, rtol=0, atol=0)
        torch.testing.assert_close(run(REGISTRY.create("predictor", name, sde, score, **options)), first)


def test_lower_order_final_takes_a_first_order_last_step_in_short_runs():
    sde, score = _gaussian_problem()
    times = _times("logsnr", "vp", 5)
    x = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    part = REGISTRY.create("predictor", "dpmpp_2m", sde, score)
    state = part.init(x, times)
    for i in range(4):
        x, state = part.step(x, times[i].expand(5), times[i + 1].expand(5), state)
    t, t_next = times[4].expand(5), times[5].expand(5)
    last, _ = part.step(x, t, t_next, state)
    # DDIM, the first-order exponential integrator, from the same state
    alpha, sigma, alpha_n, sigma_n = sde.alpha(t), sde.sigma(t), sde.alpha(t_next), sde.sigma(t_next)
    denoised = (x + (sigma**2)[:, None] * score(x, t)) / alpha[:, None]
    ddim = (sigma_n / sigma)[:, None] * x + (alpha_n * (1 - sigma_n * alpha / (alpha_n * sigma)))[:, None] * denoised
    torch.testing.assert_close(last, ddim)
    # ... and without the option, the same step is second order and differs
    part = REGISTRY.create("predictor", "dpmpp_2m", sde, score, lower_order_final=False)
    y = _run(part, torch.linspace(-2, 2, 5, dtype=F64)[:, None], times)
    assert (y - last).abs().max() > 1e-6


# DPM-Solver++(3M): the weight of the second difference -----------------------------------


@pytest.mark.slow
def test_3m_with_the_reference_implementations_weight_is_only_second_order():
    """dpm-solver, diffusers and k-diffusion weigh the second divided difference by phi_3;
    d2 approximates h^2 D''/2, so third order needs 2 phi_3. The kit sees the difference."""
    cls = REGISTRY.get("predictor", "dpmpp_3m").cls

    @attrs.define
    class ReferenceWeight3M(cls):
        second_difference_weight = 1.0

    sde = _sde("ve")
    ours, ours_errors = ode_order(cls, sde)
    reference, reference_errors = ode_order(ReferenceWeight3M, sde)
    assert ours >= 2.7, ours
    assert reference < 2.5, reference
    assert ours_errors[-1] < reference_errors[-1] / 10  # at 128 steps
    with pytest.raises(ContractError, match="ode_order 3"):
        check_predictor(ReferenceWeight3M, sdes=[sde])


@pytest.mark.slow
def test_the_kit_checks_the_order_the_built_part_declares():
    """UniPC's ode_order follows its option: built with order = 1 it claims 2, and the kit
    measures that claim; a part whose claim its options do not meet fails."""
    cls = REGISTRY.get("predictor", "unipc").cls
    vp = _sde("vp")
    assert cls(vp, lambda x, t: x, order=1).ode_order == 2.0 and cls(vp, lambda x, t: x).ode_order == 3.0
    report = check_predictor(cls, sdes=[vp], options={"order": 1})
    assert any("(declared 2)" in line for line in report.passed), report.passed

    @attrs.define
    class Overclaims(cls):
        @property
        def ode_order(self) -> float:
            return float(self.order + 2)  # one more than UniC gives

    with pytest.raises(ContractError, match="below 2.40, the pass mark of its declared ode_order 3"):
        check_predictor(Overclaims, sdes=[vp], options={"order": 1})


def test_unipc_raises_the_order_of_its_predictor_by_one():
    sde = _sde("vp")
    cls = REGISTRY.get("predictor", "unipc").cls
    observed = {order: ode_order(cls, sde, {"order": order})[0] for order in (1, 2)}
    assert observed[1] > 1.7 and observed[2] > 2.7, observed


# Few evaluations -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_unipc_matches_the_ring_in_ten_score_evaluations(sde_name):
    """The headline of docs/benchmarks.md, as a regression guard: 10 evaluations, the ring."""
    sde, mixture = _sde(sde_name), preset("ring8").to(F64)
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (2000, 2),
        predictor="unipc",
        corrector="none",
        steps=10,
        grid="logsnr",
        denoise=False,
        generator=torch.Generator().manual_seed(0),
        dtype=F64,
    )
    assert result.nfe == 10
    null = energy_null(lambda n, g: mixture.sample(n, g), 2000)
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=null, z=3.0)


def test_every_fast_sampler_runs_float32_on_image_shapes():
    sde = _sde("subvp")
    score = GaussianMixture([1.0], [[0.0] * 12], stds=[0.5], event_shape=(3, 2, 2)).score_model(sde)
    for name in ("dpmpp_2m", "dpmpp_3m", "sde_dpmpp_2m", "edm_heun", "unipc"):
        x = sample_pc(
            sde,
            score,
            (3, 3, 2, 2),
            predictor=name,
            corrector="none",
            steps=8,
            grid="edm",
            generator=torch.Generator().manual_seed(0),
            dtype=torch.float32,
        ).x
        assert x.shape == (3, 3, 2, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all()), name
    assert math.isfinite(float(x.std()))


# Coefficients computed once per grid -------------------------------------------------------


def _reference_unipc(sde, score, x, times, order: int, variant: str) -> torch.Tensor:
    """UniPC-p + UniC step by step from Zhao et al.'s formulas (diffusers' uni_p/uni_c_bh_update),
    every coefficient computed at its step: what the precomputed rows must reproduce."""

    def level(t):
        t = t.reshape(1)
        alpha, sigma = sde.alpha(t)[0], sde.sigma(t)[0]
        return alpha, sigma, torch.log(alpha / sigma)

    def weights(h, n):
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = hh if variant == "bh1" else h_phi_1
        h_phi_k, factorial, b = h_phi_1 / hh - 1, 1, []
        for i in range(1, n + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return torch.stack(b), b_h, h_phi_1

    def combine(x, here, there, d, older, d_new=None):
        (_, sigma, lam), (alpha_n, sigma_n, lam_n) = here, there
        h = lam_n - lam
        ratios = [(lam_k - lam) / h for lam_k, _ in older]
        rks = [*ratios, torch.ones_like(h)]
        n = len(rks) if d_new is not None else len(ratios)
        b, b_h, h_phi_1 = weights(h, len(rks))
        rhos = torch.tensor([0.5] if n == 1 else [], dtype=F64)
        if n > 1:
            R = torch.stack([torch.stack([r**i for r in rks[:n]]) for i in range(n)])
            rhos = torch.linalg.solve(R, b[:n])
        out = sigma_n / sigma * x - alpha_n * h_phi_1 * d
        terms = [rho * (d_k - d) / r for rho, r, (_, d_k) in zip(rhos, ratios, older)]
        if d_new is not None:
            terms.append(rhos[-1] * (d_new - d))
        return out - alpha_n * b_h * sum(terms) if terms else out

    levels = [level(t) for t in times]
    history, previous = [], None
    for i in range(len(times) - 1):
        alpha, sigma, lam = levels[i]
        d = (x + sigma**2 * score(x, times[i].expand(len(x)))) / alpha
        if previous is not None:
            x = combine(*previous, d_new=d)
        older = history[: order - 1]
        previous = (x, levels[i], levels[i + 1], d, older)
        x = combine(x, levels[i], levels[i + 1], d, older)
        history = [(lam, d), *history]
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_precomputed_rows_reproduce_the_step_by_step_formulas(order, variant):
    sde = _sde("vp")
    score = preset("ring8").score_model(sde)
    times = _times("logsnr", "vp", 16)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    part = REGISTRY.create("predictor", "unipc", sde, score, order=order, variant=variant)
    ours = _run(part, x, times)
    torch.testing.assert_close(ours, _reference_unipc(sde, score, x, times, order, variant), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_dpmpp_2m_precomputed_rows_reproduce_the_step_by_step_formula(sde_name):
    sde = _sde(sde_name)
    score = preset("ring8").score_model(sde)
    times = _times("edm", sde_name, 16)
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * float(sde.sigma(times[:1]))
    expected, previous = x, None
    for i in range(len(times) - 1):
        t, t_next = times[i : i + 1], times[i + 1 : i + 2]
        alpha, sigma, alpha_n, sigma_n = sde.alpha(t), sde.sigma(t), sde.alpha(t_next), sde.sigma(t_next)
        lam, lam_n = torch.log(alpha / sigma), torch.log(alpha_n / sigma_n)
        d = (expected + sigma**2 * score(expected, t.expand(32))) / alpha
        combined = d if previous is None else d + (lam_n - lam) / (lam - previous[0]) / 2 * (d - previous[1])
        expected = sigma_n / sigma * expected - alpha_n * torch.expm1(-(lam_n - lam)) * combined
        previous = (lam, d)
    part = REGISTRY.create("predictor", "dpmpp_2m", sde, score)
    torch.testing.assert_close(_run(part, x, times), expected, rtol=1e-11, atol=1e-11)
