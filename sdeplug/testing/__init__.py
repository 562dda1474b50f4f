"""Tools for checking parts against the truth: two-sample statistics and forward simulation.

Plugin authors use these to test their own SDEs, predictors, correctors and solvers.
"""

from sdeplug.testing.simulate import simulate_forward
from sdeplug.testing.stats import EnergyNull, TwoSampleResult, assert_same_law, energy_distance, energy_null

__all__ = [
    "EnergyNull",
    "TwoSampleResult",
    "assert_same_law",
    "energy_distance",
    "energy_null",
    "simulate_forward",
]
