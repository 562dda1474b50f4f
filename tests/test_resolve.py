"""One resolver for every kind of part: a name, a class or a built instance, with the same checks.

Also: how each kind is built is data on the kind, and the hook docstrings and the plugin
guide's table say the same thing.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest
import torch

import sdeplug
from sdeplug import hookspecs
from sdeplug.errors import IncompatiblePartError, OptionError, PluginError
from sdeplug.likelihood import log_likelihood
from sdeplug.oracle import preset
from sdeplug.registry import KINDS, part_name
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import check_ode_solver, check_time_grid

F64 = torch.float64
VP = sdeplug.create("sde", "vp")
SCORE = preset("mixture3").score_model(VP)

#: For each kind: a registered name, options to build it with, and the arguments the toolkit supplies.
EXAMPLES = {
    "sde": ("ve", {"sigma_max": 20.0}, ()),
    "predictor": ("dpmpp_2m", {"on_jump": "keep"}, (VP, SCORE)),
    "corrector": ("langevin", {"snr": 0.1}, (VP, SCORE)),
    "ode_solver": ("heun", {"steps": 7}, ()),
    "score_model": ("mlp", {"width": 8, "depth": 1}, ()),
    "time_grid": ("edm", {"rho": 3.0}, ()),
    "classifier": ("mlp_classifier", {"width": 8, "depth": 1}, ()),
    "feature_extractor": ("data_classifier", {"width": 8, "features": 16}, ()),
}


def test_every_kind_has_an_example():
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_a_name_a_class_and_an_instance_give_the_same_part(kind):
    name, options, supplied = EXAMPLES[kind]
    registry = sdeplug.get_registry()
    cls = registry.get(kind, name).cls
    from_name = sdeplug.resolve(kind, name, *supplied, options=options)
    from_class = sdeplug.resolve(kind, cls, *supplied, options=options)
    from_instance = sdeplug.resolve(kind, from_name, *supplied)
    for part in (from_name, from_class, from_instance):
        assert type(part) is cls
        own = registry.identify(kind, part)[2]
        assert {k: own[k] for k in options} == options
    if not supplied:
        assert from_instance is from_name  # a built part that needs nothing supplied is used as it is


@pytest.mark.parametrize("kind", list(EXAMPLES))
def test_each_form_gets_the_same_checks(kind):
    name, _, supplied = EXAMPLES[kind]
    registry = sdeplug.get_registry()
    cls = registry.get(kind, name).cls
    for spec in (name, cls):
        with pytest.raises(OptionError, match="unknown option 'no_such_option'"):
            sdeplug.resolve(kind, spec, *supplied, options={"no_such_option": 1})
    built = sdeplug.resolve(kind, name, *supplied)
    with pytest.raises(OptionError, match="already built"):
        sdeplug.resolve(kind, built, *supplied, options={"no_such_option": 1})
    with pytest.raises(TypeError, match=f"a {kind} must be a registered name"):
        sdeplug.resolve(kind, 3.5, *supplied)
    other = next(k for k in KINDS.values() if k.name != kind and k.base is not KINDS[kind].base)
    with pytest.raises(TypeError, match=f"subclass of sdeplug.{KINDS[kind].base.__name__}"):
        sdeplug.resolve(kind, other.base, *supplied)


@pytest.mark.parametrize("kind, name", [("predictor", "dpmpp_2m"), ("time_grid", "logsnr")])
def test_sde_compatibility_is_checked_for_every_form(kind, name):
    """Bundled parts that need a LinearSDE; every bundled corrector takes any SDE, so the
    corrector's case is a part of the test's own, below."""
    from problems import TanhSDE

    sde = TanhSDE()
    cls = sdeplug.get_registry().get(kind, name).cls
    supplied = (sde, SCORE) if KINDS[kind].supplied else ()
    for spec in (name, cls):
        with pytest.raises(IncompatiblePartError, match="LinearSDE"):
            sdeplug.resolve(kind, spec, *supplied, sde=sde)
    built = sdeplug.resolve(kind, name, *((VP, SCORE) if supplied else ()))
    with pytest.raises(IncompatiblePartError, match="LinearSDE"):
        sdeplug.resolve(kind, built, *supplied, sde=sde)


def test_a_corrector_declaring_linear_sdes_only_is_refused_with_another():
    from problems import TanhSDE

    @attrs.frozen
    class LinearOnly(sdeplug.Corrector):
        sde_types = (sdeplug.LinearSDE,)
        sde: sdeplug.SDE
        score: object

        def step(self, x, t, generator=None):
            return x

    with pytest.raises(IncompatiblePartError, match="corrector 'LinearOnly' needs an SDE of type LinearSDE"):
        sample_pc(TanhSDE(), SCORE, (3, 2), corrector=LinearOnly, steps=2)


def test_the_samplers_take_every_form_alike():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cls = sdeplug.get_registry().get("predictor", "unipc").cls
    built = cls(VP, SCORE, order=3)
    runs = [
        sample_pc(
            VP,
            SCORE,
            (50, 2),
            predictor=spec,
            predictor_options=options,
            corrector="none",
            steps=6,
            grid=grid,
            generator=g(),
            dtype=F64,
        )
        for spec, options, grid in (
            ("unipc", {"order": 3}, "logsnr"),
            (cls, {"order": 3}, sdeplug.get_registry().get("time_grid", "logsnr").cls),
            (built, None, sdeplug.create("time_grid", "logsnr")),
        )
    ]
    for run in runs[1:]:
        torch.testing.assert_close(run.x, runs[0].x, rtol=0, atol=0)
        assert run.nfe == runs[0].nfe == 7  # the built part's score is replaced by the counted one
    heun = sdeplug.get_registry().get("ode_solver", "heun").cls
    odes = [
        sample_ode(VP, SCORE, (20, 2), solver=spec, solver_options=options, generator=g(), dtype=F64)
        for spec, options in (("heun", {"steps": 5}), (heun, {"steps": 5}), (heun(steps=5), None))
    ]
    for run in odes[1:]:
        torch.testing.assert_close(run.x, odes[0].x, rtol=0, atol=0)
    x = preset("mixture3").sample(5, g()).to(F64)
    lls = [
        log_likelihood(VP, SCORE, x, solver=spec, solver_options=options).logp
        for spec, options in (("heun", {"steps": 20}), (heun, {"steps": 20}), (heun(steps=20), None))
    ]
    for ll in lls[1:]:
        torch.testing.assert_close(ll, lls[0], rtol=0, atol=0)


def test_a_built_predictor_for_another_sde_is_refused():
    ve = sdeplug.create("sde", "ve")
    built = sdeplug.create("predictor", "dpmpp_2m", ve, SCORE)
    with pytest.raises(IncompatiblePartError, match="was built for"):
        sample_pc(VP, SCORE, (3, 2), predictor=built, corrector="none", steps=2)


def test_the_testing_kit_takes_every_form_alike():
    grid_cls = sdeplug.get_registry().get("time_grid", "edm").cls
    reports = [
        check_time_grid(spec, sdes=[VP], options=options)
        for spec, options in (("edm", {"rho": 3.0}), (grid_cls, {"rho": 3.0}), (grid_cls(rho=3.0), None))
    ]
    assert reports[0].passed == reports[1].passed == reports[2].passed
    heun = sdeplug.get_registry().get("ode_solver", "heun").cls
    assert check_ode_solver(heun(steps=50)).passed == check_ode_solver("heun", options={"steps": 50}).passed


def test_a_preset_fixes_its_options_and_says_so():
    solver = sdeplug.create("ode_solver", "rk4", steps=10)
    assert (solver.method, solver.steps, solver.order, solver.adaptive) == ("rk4", 10, 4, False)
    with pytest.raises(OptionError, match="option 'method' is fixed to 'rk4' by this preset.*'torchdiffeq'"):
        sdeplug.create("ode_solver", "rk4", method="dopri5")
    assert "method" not in sdeplug.get_registry().options("ode_solver", "rk4")
    assert sdeplug.create("ode_solver", "explicit_adams", max_order=6).order == 5


def test_a_preset_needs_a_name_and_options_the_class_takes():
    from sdeplug.registry import build_registry

    class Plugin:
        @sdeplug.hookimpl
        def register_ode_solvers(self, register):
            heun = sdeplug.get_registry().get("ode_solver", "heun").cls
            register(heun, steps=5)

    with pytest.warns(UserWarning, match="needs its own name"):
        build_registry(load_entry_points=False, extra=[(Plugin(), "p")])

    class Plugin2:
        @sdeplug.hookimpl
        def register_ode_solvers(self, register):
            heun = sdeplug.get_registry().get("ode_solver", "heun").cls
            register(heun, name="heun5", stepz=5)

    with pytest.warns(UserWarning, match="fixes \\['stepz'\\]"):
        build_registry(load_entry_points=False, extra=[(Plugin2(), "p2")])


def test_a_type_error_inside_a_plugins_constructor_is_not_blamed_on_the_options():
    class Buggy(sdeplug.Corrector):
        def __init__(self, sde, score, snr: float = 0.1):
            self.sde, self.score = sde, score
            self.snr = len(snr)  # a bug of the plugin: len() of a float

        def step(self, x, t, generator=None):
            return x

    with pytest.raises(PluginError, match="corrector 'Buggy' failed inside its own constructor with TypeError"):
        sdeplug.resolve("corrector", Buggy, VP, SCORE)
    # ... while a bad value refused by an attrs validator is the user's option error
    with pytest.raises(OptionError, match="corrector 'langevin'"):
        sdeplug.create("corrector", "langevin", VP, SCORE, n_steps="three")
    with pytest.raises(OptionError, match="missing a required argument"):
        sdeplug.resolve("corrector", Buggy.__mro__[0], VP)  # score missing: the toolkit's call is wrong


def test_part_names_for_every_form():
    cls = sdeplug.get_registry().get("predictor", "unipc").cls
    assert part_name("unipc") == part_name(cls) == part_name(cls(VP, SCORE)) == "unipc"

    class Unnamed(sdeplug.Corrector):
        def __init__(self, sde, score):
            pass

        def step(self, x, t, generator=None):
            return x

    assert part_name(Unnamed) == part_name(Unnamed(VP, SCORE)) == "Unnamed"


# How each kind is built: data on the kind, the hook docstrings, the plugin guide -----------------


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_hook_docstrings_say_how_the_kind_is_built(kind):
    doc = " ".join(inspect.getdoc(getattr(hookspecs, kind.hook)).split())
    assert f"built as ``{kind.signature()}``" in doc, (kind.hook, doc)
    assert kind.base.__name__ in doc


@pytest.mark.parametrize("kind", list(KINDS.values()), ids=list(KINDS))
def test_the_plugin_guide_table_says_how_the_kind_is_built(kind):
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    rows = [line for line in guide.splitlines() if line.startswith(f"| `{kind.hook}(register)`")]
    assert len(rows) == 1, kind.hook
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"subclasses of `sdeplug.{kind.base.__name__}`" or kind.base.__name__ in cells[1]
    assert cells[2] == f"`{kind.signature()}`"


def test_the_guide_lists_every_hook_and_no_other():
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    listed = set(re.findall(r"^\| `(register_\w+)\(register\)`", guide, flags=re.M))
    assert listed == {k.hook for k in KINDS.values()}


def test_an_attrs_validator_message_reads_as_one_line():
    with pytest.raises(OptionError) as caught:
        sdeplug.create("predictor", "unipc", VP, SCORE, order=7)
    message = str(caught.value)
    assert "'order' must be in (1, 2, 3) (got 7)" in message and "Attribute(" not in message
