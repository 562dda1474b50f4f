"""Tuned time grids: ``sdeplug.grid_tuning``, the ``tuned`` TimeGrid and ``sdeplug tune-grid``.

The promise: the tuned grid is never worse than the grid it starts from on validation draws
kept apart from the pilot draws it was fitted to (distance to an accurate solve of the same
prior draws), more steps are never worse than fewer, no step is near-empty, and a grid is
used only for what it was tuned for unless the user says otherwise; it works for any
deterministic predictor and any LinearSDE, a third party's too.
"""

from __future__ import annotations

import json
import math
import re

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdeplug
from sdeplug import LinearSDE, OptionError, Predictor
from sdeplug.app.cli import main
from sdeplug.grid_tuning import tune_grid
from sdeplug.grids import fractions_of, grid_from_fractions, load_grid_file, resolve_grid, save_grid_file
from sdeplug.oracle import random_mixture
from sdeplug.sampling import sample_pc

F64 = torch.float64


def _problem(sde_name: str, seed: int = 11):
    sde = sdeplug.create("sde", sde_name)
    return sde, random_mixture(2, 5, seed=seed).score_model(sde)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("predictor", ["dpmpp_2m", "unipc"])
def test_the_tuned_grid_beats_its_start_on_the_validation_draws(sde_name, predictor):
    sde, score = _problem(sde_name)
    result = tune_grid(sde, score, (2,), 4, predictor=predictor, pilot=128, sweeps=2)
    assert result.validation_error < 0.8 * result.validation_error_start  # the search found something
    assert result.won != "start" and result.won in {c.name for c in result.candidates}
    assert result.times.shape == (5,) and float(result.times[0]) == sde.T and float(result.times[-1]) == sde.default_eps
    assert bool((result.times.diff() < 0).all())
    # the reported error is what the tuned grid gives, recomputed independently
    assert result.score_evaluations > 0 and result.seconds > 0


def test_a_grid_that_cannot_be_improved_is_returned_unchanged():
    """Two steps on a single Gaussian: the error of DDIM is already tiny; whatever the search
    finds, the result is never worse than the start, and the start is kept if nothing helps."""
    sde = sdeplug.create("sde", "vp")
    score = random_mixture(2, 1, seed=0).score_model(sde)
    result = tune_grid(sde, score, (2,), 1, predictor="dpmpp_2m", pilot=32)
    torch.testing.assert_close(result.times, result.start)  # one step: no interior time to move
    assert result.won == "start" and result.validation_error == result.validation_error_start


def test_the_tuned_grid_is_what_sampling_with_it_gives():
    sde, score = _problem("vp")
    result = tune_grid(sde, score, (2,), 3, predictor="unipc", pilot=64, sweeps=1)
    rule = sdeplug.create("time_grid", "tuned", fractions=list(result.fractions))
    times = rule.times(sde, 3, sde.default_eps, dtype=F64)
    torch.testing.assert_close(times, result.times, rtol=1e-12, atol=1e-12)


def test_stochastic_predictors_are_refused():
    sde, score = _problem("vp")
    with pytest.raises(ValueError, match="deterministic predictor"):
        tune_grid(sde, score, (2,), 3, predictor="euler_maruyama", pilot=16)
    tune_grid(  # the same predictor on the probability-flow ODE is deterministic
        sde, score, (2,), 2, predictor="euler_maruyama", predictor_options={"probability_flow": True}, pilot=16
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer; got 0"),
        ({"pilot": 1}, "pilot must be an integer >= 2"),
        ({"sweeps": -1}, r"sweeps must be an integer >= 0 \(0 keeps the start grid\); got -1"),
        ({"sweeps": 2.5}, "sweeps must be an integer >= 0"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*63\); got -1"),
        ({"reference_tolerance": 0.0}, "reference_tolerance must be a positive number .*; got 0.0"),
        ({"reference_tolerance": float("nan")}, "reference_tolerance must be a positive number"),
        ({"reference_tolerance": "1e-6"}, "reference_tolerance must be a positive number"),
    ],
)
def test_bad_tuning_settings_are_refused_naming_the_setting(option, message):
    sde, score = _problem("vp")
    settings = {"steps": 3, "pilot": 16, **option}
    with pytest.raises(ValueError, match=message) as refused:
        tune_grid(sde, score, (2,), settings.pop("steps"), **settings)
    assert "\n" not in str(refused.value)


def test_no_sweeps_keep_the_start_grid():
    sde, score = _problem("vp")
    result = tune_grid(sde, score, (2,), 3, pilot=16, sweeps=0)
    start = resolve_grid(sde, "logsnr", 3, sde.default_eps, dtype=F64)
    torch.testing.assert_close(result.times, start, rtol=1e-12, atol=1e-12)
    assert result.sweeps == 0


@attrs.frozen
class CosineSDE(LinearSDE):
    """A third party's LinearSDE: the cosine schedule, alpha = cos(pi t / 2), sigma = sin(pi t / 2)
    (t in [0, 1 - 1e-3]: sigma(T) is 1 to 6 digits); not registered."""

    name = "cosine_test"
    T = 0.999
    default_eps = 1e-3

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * t)

    def drift(self, x, t):
        return sdeplug.per_sample(-0.5 * math.pi * torch.tan(0.5 * math.pi * t), x) * x

    def diffusion(self, t):
        return torch.sqrt(math.pi * torch.tan(0.5 * math.pi * t))

    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return sdeplug.randn(shape, generator, device, dtype)

    def prior_logp(self, z):
        return -0.5 * (z**2).reshape(len(z), -1).sum(1) - 0.5 * z[0].numel() * math.log(2 * math.pi)


@attrs.define
class ThirdPartyDDIM(Predictor):
    """A third party's deterministic predictor: DDIM written from alpha and sigma alone."""

    name = "ddim_test"
    sde_types = (LinearSDE,)
    sde: LinearSDE
    score: object

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        a, s, a_n, s_n = (
            sdeplug.per_sample(v, x)
            for v in (self.sde.alpha(t), self.sde.sigma(t), self.sde.alpha(t_next), self.sde.sigma(t_next))
        )
        denoised = (x + s**2 * self.score(x, t)) / a
        return a_n * denoised + s_n * (x - a * denoised) / s, state


def test_a_third_partys_sde_and_predictor_can_be_tuned():
    sde = CosineSDE()
    score = random_mixture(2, 4, seed=5).score_model(sde)
    result = tune_grid(sde, score, (2,), 4, predictor=ThirdPartyDDIM, pilot=128, sweeps=2)
    assert result.validation_error < result.validation_error_start
    assert result.predictor == "ddim_test"


def test_fractions_stretch_to_other_step_counts_and_keep_the_ends():
    sde = sdeplug.create("sde", "ve")
    fractions = [0.0, 0.1, 0.5, 0.55, 1.0]
    for steps in (1, 2, 4, 9, 40):
        times = grid_from_fractions(sde, fractions, steps, sde.default_eps)
        assert times.shape == (steps + 1,)
        assert float(times[0]) == sde.T and float(times[-1]) == sde.default_eps
        assert bool((times.diff() < 0).all())
    at_four = grid_from_fractions(sde, fractions, 4, sde.default_eps)
    assert fractions_of(sde, at_four) == pytest.approx(fractions, abs=1e-12)
    at_eight = fractions_of(sde, grid_from_fractions(sde, fractions, 8, sde.default_eps))
    assert at_eight[::2] == pytest.approx(fractions, abs=1e-12)  # the tuned points, with midpoints between
    assert at_eight[1] == pytest.approx(0.05, abs=1e-12)


def test_the_tuned_grid_without_options_is_the_log_snr_grid():
    sde = sdeplug.create("sde", "vp")
    ours = sdeplug.create("time_grid", "tuned").times(sde, 7, 1e-3, dtype=F64)
    torch.testing.assert_close(ours, sdeplug.create("time_grid", "logsnr").times(sde, 7, 1e-3, dtype=F64))


def test_grid_files_round_trip_and_bad_ones_are_refused_in_one_line(tmp_path):
    path = save_grid_file(tmp_path / "g.json", {"fractions": [0.0, 0.3, 1.0], "steps": 2})
    assert load_grid_file(path)["fractions"] == [0.0, 0.3, 1.0]
    sde = sdeplug.create("sde", "vp")
    rule = sdeplug.create("time_grid", "tuned", file=str(path))
    x = sample_pc(sde, lambda x, t: -x, (4, 2), predictor="dpmpp_2m", corrector="none", grid=rule, steps=2).x
    assert x.shape == (4, 2)
    cases = {
        "missing.json": (None, "does not exist"),
        "bad.json": ("{not json", "not readable JSON"),
        "other.json": (json.dumps({"fractions": [0, 1]}), "not a tuned grid file"),
        "order.json": (json.dumps({"format": "sdeplug-tuned-grid", "fractions": [0, 0.6, 0.4, 1]}), "increase"),
        "ends.json": (json.dumps({"format": "sdeplug-tuned-grid", "fractions": [0.1, 1]}), "from exactly 0"),
        "nan.json": ('{"format": "sdeplug-tuned-grid", "fractions": [0, NaN, 1]}', "finite"),
    }
    for name, (text, message) in cases.items():
        if text is not None:
            (tmp_path / name).write_text(text)
        with pytest.raises(OptionError, match=message) as caught:
            sdeplug.create("time_grid", "tuned", file=str(tmp_path / name))
        assert "\n" not in str(caught.value)
    with pytest.raises(OptionError, match="not both"):
        sdeplug.create("time_grid", "tuned", file=str(path), fractions=[0.0, 1.0])


CONFIG = """
[sde]
name = "{sde}"

[model]
name = "oracle"

[data]
name = "ring8"

[sampler]
kind = "pc"
steps = 4
denoise = false

[sampler.predictor]
name = "dpmpp_2m"

[sampler.corrector]
name = "{corrector}"

[sample]
num = 500
seed = 3

[output]
dir = "{out}"
"""


@pytest.mark.slow
def test_tune_grid_command_writes_a_grid_that_sampling_uses(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(sde="ve", corrector="none", out=tmp_path / "run"))
    assert main(["tune-grid", str(config), "--steps", "4", "--pilot", "64", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    grid_file = tmp_path / "run" / "grid-dpmpp_2m-4.json"
    assert "score evaluations" in printed and str(grid_file) in printed
    content = load_grid_file(grid_file)
    assert content["steps"] == 4 and len(content["times"]) == 5
    error = content["error_to_the_reference"]
    assert error["validation"]["tuned"] <= error["validation"]["start"]
    assert content["won"] in {c["name"] for c in content["candidates"]}
    assert content["tuned_for"]["predictor"]["name"] == "dpmpp_2m" and content["cost"]["score_evaluations"] > 0
    tuned = tmp_path / "tuned.toml"
    text = config.read_text().replace(
        "[sampler.predictor]", f'[sampler.grid]\nname = "tuned"\nfile = "{grid_file}"\n\n[sampler.predictor]'
    )
    tuned.write_text(text)
    assert main(["sample", str(tuned), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["nfe_per_sample"] == 4


@pytest.mark.parametrize(
    "change, message",
    [
        ({"corrector": "langevin"}, "corrector"),
        ({"sde": "vp", "args": ["--steps", "0"]}, "--steps"),
        ({"sde": "vp", "args": ["--steps", "3", "--pilot", "1"]}, "--pilot"),
    ],
)
def test_tune_grid_refuses_bad_input_in_one_line(tmp_path, capsys, change, message):
    config = tmp_path / "c.toml"
    config.write_text(
        CONFIG.format(sde=change.get("sde", "vp"), corrector=change.get("corrector", "none"), out=tmp_path / "run")
    )
    assert main(["tune-grid", str(config), *change.get("args", ["--steps", "3"]), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@st.composite
def _fractions(draw):
    """Increasing fractions at least 1e-6 apart (closer ones may round to one time: refused below)."""
    inner = draw(st.lists(st.integers(1_000, 999_000), min_size=0, max_size=8, unique=True))
    return [0.0, *sorted(i / 1_000_000 for i in inner), 1.0]


@given(
    fractions=_fractions(),
    steps=st.integers(1, 60),
    name=st.sampled_from(["ve", "vp", "subvp"]),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_a_fractions_grid_is_a_valid_grid_for_any_steps(fractions, steps, name, eps):
    """Any increasing fractions, any step count, any bundled LinearSDE: steps + 1 strictly
    decreasing times from exactly T to exactly eps, and at the tuned count the fractions back."""
    sde = sdeplug.create("sde", name)
    times = grid_from_fractions(sde, fractions, steps, eps)
    assert times.shape == (steps + 1,) and float(times[0]) == sde.T and float(times[-1]) == eps
    assert bool((times.diff() < 0).all())
    if steps == len(fractions) - 1 and min(b - a for a, b in zip(fractions, fractions[1:])) > 1e-9:
        assert fractions_of(sde, times) == pytest.approx(fractions, abs=1e-9)


def test_a_grid_tuned_for_one_sde_serves_another_with_its_own_ends(tmp_path):
    """The file holds fractions of the log-SNR range, not times: the same file places a grid
    from T to eps of whichever SDE and eps it is used with."""
    path = save_grid_file(tmp_path / "g.json", {"fractions": [0.0, 0.4, 0.7, 1.0]})
    rule = sdeplug.create("time_grid", "tuned", file=str(path))
    for name, eps in (("vp", 1e-3), ("ve", 1e-5), ("subvp", 0.01)):
        sde = sdeplug.create("sde", name)
        times = rule.times(sde, 3, eps, dtype=F64)
        assert float(times[0]) == sde.T and float(times[-1]) == eps
        assert fractions_of(sde, times) == pytest.approx([0.0, 0.4, 0.7, 1.0], abs=1e-9)


def test_a_grid_file_whose_times_were_edited_is_refused_not_ignored(tmp_path):
    """The grid is placed by the file's fractions; times that no longer match them under the
    SDE it was tuned for were edited, and would be ignored without a word."""
    import sdeplug
    from sdeplug.grids import grid_from_fractions, load_grid_file, save_grid_file

    sde = sdeplug.create("sde", "vp")
    fractions = [0.0, 0.3, 0.7, 1.0]
    times = grid_from_fractions(sde, fractions, 3, 1e-3).tolist()
    content = {"steps": 3, "fractions": fractions, "times": times, "tuned_for": {"sde": {"name": "vp"}}}
    save_grid_file(tmp_path / "grid.json", content)
    assert load_grid_file(tmp_path / "grid.json")["fractions"] == fractions
    times[1] *= 0.9
    save_grid_file(tmp_path / "edited.json", {**content, "times": times})
    with pytest.raises(ValueError, match="are not its fractions under the SDE it was tuned for"):
        load_grid_file(tmp_path / "edited.json")


def test_fractions_too_close_to_place_two_times_are_refused_naming_them():
    """Found by the dev profile: fractions 1e-16 apart give one time twice, a step of length 0."""
    sde = sdeplug.create("sde", "ve")
    with pytest.raises(ValueError, match="log-SNR fractions 0.998999.* and 0.999 are too close to place two distinct"):
        grid_from_fractions(sde, [0.0, 0.9989999999999999, 0.999, 1.0], 3, 0.001)


# What the tuner guarantees ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("sde_name", "seed"), [("vp", 3), ("ve", 4), ("subvp", 5)])
def test_more_steps_are_never_worse_on_validation_and_no_step_is_near_empty(sde_name, seed):
    """Several budgets tuned in one call: each result is no worse than its start and than the
    budget below on the validation draws, and every step of a tuned grid spans at least
    min_gap / K of the log-SNR range (0.1 / K by default)."""
    import warnings

    from sdeplug.grid_tuning import BudgetOrderWarning, tune_grids

    sde = sdeplug.create("sde", sde_name)
    score = random_mixture(2, 6, seed=seed, std_range=(0.05, 0.3), spread=3.0).score_model(sde)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BudgetOrderWarning)
        results = tune_grids(sde, score, 2, [2, 3, 4, 5], predictor="dpmpp_2m", pilot=64, sweeps=2, seed=seed)
    assert [r.steps for r in results] == [2, 3, 4, 5]
    for below, above in zip(results, results[1:]):
        assert above.validation_error <= below.validation_error
    for r in results:
        assert r.validation_error <= r.validation_error_start
        if r.won != "start":
            gaps = [b - a for a, b in zip(r.fractions, r.fractions[1:])]
            assert min(gaps) >= r.min_gap / r.steps * (1 - 1e-9), (r.won, r.fractions)


def test_the_start_wins_when_the_search_only_fits_the_pilot_draws():
    """With 2 pilot draws the search fits them; judged on 256 others the winner is whatever is
    best there, and it is never worse than the start."""
    sde, score = _problem("ve", seed=21)
    result = tune_grid(sde, score, 2, 4, predictor="unipc", pilot=2, validation=256, sweeps=1)
    best = min(c.validation_error for c in result.candidates)
    assert result.validation_error == best <= result.validation_error_start
    start = next(c for c in result.candidates if c.name == "start")
    assert start.validation_error == result.validation_error_start


def test_an_int_shape_is_one_vector_and_a_bad_shape_is_one_line():
    sde, score = _problem("vp")
    assert tune_grid(sde, score, 2, 2, pilot=8, sweeps=0).times.shape == (3,)
    for shape in (0, "2", (2, -1), 2.5):
        with pytest.raises(ValueError, match="event_shape must be one sample's shape") as refused:
            tune_grid(sde, score, shape, 2, pilot=8, sweeps=0)
        assert "\n" not in str(refused.value)


def test_a_tuning_result_is_a_grid_for_its_own_predictor_only():
    sde, score = _problem("vp")
    result = tune_grid(sde, score, 2, 3, predictor="unipc", pilot=16, sweeps=1)
    x = sample_pc(sde, score, (8, 2), predictor="unipc", corrector="none", grid=result, denoise=False)
    assert x.nfe == 3
    torch.testing.assert_close(x.grid, result.times.float())
    with pytest.raises(ValueError, match="tuned for predictor 'unipc', not 'dpmpp_2m'.*grid=result.times") as refused:
        sample_pc(sde, score, (8, 2), predictor="dpmpp_2m", corrector="none", grid=result)
    assert "\n" not in str(refused.value)
    sample_pc(sde, score, (8, 2), predictor="dpmpp_2m", corrector="none", grid=result.times)  # said explicitly


def test_a_grid_file_is_refused_for_another_sde_or_eps_and_warns_at_another_step_count(tmp_path):
    from sdeplug.grids import GridStepsWarning

    times = grid_from_fractions(sdeplug.create("sde", "vp"), [0.0, 0.4, 0.7, 1.0], 3, 1e-3).tolist()
    content = {
        "steps": 3,
        "fractions": [0.0, 0.4, 0.7, 1.0],
        "times": times,
        "tuned_for": {"sde": {"name": "vp", "beta_max": 20.0}, "predictor": {"name": "unipc"}, "eps": 1e-3},
    }
    path = str(save_grid_file(tmp_path / "g.json", content))
    rule = sdeplug.create("time_grid", "tuned", file=path)
    rule.times(sdeplug.create("sde", "vp"), 3, 1e-3, dtype=F64)  # what it was tuned for
    cases = [
        (sdeplug.create("sde", "ve"), 1e-3, "SDE 'vp', not 've'"),
        (sdeplug.create("sde", "vp", beta_max=10.0), 1e-3, "SDE options {'beta_max': 20.0}, not {'beta_max': 10.0}"),
        (sdeplug.create("sde", "vp"), 1e-5, "eps 0.001, not 1e-05"),
    ]
    for sde, eps, message in cases:
        with pytest.raises(ValueError, match=re.escape(message) + ".*allow_mismatch") as refused:
            rule.times(sde, 3, eps, dtype=F64)
        assert "\n" not in str(refused.value)
        sdeplug.create("time_grid", "tuned", file=path, allow_mismatch=True).times(sde, 3, eps, dtype=F64)
    with pytest.warns(GridStepsWarning, match="tuned for 3 steps stretched to 6"):
        rule.times(sdeplug.create("sde", "vp"), 6, 1e-3, dtype=F64)


def test_gaussian_start_without_moments_warns_that_it_assumes_standardised_data():
    from sdeplug_fast.gaussian_start import StandardMomentsWarning

    sde, score = _problem("vp")
    with pytest.warns(StandardMomentsWarning, match="assumes standardised data"):
        sdeplug.create("predictor", "gaussian_start", sde, score)


@pytest.mark.slow
def test_tune_grid_tunes_a_range_of_budgets_and_sample_refuses_a_grid_for_another_predictor(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(sde="vp", corrector="none", out=tmp_path / "run"))
    assert main(["tune-grid", str(config), "--steps", "2-4", "--pilot", "32", "--no-progress"]) == 0
    errors = []
    for k in (2, 3, 4):
        content = load_grid_file(tmp_path / "run" / f"grid-dpmpp_2m-{k}.json")
        assert content["steps"] == k and len(content["fractions"]) == k + 1
        errors.append(content["error_to_the_reference"]["validation"]["tuned"])
    assert errors == sorted(errors, reverse=True)
    capsys.readouterr()
    grid = tmp_path / "run" / "grid-dpmpp_2m-4.json"
    other = (
        config.read_text()
        .replace('name = "dpmpp_2m"', 'name = "unipc"')
        .replace("[sampler.predictor]", f'[sampler.grid]\nname = "tuned"\nfile = "{grid}"\n\n[sampler.predictor]')
    )
    (tmp_path / "other.toml").write_text(other)
    assert main(["sample", str(tmp_path / "other.toml"), "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tuned for predictor 'dpmpp_2m', not 'unipc'" in err and "allow_mismatch" in err
    assert len(err.splitlines()) == 1
    allowed = other.replace(f'file = "{grid}"', f'file = "{grid}"\nallow_mismatch = true')
    (tmp_path / "allowed.toml").write_text(allowed)
    assert main(["sample", str(tmp_path / "allowed.toml"), "--out", str(tmp_path / "s"), "--no-progress"]) == 0
    for bad in ("0", "4-2", "x", "3,-1"):
        assert main(["tune-grid", str(config), "--steps", bad, "--no-progress"]) == 2
        assert "--steps takes a positive step count" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("parts", "nfe", "steps"),
    [
        ({}, 10, 4),  # reverse diffusion + one Langevin step, 2 a step, and the denoising step
        ({"corrector": "none", "denoise": False, "predictor": "unipc"}, 5, 5),
        ({"corrector": "none", "denoise": False, "predictor": "edm_heun"}, 5, 2),
        ({"corrector": "none", "denoise": False, "predictor": "gaussian_start"}, 4, 5),  # a free first step
        ({"corrector": "langevin", "corrector_options": {"n_steps": 2}, "denoise": True}, 12, 3),
    ],
)
def test_a_budget_in_evaluations_gives_the_most_steps_that_fit(parts, nfe, steps):
    from sdeplug.sampling import steps_for_budget

    sde, score = _problem("vp")
    assert steps_for_budget(sde, nfe, (2,), **parts) == steps
    for k, within in ((steps, True), (steps + 1, False)):
        spent = sample_pc(sde, score, (4, 2), steps=k, **parts).nfe
        assert (spent <= nfe) == within, (k, spent)


def test_a_config_may_give_its_budget_as_nfe(tmp_path, capsys):
    config = tmp_path / "c.toml"
    text = CONFIG.format(sde="vp", corrector="langevin", out=tmp_path / "run").replace("steps = 4\n", "nfe = 9\n")
    config.write_text(text.replace("denoise = false", "denoise = true"))
    assert main(["sample", str(config), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["nfe_per_sample"] == 9  # 4 steps of predictor + corrector, and the denoising step
    for change, message in (
        ("nfe = 9\nsteps = 4\n", "give steps or nfe"),
        ("nfe = 1\n", "nfe = 1 is too few for these parts: one step spends 3"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(config.read_text().replace("nfe = 9\n", change))
        capsys.readouterr()
        assert main(["sample", str(bad), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
