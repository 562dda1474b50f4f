"""The testing kit's statistics-free probes catch what its statistical checks let through: a
stochastic option that does nothing, a corrector that does nothing, a float64 step computed in
float32, a step coupled across the batch; and an SDE's fault is reported as the SDE's."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

import sdeplug
from sdeplug.testing.contracts import ContractError, check_corrector, check_predictor, check_sde
from sdeplug_fast.ddim import DDIM
from sdeplug_reference import VPSDE, Langevin, ReverseDiffusion


@attrs.frozen
class DDIMIgnoringEta(DDIM):
    """Declares weak order 1 for eta > 0 (the property it inherits) but always steps as eta = 0."""

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        return DDIM.step(attrs.evolve(self, eta=0.0), x, t, t_next, state, generator, jumped=jumped)


def test_a_stochastic_option_that_does_nothing_is_caught():
    with pytest.raises(ContractError) as caught:
        check_predictor(DDIMIgnoringEta, sdes=["vp"], options={"eta": 1.0}, steps=20)
    message = str(caught.value)
    assert "declares weak_order 1" in message and "same output with generators seeded 1 and 2" in message
    assert "draws no noise from `generator`" in message


class DeterministicButNoisy(ReverseDiffusion):
    """Claims to be a deterministic step of order 1 on the flow, but draws noise."""

    ode_order = 1.0

    @property
    def weak_order(self):
        return None


def test_a_step_that_declares_itself_deterministic_but_draws_noise_is_caught():
    with pytest.raises(ContractError, match="declares ode_order 1 .*changes with the generator's seed"):
        check_predictor(DeterministicButNoisy, sdes=["vp"], steps=20)


class LazyCorrector(sdeplug.Corrector):
    name = "lazy"

    def __init__(self, sde, score):
        self.sde, self.score = sde, score

    def step(self, x, t, generator=None):
        return x


def test_a_corrector_that_returns_x_unchanged_fails_unless_it_declares_identity():
    with pytest.raises(ContractError, match="step\\(\\) returns x unchanged .*must declare identity = True"):
        check_corrector(LazyCorrector, sdes=["vp"], sweeps=2)

    class DeclaredLazy(LazyCorrector):
        identity = True

    assert "declared identity" in str(check_corrector(DeclaredLazy, sdes=["vp"], sweeps=2))


class InPlaceLangevin(Langevin):
    """The right step, written with ``x +=``: it overwrites the caller's x and returns the same
    tensor, which every check comparing the step's output with its input would read as "unchanged"."""

    def step(self, x, t, generator=None):
        x += super().step(x.clone(), t, generator) - x
        return x


class InPlaceReverseDiffusion(ReverseDiffusion):
    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        new, state = super().step(x, t, t_next, state, generator, jumped=jumped)
        x.copy_(new)
        return x, state


def test_a_step_that_overwrites_its_input_is_named_for_it():
    with pytest.raises(ContractError, match="step changed the x it was given in place"):
        check_corrector(InPlaceLangevin, sdes=["vp"], sweeps=2)
    with pytest.raises(ContractError, match="step changed the x it was given in place"):
        check_predictor(InPlaceReverseDiffusion, sdes=["vp"], steps=20)


@attrs.frozen
class Float32Inside(ReverseDiffusion):
    """Steps in float32 and casts back: every statistical check at 1% passes."""

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        out, state = ReverseDiffusion.step(self, x.float(), t.float(), t_next.float(), state, generator)
        return out.to(x.dtype), state


def test_a_float64_step_computed_in_float32_is_caught():
    with pytest.raises(ContractError) as caught:
        check_predictor(Float32Inside, sdes=["vp"], options={"probability_flow": True}, steps=20)
    message = str(caught.value)
    assert "perturbation of x of 1e-09 relative" in message and "computed in float32" in message


@attrs.frozen
class BatchClippedLangevin(Langevin):
    """Per-sample Langevin whose move is clipped by the norm of the whole batch's move."""

    def step(self, x, t, generator=None):
        y = Langevin.step(self, x, t, generator)
        move = y - x
        return x + move * torch.clamp(3.0 / move.norm(), max=1.0)


def test_a_corrector_coupled_across_the_batch_is_caught_naming_the_coupling():
    with pytest.raises(ContractError) as caught:
        check_corrector(BatchClippedLangevin, sdes=["vp"], options={"norm": "sample"}, sweeps=2)
    message = str(caught.value)
    assert "a sample's step depends on the other samples in the batch" in message
    assert "declare batch_coupled = True" in message


@pytest.mark.slow
def test_the_papers_batch_langevin_declares_its_coupling_and_the_kit_says_it_skipped_the_probe():
    report = check_corrector("langevin", sdes=["vp"], sweeps=2)
    assert any("batch independence (the part declares batch_coupled = True)" in s for s in report.skipped)
    sample_rule = check_corrector("langevin", sdes=["vp"], options={"norm": "sample", "step_rule": "grid"}, sweeps=2)
    assert any("ignores the rest of the batch" in p for p in sample_rule.passed)


class PriorOverTheBatch(VPSDE):
    """prior_logp summed over the whole batch, not per sample: a density off by e^75000."""

    name = "prior_over_the_batch"

    def prior_logp(self, z):
        flat = z.reshape(len(z), -1)
        total = -0.5 * (flat**2).sum() - 0.5 * flat.numel() * math.log(2 * math.pi)
        return total.expand(len(z))


def test_a_prior_normalised_over_the_batch_is_named_not_a_crash_of_the_kit():
    with pytest.raises(ContractError, match="prior_logp of a sample depends on the rest of the batch"):
        check_sde(PriorOverTheBatch, examples=1, n_paths=2000)


class PriorTimesAThousand(VPSDE):
    """A density off by a huge constant factor: the check must report it, not overflow."""

    name = "prior_times"

    def prior_logp(self, z):
        return VPSDE.prior_logp(self, z) - 1000.0


def test_a_prior_off_by_a_huge_factor_is_reported_in_the_log_domain():
    with pytest.raises(ContractError, match=r"log E = \+1000\.\d+ nats"):
        check_sde(PriorTimesAThousand, examples=1, n_paths=2000)


class BrokenInverse(VPSDE):
    """A t_from_log_snr missing a factor of 2."""

    name = "broken_inverse"

    def t_from_log_snr(self, log_snr):
        return VPSDE.t_from_log_snr(self, 2 * log_snr)


def test_a_predictor_checked_on_a_broken_sde_is_not_blamed_for_it():
    with pytest.raises(ContractError) as caught:
        check_predictor("dpmpp_2m", sdes=[BrokenInverse()], steps=20)
    message = str(caught.value)
    assert message.startswith("predictor 'dpmpp_2m' was not checked on BrokenInverse")
    assert "that SDE fails its own contract first: t_from_log_snr is not the inverse of log_snr" in message


@pytest.mark.slow
def test_what_the_one_liner_did_not_check_is_a_warning_pytest_shows():
    """A skipped check is not only in captured output: the one-liner's test warns, and pytest
    lists it in its warnings summary."""
    from sdeplug.testing import ContractSkipWarning, contract_tests

    test = contract_tests("reference", sdes=["vp"])
    with pytest.warns(ContractSkipWarning, match="corrector 'langevin', not checked: .*batch independence"):
        test("corrector", "langevin")


@attrs.frozen
class DDIMScoreAtTNext(DDIM):
    """Evaluates the score of x at t_next, the time it steps to, instead of at t."""

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        score = self.score
        late = attrs.evolve(self, score=lambda y, _: score(y, t_next))
        return DDIM.step(late, x, t, t_next, state, generator, jumped=jumped)


@pytest.mark.parametrize("sde", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_predictor_that_evaluates_the_score_at_t_next_is_caught_on_every_sde(sde, eta):
    with pytest.raises(
        ContractError,
        match=r"predictor .* step 1 of 5 .*evaluates the score of the x it was given at t = \S+, below t: .*"
        r"score\(x, t_next\) is the time off by one step",
    ):
        check_predictor(DDIMScoreAtTNext, sdes=[sde], options={"eta": eta}, steps=20)
