"""Building what a config names and checking it against the registry: the SDE, the
sampler, the data set, the network, and the score to sample from."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor

from sdeplug import distributed
from sdeplug.app.config import Config, LikelihoodConfig, SamplerConfig
from sdeplug.app.datasets import LOADER_OPTIONS, Dataset, check_data_options, load_dataset
from sdeplug.app.limits import check_device, check_fits
from sdeplug.checkpoint import CheckpointError
from sdeplug.compiling import compile_score
from sdeplug.errors import ConfigError, DataMismatchWarning, SdeplugError
from sdeplug.grids import end_time, load_grid_file, tuned_grid_mismatches
from sdeplug.interfaces import SDE, LinearSDE, ScoreFn, ScoreModel
from sdeplug.oracle import PRESETS
from sdeplug.parameterization import ParameterizedScore
from sdeplug.registry import Registry, get_registry
from sdeplug.sampling import Constraint, SampleResult, sample_ode, sample_pc, steps_for_budget
from sdeplug.tensors import derived_seed
from sdeplug.trainer import TrainSettings, load_ema_weights


def build_sde(config: Config, registry: Registry | None = None) -> SDE:
    """The [sde] part with its options."""
    return (registry or get_registry()).create("sde", config.sde.name, **config.sde.options)


def check_sde_finite(sde: SDE, config: Config) -> None:
    """Refuse an SDE whose horizon or coefficients are not finite (an option of inf or an
    overflow), before it is blamed on the score model."""
    where = f"[sde] {config.sde.name!r}" + "".join(f", {k} = {v!r}" for k, v in config.sde.options.items())
    if not (isinstance(sde.T, (int, float)) and 0 < sde.T < math.inf):
        raise ConfigError(f"{where}: T = {sde.T!r}; T must be a finite positive number")
    t = torch.tensor([sde.T, sde.T / 2, sde.default_eps], dtype=torch.float64)
    coefficients = {"diffusion": lambda: sde.diffusion(t)}
    if isinstance(sde, LinearSDE):
        coefficients.update(alpha=lambda: sde.alpha(t), sigma=lambda: sde.sigma(t))
    for name, value in coefficients.items():
        bad = ~torch.isfinite(value().reshape(3, -1)).all(-1)
        if bad.any():
            at = float(t[bad.nonzero()[0, 0]])
            raise ConfigError(f"{where}: its {name} at t = {at:g} is not finite; every option must be finite")


def _check_end_times(config: Config, sde: SDE) -> None:
    """Every eps of the config lies in [0, T) of its SDE."""
    sections = {"sampler": config.sampler.eps, "likelihood": config.likelihood.eps, "train": config.train.eps}
    if config.classifier is not None:
        sections["classifier.train"] = config.classifier.train.eps
    for section, eps in sections.items():
        if eps is not None and not eps < sde.T:
            raise ConfigError(
                f"[{section}] eps = {eps!r} must lie in [0, T) = [0, {sde.T:g}) for [sde] {config.sde.name!r}"
            )


def check_sampler(sampler: SamplerConfig, sde: SDE, registry: Registry | None = None) -> None:
    """Build every part the [sampler] names once, so a wrong name or option fails before any work."""
    registry = registry or get_registry()

    def placeholder(x, t):
        return x

    if sampler.grid is not None:
        registry.resolve("time_grid", sampler.grid.name, options=sampler.grid.options, sde=sde)
        _check_tuned_grid(sampler, sde)
    if sampler.kind == "ode":
        solver = registry.create("ode_solver", sampler.solver.name, **sampler.solver.options)
        if sampler.grid is not None and sampler.steps is None and getattr(solver, "steps", None) is None:
            raise ConfigError(f"[sampler.grid] needs [sampler] steps: ODE solver {sampler.solver.name!r} has no steps")
    else:
        registry.create("predictor", sampler.predictor.name, sde, placeholder, **sampler.predictor.options)
        registry.create("corrector", sampler.corrector.name, sde, placeholder, **sampler.corrector.options)


def _check_tuned_grid(sampler: SamplerConfig, sde: SDE) -> None:
    """A [sampler.grid] tuned file used with the predictor, SDE and eps it was tuned for (unless
    allow_mismatch = true), and a warning where the step count differs."""
    options = sampler.grid.options
    if sampler.grid.name != "tuned" or "file" not in options or options.get("allow_mismatch"):
        return
    content = load_grid_file(options["file"])
    predictor = None if sampler.kind == "ode" else sampler.predictor
    problems = tuned_grid_mismatches(
        content,
        sde=sde,
        eps=end_time(sde, sampler.eps),
        predictor=predictor.name if predictor is not None else f"ode solver {sampler.solver.name}",
        predictor_options=predictor.options if predictor is not None else {},
    )
    if problems:
        raise ConfigError(
            f"[sampler.grid] file {options['file']!r} was tuned for {'; '.join(problems)}: tune one for this "
            "[sampler] (sdeplug tune-grid), or set allow_mismatch = true in [sampler.grid] to use it anyway"
        )


def check_config(config: Config, registry: Registry | None = None, *, likelihood: bool = False) -> SDE:
    """Validate every part name and option against the registry; return the built SDE.

    The [likelihood] solver is checked when the section is given or ``likelihood`` is set.
    """
    registry = registry or get_registry()
    sde = build_sde(config, registry)
    check_sde_finite(sde, config)
    _check_end_times(config, sde)
    check_device(config.sample.device)
    check_data_options(config.data.name, config.data.options)
    check_sampler(config.sampler, sde, registry)
    if likelihood or config.likelihood != LikelihoodConfig():
        solver = registry.create("ode_solver", config.likelihood.solver.name, **config.likelihood.solver.options)
        if config.likelihood.quadrature is not None and not getattr(solver, "dense_output", False):
            raise ConfigError(
                f"[likelihood] quadrature needs a [likelihood.solver] with dense output (such as dopri5); "
                f"{config.likelihood.solver.name!r} has none: remove quadrature or change the solver"
            )
    if config.model.name == "oracle":
        if config.model.options:
            raise ConfigError("[model] 'oracle' (the exact score of the [data] mixture) takes no options")
        if config.sample.compile:
            raise ConfigError("[sample] compile = true compiles a network; [model] 'oracle' has none: remove it")
        if config.data.name not in PRESETS:
            raise ConfigError(
                f"[model] 'oracle' needs an oracle mixture as [data] ({', '.join(sorted(PRESETS))}); "
                f"got {config.data.name!r}. Train a score model for other data"
            )
    else:
        registry.check_options("score_model", config.model.name, config.model.options)
    if config.classifier is not None:
        registry.check_options("classifier", config.classifier.network.name, config.classifier.network.options)
    registry.check_options("feature_extractor", config.evaluate.features.name, config.evaluate.features.options)
    guidance = config.guidance
    if guidance is not None:
        if guidance.kind == "classifier" and config.classifier is None:
            raise ConfigError(
                "[guidance] kind = 'classifier' needs a [classifier] section naming the network, "
                "e.g. name = 'conv_classifier'"
            )
        if guidance.kind != "classifier" and config.sampler.kind != "pc":
            raise ConfigError(
                f"[guidance] kind = {guidance.kind!r} uses the replacement method, which needs [sampler] kind = 'pc'"
            )
    return sde


def sampler_steps(sampler: SamplerConfig, sde: SDE, event_shape: tuple[int, ...]) -> int:
    """A pc [sampler]'s steps: ``steps``, the most that fit in ``nfe``, or the paper's 1000."""
    if sampler.nfe is None:
        return sampler.steps if sampler.steps is not None else 1000
    try:
        return steps_for_budget(
            sde, sampler.nfe, event_shape, predictor=sampler.predictor.name,
            predictor_options=sampler.predictor.options, corrector=sampler.corrector.name,
            corrector_options=sampler.corrector.options, denoise=sampler.denoise, eps=sampler.eps,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(f"[sampler] {exc}") from None


def run_sampler(
    sampler: SamplerConfig,
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
    """Sample ``shape`` with the [sampler] (``constraint``, e.g. inpainting: pc only)."""
    common: dict[str, Any] = dict(
        eps=sampler.eps, denoise=sampler.denoise, generator=generator, device=device, dtype=dtype
    )
    if sampler.grid is not None:
        common.update(grid=sampler.grid.name, grid_options=sampler.grid.options)
    if sampler.kind == "ode":
        if constraint is not None:
            raise ConfigError("a constraint (inpainting, measurements) needs [sampler] kind = 'pc'")
        return sample_ode(
            sde,
            score,
            shape,
            solver=sampler.solver.name,
            solver_options=sampler.solver.options,
            steps=sampler.steps,
            **common,
        )
    return sample_pc(
        sde,
        score,
        shape,
        predictor=sampler.predictor.name,
        predictor_options=sampler.predictor.options,
        corrector=sampler.corrector.name,
        corrector_options=sampler.corrector.options,
        steps=sampler_steps(sampler, sde, tuple(shape[1:])),
        order=sampler.order,
        progress=progress,
        constraint=constraint,
        **common,
    )


def in_batches(num: int, batch_size: int | None, run: Callable[[int, int], Any]) -> tuple[Tensor, int]:
    """``run(first, size)`` over batches of ``num`` items, each returning a result with ``x``
    and ``nfe`` (a SampleResult); the ``x`` joined on the CPU, and the largest ``nfe``."""
    batch = batch_size or num
    chunks, nfe = [], 0
    for first in range(0, num, batch):
        result = run(first, min(batch, num - first))
        chunks.append(result.x.detach().cpu())
        nfe = max(nfe, int(result.nfe))
    return torch.cat(chunks), nfe


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch ``index`` of a run seeded ``seed``: the seed itself for the first batch
    (a run in one batch draws what ``generator=Generator().manual_seed(seed)`` draws), a hash of
    (seed, index) for the others."""
    if index == 0:
        return seed
    return derived_seed("batch", seed, index)


def in_seeded_batches(
    num: int,
    batch_size: int | None,
    seed: int,
    device: torch.device,
    run: Callable[[int, int, torch.Generator], Any],
) -> tuple[Tensor, int]:
    """``run(first, size, generator)`` over the batches of ``num`` items, each batch with its own
    generator seeded by ``batch_seed(seed, index)``; under torchrun the batches are shared out
    over the ranks (batch i on rank i mod N). Every rank returns the ``x`` of all batches joined
    in order on the CPU, and the largest ``nfe``: the same whatever the number of processes."""
    size = batch_size or num
    firsts = range(0, num, size)
    mine = {}
    for index, first in enumerate(firsts):
        if index % distributed.world_size() == distributed.rank():
            generator = torch.Generator(device).manual_seed(batch_seed(seed, index))
            result = run(first, min(size, num - first), generator)
            mine[index] = (result.x.detach().cpu(), int(result.nfe))
    done = {index: part for parts in distributed.gather_objects(mine) for index, part in parts.items()}
    return torch.cat([done[i][0] for i in range(len(firsts))]), max(part[1] for part in done.values())


@attrs.frozen
class PerBatch:
    """A score chosen for each batch, ``make(first, size)``: a conditional model bound to the
    labels of samples first .. first + size - 1."""

    make: Callable[[int, int], ScoreFn]


def sample_seeded(
    sampler: SamplerConfig,
    sde: SDE,
    score: ScoreFn | PerBatch,
    event_shape: tuple[int, ...],
    num: int,
    batch_size: int | None,
    seed: int,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    progress: bool,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, int]:
    """``num`` samples drawn in seeded batches (``in_seeded_batches``), on every rank; and the NFE
    per sample. ``decode`` (a latent model's) turns each batch into data on the device."""

    def run(first: int, size: int, generator: torch.Generator) -> SampleResult:
        result = run_sampler(
            sampler,
            sde,
            score.make(first, size) if isinstance(score, PerBatch) else score,
            (size, *event_shape),
            generator=generator,
            device=device,
            dtype=dtype,
            progress=progress and distributed.is_main(),
        )
        if decode is None:
            return result
        with torch.no_grad():
            return attrs.evolve(result, x=decode(result.x))

    return in_seeded_batches(num, batch_size, seed, device, run)


def decoder_of(score: ScoreFn) -> Callable[[Tensor], Tensor] | None:
    """A latent model's decoder (its network's ``decode``: a diffusers pipeline's VAE), or None."""
    network = getattr(score, "network", None)
    return getattr(network, "decode", None)


def summary_header(config: Config) -> dict[str, Any]:
    """What every report of a run starts with: the config file, the model and the SDE."""
    return {"config": config.source, "model": config.model.name, "sde": {"name": config.sde.name, **config.sde.options}}


#: The kind of part each recorded section of a checkpoint names.
_SECTION_KINDS = {"sde": "sde", "model": "score_model", "classifier": "classifier"}


def part_settings(section: str, table: Mapping[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """Every setting of the part a config table names, defaults included, so that two tables
    naming the same part compare equal however many defaults they write out. An SDE is built
    and its options read back; a part that cannot be resolved any more is its table."""
    registry = registry or get_registry()
    name, options = table.get("name"), {k: v for k, v in table.items() if k != "name"}
    try:
        if section == "data":
            chosen = check_data_options(name, options)
            return {"name": name, **{k: v for k, v in chosen.items() if k not in LOADER_OPTIONS}}
        if section == "sde":
            _, cls, own = registry.identify("sde", registry.create("sde", name, **options))
            return {"name": name, "class": cls, **own}
        defaults = registry.options(_SECTION_KINDS[section], name) or {}
        given = {k: d for k, d in defaults.items() if d is not inspect.Parameter.empty}
        return {"name": name, **given, **options}
    except (SdeplugError, KeyError, TypeError):
        return dict(table)


def same_run(recorded: Mapping[str, Any], expected: Mapping[str, Any], sections: Iterable[str]) -> list[str]:
    """The sections whose parts differ between a checkpoint's recorded config and the config now
    (sections the checkpoint does not record are not compared)."""
    return [
        section
        for section in sections
        if recorded.get(section) is not None
        and part_settings(section, recorded[section]) != part_settings(section, expected[section])
    ]


def check_provenance(
    path: Path,
    recorded: Mapping[str, Any],
    expected: Mapping[str, Any],
    sections: tuple[str, ...],
    *,
    data: bool = True,
) -> None:
    """Refuse a checkpoint trained with other [sections] than the config says, comparing the
    parts' settings; with ``data``, warn if it was trained on other [data]."""
    for section in same_run(recorded, expected, sections):
        raise CheckpointError(
            f"{path} was trained with [{section}] {recorded[section]}, but the config says "
            f"{expected[section]}; using it with another {section} would be wrong"
        )
    if data and same_run(recorded, expected, ("data",)):
        warnings.warn(
            f"{path} was trained on [data] {recorded['data']}, but the config names {expected['data']}; "
            "the samples follow the training data, and comparisons with this data set may mislead",
            DataMismatchWarning,
            stacklevel=2,
        )


def build_dataset(config: Config) -> Dataset:
    """The [data] set with its options."""
    return load_dataset(config.data.name, **config.data.options)


def check_sizes(config: Config, dataset: Dataset, *, train: TrainSettings | None = None) -> None:
    """Refuse, before allocating, a [sample] num or batch_size (or with ``train``, a [train]
    steps or batch_size) whose tensors alone cannot fit in memory."""
    item = torch.empty((), dtype=config.sample.torch_dtype).element_size()
    numel = math.prod(dataset.event_shape)
    device = config.sample.device
    if train is not None:
        check_fits(f"[train] steps = {train.steps}", train.steps * 8, device)  # loss and gradient-norm histories
        check_fits(f"[train] batch_size = {train.batch_size}", train.batch_size * numel * item, device)
        return
    run = config.sample
    check_fits(f"[sample] num = {run.num}", run.num * numel * item)  # the samples, gathered on the host
    if run.batch_size is not None:
        check_fits(f"[sample] batch_size = {run.batch_size}", run.batch_size * numel * item, device)


def build_network(config: Config, dataset: Dataset | None) -> torch.nn.Module:
    """The [model] network, shaped for the data unless the config gives event_shape; refused
    if it declares the SDE it was made for (``sde_name``, a paper preset's) and [sde] names another."""
    options = dict(config.model.options)
    if dataset is not None:
        options.setdefault("event_shape", dataset.event_shape)
    network = get_registry().create("score_model", config.model.name, **options)
    made_for = getattr(network, "sde_name", None)
    if made_for is not None and made_for != config.sde.name:
        preset = f" preset {options['preset']!r}" if "preset" in options else ""
        raise ConfigError(
            f"[model] {config.model.name!r}{preset} is made for the SDE {made_for!r}, but [sde] name is "
            f"{config.sde.name!r}; set [sde] name = {made_for!r}, or choose a preset made for {config.sde.name!r}"
        )
    declared = getattr(network, "sde_options", None) or {}
    given = {**(get_registry().options("sde", config.sde.name) or {}), **config.sde.options}  # defaults filled in
    differ = {k: (v, given.get(k)) for k, v in declared.items() if given.get(k) != v}
    if differ:
        said = ", ".join(f"{k} = {ours!r} where the model has {theirs!r}" for k, (theirs, ours) in differ.items())
        raise ConfigError(
            f"[sde] {said}: the [model] brings its own SDE; leave [sde] out to take it, or make them agree"
        )
    return network


def sampling_data(config: Config) -> tuple[Dataset, torch.nn.Module | None]:
    """The data set of a job that only samples, and the network if it had to be built to learn
    its shape. With no [data] named, a network needs none: a stand-in without rows takes the
    shape of one sample from [model] event_shape, or from the network's own declaration (a
    pretrained diffusers UNet's)."""
    if config.data_named or config.model.name == "oracle":
        return build_dataset(config), None
    network = None
    shape = config.model.options.get("event_shape")
    if shape is None:  # a network's default shape is no evidence: only pretrained weights know theirs
        network = build_network(config, None)
        shape = getattr(network, "event_shape", None) if getattr(network, "pretrained", False) else None
    if shape is None:
        raise ConfigError(
            f"the config names no [data], so [model] {config.model.name!r} needs event_shape = [...], the shape "
            "of one sample (e.g. [3, 32, 32]), to be sampled; or name the [data] it was trained on"
        )
    empty = torch.empty(0, *shape, dtype=torch.float64)
    return Dataset(name="none", train=empty, test=empty), network


def default_checkpoint(config: Config) -> Path:
    return Path(config.output.dir).expanduser() / "checkpoint.safetensors"


def run_config_dict(config: Config) -> dict:
    """What a checkpoint records of the config, to refuse a mismatched one later."""
    return {
        "sde": {"name": config.sde.name, **config.sde.options},
        "model": {"name": config.model.name, **config.model.options},
        "data": {"name": config.data.name, **config.data.options},
    }


def build_score(
    config: Config,
    sde: SDE,
    dataset: Dataset,
    checkpoint: str | Path | None,
    device: torch.device,
    dtype: torch.dtype | None = None,
    network: torch.nn.Module | None = None,
) -> ScoreModel:
    """The exact oracle score, or the trained network's EMA weights from a checkpoint (into
    ``network`` when it is already built)."""
    if config.model.name == "oracle":
        if dataset.mixture is None:
            raise ConfigError(f"[model] 'oracle' needs an oracle mixture as [data]; got {config.data.name!r}")
        return dataset.mixture.to(device).score_model(sde)
    network = network if network is not None else build_network(config, dataset)
    if getattr(network, "pretrained", False):  # its weights came with it (a diffusers folder)
        if checkpoint is not None:
            raise ConfigError(f"[model] {config.model.name!r} brings its own weights; --checkpoint does not apply")
        score = ParameterizedScore(network.to(device=device, dtype=dtype).eval(), sde, network.parameterization)
        return compile_score(score, device) if config.sample.compile else score
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint(config)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; train first with `sdeplug train {config.source}`")
    meta = load_ema_weights(network, path)
    # a converted file records the data its convert config named, not data it was trained on
    check_data = config.data_named and meta.get("kind") != "weights"
    check_provenance(path, meta.get("config", {}), run_config_dict(config), ("sde", "model"), data=check_data)
    parameterization = meta["settings"]["parameterization"]
    score = ParameterizedScore(network.to(device=device, dtype=dtype).eval(), sde, parameterization)
    return compile_score(score, device) if config.sample.compile else score
