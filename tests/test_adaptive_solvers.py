"""The torchdiffeq and torchsde plugins: against closed-form ODEs and the oracle mixture."""

from __future__ import annotations

import pytest
import torch

import sdeplug
from conftest import LazyModule, computed_once
from sdeplug.errors import OptionError
from sdeplug.oracle import preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null
from sdeplug_torchdiffeq import DENSE
from sdeplug_torchsde import METHODS as SDE_METHODS

torchdiffeq = LazyModule("torchdiffeq")  # imported by the first test that uses it, not at collection

N = 2000
SDES = ["ve", "vp", "subvp"]


@pytest.fixture(scope="module")
def mixture():
    return preset("mixture3")


@pytest.fixture(scope="module")
@computed_once
def data_null(mixture):
    return energy_null(lambda n, g: mixture.sample(n, g), N)


def _solver(method: str, **options):
    return sdeplug.create("ode_solver", "torchdiffeq", method=method, **options)


def test_fixed_step_methods_step_through_the_given_grid():
    grid = torch.tensor([1.0, 0.9, 0.5, 0.45, 0.0], dtype=torch.float64)
    seen = []

    def F(t, y):
        seen.append(float(t))
        return -y

    _solver("euler").solve(F, torch.ones(1, dtype=torch.float64), 1.0, 0.0, grid=grid)
    assert seen == grid[:-1].tolist()


def test_adaptive_solver_never_evaluates_past_the_end():
    """dopri5 may overshoot and interpolate; the plugin ends a step at t1 so schedules stay in range."""
    seen = []

    def F(t, y):
        seen.append(float(t))
        return torch.cos(10 * t) * y

    _solver("dopri5").solve(F, torch.ones(3, dtype=torch.float64), 1.0, 1e-3)
    assert min(seen) >= 1e-3 - 1e-12 and max(seen) <= 1.0 + 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(DENSE))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("t0", "t1"), [(0.1, 2.0), (2.0, 0.1)])
def test_dense_output_is_torchdiffeqs_own_without_solving_again(method, dtype, t0, t1):
    """states_at rebuilds torchdiffeq's interpolant from the recorded steps: the same states as
    torchdiffeq's odeint asked for those times (same steps), and no further call of F."""
    calls = []

    def F(t, y):
        calls.append(1)
        return torch.stack([y[:, 1], -torch.sin(y[:, 0]) * (1 + t)], 1)

    y0 = torch.tensor([[1.0, 0.3], [2.0, -1.0], [-0.5, 0.0]], dtype=dtype)
    solver = _solver(method, rtol=1e-6, atol=1e-6)
    solution = solver.solve_dense(F, y0, t0, t1)
    steps = solution.steps.to(torch.float64)
    fractions = torch.tensor([0.1127, 0.5, 0.8873, 1.0], dtype=torch.float64)
    times = (steps[:-1, None] + (steps[1:] - steps[:-1])[:, None] * fractions).reshape(-1)
    before = len(calls)
    states, nfe = solution.states_at(times)
    assert nfe == 0 and len(calls) == before and states.dtype == dtype
    grid = torch.cat([steps[:1], times]).to(dtype)
    options = {"step_t": torch.tensor([t1], dtype=dtype)}
    reference = torchdiffeq.odeint(F, y0, grid, rtol=1e-6, atol=1e-6, method=method, options=options)[1:]
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert torch.allclose(states, reference, rtol=tol, atol=tol)
    assert torch.allclose(states[-1], solution.y, rtol=tol, atol=tol)


def test_torchdiffeq_options_are_checked():
    with pytest.raises(OptionError, match="method"):
        _solver("rk45")
    with pytest.raises(OptionError, match="option 'method' is fixed to 'dopri5' by this preset"):
        sdeplug.create("ode_solver", "dopri5", method="rk4")
    assert sdeplug.create("ode_solver", "dopri5").order == 5
    assert _solver("rk4").adaptive is False and _solver("bosh3").order == 3
    # explicit_adams: Adams-Bashforth of order max_order - 1, by default 3 (see the next test)
    assert sdeplug.create("ode_solver", "explicit_adams").order == 3
    assert _solver("explicit_adams", max_order=6).order == 5
    with pytest.raises(OptionError, match="max_order is an option of method 'explicit_adams', not of 'dopri5'"):
        _solver("dopri5", max_order=4)
    with pytest.raises(OptionError, match="max_order must be an integer from 4 to 12; got 3"):
        sdeplug.create("ode_solver", "explicit_adams", max_order=3)


def test_explicit_adams_is_stable_where_torchdiffeqs_default_order_is_not():
    """torchdiffeq's default max_order (12) is Adams-Bashforth of order 11: it blows up on a
    decay at rate 2 with 100 steps. Ours defaults to a stable order."""
    times = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    ours = _solver("explicit_adams").solve(lambda t, y: -2 * y, y0, 0.0, 1.0, grid=times).y
    torch.testing.assert_close(ours, y0 * torch.exp(torch.tensor(-2.0, dtype=torch.float64)), rtol=1e-5, atol=0)
    theirs = _solver("explicit_adams", max_order=12).solve(lambda t, y: -2 * y, y0, 0.0, 1.0, grid=times).y
    assert theirs.abs().item() > 1e3


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize(
    "solver, options", [("dopri5", {}), ("rk4", {"steps": 50}), ("explicit_adams", {}), ("implicit_adams", {})]
)
@pytest.mark.slow
def test_torchdiffeq_ode_sampler_recovers_the_mixture(mixture, data_null, sde_name, solver, options):
    sde = sdeplug.create("sde", sde_name)
    result = sample_ode(
        sde,
        mixture.score_model(sde),
        (N, 2),
        solver=solver,
        solver_options=options,
        generator=torch.Generator().manual_seed(0),
    )
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"{sde_name} {solver}")


# One SRK step per grid interval, with and without correctors, is covered for every SDE by
# the predictor x corrector contract in test_sampling.py.


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDES)
def test_torchsde_adaptive_over_the_whole_interval_recovers_the_mixture(mixture, data_null, sde_name):
    sde = sdeplug.create("sde", sde_name)
    options = {"method": "srk", "adaptive": True, "dt": 0.01}  # [eps, T] in one sdeint call
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (N, 2),
        predictor="torchsde",
        predictor_options=options,
        corrector="none",
        steps=1,
        generator=torch.Generator().manual_seed(0),
    )
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"{sde_name} adaptive torchsde")


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(set(SDE_METHODS) - {"srk"}))
def test_every_torchsde_method_recovers_the_mixture(mixture, data_null, method):
    sde = sdeplug.create("sde", "vp")
    result = sample_pc(
        sde,
        mixture.score_model(sde),
        (N, 2),
        predictor="torchsde",
        predictor_options={"method": method},
        corrector="none",
        steps=400,
        generator=torch.Generator().manual_seed(0),
    )
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"torchsde {method}")


def test_torchsde_is_seeded_and_handles_image_shapes():
    from sdeplug.oracle import random_mixture

    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4))
    sde = sdeplug.create("sde", "vp")

    def run(seed):
        return sample_pc(
            sde,
            mixture.score_model(sde),
            (64, 1, 4, 4),
            predictor="torchsde",
            corrector="none",
            steps=20,
            dtype=torch.float64,
            generator=torch.Generator().manual_seed(seed),
        ).x

    a, b = run(1), run(1)
    assert a.shape == (64, 1, 4, 4) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.allclose(a, run(2))


@pytest.mark.parametrize(
    ("method", "stages"), [("euler", 1), ("milstein", 1), ("heun", 2), ("midpoint", 2), ("srk", 4)]
)
def test_a_torchsde_step_is_torchsdes_own_with_one_score_evaluation_per_stage(mixture, method, stages):
    """One step of the predictor equals torchsde.sdeint on the same reverse SDE and Brownian
    motion, bit for bit, while evaluating the score once per stage of the method (torchsde's
    contract check and its SRK's repeated stage drifts evaluate some states twice)."""
    import torchsde

    sde = sdeplug.create("sde", "vp")
    score = mixture.score_model(sde)
    calls = []

    def counted(x, t):
        calls.append(1)
        return score(x, t)

    x = mixture.sample(300, torch.Generator().manual_seed(0), sde, 0.6)
    t, t_next = torch.full((300,), 0.6, dtype=torch.float64), torch.full((300,), 0.45, dtype=torch.float64)
    predictor = sdeplug.create("predictor", "torchsde", sde, counted, method=method)
    got, _ = predictor.step(x, t, t_next, None, generator=torch.Generator().manual_seed(3))
    assert len(calls) == stages

    reverse = sde.reverse(score)

    class Reverse(torch.nn.Module):  # the reverse SDE in s = T - t, written out again
        noise_type, sde_type = "diagonal", SDE_METHODS[method]

        def f(self, s, y):
            return -reverse.drift(y, (sde.T - s).expand(y.shape[0]))

        def g(self, s, y):
            return reverse.diffusion((sde.T - s).expand(y.shape[0]))[:, None].expand(y.shape)

    s0, s1 = sde.T - 0.6, sde.T - 0.45
    entropy = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(3)))
    levy = "space-time" if method == "srk" else "none"
    bm = torchsde.BrownianInterval(s0, s1, size=x.shape, dtype=x.dtype, entropy=entropy, levy_area_approximation=levy)
    options = {"grad_free": True} if method == "milstein" else {}
    ts = torch.tensor([s0, s1], dtype=x.dtype)
    expected = torchsde.sdeint(Reverse(), x, ts, bm=bm, method=method, dt=s1 - s0, options=options)[-1]
    assert torch.equal(got, expected)


def test_the_torchsde_drift_cache_keeps_only_the_drifts_of_living_states(mixture):
    from sdeplug_torchsde import _ReverseTimeSDE

    sde = sdeplug.create("sde", "vp")
    system = _ReverseTimeSDE(sde.reverse(mixture.score_model(sde)), sde.T, (2,), "ito")
    kept = torch.randn(8, 2, dtype=torch.float64)
    first = system.f(torch.tensor(0.5, dtype=torch.float64), kept)
    assert system.f(torch.tensor(0.5, dtype=torch.float64), kept) is first  # the same state and time: kept
    assert system.f(torch.tensor(0.6, dtype=torch.float64), kept) is not first  # another time: evaluated
    for _ in range(3):
        system.f(0.7, torch.randn(8, 2, dtype=torch.float64))  # states that die at once
    system.f(0.7, kept)
    assert len(system._drifts) == 3  # the three of the living state


def test_torchsde_options_are_checked():
    sde = sdeplug.create("sde", "vp")
    with pytest.raises(OptionError, match="method"):
        sdeplug.create("predictor", "torchsde", sde, lambda x, t: x, method="rk4")
    with pytest.raises(OptionError, match="dt must be a positive number"):
        sdeplug.create("predictor", "torchsde", sde, lambda x, t: x, dt=-0.1)
