"""The example plugin in docs/examples/sdeplug-cosine: installed, its own kit-based tests run,
and sampled with from its config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("example_plugin"),
]  # minutes of training or a pip install: left out of make test-fast

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "sdeplug-cosine"


def test_example_plugin_passes_its_own_tests(install_example_plugin):
    site = install_example_plugin(EXAMPLE)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SDEPLUG_LOAD_PLUGINS", None)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 passed" in run.stdout
    assert "PASSED tests/test_contracts.py::test_contracts[sde-cosine_vp]" in run.stdout
    assert "PASSED tests/test_contracts.py::test_contracts[predictor-ddim_example]" in run.stdout
    assert "PASSED tests/test_contracts.py::test_contracts[corrector-noise_scaled_langevin]" in run.stdout
    assert (
        "sdeplug plugins: " in run.stdout and "cosine (sdeplug-cosine 0.1.0)" in run.stdout
    )  # the pytest plugin's header


def test_example_plugin_is_listed_and_samples_from_its_config(install_example_plugin, tmp_path):
    site = install_example_plugin(EXAMPLE)
    listing = run_cli("plugins", site=site)
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert ["sde", "cosine_vp", "cosine", "sdeplug-cosine", "0.1.0"] in rows
    assert ["predictor", "ddim_example", "cosine", "sdeplug-cosine", "0.1.0"] in rows
    assert ["corrector", "noise_scaled_langevin", "cosine", "sdeplug-cosine", "0.1.0"] in rows
    run = run_cli("sample", str(EXAMPLE / "cosine.toml"), "--out", str(tmp_path), site=site)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nfe_per_sample"] == 101  # 50 steps of DDIM and one Langevin step each, and denoising
    assert summary["energy_distance"] <= summary["null_mean"] + 5 * summary["null_std"], summary
