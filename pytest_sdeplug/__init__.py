"""sdeplug's pytest plugin (entry point ``pytest11``), installed with sdeplug.

It costs nothing and changes nothing in a project that does not use sdeplug: at start-up
it imports pytest alone (no torch, no sdeplug plugins loaded), and it speaks only once a
collected test module has imported the testing kit.

- After collection, when the tests use ``sdeplug.testing``, the report lists the sdeplug
  plugins that loaded, with their distributions, and any that failed, so a plugin author
  sees at once whether the package under test was found.
- The fixture ``sdeplug_registry`` gives the registry; ``sdeplug_contract`` runs the
  contract of one part by kind and name.
- Importing ``sdeplug.testing`` registers the hypothesis profile ``sdeplug-ci``; load it
  with ``--hypothesis-profile=sdeplug-ci``.
- Under pytest-xdist, when the tests use ``sdeplug.testing`` and ``OMP_NUM_THREADS`` is not
  set, each worker gives torch its share of the cores (cores // workers threads): workers
  that each start a thread per core fight over the cores and run several times slower.

Running every contract on every part a plugin registers is one line in a test module::

    test_contracts = sdeplug.testing.contract_tests("my_plugin")
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def pytest_report_collectionfinish(config: pytest.Config, start_path: Path, items: list[pytest.Item]) -> list[str]:
    if "sdeplug.testing" not in sys.modules:
        return []
    from sdeplug.registry import get_registry

    registry = get_registry()
    plugins = sorted({(p.plugin, p.distribution) for p in registry.parts()})
    lines = ["sdeplug plugins: " + (", ".join(f"{name} ({dist})" for name, dist in plugins) or "none")]
    lines += [f"sdeplug: {failure}" for failure in registry.failures]
    lines += [f"sdeplug: {duplicate}" for duplicate in registry.duplicates()]
    return lines


def worker_threads() -> int | None:
    """torch's threads for this pytest-xdist worker: its share of the cores, or None outside a
    worker and where the user chose (``OMP_NUM_THREADS`` set)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not os.environ.get("PYTEST_XDIST_WORKER") or not workers or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // max(1, int(workers)))


def pytest_collection_finish(session: pytest.Session) -> None:
    threads = worker_threads()
    if threads is not None and "sdeplug.testing" in sys.modules:
        import torch

        torch.set_num_threads(threads)


@pytest.fixture
def sdeplug_registry():
    """The registry of every sdeplug part found in this environment."""
    from sdeplug.registry import get_registry

    return get_registry()


@pytest.fixture
def sdeplug_contract():
    """``sdeplug_contract(kind, name)`` runs that part's contract and returns its report."""
    from sdeplug.testing.contracts import check_part

    return check_part
