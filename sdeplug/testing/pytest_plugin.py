"""sdeplug's pytest plugin (entry point ``pytest11``), loaded whenever sdeplug is installed.

- The test report header lists the sdeplug plugins that loaded, with their
  distributions, and any that failed, so a plugin author sees at once whether the
  package under test was found.
- The fixture ``sdeplug_registry`` gives the registry; ``sdeplug_contract`` runs the
  contract of one part by kind and name.
- A hypothesis profile ``sdeplug-ci`` (derandomised, no example database, no deadline)
  is registered; load it with ``--hypothesis-profile=sdeplug-ci``.

Running every contract on every part a plugin registers is one line in a test module::

    test_contracts = sdeplug.testing.contract_tests("my_plugin")
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings


def pytest_configure(config: pytest.Config) -> None:
    settings.register_profile(
        "sdeplug-ci", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def pytest_report_header(config: pytest.Config) -> list[str]:
    from sdeplug.registry import get_registry

    registry = get_registry()
    plugins = sorted({(p.plugin, p.distribution) for p in registry.parts()})
    lines = ["sdeplug plugins: " + (", ".join(f"{name} ({dist})" for name, dist in plugins) or "none")]
    lines += [f"sdeplug: {failure}" for failure in registry.failures]
    lines += [f"sdeplug: {duplicate}" for duplicate in registry.duplicates()]
    return lines


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
