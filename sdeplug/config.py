"""TOML configs: frozen attrs classes that pick every part by name, validated before any work.

A config has the sections [sde], [sampler] (with [sampler.predictor],
[sampler.corrector] or [sampler.solver]), [model], [data], [train], [sample],
[output] and [likelihood] (with [likelihood.solver]);
see docs/config.md for every key. Unknown keys are errors that name the accepted ones.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from attrs import validators as v

from sdeplug.errors import ConfigError, close_matches
from sdeplug.interfaces import SDE, ScoreFn, check_sde_compatible
from sdeplug.oracle import PRESETS
from sdeplug.plugins import Registry, get_registry
from sdeplug.sampling import SampleResult, sample_ode, sample_pc
from sdeplug.trainer import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _check_keys(section: str, table: Mapping[str, Any], accepted: set[str]) -> None:
    for key in table:
        if key not in accepted:
            hint = close_matches(key, accepted)
            raise ConfigError(
                f"[{section}] has no key {key!r}; accepted keys: {', '.join(sorted(accepted))}."
                + (f" Did you mean {hint[0]!r}?" if hint else "")
            )


def _table(section: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{section}] must be a table; got {type(value).__name__}")
    return value


@attrs.frozen
class PartSpec:
    """A part picked by name, with its options (every other key of its table)."""

    name: str = attrs.field(validator=v.instance_of(str))
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)

    @classmethod
    def from_table(cls, section: str, table: Mapping[str, Any]) -> PartSpec:
        table = dict(_table(section, table))
        if "name" not in table:
            raise ConfigError(f"[{section}] needs a 'name' key naming the part")
        name = table.pop("name")
        if not isinstance(name, str):
            raise ConfigError(f"[{section}] name must be a string; got {name!r}")
        return cls(name, table)


def _in(section: str, key: str, choices: tuple[str, ...]):
    def check(_inst, _attr, value):
        if value not in choices:
            raise ConfigError(f"[{section}] {key} must be one of {', '.join(map(repr, choices))}; got {value!r}")

    return check


def _positive_int(section: str, key: str, optional: bool = False):
    def check(_inst, _attr, value):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"[{section}] {key} must be a positive integer; got {value!r}")

    return check


@attrs.frozen
class SamplerConfig:
    """[sampler]: ``kind = "pc"`` (predictor-corrector) or ``"ode"`` (probability flow)."""

    kind: str = attrs.field(default="pc", validator=_in("sampler", "kind", ("pc", "ode")))
    steps: int | None = attrs.field(default=None, validator=_positive_int("sampler", "steps", optional=True))
    eps: float | None = attrs.field(default=None)
    denoise: bool = attrs.field(default=True, validator=v.instance_of(bool))
    order: str = attrs.field(
        default="predictor_first", validator=_in("sampler", "order", ("predictor_first", "corrector_first"))
    )
    predictor: PartSpec = attrs.field(factory=lambda: PartSpec("reverse_diffusion"))
    corrector: PartSpec = attrs.field(factory=lambda: PartSpec("langevin"))
    solver: PartSpec = attrs.field(factory=lambda: PartSpec("heun"))
    #: Where the times fall: a registered TimeGrid (``grid = "logsnr"`` or a [sampler.grid]
    #: table with its options); None is the uniform grid.
    grid: PartSpec | None = None

    SUBTABLES = ("predictor", "corrector", "solver", "grid")

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> SamplerConfig:
        table = dict(_table("sampler", table))
        _check_keys("sampler", table, {f.name for f in attrs.fields(cls)})
        if table.get("kind", "pc") == "pc" and "solver" in table:
            raise ConfigError("[sampler.solver] is for kind = 'ode'; a 'pc' sampler takes [sampler.predictor] and [sampler.corrector]")
        if table.get("kind") == "ode" and ({"predictor", "corrector", "order"} & table.keys()):
            raise ConfigError("kind = 'ode' takes [sampler.solver], not predictor, corrector or order")
        if isinstance(table.get("grid"), str):
            table["grid"] = {"name": table["grid"]}
        for sub in cls.SUBTABLES:
            if sub in table:
                table[sub] = PartSpec.from_table(f"sampler.{sub}", table[sub])
        if "eps" in table and (isinstance(table["eps"], bool) or not isinstance(table["eps"], (int, float))):
            raise ConfigError(f"[sampler] eps must be a number; got {table['eps']!r}")
        try:
            return cls(**table)
        except TypeError as exc:
            raise ConfigError(f"[sampler]: {exc}") from exc

    def run(
        self,
        sde: SDE,
        score: ScoreFn,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        progress: bool = False,
    ) -> SampleResult:
        """Sample ``shape`` with this sampler."""
        common = dict(eps=self.eps, denoise=self.denoise, generator=generator, device=device, dtype=dtype)
        if self.grid is not None:
            common.update(grid=self.grid.name, grid_options=self.grid.options)
        if self.kind == "ode":
            return sample_ode(
                sde, score, shape, solver=self.solver.name, solver_options=self.solver.options, steps=self.steps, **common
            )
        return sample_pc(
            sde,
            score,
            shape,
            predictor=self.predictor.name,
            predictor_options=self.predictor.options,
            corrector=self.corrector.name,
            corrector_options=self.corrector.options,
            steps=self.steps if self.steps is not None else 1000,
            order=self.order,
            progress=progress,
            **common,
        )

    def check(self, sde: SDE, registry: Registry) -> None:
        """Build every named part once so a wrong name or option fails before any sampling."""

        def placeholder(x, t):
            return x

        if self.grid is not None:
            grid = registry.create("time_grid", self.grid.name, **self.grid.options)
            check_sde_compatible("time_grid", self.grid.name, type(grid), sde)
        if self.kind == "ode":
            solver = registry.create("ode_solver", self.solver.name, **self.solver.options)
            if self.grid is not None and self.steps is None and getattr(solver, "steps", None) is None:
                raise ConfigError(f"[sampler.grid] needs [sampler] steps: ODE solver {self.solver.name!r} has no steps")
        else:
            registry.create("predictor", self.predictor.name, sde, placeholder, **self.predictor.options)
            registry.create("corrector", self.corrector.name, sde, placeholder, **self.corrector.options)


@attrs.frozen
class LikelihoodConfig:
    """[likelihood]: how log p is computed, and on which data."""

    solver: PartSpec = attrs.field(factory=lambda: PartSpec("dopri5"))
    divergence: str = attrs.field(default="exact", validator=_in("likelihood", "divergence", ("exact", "hutchinson")))
    probes: int = attrs.field(default=1, validator=_positive_int("likelihood", "probes"))
    noise: str = attrs.field(default="rademacher", validator=_in("likelihood", "noise", ("rademacher", "gaussian")))
    eps: float | None = attrs.field(default=None)
    #: None: the data set's own ("[-1,1]" with 17 levels for the digits, "none" for toys).
    data_range: str | None = attrs.field(
        default=None, validator=v.optional(_in("likelihood", "data_range", ("none", "[0,1]", "[-1,1]")))
    )
    levels: int | None = attrs.field(default=None, validator=_positive_int("likelihood", "levels", optional=True))
    #: None: dequantise exactly when the data set is quantised.
    dequantize: bool | None = attrs.field(default=None, validator=v.optional(v.instance_of(bool)))
    #: A .npy or .pt file of samples (batch, *event_shape); without it, the data set's test split.
    data_file: str | None = attrs.field(default=None)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> LikelihoodConfig:
        table = dict(_table("likelihood", table))
        _check_keys("likelihood", table, {f.name for f in attrs.fields(cls)})
        if "solver" in table:
            table["solver"] = PartSpec.from_table("likelihood.solver", table["solver"])
        try:
            return cls(**table)
        except TypeError as exc:
            raise ConfigError(f"[likelihood]: {exc}") from exc


@attrs.frozen
class RunConfig:
    """[sample]: how many samples, in which batches, from which seed, on which device and dtype."""

    num: int = attrs.field(default=1000, validator=_positive_int("sample", "num"))
    batch_size: int | None = attrs.field(default=None, validator=_positive_int("sample", "batch_size", optional=True))
    seed: int = attrs.field(default=0, validator=v.instance_of(int))
    device: str = attrs.field(default="cpu", validator=v.instance_of(str))
    dtype: str = attrs.field(default="float32", validator=_in("sample", "dtype", tuple(DTYPES)))
    progress: bool = attrs.field(default=True, validator=v.instance_of(bool))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@attrs.frozen
class OutputConfig:
    """[output]: where samples, the summary and plots go."""

    dir: str = attrs.field(default="sdeplug-output", validator=v.instance_of(str))
    plot: bool = attrs.field(default=True, validator=v.instance_of(bool))


@attrs.frozen
class Config:
    """A whole run: the SDE, the sampler, the score model, the data, and where results go."""

    sde: PartSpec
    sampler: SamplerConfig = attrs.field(factory=SamplerConfig)
    model: PartSpec = attrs.field(factory=lambda: PartSpec("oracle"))
    data: PartSpec = attrs.field(factory=lambda: PartSpec("ring8"))
    sample: RunConfig = attrs.field(factory=RunConfig)
    output: OutputConfig = attrs.field(factory=OutputConfig)
    likelihood: LikelihoodConfig = attrs.field(factory=LikelihoodConfig)
    train: TrainSettings = attrs.field(factory=TrainSettings)
    source: str | None = None

    SECTIONS = ("sde", "sampler", "model", "data", "sample", "output", "likelihood", "train")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> Config:
        _check_keys("top level", raw, set(cls.SECTIONS))
        if "sde" not in raw:
            raise ConfigError("the config needs an [sde] section with the SDE's name, e.g. name = \"vp\"")
        parts: dict[str, Any] = {"sde": PartSpec.from_table("sde", raw["sde"]), "source": source}
        if "sampler" in raw:
            parts["sampler"] = SamplerConfig.from_table(raw["sampler"])
        if "likelihood" in raw:
            parts["likelihood"] = LikelihoodConfig.from_table(raw["likelihood"])
        for section in ("model", "data"):
            if section in raw:
                parts[section] = PartSpec.from_table(section, raw[section])
        for section, klass in (("sample", RunConfig), ("output", OutputConfig), ("train", TrainSettings)):
            if section in raw:
                table = _table(section, raw[section])
                _check_keys(section, table, {f.name for f in attrs.fields(klass)})
                try:
                    parts[section] = klass(**table)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"[{section}]: {exc}") from exc
        return cls(**parts)

    def build_sde(self, registry: Registry | None = None) -> SDE:
        return (registry or get_registry()).create("sde", self.sde.name, **self.sde.options)

    def check(self, registry: Registry | None = None, *, likelihood: bool = False) -> SDE:
        """Validate every part name and option against the registry; return the built SDE.

        The [likelihood] solver is checked when the section is given or ``likelihood`` is set.
        """
        registry = registry or get_registry()
        sde = self.build_sde(registry)
        self.sampler.check(sde, registry)
        if likelihood or self.likelihood != LikelihoodConfig():
            registry.create("ode_solver", self.likelihood.solver.name, **self.likelihood.solver.options)
        if self.model.name == "oracle":
            if self.model.options:
                raise ConfigError("[model] 'oracle' (the exact score of the [data] mixture) takes no options")
            if self.data.name not in PRESETS:
                raise ConfigError(
                    f"[model] 'oracle' needs an oracle mixture as [data] ({', '.join(sorted(PRESETS))}); "
                    f"got {self.data.name!r}. Train a score model for other data"
                )
        else:
            registry.check_options("score_model", self.model.name, self.model.options)
        return sde


def load_config(path: str | Path) -> Config:
    """Read and validate the structure of a TOML config (parts are checked by Config.check)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    try:
        return Config.from_dict(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
