"""Shared fixtures: hypothesis profiles, the registry, and installing the example plugins."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import sdeplug.registry


def computed_once(fixture_body):
    """Keep an expensive fixture's value for the whole worker process. pytest-xdist tears module
    (and session) fixtures down whenever a worker's queue runs dry, and the next test of the
    module would build them again: a trained model twice."""
    cache: dict[str, object] = {}

    @functools.wraps(fixture_body)
    def once(*args, **kwargs):
        if "value" not in cache:
            cache["value"] = fixture_body(*args, **kwargs)
        return cache["value"]

    return once


class LazyModule:
    """A module imported when a test first reads one of its names, not when pytest collects the
    test file: every xdist worker collects every file, and diffusers alone takes seconds."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):  # what collectors probe an object for: not the module's names
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._name), attribute)


def needs(module: str, why: str) -> pytest.MarkDecorator:
    """Skip, saying ``why``, where ``module`` is not installed (found without importing it)."""
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=why)


# Deterministic by default (CI): derandomised, no example database, no deadline. No test sets
# its own number of examples, so HYPOTHESIS_PROFILE=dev searches every property with fresh
# random draws, many more of them: run it before committing a tolerance.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", deadline=None, database=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny tensors: one thread avoids thread-pool overhead on small CI machines.
torch.set_num_threads(1)
#: Running under pytest-xdist (make test): the workers already share the cores.
PARALLEL_WORKERS = os.environ.get("PYTEST_XDIST_WORKER") is not None
if PARALLEL_WORKERS:
    # Subprocesses (the CLI, the example plugin's own tests) would otherwise start one OpenMP
    # thread per core and spin against the other workers: 20x slower on two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

EXAMPLE_PLUGINS = Path(__file__).parent / "plugins"


@contextlib.contextmanager
def files_limited_to(size: int):
    """No file of this process may grow past ``size`` bytes for the block (RLIMIT_FSIZE): a
    write beyond fails in write() with EFBIG, as on a full disk, through every library's own
    writer, where a faked OSError would reach only the code it replaces."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


#: Contracts that sample thousands of points (SDEs, predictors, correctors) take seconds each;
#: the kinds checked on closed forms take milliseconds. adaptive_heun needs thousands of tiny
#: steps at the tight tolerance of its contract.
SLOW_CONTRACT_KINDS = ("sde", "predictor", "corrector")
SLOW_CONTRACT_PARTS = ("ode_solver-adaptive_heun", "ode_solver-implicit_adams", "feature_extractor-inception")


def pytest_collection_modifyitems(config, items):
    """Mark the slow contract tests (``make test-fast`` leaves them out); identity parts stay fast."""
    for item in items:
        if getattr(item, "function", None) is None or item.function.__name__ != "test_sdeplug_contract":
            continue
        kind, name = item.callspec.params["kind"], item.callspec.params["name"]
        if (kind in SLOW_CONTRACT_KINDS and name != "none") or f"{kind}-{name}" in SLOW_CONTRACT_PARTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def registry():
    return sdeplug.registry.get_registry()


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test sees the installed entry points only, whatever the previous test registered."""
    yield
    sdeplug.registry._extra_plugins.clear()
    sdeplug.registry.reset_registry()


@pytest.fixture(scope="session")
def digit_features():
    """The digits and the data classifier's features learnt on their training split, trained once
    per worker for the tests that measure with them (they share the "features" xdist group)."""
    return _digit_features()


@computed_once
def _digit_features():
    from sdeplug.app.datasets import load_dataset
    from sdeplug_features import DataClassifierFeatures

    digits = load_dataset("digits")
    extractor = DataClassifierFeatures(event_shape=(1, 8, 8)).fit(
        digits.train.float(), digits.train_labels, steps=400, seed=0
    )
    return digits, extractor


@pytest.fixture(scope="session")
def install_example_plugin(tmp_path_factory):
    """Install tests/plugins/<name> (or a given folder) with pip into its own folder; return that folder.

    Each folder acts as an extra site-packages: put it on PYTHONPATH and its entry points
    are found exactly as after ``pip install``.
    """
    cache: dict[str, Path] = {}

    def install(name: str | Path) -> Path:
        source = Path(name) if isinstance(name, Path) else EXAMPLE_PLUGINS / name
        key = str(source)
        if key not in cache:
            # pip builds in the source tree; a private copy keeps parallel workers (xdist) apart.
            copy = tmp_path_factory.mktemp(f"src-{source.name}") / source.name
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            target = tmp_path_factory.mktemp(f"site-{source.name}")
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                    "--target",
                    str(target),
                    str(copy),
                ],
                check=True,
                capture_output=True,
            )
            cache[key] = target
        return cache[key]

    return install


def run_cli(*args: str, site: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``sdeplug`` command in a fresh process, optionally with an extra site folder."""
    env = dict(os.environ)
    env.pop(sdeplug.registry.LOAD_PLUGINS_ENV, None)
    if site is not None:
        env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "sdeplug_cli", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


@contextlib.contextmanager
def interruptible(command: list[str], **popen_options) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(command)`` that Ctrl-C (SIGINT) can reach, killed on the way out.

    A child inherits an ignored SIGINT from a test run started in the background (``make test
    &``, nohup, some CI runners), and Python then never raises KeyboardInterrupt: the child's
    SIGINT is put back to the default before it starts. A child still running when the test
    ends (a failure) is killed, so it never outlives the test.
    """
    process = subprocess.Popen(
        command, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_options
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
