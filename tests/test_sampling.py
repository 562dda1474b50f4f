"""Sampling with the exact (oracle) score recovers the data law, for every predictor x corrector.

The tolerance is the energy distance's own sampling noise: the statistic against fresh
true samples must lie within 5 standard deviations of its null distribution (two
independent true sets of the same size: mean 0, its spread exact from the law's distance
variance).
"""

from __future__ import annotations

import math

import pytest
import torch
from problems import TanhSDE

import sdeplug
from conftest import computed_once
from sdeplug.errors import IncompatiblePartError, NonFiniteError, OptionError
from sdeplug.oracle import preset, random_mixture
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null

N = 2000
STEPS = 1000
SDES = ["ve", "vp", "subvp"]
_REGISTRY = sdeplug.get_registry()
# Every predictor with every corrector, each pair on one SDE, the SDEs taken in turn so
# that each predictor meets two of them and each corrector all three. A predictor alone
# (corrector "none"), and each part on every SDE, is part of its own contract
# (tests/test_contracts.py), so it is not repeated here.
COMBOS = [
    (SDES[(i + j) % len(SDES)], p, c)
    for i, p in enumerate(_REGISTRY.names("predictor"))
    for j, c in enumerate(c for c in _REGISTRY.names("corrector") if c != "none")
]


@pytest.fixture(scope="module")
def mixture():
    """Unequal weights, correlated components: a wrong weight, sign or scale shows."""
    return preset("mixture3")


@pytest.fixture(scope="module")
@computed_once
def data_null(mixture):
    mixture64 = mixture.to(torch.float64)
    return energy_null(lambda n, g: mixture64.sample(n, g), N)


def _true(mixture):
    mixture64 = mixture.to(torch.float64)
    return lambda n, g: mixture64.sample(n, g)


#: Steps per predictor: torchsde's default SRK (strong order 1.5) and the fast samplers
#: need far fewer than the first-order reference predictors (and each torchsde step is a
#: whole sdeint call).
PREDICTOR_STEPS = {"torchsde": 200, **dict.fromkeys(["dpmpp_2m", "dpmpp_3m", "sde_dpmpp_2m", "edm_heun", "unipc"], 200)}


def _corrector_options(predictor: str, corrector: str) -> dict:
    # Corrector-only sampling (no predictor) must mix across components by Langevin
    # alone; five steps per time make that possible within the grid (one does not for VP).
    return {"n_steps": 5} if predictor == "none" else {}


@pytest.mark.slow
@pytest.mark.parametrize("sde_name, predictor, corrector", COMBOS)
def test_pc_sampling_recovers_the_mixture(mixture, data_null, sde_name, predictor, corrector):
    sde = sdeplug.create("sde", sde_name)
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (N, 2),
        predictor=predictor,
        corrector=corrector,
        corrector_options=_corrector_options(predictor, corrector),
        steps=PREDICTOR_STEPS.get(predictor, STEPS),
        generator=torch.Generator().manual_seed(0),
    )
    assert_same_law(result.x, _true(mixture), null=data_null, what=f"{sde_name} {predictor}+{corrector} samples")


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("solver, steps", [("euler", 500), ("heun", 100)])
def test_probability_flow_ode_recovers_the_mixture(mixture, data_null, sde_name, solver, steps):
    sde = sdeplug.create("sde", sde_name)
    result = sample_ode(
        sde, mixture.score_model(sde), (N, 2), solver=solver, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    assert result.nfe == steps * (1 if solver == "euler" else 2) + 1
    assert_same_law(result.x, _true(mixture), null=data_null, what=f"{sde_name} {solver} ODE samples")


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDES)
def test_corrector_first_order_recovers_the_mixture(mixture, data_null, sde_name):
    sde = sdeplug.create("sde", sde_name)
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (N, 2),
        order="corrector_first",
        steps=STEPS,
        generator=torch.Generator().manual_seed(1),
    )
    assert_same_law(result.x, _true(mixture), null=data_null)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_the_check_rejects_a_wrong_score(mixture, sde_name):
    """The two-sample check has power: a score 20% too weak gives samples that are too spread,
    told apart from 4000 samples (about 5 null stds on VP at 2000, so twice that here)."""
    sde = sdeplug.create("sde", sde_name)
    model = mixture.score_model(sde)
    result = sample_pc(
        sde,
        lambda x, t: 0.8 * model(x, t),
        (2 * N, 2),
        corrector="none",
        steps=STEPS,
        generator=torch.Generator().manual_seed(0),
    )
    with pytest.raises(AssertionError, match="do not match"):
        assert_same_law(result.x, _true(mixture), null=energy_null(_true(mixture), 2 * N))


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_per_sample_norms_do_not_leave_p_t_invariant(mixture, sde_name):
    """Documented behaviour: norm="sample" makes the step h(x) depend on x, and Langevin with a
    state-dependent step has stationary law p/h, not p. The bias is large, not O(step)."""
    sde = sdeplug.create("sde", sde_name)
    g = torch.Generator().manual_seed(2)
    mixture64 = mixture.to(torch.float64)
    x = mixture.sample(N, g, sde, 0.3)
    corr = sdeplug.create("corrector", "langevin", sde, mixture.score_model(sde), n_steps=100, norm="sample")
    moved = corr.step(x, torch.full((N,), 0.3), g)
    with pytest.raises(AssertionError, match="do not match"):
        assert_same_law(moved, lambda n, gen: mixture64.sample(n, gen, sde, 0.3), z=20)


def test_same_seed_same_samples_and_other_seed_other_samples(mixture):
    sde = sdeplug.create("sde", "vp")
    score = mixture.score_model(sde)

    def run(seed):
        return sample_pc(sde, score, (64, 2), steps=20, generator=torch.Generator().manual_seed(seed)).x

    assert torch.equal(run(3), run(3))
    assert not torch.allclose(run(3), run(4))


def test_nfe_counts_every_score_evaluation(mixture):
    sde = sdeplug.create("sde", "ve")
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (8, 2),
        steps=10,
        corrector_options={"n_steps": 3},
        generator=torch.Generator().manual_seed(0),
    )
    assert result.nfe == 10 * (1 + 3) + 1  # predictor, three corrector steps, final denoising
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (8, 2),
        steps=10,
        predictor="none",
        denoise=False,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.nfe == 10


def _nan_below(t_bad: float):
    def score(x, t):
        return torch.where((t < t_bad)[:, None], torch.full_like(x, math.nan), -x)

    return score


def test_non_finite_state_names_step_time_and_part():
    sde = sdeplug.create("sde", "vp")
    # Grid 1.0, 0.9001, ..., 0.5005 (step 5), 0.4006 (step 6), ...; the score is NaN below t = 0.55.
    with pytest.raises(NonFiniteError, match=r"step 5 of 10 \(t = 0\.5005\), after the corrector 'langevin'"):
        sample_pc(sde, _nan_below(0.55), (4, 2), predictor="euler_maruyama", steps=10, eps=1e-3)
    with pytest.raises(NonFiniteError, match=r"step 6 of 10 \(t = 0\.4006\), after the predictor 'euler_maruyama'"):
        sample_pc(sde, _nan_below(0.55), (4, 2), predictor="euler_maruyama", corrector="none", steps=10, eps=1e-3)
    with pytest.raises(NonFiniteError, match=r"\(t = 0\.4006\), after the ODE solver 'euler'"):
        sample_ode(sde, _nan_below(0.55), (4, 2), solver="euler", steps=10, eps=1e-3)


class _SyncCounter:
    """Counts Python-level reads of tensor values (each one is a host-device sync on a GPU)."""

    METHODS = ("item", "__bool__", "__int__", "__float__", "tolist", "numpy", "cpu")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("kind", ["pc", "ode"])
def test_sampling_loop_does_not_sync_per_step(mixture, monkeypatch, kind):
    """The number of host reads does not grow with the number of steps."""
    sde = sdeplug.create("sde", "vp")
    score = mixture.score_model(sde)
    counter = _SyncCounter(monkeypatch)
    counts = []
    for steps in (5, 40):
        counter.count = 0
        if kind == "pc":
            sample_pc(sde, score, (16, 2), steps=steps, generator=torch.Generator().manual_seed(0))
        else:
            sample_ode(sde, score, (16, 2), steps=steps, generator=torch.Generator().manual_seed(0))
        counts.append(counter.count)
    assert counts[0] == counts[1] <= 3, counts


def test_image_shaped_samples_in_float64_on_a_custom_grid():
    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4)).to(torch.float64)
    sde = sdeplug.create("sde", "ve")
    grid = 1.0 - torch.linspace(0, 1, 301, dtype=torch.float64) ** 2 * (1.0 - 1e-5)  # denser near T
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (500, 1, 4, 4),
        grid=grid,
        corrector="none",
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    assert result.x.shape == (500, 1, 4, 4) and result.x.dtype == torch.float64
    assert torch.equal(result.grid, grid)
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g))


def test_bad_inputs_are_refused_clearly(mixture):
    sde = sdeplug.create("sde", "vp")
    score = mixture.score_model(sde)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample_pc(sde, score, (4, 2), grid=torch.linspace(0.001, 1, 10))
    with pytest.raises(ValueError, match="a score must have the shape of x"):
        sample_pc(sde, lambda x, t: x[:, :1], (4, 2), steps=2)
    with pytest.raises(sdeplug.UnknownPartError, match="Did you mean 'reverse_diffusion'"):
        sample_pc(sde, score, (4, 2), predictor="reverse_difusion")
    accepted = "accepted options: n_steps, norm, scale, snr, step_rule"
    with pytest.raises(OptionError, match=f"unknown option 'snrr'.*{accepted}"):
        sample_pc(sde, score, (4, 2), corrector_options={"snrr": 0.1})
    with pytest.raises(OptionError, match="norm"):
        sample_pc(sde, score, (4, 2), corrector_options={"norm": "global"})
    with pytest.raises(ValueError, match="eps must lie in"):
        sample_pc(sde, score, (4, 2), eps=1.5)
    with pytest.raises(ValueError, match="eps must lie in"):
        sample_ode(sde, score, (4, 2), eps=-0.1)
    with pytest.raises(OptionError, match="no probability-flow form"):
        sample_pc(sde, score, (4, 2), predictor="ancestral", predictor_options={"probability_flow": True})


def test_parts_that_need_a_linear_sde_say_so():
    sde = TanhSDE()
    with pytest.raises(IncompatiblePartError, match="predictor 'ancestral' needs an SDE of type LinearSDE"):
        sample_pc(sde, lambda x, t: -x, (4, 2), predictor="ancestral")
    with pytest.raises(IncompatiblePartError, match="annealed_langevin.*marginal_prob"):
        sample_pc(sde, lambda x, t: -x, (4, 2), corrector="annealed_langevin")
    # Euler-Maruyama and Langevin work for any SDE, and denoising falls back to reverse diffusion.
    result = sample_pc(
        sde, lambda x, t: -x, (4, 2), predictor="euler_maruyama", steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(result.x).all()


@pytest.mark.parametrize("times", [[3.0, 1.0, 0.1], [1.0, 0.5, -0.1]])
def test_a_tensor_grid_beyond_0_T_is_refused(times):
    """A VE grid from t = 3 used to give samples of size 4e4 without a word (issue 15)."""
    sde = sdeplug.create("sde", "ve")
    with pytest.raises(ValueError, match=r"a time grid must lie in \[0, T\] = \[0, 1\] for this SDE; got times from"):
        sample_pc(sde, lambda x, t: -x, (4, 2), grid=torch.tensor(times))
    with pytest.raises(ValueError, match=r"a time grid must lie in \[0, T\]"):
        sample_ode(sde, lambda x, t: -x, (4, 2), solver="euler", grid=torch.tensor(times))


def test_a_grid_from_T_rounded_to_float32_is_accepted():
    sde = sdeplug.create("sde", "vp")
    odd_t = type(sde)(T=0.98)  # 0.98 in float32 is 0.98000002
    grid = torch.tensor([0.98, 0.5, 1e-3], dtype=torch.float32)
    assert float(grid[0]) > odd_t.T
    result = sample_pc(odd_t, lambda x, t: -x, (4, 2), grid=grid, dtype=torch.float32)
    assert result.x.shape == (4, 2)


def test_a_shape_that_disagrees_with_x_init_is_refused():
    sde = sdeplug.create("sde", "vp")
    with pytest.raises(ValueError, match=r"shape \(100, 2\) disagrees with x_init of shape \(5, 2\)"):
        sample_pc(sde, lambda x, t: -x, (100, 2), x_init=torch.zeros(5, 2), steps=2)


@pytest.mark.slow
def test_the_grid_step_rule_leaves_no_langevin_bias_where_the_snr_rule_keeps_one():
    """PC sampling (reverse diffusion + one Langevin step) of Gaussian data with the exact
    score, 60 000 samples: the paper's snr rule keeps a variance bias of about +5% on the
    narrow axis however many steps are taken; the 'grid' rule's bias is O(step) and falls
    within the sampling noise at 800 steps. In float32: the biases measured are percents, far
    above its rounding, and its normal draws cost a third of float64's."""
    sde = sdeplug.create("sde", "vp")
    mean = torch.tensor([0.5, -0.3])
    var = torch.tensor([1.0, 0.25])

    def score(x, t):  # the exact score of N(mean, diag(var)) under the SDE, written out (cheaper than the oracle's)
        assert bool(t.amin() == t.amax())  # the sampler steps every sample at one time: its schedule once
        alpha, sigma = sde.alpha(t[:1])[:, None], sde.sigma(t[:1])[:, None]
        return -(x - alpha * mean) / (alpha**2 * var + sigma**2)

    def narrow_variance_error(steps: int, **corrector_options) -> float:
        x = sdeplug.sampling.sample_pc(
            sde,
            score,
            (60_000, 2),
            predictor="reverse_diffusion",
            corrector="langevin",
            corrector_options=corrector_options,
            steps=steps,
            dtype=torch.float32,
            generator=torch.Generator().manual_seed(1),
        ).x
        return float(x[:, 1].var() / 0.25 - 1)

    paper = narrow_variance_error(800)
    coarse, fine = narrow_variance_error(200, step_rule="grid"), narrow_variance_error(800, step_rule="grid")
    print(f"narrow-axis variance error: snr rule {paper:+.2%}; grid rule {coarse:+.2%} (200), {fine:+.2%} (800)")
    assert paper > 0.03  # the snr rule's bias, 6 standard errors of the estimate
    assert abs(fine) < 0.015 and abs(fine) < abs(coarse) and abs(fine) < paper / 3
