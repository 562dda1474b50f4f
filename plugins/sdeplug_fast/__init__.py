"""Fast samplers for every LinearSDE: DDIM, DPM-Solver++ (2M, 3M), SDE-DPM-Solver++(2M), UniPC, EDM Heun,
a free Gaussian first step before any of them, the log-SNR and EDM time grids, and tuned grids.

An ordinary sdeplug plugin, declared as the ``fast`` entry point; it uses only the
public API of the core (alpha(t), sigma(t) and t_from_log_snr of LinearSDE).
"""

from sdeplug import hookimpl
from sdeplug_fast.ddim import DDIM
from sdeplug_fast.edm import EDMHeun
from sdeplug_fast.gaussian_start import GaussianStart
from sdeplug_fast.grids import EDMGrid, LogSNRGrid, TunedLogSNRGrid
from sdeplug_fast.multistep import DPMSolverPP2M, DPMSolverPP3M, SDEDPMSolverPP2M
from sdeplug_fast.unipc import UniPC

__all__ = [
    "DDIM",
    "DPMSolverPP2M",
    "DPMSolverPP3M",
    "EDMGrid",
    "EDMHeun",
    "GaussianStart",
    "LogSNRGrid",
    "SDEDPMSolverPP2M",
    "TunedLogSNRGrid",
    "UniPC",
]


@hookimpl
def register_predictors(register):
    for cls in (DDIM, DPMSolverPP2M, DPMSolverPP3M, SDEDPMSolverPP2M, EDMHeun, UniPC, GaussianStart):
        register(cls)


@hookimpl
def register_time_grids(register):
    for cls in (LogSNRGrid, EDMGrid, TunedLogSNRGrid):
        register(cls)
