"""The testing kit's run time for third-party plugins: the one-line contract test of the
EDM-style plugin (tests/edm_plugin.py: an SDE, a churn predictor with three option sets, a
Langevin corrector) and of the docs' example plugin (docs/examples/sdeplug-cosine: a cosine VP
SDE, DDIM with eta, a Langevin corrector), in one process and under pytest-xdist.

    python benchmarks/contract_kit.py [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: Each plugin's test module, as its author writes it (plus registering the plugin in-process),
#: and the folder its module is imported from.
PLUGINS = {
    "EDM-style plugin (tests/edm_plugin.py)": (
        ROOT / "tests",
        """\
import sdeplug
import sdeplug.testing
from edm_plugin import EDMPlugin

sdeplug.register_plugin(EDMPlugin(), "edm_example")
test_contracts = sdeplug.testing.contract_tests("edm_example")
""",
    ),
    "docs' example plugin (docs/examples/sdeplug-cosine)": (
        ROOT / "docs" / "examples" / "sdeplug-cosine",
        """\
import sdeplug
import sdeplug.testing
import sdeplug_cosine

sdeplug.register_plugin(sdeplug_cosine, "cosine")
test_contracts = sdeplug.testing.contract_tests("cosine")
""",
    ),
}


def run(folder: Path, source: Path, workers: int | None, one_thread: bool) -> float:
    """Seconds for pytest to run the plugin's contract tests; fails loudly if any test fails."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    if one_thread:
        env["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_plugin_contracts.py"]
    if workers:
        command += ["-n", str(workers)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the contract tests failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    rows = []
    for plugin, (source, module) in PLUGINS.items():
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "test_plugin_contracts.py").write_text(module)
            rows += [
                (plugin, "one process (torch's default threads)", run(folder, source, None, one_thread=False)),
                (plugin, "`pytest -n 2`, `OMP_NUM_THREADS=1`", run(folder, source, 2, one_thread=True)),
                (plugin, "`pytest -n 2`, `OMP_NUM_THREADS` unset", run(folder, source, 2, one_thread=False)),
            ]
    lines = ["| plugin | how | wall time (s) |", "|---|---|---|"]
    lines += [f"| {plugin} | {how} | {seconds:.1f} |" for plugin, how, seconds in rows]
    text = "\n".join(lines)
    print(text)
    if args.write:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU"
        section = (
            "## Testing kit: a plugin's contract tests\n\n"
            "Command: `python benchmarks/contract_kit.py --write docs/benchmarks.md`. "
            f"Machine: {machine}. The one-line contract test of the EDM-style plugin in "
            "tests/edm_plugin.py (an SDE; a churn predictor checked with churn off and with two "
            "churn settings, and on the SDE with one set of its example options; a Langevin "
            "corrector checked on the four registered SDEs) and of the docs' example plugin "
            "(a cosine VP SDE, DDIM checked with eta = 0 and 1, a Langevin corrector with two "
            "option sets), wall time of the whole pytest run including start-up.\n\n" + text + "\n"
        )
        replace_section(args.write, "## Testing kit", section)


if __name__ == "__main__":
    main()
