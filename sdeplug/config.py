"""TOML configs: frozen attrs classes that pick every part by name, validated before any work.

A config has the sections [sde], [sampler] (with [sampler.predictor],
[sampler.corrector] or [sampler.solver]), [model], [data], [train], [sample],
[output], [likelihood] (with [likelihood.solver]), [classifier] (with
[classifier.train]) and [guidance];
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
from sdeplug.interfaces import SDE, ScoreFn
from sdeplug.oracle import PRESETS
from sdeplug.plugins import Registry, get_registry
from sdeplug.sampling import Constraint, SampleResult, sample_ode, sample_pc
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
        constraint: Constraint | None = None,
    ) -> SampleResult:
        """Sample ``shape`` with this sampler (``constraint``, e.g. inpainting: pc only)."""
        common = dict(eps=self.eps, denoise=self.denoise, generator=generator, device=device, dtype=dtype)
        if self.grid is not None:
            common.update(grid=self.grid.name, grid_options=self.grid.options)
        if self.kind == "ode":
            if constraint is not None:
                raise ConfigError("a constraint (inpainting, measurements) needs [sampler] kind = 'pc'")
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
            constraint=constraint,
            **common,
        )

    def check(self, sde: SDE, registry: Registry) -> None:
        """Build every named part once so a wrong name or option fails before any sampling."""

        def placeholder(x, t):
            return x

        if self.grid is not None:
            registry.resolve("time_grid", self.grid.name, options=self.grid.options, sde=sde)
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


def _train_settings(section: str, table: Mapping[str, Any], **forced: Any) -> TrainSettings:
    table = dict(_table(section, table))
    _check_keys(section, table, {f.name for f in attrs.fields(TrainSettings)} - set(forced))
    try:
        return TrainSettings(**table, **forced)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


@attrs.frozen
class ClassifierConfig:
    """[classifier]: the time-dependent classifier network for guidance (a registered
    ``classifier`` part and its options) and, in [classifier.train], how to train it."""

    network: PartSpec
    train: TrainSettings = attrs.field(factory=lambda: TrainSettings(objective="classifier"))

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ClassifierConfig:
        table = dict(_table("classifier", table))
        train = _train_settings("classifier.train", table.pop("train", {}), objective="classifier")
        return cls(PartSpec.from_table("classifier", table), train)


GUIDANCE_KEYS = {
    "classifier": {"scale", "classes", "checkpoint"},
    "inpaint": {"mask", "data_file", "per_image"},
    "measurement": {"matrix", "data_file", "per_image"},
}
IMAGE_MASKS = ("upper_half", "lower_half", "left_half", "right_half", "border")


def _number_list(section: str, key: str, value: Any, kind: type) -> tuple:
    values = value if isinstance(value, list) else [value]
    ok = (int,) if kind is int else (int, float)
    if not values or any(isinstance(x, bool) or not isinstance(x, ok) for x in values):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"[{section}] {key} must be {what} or a non-empty list of them; got {value!r}")
    return tuple(kind(x) for x in values)


@attrs.frozen
class GuidanceConfig:
    """[guidance]: conditional sampling with the same score model.

    ``kind = "classifier"``: classifier guidance with the [classifier] network, at each
    ``scale`` (a number or a list: one run per scale), the samples cycling through
    ``classes`` (default: every class). ``kind = "inpaint"``: complete data points whose
    ``mask`` entries (1 = known) are kept, by the paper's replacement method (a pc
    sampler). ``kind = "measurement"``: the same for y = A x with ``matrix`` A.
    """

    kind: str = attrs.field(validator=_in("guidance", "kind", tuple(GUIDANCE_KEYS)))
    scale: tuple[float, ...] = (1.0,)
    classes: tuple[int, ...] | None = None
    checkpoint: str | None = None
    #: inpaint: a built-in image mask (IMAGE_MASKS, naming the known region), a .npy/.pt
    #: file or an inline list like one sample; 1 = known.
    mask: str | tuple | None = None
    #: measurement: "grey" (the channel mean of each pixel), a .npy/.pt file or an inline
    #: (M, D) list.
    matrix: str | tuple | None = None
    #: inpaint/measurement: the points to complete (default: the [data] set's held-out split).
    data_file: str | None = None
    per_image: int = attrs.field(default=1, validator=_positive_int("guidance", "per_image"))

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> GuidanceConfig:
        table = dict(_table("guidance", table))
        kind = table.get("kind")
        if kind not in GUIDANCE_KEYS:
            raise ConfigError(f"[guidance] kind must be one of {', '.join(map(repr, GUIDANCE_KEYS))}; got {kind!r}")
        for key in table:
            if key != "kind" and key not in GUIDANCE_KEYS[kind]:
                owner = [k for k, keys in GUIDANCE_KEYS.items() if key in keys]
                raise ConfigError(
                    f"[guidance] kind = {kind!r} takes no key {key!r}; it accepts "
                    f"{', '.join(sorted(GUIDANCE_KEYS[kind]))}" + (f" ({key!r} is for kind = {owner[0]!r})" if owner else "")
                )
        if "scale" in table:
            table["scale"] = _number_list("guidance", "scale", table["scale"], float)
        if "classes" in table:
            table["classes"] = _number_list("guidance", "classes", table["classes"], int)
        if kind == "inpaint" and "mask" not in table:
            raise ConfigError(f"[guidance] kind = 'inpaint' needs a mask: one of {', '.join(IMAGE_MASKS)}, "
                              "a .npy/.pt file, or a list like one sample (1 = known)")
        if kind == "measurement" and "matrix" not in table:
            raise ConfigError("[guidance] kind = 'measurement' needs a matrix: 'grey', a .npy/.pt file, or an (M, D) list")
        for key in ("mask", "matrix"):
            if isinstance(table.get(key), list):
                table[key] = _freeze(table[key])
            elif key in table and not isinstance(table[key], str):
                raise ConfigError(f"[guidance] {key} must be a name, a file or a list; got {table[key]!r}")
        try:
            return cls(**table)
        except TypeError as exc:
            raise ConfigError(f"[guidance]: {exc}") from exc

    def check(self, sampler: SamplerConfig, has_classifier: bool) -> None:
        if self.kind == "classifier" and not has_classifier:
            raise ConfigError("[guidance] kind = 'classifier' needs a [classifier] section naming the network, "
                              "e.g. name = 'conv_classifier'")
        if self.kind != "classifier" and sampler.kind != "pc":
            raise ConfigError(f"[guidance] kind = {self.kind!r} uses the replacement method, which needs "
                              "[sampler] kind = 'pc'")


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


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
    classifier: ClassifierConfig | None = None
    guidance: GuidanceConfig | None = None
    source: str | None = None

    SECTIONS = ("sde", "sampler", "model", "data", "sample", "output", "likelihood", "train", "classifier", "guidance")

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
        if "classifier" in raw:
            parts["classifier"] = ClassifierConfig.from_table(raw["classifier"])
        if "guidance" in raw:
            parts["guidance"] = GuidanceConfig.from_table(raw["guidance"])
        for section in ("model", "data"):
            if section in raw:
                parts[section] = PartSpec.from_table(section, raw[section])
        if "train" in raw:
            parts["train"] = _train_settings("train", raw["train"], objective="score")
        for section, klass in (("sample", RunConfig), ("output", OutputConfig)):
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
        if self.classifier is not None:
            registry.check_options("classifier", self.classifier.network.name, self.classifier.network.options)
        if self.guidance is not None:
            self.guidance.check(self.sampler, self.classifier is not None)
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
