"""The plugin system: discovery, registry errors, and real third-party distributions installed by pip."""

from __future__ import annotations

import json
import types
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

import sdeplug
import sdeplug.hookspecs
from conftest import EXAMPLE_PLUGINS, run_cli
from sdeplug.errors import DuplicatePartError, OptionError, UnknownPartError
from sdeplug.registry import PluginHost, PluginLoadWarning, register_plugin

REPO = Path(__file__).resolve().parents[1]


# Its tests share the example plugins pip installs once per worker: keep them on one worker
# (make test uses --dist loadgroup).
pytestmark = pytest.mark.xdist_group("installed_plugins")


def _plugin(**hooks) -> types.SimpleNamespace:
    """An in-process plugin object whose attributes are hook implementations."""
    return types.SimpleNamespace(**{name: sdeplug.hookimpl(fn) for name, fn in hooks.items()})


def test_bundled_parts_come_from_the_reference_entry_point(registry):
    info = registry.get("sde", "vp")
    assert info.plugin == "reference" and info.distribution.startswith("sdeplug ")
    assert set(registry.names("sde")) >= {"ve", "vp", "subvp"}
    assert set(registry.names("predictor")) >= {"euler_maruyama", "reverse_diffusion", "ancestral", "none"}
    assert set(registry.names("corrector")) >= {"langevin", "annealed_langevin", "none"}
    assert set(registry.names("ode_solver")) >= {"euler", "heun"}
    assert registry.failures == [] and registry.duplicates() == []


def test_unknown_name_lists_the_known_ones_and_a_close_match(registry):
    with pytest.raises(UnknownPartError) as info:
        registry.get("sde", "vpp")
    message = str(info.value)
    assert "unknown sde 'vpp'" in message and "known sdes: ddpm, subvp, ve, vp" in message
    assert "Did you mean 'vp'" in message
    with pytest.raises(UnknownPartError, match="unknown kind of part 'solver'.*Did you mean 'ode_solver'"):
        registry.names("solver")


def test_wrong_option_names_it_and_the_accepted_ones(registry):
    with pytest.raises(OptionError) as info:
        registry.create("sde", "vp", beta_maxx=20.0)
    message = str(info.value)
    assert "sde 'vp': unknown option 'beta_maxx'" in message
    assert "accepted options: N, T, beta_max, beta_min" in message and "Did you mean 'beta_max'" in message
    assert registry.options("corrector", "langevin") == {
        "snr": 0.16,
        "n_steps": 1,
        "norm": "batch",
        "step_rule": "snr",
        "scale": 1.0,
    }


def test_in_process_plugin_parts_are_usable(registry):
    class Zero(sdeplug.Corrector):
        def __init__(self, sde, score, scale: float = 1.0):
            self.sde, self.score = sde, score

        def step(self, x, t, generator=None):
            return torch.zeros_like(x)

    register_plugin(_plugin(register_correctors=lambda register: register(Zero, name="zero")), "mine")
    info = sdeplug.get_registry().get("corrector", "zero")
    assert (info.plugin, info.distribution) == ("mine", "registered in-process")
    part = sdeplug.create("corrector", "zero", sdeplug.create("sde", "vp"), lambda x, t: x, scale=2.0)
    assert torch.equal(part.step(torch.ones(2, 2), torch.ones(2)), torch.zeros(2, 2))


def test_duplicate_name_is_an_error_naming_both_plugins():
    class OtherLangevin(sdeplug.Corrector):
        def __init__(self, sde, score):
            pass

        def step(self, x, t, generator=None):
            return x, x

    register_plugin(_plugin(register_correctors=lambda register: register(OtherLangevin, name="langevin")), "copycat")
    registry = sdeplug.get_registry()
    with pytest.raises(DuplicatePartError) as info:
        registry.get("corrector", "langevin")
    message = str(info.value)
    assert "corrector 'langevin' is registered by more than one plugin" in message
    assert "plugin 'reference' (sdeplug 0.1.0)" in message and "plugin 'copycat' (registered in-process)" in message
    assert [d.name for d in registry.duplicates()] == ["langevin"]
    assert registry.get("corrector", "annealed_langevin").plugin == "reference"  # the rest still work


def test_registering_something_that_is_not_a_part_is_reported():
    register_plugin(_plugin(register_sdes=lambda register: register(dict)), "confused")
    with pytest.warns(PluginLoadWarning, match="not a subclass of sdeplug.SDE"):
        registry = sdeplug.get_registry()
    assert "vp" in registry.names("sde")


def test_misspelt_hook_is_an_error_not_silence():
    host = PluginHost()
    with pytest.warns(PluginLoadWarning, match="unknown hook.*register_sde\\b.*sdeplug's hooks are"):
        host.add(_plugin(register_sde=lambda register: None), "typo", "typo-dist 1.0")
    assert [f.plugin for f in host.failures] == ["typo"]
    assert not host.pm.has_plugin("typo")


def test_entry_point_that_fails_to_import_is_reported_and_the_rest_load():
    host = PluginHost()
    eps = [
        EntryPoint("missing", "sdeplug_no_such_module_here", "sdeplug"),
        EntryPoint("reference", "sdeplug_reference", "sdeplug"),
    ]
    with pytest.warns(PluginLoadWarning, match='Error importing plugin "missing".*ModuleNotFoundError'):
        host.load_entry_points(eps)
    registry = host.collect()
    assert "vp" in registry.names("sde")
    with pytest.raises(UnknownPartError, match='unknown sde .*Error importing plugin "missing"'):
        registry.get("sde", "cosine")


def test_environment_variable_limits_the_loaded_plugins(monkeypatch):
    monkeypatch.setenv("SDEPLUG_LOAD_PLUGINS", "")
    sdeplug.registry.reset_registry()
    with pytest.raises(UnknownPartError, match=r"known sdes: \(none\)"):
        sdeplug.create("sde", "vp")
    monkeypatch.setenv("SDEPLUG_LOAD_PLUGINS", "reference")
    sdeplug.registry.reset_registry()
    assert "vp" in sdeplug.get_registry().names("sde")


def test_every_hook_is_documented_in_the_plugin_guide():
    guide = (REPO / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(sdeplug.hookspecs) if name.startswith("register_")]
    assert hooks, "no hooks found"
    for hook in hooks:
        assert f"`{hook}" in guide, f"hook {hook} is not documented in docs/plugins.md"


# Real distributions, installed by pip into their own folders (see conftest.install_example_plugin).


@pytest.mark.slow
def test_third_party_plugin_is_listed_and_used_from_a_config(install_example_plugin, tmp_path):
    site = install_example_plugin("thirdparty")
    listing = run_cli("plugins", site=site)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert ["sde", "ou", "ou_example", "sdeplug-ou-example", "0.1.0"] in rows
    assert ["predictor", "stochastic_heun", "ou_example", "sdeplug-ou-example", "0.1.0"] in rows
    assert ["sde", "vp", "reference", "sdeplug", "0.1.0"] in rows

    run = run_cli("sample", str(EXAMPLE_PLUGINS / "thirdparty" / "ou.toml"), "--out", str(tmp_path), site=site)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sde"]["name"] == "ou" and summary["sampler"]["predictor"]["name"] == "stochastic_heun"
    assert summary["nfe_per_sample"] == 200 * 2 + 1
    # The plugin's parts sample the mixture correctly: within 5 null stds of the noise floor.
    assert summary["energy_distance"] <= summary["null_mean"] + 5 * summary["null_std"], summary
    assert (tmp_path / "samples.png").stat().st_size > 10_000


@pytest.mark.slow
def test_without_the_plugin_its_names_are_unknown(tmp_path):
    run = run_cli("sample", str(EXAMPLE_PLUGINS / "thirdparty" / "ou.toml"), "--out", str(tmp_path))
    assert run.returncode == 2
    assert "unknown sde 'ou'" in run.stderr and "known sdes: ddpm, subvp, ve, vp" in run.stderr


@pytest.mark.slow
def test_broken_plugin_is_reported_and_the_rest_keep_working(install_example_plugin):
    run = run_cli("plugins", site=install_example_plugin("broken"))
    assert run.returncode == 1
    assert 'Error importing plugin "broken_example" from sdeplug-broken-example 0.1.0' in run.stderr
    assert "ModuleNotFoundError" in run.stderr and "sdeplug_a_dependency_that_is_not_installed" in run.stderr
    assert "reverse_diffusion" in run.stdout and "reference" in run.stdout


@pytest.mark.slow
def test_installed_duplicate_is_an_error_naming_both(install_example_plugin, tmp_path):
    site = install_example_plugin("duplicate")
    listing = run_cli("plugins", site=site)
    assert listing.returncode == 1
    assert "sde 'vp' is registered by more than one plugin" in listing.stderr
    run = run_cli("sample", str(REPO / "examples" / "ring8_pc.toml"), "--out", str(tmp_path), site=site)
    assert run.returncode == 2
    assert "plugin 'reference' (sdeplug 0.1.0)" in run.stderr
    assert "plugin 'duplicate_example' (sdeplug-duplicate-example 0.2.0)" in run.stderr


def test_plugin_warnings_do_not_fire_for_a_clean_install():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sdeplug.registry.build_registry()


def test_an_option_named_like_a_method_of_the_base_class_is_refused_at_registration():
    """Options are read back from a built part's attributes (sample_pc rebuilds parts passed
    built); an option named ``step`` would read back the method: refused, in one line, naming it."""

    class StepSized(sdeplug.Corrector):
        def __init__(self, sde, score, step: float = 0.1):
            self.sde, self.score, self.step_size = sde, score, step

        def step(self, x, t, generator=None):
            return x

    register_plugin(_plugin(register_correctors=lambda register: register(StepSized, name="step_sized")), "clash")
    failures = [str(f) for f in sdeplug.get_registry().failures if "clash" in str(f)]
    assert len(failures) == 1 and "\n" not in failures[0]
    assert "option(s) ['step'] named like sdeplug.Corrector's own method(s)" in failures[0]
