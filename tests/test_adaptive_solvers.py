"""The torchdiffeq and torchsde plugins: against closed-form ODEs and the oracle mixture."""

from __future__ import annotations

import math

import pytest
import torch

import sdeplug
from sdeplug.errors import OptionError
from sdeplug.oracle import preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null
from sdeplug_torchdiffeq import METHODS as ODE_METHODS
from sdeplug_torchsde import METHODS as SDE_METHODS

N = 2000
SDES = ["ve", "vp", "subvp"]


@pytest.fixture(scope="module")
def mixture():
    return preset("mixture3")


@pytest.fixture(scope="module")
def data_null(mixture):
    return energy_null(lambda n, g: mixture.sample(n, g), N, reps=20)


def _solver(method: str, **options):
    return sdeplug.create("ode_solver", "torchdiffeq", method=method, **options)


@pytest.mark.parametrize("method", sorted(ODE_METHODS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t0, t1", [(0.0, 1.5), (1.5, 0.2)])
def test_torchdiffeq_methods_solve_a_known_ode(method, dtype, t0, t1):
    """dy/dt = -t y has y(t1) = y(t0) exp((t0^2 - t1^2) / 2), forwards and backwards in time."""
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=dtype)
    strict = dtype == torch.float64
    solver = _solver(method, rtol=1e-7 if strict else 1e-5, atol=1e-9 if strict else 1e-6, steps=400)
    solution = solver.solve(lambda t, y: -t * y, y0, t0, t1)
    exact = y0 * math.exp((t0**2 - t1**2) / 2)
    order, adaptive = ODE_METHODS[method]
    if method.endswith("_adams"):
        tol = 1e-3  # torchdiffeq's Adams methods show no clean fixed-step order
    elif method == "fehlberg2":
        tol = 3e-5 if strict else 1e-3  # order 2: local error control leaves global error ~ 100 rtol
    elif not adaptive:
        tol = {1: 5e-3, 2: 2e-5}.get(order, 1e-6 if strict else 1e-4)  # 400 steps of h = 1/267
    else:
        tol = 1e-6 if strict else 1e-4
    torch.testing.assert_close(solution.y, exact, rtol=tol, atol=tol)
    assert solution.y.dtype == dtype and solution.nfe > 0


@pytest.mark.parametrize("method, order", [("midpoint", 2), ("heun3", 3), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    def error(steps):
        y = _solver(method, steps=steps).solve(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=torch.float64), 0.0, 2.0).y
        return abs(float(y) - math.exp(math.sin(2.0)))

    observed = math.log2(error(40) / error(80))
    assert abs(observed - order) < 0.3, observed


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


def test_torchdiffeq_options_are_checked():
    with pytest.raises(OptionError, match="method"):
        _solver("rk45")
    with pytest.raises(OptionError, match="unknown option 'method'"):
        sdeplug.create("ode_solver", "dopri5", method="rk4")
    assert sdeplug.create("ode_solver", "dopri5").order == 5
    assert _solver("rk4").adaptive is False and _solver("bosh3").order == 3


@pytest.mark.parametrize("sde_name", SDES)
@pytest.mark.parametrize("solver, options", [("dopri5", {}), ("rk4", {"steps": 50})])
def test_torchdiffeq_ode_sampler_recovers_the_mixture(mixture, data_null, sde_name, solver, options):
    sde = sdeplug.create("sde", sde_name)
    result = sample_ode(sde, mixture.score_model(sde), (N, 2), solver=solver, solver_options=options,
                        generator=torch.Generator().manual_seed(0))
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"{sde_name} {solver}")


# One SRK step per grid interval, with and without correctors, is covered for every SDE by
# the predictor x corrector contract in test_sampling.py.


@pytest.mark.parametrize("sde_name", SDES)
def test_torchsde_adaptive_over_the_whole_interval_recovers_the_mixture(mixture, data_null, sde_name):
    sde = sdeplug.create("sde", sde_name)
    options = {"method": "srk", "adaptive": True, "dt": 0.01}  # [eps, T] in one sdeint call
    result = sample_pc(sde, mixture.score_model(sde), (N, 2), predictor="torchsde", predictor_options=options,
                       corrector="none", steps=1, generator=torch.Generator().manual_seed(0))
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"{sde_name} adaptive torchsde")


@pytest.mark.parametrize("method", sorted(set(SDE_METHODS) - {"srk"}))
def test_every_torchsde_method_recovers_the_mixture(mixture, data_null, method):
    sde = sdeplug.create("sde", "vp")
    result = sample_pc(sde, mixture.score_model(sde), (N, 2), predictor="torchsde", predictor_options={"method": method},
                       corrector="none", steps=400, generator=torch.Generator().manual_seed(0))
    assert_same_law(result.x, lambda n, g: mixture.sample(n, g), null=data_null, what=f"torchsde {method}")


def test_torchsde_is_seeded_and_handles_image_shapes():
    from sdeplug.oracle import random_mixture

    mixture = random_mixture(16, 3, seed=5, event_shape=(1, 4, 4))
    sde = sdeplug.create("sde", "vp")

    def run(seed):
        return sample_pc(sde, mixture.score_model(sde), (64, 1, 4, 4), predictor="torchsde", corrector="none",
                         steps=20, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).x

    a, b = run(1), run(1)
    assert a.shape == (64, 1, 4, 4) and a.dtype == torch.float64
    assert torch.equal(a, b) and not torch.allclose(a, run(2))


def test_torchsde_options_are_checked():
    sde = sdeplug.create("sde", "vp")
    with pytest.raises(OptionError, match="method"):
        sdeplug.create("predictor", "torchsde", sde, lambda x, t: x, method="rk4")
    with pytest.raises(OptionError, match="dt must be a positive number"):
        sdeplug.create("predictor", "torchsde", sde, lambda x, t: x, dt=-0.1)
