"""Optional dependencies and the pytest plugin: nothing is paid for what is not used.

- sdeplug's pytest plugin is installed into every environment with sdeplug: a project
  that does not use sdeplug must see no cost (no torch, no sdeplug imported) and no change.
- matplotlib, scikit-learn, pytest and hypothesis are extras; a command that needs one
  says which extra to install, in one line, with a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sdeplug.extras import EXTRAS, MissingExtraError, require

EXAMPLES = Path(__file__).parents[1] / "examples"


def _run(*args: str, cwd: Path, code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SDEPLUG_"))}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "pytest", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_pytest_plugin_costs_nothing_in_a_project_without_sdeplug(tmp_path):
    (tmp_path / "test_other.py").write_text(
        textwrap.dedent("""
        import sys

        def test_nothing_of_sdeplug_was_imported():
            assert "torch" not in sys.modules
            assert not [m for m in sys.modules if m == "sdeplug" or m.startswith("sdeplug.")]
    """)
    )
    run = _run("-p", "no:cacheprovider", "-p", "no:xdist", "test_other.py", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sdeplug plugins" not in run.stdout and "sdeplug:" not in run.stdout  # pytest's own list names it, no more


@pytest.mark.slow
def test_the_pytest_plugin_reports_the_sdeplug_plugins_to_a_project_using_the_kit(tmp_path):
    (tmp_path / "test_kit.py").write_text(
        textwrap.dedent("""
        import sdeplug.testing

        def test_fixture(sdeplug_registry):
            assert "vp" in sdeplug_registry.names("sde")
    """)
    )
    run = _run("-p", "no:cacheprovider", "-p", "no:xdist", "test_kit.py", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sdeplug plugins: " in run.stdout and "reference (sdeplug " in run.stdout


def test_require_names_the_extra():
    assert require("math", "anything").sqrt(4.0) == 2.0
    with pytest.raises(
        MissingExtraError,
        match=r"the thing needs no_such_module_xyz, which is not installed: "
        r"pip install 'sdeplug\[all\]'",
    ):
        require("no_such_module_xyz", "the thing")
    assert EXTRAS["matplotlib"] == "plots" and EXTRAS["sklearn"] == "eval" and EXTRAS["hypothesis"] == "testing"


BLOCK = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


@pytest.mark.slow
def test_sampling_needs_no_extra_and_the_library_no_application(tmp_path):
    code = BLOCK.format(names=["matplotlib", "sklearn", "hypothesis", "pytest"]) + textwrap.dedent("""
        import torch, sdeplug
        from sdeplug.oracle import preset
        from sdeplug.sampling import sample_pc
        from sdeplug.likelihood import log_likelihood
        sde = sdeplug.create("sde", "vp")
        score = preset("ring8").score_model(sde)
        x = sample_pc(sde, score, (10, 2), predictor="unipc", corrector="none", steps=5, grid="logsnr").x
        print(float(log_likelihood(sde, score, x, solver="heun", solver_options={"steps": 5}).logp.mean()))
        print([m for m in sys.modules if m.startswith("sdeplug.app")])
    """)
    run = _run(cwd=tmp_path, code=code)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout


@pytest.mark.slow
def test_a_command_that_needs_an_extra_says_which(tmp_path):
    code = BLOCK.format(names=["matplotlib"]) + "from sdeplug.app.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    args = ("sample", str(EXAMPLES / "ring8_pc.toml"), "--num", "20", "--no-progress", "--out", str(tmp_path))
    run = _run(*args, cwd=tmp_path, code=code)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "sdeplug: error: writing pictures ([output] plot = true; set it to false to skip them) needs matplotlib, "
        "which is not installed: pip install 'sdeplug[plots]'"
    ]


@pytest.mark.slow
def test_the_testing_kit_says_which_extra_it_needs(tmp_path):
    code = BLOCK.format(names=["hypothesis"]) + "import sdeplug.testing\n"
    run = _run(cwd=tmp_path, code=code)
    assert run.returncode == 1
    assert (
        "the testing kit (sdeplug.testing) needs hypothesis, which is not installed: pip install 'sdeplug[testing]'"
        in run.stderr
    )
