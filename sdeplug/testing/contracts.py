"""Contract checks that any part, bundled or third-party, must pass.

Each ``check_*`` takes a registered name, a class or a built part (resolved as the
samplers resolve them), builds it with its options, runs its checks against closed
forms (forward simulation, normalisation, the Gaussian-mixture oracle, exactly
solvable ODEs), and raises ``ContractError`` with a message that names the method
at fault and the numbers that show it. It returns a ``ContractReport`` of what was
checked and what did not apply.

The checks of each kind live in their own module; this one runs them by kind and plugin, and
keeps every name the kit has published.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

from sdeplug.errors import IncompatiblePartError
from sdeplug.registry import get_registry
from sdeplug.testing.corrector_contract import check_corrector
from sdeplug.testing.grid_contract import check_time_grid
from sdeplug.testing.kit_base import (
    ContractError,
    ContractReport,
    ContractSkipWarning,
    _example_sdes,
    observed_order,
)
from sdeplug.testing.network_contracts import check_classifier, check_feature_extractor, check_score_model
from sdeplug.testing.predictor_contract import check_predictor, ode_order, weak_order
from sdeplug.testing.sde_contract import check_sde
from sdeplug.testing.solver_contract import check_ode_solver

__all__ = [
    "CHECKS",
    "ContractError",
    "ContractReport",
    "ContractSkipWarning",
    "check_classifier",
    "check_corrector",
    "check_feature_extractor",
    "check_ode_solver",
    "check_part",
    "check_predictor",
    "check_score_model",
    "check_sde",
    "check_time_grid",
    "contract_tests",
    "observed_order",
    "ode_order",
    "plugin_parts",
    "weak_order",
]


CHECKS: dict[str, Callable[..., ContractReport]] = {
    "sde": check_sde,
    "predictor": check_predictor,
    "corrector": check_corrector,
    "ode_solver": check_ode_solver,
    "score_model": check_score_model,
    "time_grid": check_time_grid,
    "classifier": check_classifier,
    "feature_extractor": check_feature_extractor,
}


#: The kinds whose contracts run against SDEs (``sdes=``).
_CHECKED_ON_SDES = ("predictor", "corrector", "time_grid")


def check_part(kind: str, name: str, *, sdes: Sequence[Any] | None = None) -> ContractReport:
    """Run the contract of a registered part. Parts checked on SDEs use ``sdes`` when given,
    else every registered LinearSDE with its defaults; predictors and correctors also get the
    local checks (one step, balance) on their own plugin's SDEs built with example options."""
    try:
        if kind not in _CHECKED_ON_SDES:
            return CHECKS[kind](name)
        if kind == "time_grid":
            return CHECKS[kind](name, sdes=sdes)
        local = _example_sdes(get_registry().get(kind, name).plugin) if sdes is None else []
        return CHECKS[kind](name, sdes=sdes, local_sdes=local)
    except IncompatiblePartError as exc:
        raise ContractError(f"{kind} {name!r}: {exc}") from exc


def plugin_parts(*plugins: str) -> list[tuple[str, str]]:
    """(kind, name) of every part the named plugins register."""
    registry = get_registry()
    known = {p.plugin for p in registry.parts()}
    missing = [p for p in plugins if p not in known]
    if missing:
        raise LookupError(
            f"no parts registered by plugin(s) {', '.join(missing)}; loaded plugins: {', '.join(sorted(known))}. "
            "Is the package installed (pip install -e .) and its entry point in the 'sdeplug' group?"
        )
    return [(p.kind, p.name) for p in registry.parts() if p.plugin in plugins]


def contract_tests(*plugins: str, sdes: Sequence[Any] | None = None):
    """A pytest test running the contract of every part the named plugins register.

    One line in a plugin's own tests::

        test_contracts = sdeplug.testing.contract_tests("my_plugin")

    ``sdes`` (registered names, classes or instances) replaces the SDEs that predictors,
    correctors and time grids are checked on.
    """
    import pytest

    parts = plugin_parts(*plugins)

    @pytest.mark.parametrize("kind, name", parts, ids=[f"{k}-{n}" for k, n in parts])
    def test_sdeplug_contract(kind: str, name: str) -> None:
        report = check_part(kind, name, sdes=sdes)
        print(report)
        if report.skipped:  # shown in pytest's warnings summary, not only in captured output
            warnings.warn(
                ContractSkipWarning(f"{kind} {name!r}, not checked: " + "; ".join(report.skipped)), stacklevel=1
            )

    return test_sdeplug_contract
