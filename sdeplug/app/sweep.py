"""``sdeplug evaluate CONFIG --sweep FILE``: the quality-against-cost frontier of several
samplers on one trained model, or quality against the guidance weight of a conditional one.

A sweep file lists samplers (each a [sampler] table with a ``label``, how many score
evaluations one of its steps costs, and whether to tune its time grid to the model at each
budget, ``tune = true``) and NFE budgets. Each sampler runs at each budget,
and its steps are chosen to fit the budget. Every run is evaluated with the protocol of
[evaluate]. The table and the plots give each metric against the score evaluations
spent and against wall time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from attrs import validators as v

from sdeplug.app.config import SamplerConfig, parse_section, read_toml
from sdeplug.errors import ConfigError


@attrs.frozen
class SweepSampler:
    """One sampler of a sweep: its [sampler] settings, a label, and its cost per step."""

    label: str
    sampler: SamplerConfig
    #: Score evaluations per step (1 for Euler-type and multistep samplers, 2 for Heun or a
    #: predictor with one Langevin step); the denoising step adds one more.
    evals_per_step: int = attrs.field(default=1, validator=v.gt(0))
    #: Tune the time grid to the model at every budget of at most ``tune_max_steps`` steps
    #: (``sdeplug.grid_tuning``: its cost grows with the square of the steps), from ``pilot``
    #: prior draws, starting from the sampler's grid; larger budgets keep that grid.
    tune: bool = False
    pilot: int = 256
    tune_max_steps: int = 12
    #: Steps that cost no score evaluation (1 for gaussian_start's free first step).
    free_steps: int = 0

    def steps_for(self, budget: int) -> int:
        """The most steps whose evaluations fit in ``budget``."""
        extra = 1 if self.sampler.denoise else 0
        return max(1, (budget - extra) // self.evals_per_step) + self.free_steps


@attrs.frozen
class Sweep:
    budgets: tuple[int, ...]
    samplers: tuple[SweepSampler, ...]


@attrs.frozen
class WeightSweep:
    """A sweep over guidance weights w with the config's sampler and [guidance] (cfg by default)."""

    weights: tuple[float, ...]


def read_sweep(path: str | Path) -> Sweep | WeightSweep:
    """A sweep file: ``[sweep] nfe = [...]`` and one ``[[sweep.sampler]]`` table per sampler; or
    ``[sweep] weights = [...]``, guidance weights for a class-conditional model."""
    raw = read_toml(path, "sweep file")
    sweep = raw.get("sweep")
    if set(raw) != {"sweep"} or not isinstance(sweep, Mapping):
        raise ConfigError(
            f"{path}: a sweep file holds one [sweep] table: nfe = [...] with [[sweep.sampler]] tables, "
            "or weights = [...]"
        )
    if "weights" in sweep:
        weights = sweep["weights"]
        if set(sweep) != {"weights"}:
            raise ConfigError(f"{path}: a sweep of guidance weights takes weights = [...] alone")
        if (
            not isinstance(weights, list)
            or not weights
            or any(
                isinstance(w, bool) or not isinstance(w, (int, float)) or w != w or abs(w) == float("inf")
                for w in weights
            )
        ):
            raise ConfigError(f"{path}: [sweep] weights must be a non-empty list of finite numbers; got {weights!r}")
        return WeightSweep(tuple(sorted({float(w) for w in weights})))
    budgets = sweep.get("nfe")
    if not isinstance(budgets, list) or not budgets or not all(type(b) is int and b >= 1 for b in budgets):
        raise ConfigError(f"{path}: [sweep] nfe must be a non-empty list of positive integers; got {budgets!r}")
    tables = sweep.get("sampler")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{path}: [sweep] needs at least one [[sweep.sampler]] table")
    unknown = set(sweep) - {"nfe", "sampler"}
    if unknown:
        raise ConfigError(f"{path}: [sweep] takes nfe and [[sweep.sampler]] tables; unknown keys {sorted(unknown)}")
    samplers, labels = [], set()
    for index, table in enumerate(tables):
        table = dict(table)
        label = table.pop("label", None)
        if label in labels:
            raise ConfigError(f"{path}: two samplers are labelled {label!r}; each needs its own label (rows and plot)")
        labels.add(label)
        per_step = table.pop("evals_per_step", 1)
        tune, pilot = table.pop("tune", False), table.pop("pilot", 256)
        tune_max_steps = table.pop("tune_max_steps", 12)
        free_steps = table.pop("free_steps", 0)
        if not isinstance(label, str) or not label:
            raise ConfigError(f"{path}: [[sweep.sampler]] number {index + 1} needs a label")
        _check_count(path, label, "evals_per_step", per_step, 1, "a positive integer")
        if "steps" in table:
            raise ConfigError(f"{path}: sampler {label!r}: steps follow from [sweep] nfe; remove steps")
        if not isinstance(tune, bool):
            raise ConfigError(f"{path}: sampler {label!r}: tune must be true or false; got {tune!r}")
        _check_count(path, label, "pilot", pilot, 2, "an integer >= 2")
        _check_count(path, label, "tune_max_steps", tune_max_steps, 1, "a positive integer")
        _check_count(path, label, "free_steps", free_steps, 0, "an integer >= 0")
        sampler = parse_section(table, SamplerConfig, f"sweep sampler {label!r}")
        if tune and (sampler.kind != "pc" or sampler.corrector.name != "none"):
            raise ConfigError(
                f"{path}: sampler {label!r}: tune = true needs kind = 'pc' and corrector = 'none' (a predictor alone)"
            )
        samplers.append(SweepSampler(label, sampler, per_step, tune, pilot, tune_max_steps, free_steps))
    return Sweep(tuple(sorted(set(budgets))), tuple(samplers))


def _check_count(path, label: str, key: str, value: Any, minimum: int, described: str) -> None:
    """A sweep sampler's integer setting of at least ``minimum`` (booleans refused), else one line."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{path}: sampler {label!r}: {key} must be {described}; got {value!r}")


def sweep_runs(sweep: Sweep) -> list[tuple[SweepSampler, int, SamplerConfig]]:
    """(sampler, budget, its [sampler] with the steps for the budget) for every run."""
    return [
        (s, budget, attrs.evolve(s.sampler, steps=s.steps_for(budget)))
        for s in sweep.samplers
        for budget in sweep.budgets
    ]


def weight_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """A markdown table of a weight sweep: one row per guidance weight."""
    lines = ["| w | NFE | network evaluations | " + " | ".join(metrics) + " |", "|---|---|---|" + "---|" * len(metrics)]
    for row in rows:
        cells = [f"{row['metrics'][m]['mean']:.4g} ± {row['metrics'][m]['std']:.2g}" for m in metrics]
        lines.append(f"| {row['weight']:g} | {row['nfe']} | {row['network_evaluations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """A markdown table: one row per run, each metric as mean ± std over the seeds."""
    lines = [
        "| sampler | budget | steps | NFE | seconds | " + " | ".join(metrics) + " |",
        "|---|---|---|---|---|" + "---|" * len(metrics),
    ]
    for row in rows:
        cells = [f"{row['metrics'][m]['mean']:.4g} ± {row['metrics'][m]['std']:.2g}" for m in metrics]
        lines.append(
            f"| {row['label']} | {row['budget']} | {row['steps']} | {row['nfe']} | {row['seconds']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)
