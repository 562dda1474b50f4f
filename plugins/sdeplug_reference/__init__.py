"""The reference plugin: the paper's SDEs, predictors, correctors, fixed-step ODE solvers and grids.

An ordinary sdeplug plugin, declared as the ``reference`` entry point; it uses only
the public API of the core.
"""

from sdeplug import hookimpl
from sdeplug_reference.correctors import AnnealedLangevin, Langevin, NoCorrector
from sdeplug_reference.grids import QuadraticGrid, UniformGrid
from sdeplug_reference.ode_solvers import Euler, Heun
from sdeplug_reference.predictors import (
    AncestralSampling,
    EulerMaruyama,
    NoPredictor,
    ReverseDiffusion,
)
from sdeplug_reference.sdes import DDPMSDE, VESDE, VPSDE, SubVPSDE

__all__ = [
    "VESDE",
    "VPSDE",
    "AncestralSampling",
    "AnnealedLangevin",
    "Euler",
    "EulerMaruyama",
    "Heun",
    "Langevin",
    "NoCorrector",
    "NoPredictor",
    "QuadraticGrid",
    "ReverseDiffusion",
    "SubVPSDE",
    "DDPMSDE",
    "UniformGrid",
]


@hookimpl
def register_sdes(register):
    for cls in (VESDE, VPSDE, SubVPSDE, DDPMSDE):
        register(cls)


@hookimpl
def register_predictors(register):
    for cls in (EulerMaruyama, ReverseDiffusion, AncestralSampling, NoPredictor):
        register(cls)


@hookimpl
def register_correctors(register):
    for cls in (Langevin, AnnealedLangevin, NoCorrector):
        register(cls)


@hookimpl
def register_ode_solvers(register):
    for cls in (Euler, Heun):
        register(cls)


@hookimpl
def register_time_grids(register):
    for cls in (UniformGrid, QuadraticGrid):
        register(cls)
