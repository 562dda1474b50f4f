"""The testing kit catches broken parts, and says where the fault is."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdeplug
from sdeplug.interfaces import ReverseSDE
from sdeplug.tensors import per_sample, randn_like
from sdeplug.testing import contracts, strategies
from sdeplug.testing.contracts import (
    ContractError,
    check_corrector,
    check_ode_solver,
    check_predictor,
    check_sde,
)
from sdeplug_reference import VESDE, VPSDE, Euler, EulerMaruyama, Heun, Langevin


@attrs.frozen
class _FlippedReverse(ReverseSDE):
    def drift(self, x, t):
        g2 = per_sample(self.sde.diffusion(t) ** 2, x)
        return self.sde.drift(x, t) + g2 * self.score(x, t) * self._score_weight


class WrongReverseSign(VPSDE):
    name = "wrong_reverse_sign"

    def reverse(self, score, probability_flow=False):
        return _FlippedReverse(self, score, probability_flow)


class StdOffByAFactor(VPSDE):
    name = "std_off"

    def sigma(self, t):
        return 1.2 * VPSDE.sigma(self, t)


class PriorWithoutNormaliser(VPSDE):
    name = "no_normaliser"

    def prior_logp(self, z):
        return -0.5 * sdeplug.sum_except_batch(z**2)


def test_a_flipped_reverse_drift_is_caught():
    with pytest.raises(ContractError, match="the sign of the score term is flipped"):
        check_sde(WrongReverseSign)


def test_a_marginal_std_off_by_a_factor_is_caught():
    with pytest.raises(ContractError, match=r"marginal_prob std at t = .* times the std of .* paths simulated"):
        check_sde(StdOffByAFactor)


@pytest.mark.slow
def test_a_prior_without_its_normaliser_is_caught():
    with pytest.raises(ContractError, match="disagree.*the normalising constant of prior_logp is missing or wrong"):
        check_sde(PriorWithoutNormaliser)


class PriorSamplesTooWide(VPSDE):
    name = "prior_samples_too_wide"

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return 2 * super().prior_sampling(shape, generator, device, dtype)


class PriorDensityTooWide(VPSDE):
    name = "prior_density_too_wide"

    def prior_logp(self, z):
        return super().prior_logp(z / 2) - z[0].numel() * math.log(2)


def test_the_prior_check_says_which_side_has_the_wrong_scale():
    with pytest.raises(ContractError, match="prior_sampling is at fault: its samples have std 2"):
        contracts._check_prior(PriorSamplesTooWide())
    with pytest.raises(ContractError, match="prior_logp is at fault: it is the density of std 2"):
        contracts._check_prior(PriorDensityTooWide())
    with pytest.raises(ContractError, match="the normalising constant of prior_logp is missing or wrong"):
        contracts._check_prior(PriorWithoutNormaliser())
    contracts._check_prior(VPSDE())  # the right prior passes


class VEClosedForm(VESDE):
    """VE with t_from_log_snr in closed form: log_snr = -2 log sigma(t), sigma = sigma_min r^t."""

    name = "ve_closed_form"

    def t_from_log_snr(self, log_snr):
        return (-0.5 * log_snr - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


class VEMissingHalf(VESDE):
    name = "ve_missing_half"

    def t_from_log_snr(self, log_snr):
        return (-log_snr - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


def test_an_overridden_t_from_log_snr_is_checked():
    contracts._check_t_from_log_snr(VEClosedForm())
    with pytest.raises(ContractError, match="t_from_log_snr is not the inverse of log_snr.*factors of 2"):
        contracts._check_t_from_log_snr(VEMissingHalf())


@pytest.mark.slow
def test_the_sde_contract_catches_a_t_from_log_snr_missing_a_factor():
    """Through the whole SDE contract, as the one-liner runs it (the correct closed form
    passing is shown by the test above, without the contract's costly sampling checks)."""
    with pytest.raises(ContractError, match="t_from_log_snr is not the inverse of log_snr"):
        check_sde(VEMissingHalf, examples=2, n_paths=2000)


class ClaimsSecondOrder(EulerMaruyama):
    """Euler-Maruyama is weak order 1; this one claims 2."""

    name = "claims_second_order"
    weak_order = 2.0


class NoiseScaledByDt(EulerMaruyama):
    """An inconsistent step: noise g |dt| instead of g sqrt(|dt|)."""

    name = "noise_dt"

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        dt = t_next - t
        mean = x + self._reverse.drift(x, t) * per_sample(dt, x)
        return mean + per_sample(self._reverse.diffusion(t) * (-dt), x) * randn_like(x, generator), None


@pytest.mark.slow
def test_a_step_of_lower_order_than_declared_is_caught():
    vp = sdeplug.create("sde", "vp")
    with pytest.raises(ContractError, match=r"observed weak order 1\.\d+ is below its declared weak_order 2"):
        check_predictor(ClaimsSecondOrder, sdes=[vp])


def test_an_inconsistent_step_is_caught():
    vp = sdeplug.create("sde", "vp")
    with pytest.raises(ContractError, match="does not recover the data law.*does not follow the reverse SDE"):
        check_predictor(NoiseScaledByDt, sdes=[vp])


class HalfNoiseLangevin(Langevin):
    """Langevin with noise sqrt(eps) instead of sqrt(2 eps): it shrinks p_t."""

    name = "half_noise_langevin"

    def step(self, x, t, generator=None):
        grad = self.score(x, t)
        step = 2 * (self.snr * torch.sqrt(torch.tensor(float(x[0].numel()))) / grad.norm(dim=-1).mean()) ** 2
        return x + step * grad + torch.sqrt(step) * randn_like(x, generator)


def test_a_corrector_that_does_not_keep_p_t_is_caught():
    with pytest.raises(ContractError, match="does not leave p_t invariant"):
        check_corrector(HalfNoiseLangevin, sdes=[sdeplug.create("sde", "vp")])


class FakeHeun(Euler):
    name = "fake_heun"
    order = 2


class Miscounting(Heun):
    name = "miscounting"

    def solve(self, F, y0, t0, t1, grid=None):
        solution = super().solve(F, y0, t0, t1, grid)
        return sdeplug.ODESolution(solution.y, solution.nfe // 2)


def test_broken_ode_solvers_are_caught():
    with pytest.raises(ContractError, match=r"observed order 1\.\d+ .* below its declared order 2"):
        check_ode_solver(FakeHeun)
    with pytest.raises(ContractError, match=r"reported nfe = \d+ but F was called \d+ times"):
        check_ode_solver(Miscounting)
    # Adams-Bashforth of order 11 (torchdiffeq's default for explicit_adams) is accurate on
    # smooth problems but unstable on the stiff directions of the probability flow
    with pytest.raises(ContractError, match=r"unstable on dy/dt = -5 y with 100 steps; y\(t1\) / y\(t0\) = "):
        check_ode_solver("explicit_adams", options={"max_order": 12})


def test_reports_say_what_was_checked_and_what_did_not_apply():
    report = check_ode_solver("dopri5")
    assert "ode_solver 'dopri5'" in str(report) and any("order of convergence" in s for s in report.skipped)


def test_contract_tests_name_a_missing_plugin():
    with pytest.raises(LookupError, match="no parts registered by plugin.*nonexistent.*pip install -e"):
        contracts.contract_tests("nonexistent")


@settings(max_examples=20, derandomize=True, database=None, deadline=None)
@given(sde=strategies.sdes(), data=st.data())
def test_strategies_build_valid_objects(sde, data):
    assert isinstance(sde, sdeplug.SDE)
    grid = data.draw(strategies.time_grids(sde))
    assert grid[0] == sde.T and abs(float(grid[-1]) - sde.default_eps) < 1e-12 and bool((grid.diff() < 0).all())
    t = data.draw(strategies.times(sde))
    assert sde.default_eps <= t <= sde.T
    mixture = data.draw(strategies.mixtures())
    x = mixture.sample(4, torch.Generator().manual_seed(data.draw(strategies.seeds)))
    assert torch.isfinite(mixture.log_prob(x)).all()


# A contract that checks nothing fails (issue 14, first part) --------------------------------


class OwnVP(VPSDE):
    """A plugin's own SDE: VP under another class and name."""

    name = "own_vp"


@attrs.frozen
class GarbageForOwnSDE(sdeplug.Predictor):
    """Claims only its plugin's own SDE and returns 123 everywhere."""

    name = "garbage_for_own_sde"
    sde_types = (OwnVP,)
    sde: sdeplug.SDE
    score: object

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        return torch.full_like(x, 123.0), None


def test_a_predictor_that_no_registered_sde_fits_fails_instead_of_passing_unchecked():
    with pytest.raises(ContractError, match=r"was checked against no SDE.*sde_types = OwnVP.*pass sdes=\[\.\.\.\]"):
        check_predictor(GarbageForOwnSDE)


def test_the_one_liner_pairs_a_plugins_predictor_with_the_plugins_own_sde():
    class Plugin:
        @sdeplug.hookimpl
        def register_sdes(self, register):
            register(OwnVP)

        @sdeplug.hookimpl
        def register_predictors(self, register):
            register(GarbageForOwnSDE)

    sdeplug.register_plugin(Plugin(), "garbage_plugin")
    assert contracts.plugin_parts("garbage_plugin") == [("sde", "own_vp"), ("predictor", "garbage_for_own_sde")]
    with pytest.raises(ContractError, match="predictor 'garbage_for_own_sde' with OwnVP.*does not recover"):
        contracts.check_part("predictor", "garbage_for_own_sde")


@pytest.mark.parametrize("form", ["name", "class", "instance"])
def test_sdes_are_given_by_name_class_or_instance(form):
    spec = {"name": "vp", "class": VPSDE, "instance": VPSDE()}[form]
    report = contracts.check_time_grid("logsnr", sdes=[spec])
    assert [line.split(":")[0] for line in report.passed] == ["VPSDE"]
    with pytest.raises(ContractError, match="was checked against no SDE"):
        contracts.check_time_grid("logsnr", sdes=[])
    with pytest.raises(sdeplug.UnknownPartError, match="karras_ve"):
        contracts.check_time_grid("logsnr", sdes=["karras_ve"])
