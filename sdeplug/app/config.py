"""TOML configs: the schema, as frozen attrs classes that pick every part by name.

A config has the sections [sde], [sampler] (with [sampler.predictor],
[sampler.corrector] or [sampler.solver], and [sampler.grid]), [model], [data], [train],
[sample], [output], [likelihood] (with [likelihood.solver]), [classifier] (with
[classifier.train]) and [guidance]; see docs/config.md for every key. cattrs turns the
TOML tables into these classes; every mistake is one ``ConfigError`` naming the section,
the key and what is accepted. This module only describes and parses: checking the parts
against the registry and running anything is ``sdeplug.app.assemble``'s job.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import torch
from attrs import validators as v
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from sdeplug.errors import ConfigError, SdeplugError, close_matches, error_text
from sdeplug.tensors import check_seed
from sdeplug.trainer import TrainSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _one_of(key: str, choices: tuple[str, ...]):
    def check(_inst, _attr, value):
        if value not in choices:
            raise ValueError(f"{key} must be one of {', '.join(map(repr, choices))}; got {value!r}")

    return check


def _positive_int(key: str, optional: bool = False):
    def check(_inst, _attr, value):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}")

    return check


def _seed(key: str):
    def check(_inst, _attr, value):
        check_seed(value, key)

    return check


def _optional_eps(key: str):
    def check(_inst, _attr, value):
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < math.inf):
            raise ValueError(f"{key} must be a finite number >= 0 (below the SDE's T); got {value!r}")

    return check


@attrs.frozen
class PartSpec:
    """A part picked by name, with its options (every other key of its table)."""

    name: str = attrs.field(validator=v.instance_of(str))
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)


@attrs.frozen
class SamplerConfig:
    """[sampler]: ``kind = "pc"`` (predictor-corrector) or ``"ode"`` (probability flow)."""

    #: "pc" (predictor-corrector) or "ode" (the probability-flow ODE with [sampler.solver]).
    kind: str = attrs.field(default="pc", validator=_one_of("kind", ("pc", "ode")))
    #: Steps of the grid; pc default 1000, ode: the solver's own choice if absent.
    steps: int | None = attrs.field(default=None, validator=_positive_int("steps", optional=True))
    #: The budget in score evaluations per sample, instead of steps: the most steps that fit
    #: (corrector steps, the denoising step and a free first step counted). pc only.
    nfe: int | None = attrs.field(default=None, validator=_positive_int("nfe", optional=True))
    #: The end time; default: the SDE's default_eps.
    eps: float | None = attrs.field(default=None, validator=_optional_eps("eps"))
    #: A final noise-free Tweedie step at eps (one more score evaluation).
    denoise: bool = True
    #: pc: "predictor_first" (the paper's Algorithm 1) or "corrector_first" (the paper's code).
    order: str = attrs.field(
        default="predictor_first", validator=_one_of("order", ("predictor_first", "corrector_first"))
    )
    #: pc: the predictor (a name or a [sampler.predictor] table with its options).
    predictor: PartSpec = attrs.field(factory=lambda: PartSpec("reverse_diffusion"))
    #: pc: the corrector ("none" for none).
    corrector: PartSpec = attrs.field(factory=lambda: PartSpec("langevin"))
    #: ode: the ODE solver.
    solver: PartSpec = attrs.field(factory=lambda: PartSpec("heun"))
    #: Where the times fall: a registered TimeGrid (``grid = "logsnr"`` or a [sampler.grid]
    #: table with its options); None is the uniform grid.
    grid: PartSpec | None = None


@attrs.frozen
class LikelihoodConfig:
    """[likelihood]: how log p is computed, and on which data."""

    #: The ODE solver of the flow (a name or a [likelihood.solver] table); default dopri5.
    solver: PartSpec = attrs.field(factory=lambda: PartSpec("dopri5"))
    #: "exact" (one backward pass per dimension) or "hutchinson" (an unbiased estimate).
    divergence: str = attrs.field(default="exact", validator=_one_of("divergence", ("exact", "hutchinson")))
    #: Hutchinson probes per solve.
    probes: int = attrs.field(default=1, validator=_positive_int("probes"))
    #: Hutchinson probes' law: "rademacher" or "gaussian".
    noise: str = attrs.field(default="rademacher", validator=_one_of("noise", ("rademacher", "gaussian")))
    #: None: the divergence rides with the flow at every solver stage (the paper's way); m:
    #: m-point Gauss-Legendre on each accepted step after the flow is solved alone.
    quadrature: int | None = attrs.field(default=None, validator=_positive_int("quadrature", optional=True))
    #: The start time; default 1e-5 for every SDE, as the paper's code.
    eps: float | None = attrs.field(default=None, validator=_optional_eps("eps"))
    #: None: the data set's own ("[-1,1]" with 17 levels for the digits, "none" for toys).
    data_range: str | None = attrs.field(
        default=None, validator=v.optional(_one_of("data_range", ("none", "[0,1]", "[-1,1]")))
    )
    #: Quantisation levels of the data (None: the data set's, else 256).
    levels: int | None = attrs.field(default=None, validator=_positive_int("levels", optional=True))
    #: None: dequantise exactly when the data set is quantised.
    dequantize: bool | None = None
    #: A .npy or .pt file of samples (batch, *event_shape); without it, the data set's test split.
    data_file: str | None = None


#: The metrics `sdeplug evaluate` can report.
METRICS = ("fid", "kid", "precision_recall", "inception_score")


def _seeds(_inst, _attr, value) -> None:
    if not isinstance(value, tuple) or not value or len(set(value)) != len(value):
        raise ValueError(f"seeds must be a non-empty list of distinct seeds; got {list(value)!r}")
    for seed in value:
        check_seed(seed, "seeds")


def _metrics(_inst, _attr, value) -> None:
    unknown = [m for m in value if m not in METRICS]
    if not value or unknown:
        raise ValueError(f"metrics must be a non-empty list of {', '.join(map(repr, METRICS))}; got {list(value)!r}")


@attrs.frozen
class EvaluateConfig:
    """[evaluate]: sample-quality metrics of the model's samples against a split of the data,
    on the features of a registered feature extractor, over several seeds."""

    #: A registered feature extractor (pixels, data_classifier, inception or a plugin's), with its options.
    features: PartSpec = attrs.field(factory=lambda: PartSpec("pixels"))
    #: Samples per seed (published image FIDs use 50 000).
    num: int = attrs.field(default=1000, validator=_positive_int("num"))
    #: One run per seed; each metric is reported as mean, std and per-seed values.
    seeds: tuple[int, ...] = attrs.field(default=(0, 1, 2), converter=tuple, validator=_seeds)
    #: The data split the samples are compared with: "test" or "train".
    reference: str = attrs.field(default="test", validator=_one_of("reference", ("test", "train")))
    #: Any of "fid", "kid", "precision_recall", "inception_score".
    metrics: tuple[str, ...] = attrs.field(
        default=("fid", "kid", "precision_recall"), converter=tuple, validator=_metrics
    )
    #: KID: the number of random subsets ...
    kid_subsets: int = attrs.field(default=100, validator=_positive_int("kid_subsets"))
    #: ... and the points of each (fewer if the sets are smaller).
    kid_subset_size: int = attrs.field(default=1000, validator=_positive_int("kid_subset_size"))
    #: Precision/recall: the k-th nearest neighbour sets each ball's radius.
    k: int = attrs.field(default=3, validator=_positive_int("k"))
    #: Also fit FID against 1/n over nested subsets and report its value at n = infinity.
    extrapolate: bool = False
    #: FID against these stored statistics (sdeplug.metrics.save_stats, e.g. a reference-stats-*.safetensors
    #: an earlier run wrote) instead of the reference split's; refused unless made with the same features.
    reference_stats: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.num < 2:
            raise ValueError(f"num must be at least 2 samples per seed (a covariance needs two); got {self.num}")
        if "precision_recall" in self.metrics and self.k >= self.num:
            raise ValueError(f"k = {self.k} must be below num = {self.num} (the k-th nearest of num samples)")


@attrs.frozen
class RunConfig:
    """[sample]: how many samples, in which batches, from which seed, on which device and dtype."""

    #: The number of samples (or of likelihood points).
    num: int = attrs.field(default=1000, validator=_positive_int("num"))
    #: Samples per sampler call (default: all at once); each batch has its own seed from (seed, batch index).
    batch_size: int | None = attrs.field(default=None, validator=_positive_int("batch_size", optional=True))
    #: An integer in [0, 2**63).
    seed: int = attrs.field(default=0, validator=_seed("seed"))
    #: A torch device this machine has, e.g. "cuda"; checked before any work.
    device: str = "cpu"
    #: "float32" or "float64".
    dtype: str = attrs.field(default="float32", validator=_one_of("dtype", tuple(DTYPES)))
    #: Show a progress bar.
    progress: bool = True
    #: Run the score network through ``torch.compile`` for sampling, likelihoods and tuning.
    compile: bool = attrs.field(default=False, validator=v.instance_of(bool))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@attrs.frozen
class OutputConfig:
    """[output]: where samples, the summary and plots go."""

    #: Where samples, summaries, checkpoints and plots go.
    dir: str = "sdeplug-output"
    #: Write the pictures (needs the plots extra).
    plot: bool = True


@attrs.frozen
class ClassifierConfig:
    """[classifier]: the time-dependent classifier network for guidance (a registered
    ``classifier`` part and its options) and, in [classifier.train], how to train it."""

    #: A registered classifier part and its options ([classifier] name = ...).
    network: PartSpec
    #: How to train it: every [train] key, with the noisy cross-entropy as the objective.
    train: TrainSettings = attrs.field(factory=lambda: TrainSettings(objective="classifier"))


_CLASS_GUIDANCE = {"scale", "classes", "interval", "threshold", "threshold_max"}
GUIDANCE_KEYS = {
    "classifier": {"scale", "classes", "checkpoint"},
    "cfg": _CLASS_GUIDANCE,
    "autoguidance": _CLASS_GUIDANCE | {"checkpoint"},
    "inpaint": {"mask", "data_file", "per_image"},
    "measurement": {"matrix", "data_file", "per_image"},
}
IMAGE_MASKS = ("upper_half", "lower_half", "left_half", "right_half", "border")


def _name_file_or_list(key: str):
    def check(_inst, _attr, value):
        if value is not None and not isinstance(value, (str, tuple)):
            raise ValueError(f"{key} must be a name, a file or a list; got {value!r}")

    return check


@attrs.frozen
class GuidanceConfig:
    """[guidance]: conditional sampling with the same score model.

    ``kind = "classifier"``: classifier guidance with the [classifier] network, at each
    ``scale`` (a number or a list: one run per scale), the samples cycling through
    ``classes`` (default: every class). ``kind = "inpaint"``: complete data points whose
    ``mask`` entries (1 = known) are kept, by the paper's replacement method (a pc
    sampler). ``kind = "measurement"``: the same for y = A x with ``matrix`` A.

    ``kind = "cfg"``: classifier-free guidance of a class-conditional model at each weight in
    ``scale``; ``kind = "autoguidance"``: guidance by the weaker model in ``checkpoint`` (an
    earlier checkpoint of the run, or a smaller network's). Both take ``classes``, an
    ``interval`` [low, high] of noise levels sigma/alpha where the weight applies, and
    ``threshold`` (a quantile ratio, e.g. 0.995: dynamic thresholding of the data prediction
    for data in [-1, 1], clamped to ``threshold_max``).
    """

    #: "classifier", "cfg", "autoguidance", "inpaint" or "measurement".
    kind: str = attrs.field(validator=_one_of("kind", tuple(GUIDANCE_KEYS)))
    #: The guidance scale or weight w, or a list of them: one run each.
    scale: tuple[float, ...] = (1.0,)
    #: The classes the samples cycle through (default: every class).
    classes: tuple[int, ...] | None = None
    #: classifier: the classifier's checkpoint; autoguidance: the weaker model's.
    checkpoint: str | None = None
    #: inpaint: a built-in image mask (IMAGE_MASKS, naming the known region), a .npy/.pt
    #: file or an inline list like one sample; 1 = known.
    mask: Any = attrs.field(default=None, validator=_name_file_or_list("mask"))
    #: measurement: "grey" (the channel mean of each pixel), a .npy/.pt file or an inline
    #: (M, D) list.
    matrix: Any = attrs.field(default=None, validator=_name_file_or_list("matrix"))
    #: inpaint/measurement: the points to complete (default: the [data] set's held-out split).
    data_file: str | None = None
    #: inpaint/measurement: completions per data point.
    per_image: int = attrs.field(default=1, validator=_positive_int("per_image"))
    #: cfg/autoguidance: the noise levels (low, high] where the weight applies (1 elsewhere).
    interval: tuple[float, float] | None = None
    #: cfg/autoguidance: dynamic thresholding's quantile ratio (None: off), for data in [-1, 1].
    threshold: float | None = None
    #: cfg/autoguidance: the largest clipping value s of dynamic thresholding.
    threshold_max: float = 1.0


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
    evaluate: EvaluateConfig = attrs.field(factory=EvaluateConfig)
    #: The file the config was read from (not a TOML key).
    source: str | None = None
    #: Whether the config has a [data] section (not a TOML key): a pretrained network samples
    #: without one, and no default data set stands in for data that were never named.
    data_named: bool = True

    SECTIONS = (
        "sde",
        "sampler",
        "model",
        "data",
        "sample",
        "output",
        "likelihood",
        "train",
        "classifier",
        "guidance",
        "evaluate",
    )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str | None = None) -> Config:
        """The config of a parsed TOML document; ConfigError names what is wrong."""
        return attrs.evolve(parse(raw, cls), source=source, data_named="data" in raw)


# TOML -> attrs, with cattrs ----------------------------------------------------------------


class _BadValue(TypeError):
    """A TOML value of the wrong type for its key."""


class _Refused(ValueError):
    """A table with a key its section does not accept (raised by the pre-checks)."""

    def __init__(self, key: str, accepted: set[str], hint: str = "") -> None:
        self.key, self.accepted, self.hint = key, sorted(accepted), hint
        super().__init__(key)


def _strict(kind: type, what: str) -> Callable[[Any, type], Any]:
    """TOML values as they are: no int("3"), no int(3.7), no bool for a number."""

    def structure(value: Any, _type: type) -> Any:
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise _BadValue(f"must be {what}; got {value!r}")
        return value

    return structure


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a table; got {value!r}")
    return value


def _part_spec(value: Any, _type: type) -> PartSpec:
    if isinstance(value, str):  # the shorthand grid = "logsnr"
        return PartSpec(value)
    if not isinstance(value, Mapping):
        raise TypeError(f"must be a table with a 'name' key, or a name; got {value!r}")
    table = dict(value)
    if "name" not in table:
        raise ValueError("needs a 'name' key naming the part")
    name = table.pop("name")
    if not isinstance(name, str):
        raise TypeError(f"name must be a string; got {name!r}")
    return PartSpec(name, table)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(x) for x in value) if isinstance(value, list) else value


def _number_list(key: str, value: Any, kind: type) -> list:
    values = value if isinstance(value, list) else [value]
    ok = (int,) if kind is int else (int, float)
    if not values or any(isinstance(x, bool) or not isinstance(x, ok) for x in values):
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{key} must be {what} or a non-empty list of them; got {value!r}")
    return values


def _checked_keys(table: Mapping[str, Any], accepted: set[str]) -> None:
    for key in table:
        if key not in accepted:
            raise _Refused(key, accepted)


def _with_precheck(converter: cattrs.Converter, cls: type, precheck: Callable[[Mapping[str, Any]], dict]) -> None:
    """Structure ``cls`` from the table ``precheck`` returns (it may refuse or rewrite keys)."""
    generated = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    converter.register_structure_hook(cls, lambda value, _type: generated(precheck(_table(value)), cls))


def _sampler_table(table: Mapping[str, Any]) -> dict:
    table = dict(table)
    if table.get("kind", "pc") == "pc" and "solver" in table:
        raise ValueError(
            "[sampler.solver] is for kind = 'ode'; a 'pc' sampler takes [sampler.predictor] and [sampler.corrector]"
        )
    if table.get("kind") == "ode" and {"predictor", "corrector", "order"} & table.keys():
        raise ValueError("kind = 'ode' takes [sampler.solver], not predictor, corrector or order")
    if "nfe" in table and "steps" in table:
        raise ValueError("give steps or nfe (the budget in score evaluations per sample), not both")
    if "nfe" in table and table.get("kind") == "ode":
        raise ValueError("nfe is for kind = 'pc'; an 'ode' sampler takes steps (or its solver's own)")
    return table


def _train_table(objective: str) -> Callable[[Mapping[str, Any]], dict]:
    def precheck(table: Mapping[str, Any]) -> dict:
        _checked_keys(table, {f.name for f in attrs.fields(TrainSettings)} - {"objective"})
        return {**table, "objective": objective}

    return precheck


def _guidance_table(table: Mapping[str, Any]) -> dict:
    table = dict(table)
    kind = table.get("kind")
    if kind not in GUIDANCE_KEYS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, GUIDANCE_KEYS))}; got {kind!r}")
    for key in table:
        if key != "kind" and key not in GUIDANCE_KEYS[kind]:
            owner = [k for k, keys in GUIDANCE_KEYS.items() if key in keys]
            raise _Refused(
                key,
                GUIDANCE_KEYS[kind] | {"kind"},
                f" (kind = {kind!r} takes no key {key!r}" + (f"; it is for kind = {owner[0]!r})" if owner else ")"),
            )
    if "scale" in table:
        table["scale"] = _number_list("scale", table["scale"], float)
    if "classes" in table:
        table["classes"] = _number_list("classes", table["classes"], int)
    if "interval" in table:
        interval = table["interval"]
        if not isinstance(interval, list) or len(interval) != 2:
            raise ValueError(f"interval must be a pair [low, high] of noise levels sigma/alpha; got {interval!r}")
        low, high = _number_list("interval", interval, float)
        if not 0 <= low < high:
            raise ValueError(f"interval must satisfy 0 <= low < high; got {interval!r}")
        table["interval"] = (float(low), float(high))
    if "threshold" in table:
        ratio = table["threshold"]
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
            raise ValueError(f"threshold must be a quantile ratio in (0, 1], e.g. 0.995; got {table['threshold']!r}")
    if "threshold_max" in table:
        value = table["threshold_max"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise ValueError(f"threshold_max must be a number >= 1; got {value!r}")
    if kind == "autoguidance" and "checkpoint" not in table:
        raise ValueError(
            "kind = 'autoguidance' needs checkpoint: the guiding model's checkpoint (an earlier one of the "
            "run, or a smaller network's)"
        )
    if kind == "inpaint" and "mask" not in table:
        raise ValueError(
            f"kind = 'inpaint' needs a mask: one of {', '.join(IMAGE_MASKS)}, a .npy/.pt file, or a "
            "list like one sample (1 = known)"
        )
    if kind == "measurement" and "matrix" not in table:
        raise ValueError("kind = 'measurement' needs a matrix: 'grey', a .npy/.pt file, or an (M, D) list")
    for key in ("mask", "matrix"):
        if isinstance(table.get(key), list):
            table[key] = _freeze(table[key])
    return table


_CLASSIFIER_TRAIN = _train_table("classifier")


def _classifier(value: Any, _type: type) -> ClassifierConfig:
    table = dict(_table(value))
    train = table.pop("train", {})
    network = _part_spec(table, PartSpec)
    try:
        generated = make_dict_structure_fn(TrainSettings, CONVERTER, _cattrs_forbid_extra_keys=True)
        settings = generated(_CLASSIFIER_TRAIN(_table(train)), TrainSettings)
    except Exception as exc:
        exc.add_note("Structuring class ClassifierConfig @ attribute train")
        raise ClassValidationError("While structuring ClassifierConfig", [exc], ClassifierConfig) from None
    return ClassifierConfig(network, settings)


def declared_sde(model: Any) -> dict[str, Any] | None:
    """The [sde] table a [model] declares for itself (a diffusers pipeline's scheduler), if any."""
    if not isinstance(model, Mapping) or not isinstance(model.get("name"), str):
        return None
    from sdeplug.registry import get_registry

    try:
        cls = get_registry().get("score_model", model["name"]).cls
    except SdeplugError:
        return None
    declare = getattr(cls, "declared_sde", None)
    return declare(**{k: v for k, v in model.items() if k != "name"}) if declare is not None else None


def _top_level(table: Mapping[str, Any]) -> dict:
    _checked_keys(table, set(Config.SECTIONS))
    table = dict(table)
    if "sde" not in table:
        declared = declared_sde(table.get("model"))
        if declared is None:
            raise ValueError('the config needs an [sde] section with the SDE\'s name, e.g. name = "vp"')
        table["sde"] = declared
    return table


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(PartSpec, _part_spec)
    converter.register_structure_hook(ClassifierConfig, _classifier)
    converter.register_structure_hook(Any, lambda value, _type: value)
    for cls in (RunConfig, OutputConfig, LikelihoodConfig):
        _with_precheck(converter, cls, dict)
    _with_precheck(converter, TrainSettings, _train_table("score"))
    _with_precheck(converter, SamplerConfig, _sampler_table)
    _with_precheck(converter, GuidanceConfig, _guidance_table)
    _with_precheck(converter, Config, _top_level)
    return converter


CONVERTER = _make_converter()


def _first_error(exc: BaseException, path: tuple[str, ...] = ()) -> tuple[BaseException, tuple[str, ...]]:
    """The first leaf error of a cattrs error tree and the attribute path to it."""
    for note in getattr(exc, "__notes__", []):
        if " @ attribute " in note:
            path = (*path, note.rsplit(" @ attribute ", 1)[1])
    if isinstance(exc, ClassValidationError) and exc.exceptions:
        return _first_error(exc.exceptions[0], path)
    return exc, path


def _message(exc: BaseException) -> str:
    """One line naming the section, the key and what is accepted."""
    leaf, path = _first_error(exc)
    if isinstance(leaf, _BadValue) and path:  # a key's value: [section] key must be ...
        section = ".".join(path[:-1])
        return f"[{section}] {path[-1]} {leaf}" if section else f"[{path[-1]}] {leaf}"
    section = ".".join(part for part in path if part != "network")
    if isinstance(leaf, ForbiddenExtraKeysError):
        leaf = _Refused(sorted(leaf.extra_fields)[0], {f.name for f in attrs.fields(leaf.cl)} - {"source"})
    if isinstance(leaf, _Refused):
        hint = close_matches(leaf.key, leaf.accepted)
        return (
            f"[{section or 'top level'}] has no key {leaf.key!r}{leaf.hint}; accepted keys: "
            f"{', '.join(leaf.accepted)}." + (f" Did you mean {hint[0]!r}?" if hint else "")
        )
    if isinstance(leaf, KeyError):
        return f"[{section}] needs the key {leaf.args[0]!r}" if section else f"the config needs [{leaf.args[0]}]"
    text = error_text(leaf)
    return f"[{section}] {text}" if section else text


def parse(raw: Any, cls: type) -> Any:
    """An instance of a config class from a TOML table, or one ConfigError naming the section,
    the key and what is accepted."""
    try:
        return CONVERTER.structure(raw, cls)
    except ConfigError:
        raise
    except Exception as exc:  # cattrs gathers every kind of error in an exception group
        raise ConfigError(_message(exc)) from None


def parse_section(raw: Any, cls: type, section: str) -> Any:
    """A section read on its own (``--sampler FILE``): errors name it as in a whole config."""
    try:
        return CONVERTER.structure(raw, cls)
    except Exception as exc:
        exc.add_note(f"Structuring class Config @ attribute {section}")
        raise ConfigError(_message(exc)) from None


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's tables, or one ConfigError naming the file and why it cannot be read."""
    path = Path(path).expanduser()
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a folder; give a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); give a TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise ConfigError(f"{what} {path} is a binary file, not TOML text")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate the structure of a TOML config (parts are checked by ``assemble.check_config``)."""
    raw = read_toml(path, "config file")
    try:
        return Config.from_dict(raw, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
