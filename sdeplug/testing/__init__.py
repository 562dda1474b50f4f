"""The testing kit for plugin authors: contract checks, hypothesis strategies, statistics.

It needs the ``testing`` extra (pytest, hypothesis): ``pip install 'sdeplug[testing]'``.
Importing it registers the hypothesis profile ``sdeplug-ci`` (derandomised, no example
database, no deadline).

- ``contract_tests("my_plugin")``: a pytest test running every contract on every part a
  plugin registers (one line in the plugin's tests);
- ``check_sde``, ``check_predictor``, ``check_corrector``, ``check_ode_solver``,
  ``check_score_model``, ``check_time_grid``, ``check_classifier``, ``check_feature_extractor``: each contract on its
  own, raising ``ContractError`` with a message naming the method at fault;
- ``sdeplug.testing.strategies``: hypothesis strategies for SDEs, times, shapes, mixtures
  and time grids;
- ``assert_same_law``, ``energy_distance``, ``energy_null``, ``distance_variance``: the
  two-sample check;
- ``simulate_forward``: the forward SDE from its drift and diffusion alone.
"""

from sdeplug.extras import require

require("hypothesis", "the testing kit (sdeplug.testing)")
require("pytest", "the testing kit (sdeplug.testing)")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "sdeplug-ci", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

from sdeplug.stats import (  # noqa: E402
    EnergyNull,
    TwoSampleResult,
    assert_same_law,
    distance_variance,
    energy_distance,
    energy_null,
)
from sdeplug.testing.contracts import (  # noqa: E402
    ContractError,
    ContractReport,
    ContractSkipWarning,
    check_classifier,
    check_corrector,
    check_feature_extractor,
    check_ode_solver,
    check_part,
    check_predictor,
    check_score_model,
    check_sde,
    check_time_grid,
    contract_tests,
    observed_order,
    ode_order,
    plugin_parts,
    weak_order,
)
from sdeplug.testing.simulate import simulate_forward  # noqa: E402

__all__ = [
    "ContractError",
    "ContractSkipWarning",
    "ContractReport",
    "EnergyNull",
    "TwoSampleResult",
    "assert_same_law",
    "check_classifier",
    "check_feature_extractor",
    "check_corrector",
    "check_ode_solver",
    "check_part",
    "check_predictor",
    "check_score_model",
    "check_sde",
    "check_time_grid",
    "contract_tests",
    "distance_variance",
    "energy_distance",
    "energy_null",
    "ode_order",
    "observed_order",
    "plugin_parts",
    "simulate_forward",
    "weak_order",
]
