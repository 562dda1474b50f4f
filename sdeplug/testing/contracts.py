"""Contract checks that any part, bundled or third-party, must pass.

Each ``check_*`` takes a registered name, a class or a built part (resolved as the
samplers resolve them), builds it with its options, runs its checks against closed
forms (forward simulation, normalisation, the Gaussian-mixture oracle, exactly
solvable ODEs), and raises ``ContractError`` with a message that names the method
at fault and the numbers that show it. It returns a ``ContractReport`` of what was
checked and what did not apply.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor

from sdeplug.errors import IncompatiblePartError, SdeplugError, error_text
from sdeplug.grids import log_snr_grid
from sdeplug.interfaces import (
    SDE,
    LinearSDE,
    Predictor,
)
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.registry import get_registry, part_name, part_options
from sdeplug.sampling import sample_pc
from sdeplug.stats import EnergyNull, assert_same_law, energy_null
from sdeplug.tensors import per_sample
from sdeplug.testing import probes
from sdeplug.testing.simulate import simulate_forward
from sdeplug.testing.strategies import option_sets

F64 = torch.float64


class ContractError(AssertionError):
    """A part broke its contract; the message says which method and how."""


class ContractSkipWarning(UserWarning):
    """Checks of a part's contract that did not apply to it, and why (shown by pytest)."""


@attrs.define
class ContractReport:
    """What a contract check verified, and what did not apply to the part."""

    part: str
    passed: list[str] = attrs.field(factory=list)
    skipped: list[str] = attrs.field(factory=list)

    def __str__(self) -> str:
        lines = [f"{self.part}: {len(self.passed)} checks passed"]
        lines += [f"  ok    {p}" for p in self.passed]
        lines += [f"  skip  {s}" for s in self.skipped]
        return "\n".join(lines)


def _resolve(kind: str, spec: Any, options: dict[str, Any] | None = None) -> tuple[str, type, dict[str, Any]]:
    """(name, class, every option) of a part given as a name, a class or a built part."""
    return get_registry().identify(kind, spec, options)


def _fail(message: str) -> None:
    raise ContractError(message)


def _hypothesis(examples: int):
    # No shrinking: each example is a costly simulation, and the first failure already
    # says which method is wrong and with which parameters.
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
        report_multiple_bugs=False,
    )


@functools.cache
def _mixture_and_null(name: str = "mixture3", n: int = 2000) -> tuple[GaussianMixture, EnergyNull]:
    mixture = preset(name)
    return mixture, energy_null(lambda k, g: mixture.sample(k, g), n, reps=20)


def _default_sdes() -> list[SDE]:
    """Every registered LinearSDE (the bundled ones and every plugin's, a plugin's own
    included), built with its defaults: the oracle's exact scores need alpha(t) and sigma(t).
    A name two plugins claim is left out here; ``sdeplug plugins`` reports it."""
    registry = get_registry()
    built = []
    for name in registry.names("sde"):
        try:
            if issubclass(registry.get("sde", name).cls, LinearSDE):
                built.append(registry.create("sde", name))
        except SdeplugError:
            continue
    return built


def _example_sdes(plugin: str) -> list[SDE]:
    """The LinearSDEs a plugin registers, each built with one set of its ``example_options()``
    that differs from its defaults (the first drawn), so that the plugin's predictors and
    correctors are also checked away from its SDEs' defaults."""
    registry = get_registry()
    built = []
    for info in registry.parts():
        if info.kind != "sde" or info.plugin != plugin or not issubclass(info.cls, LinearSDE):
            continue
        declared = option_sets(info.cls.example_options())
        for example in _draw(declared, 4):
            example = {k: v for k, v in example.items() if k not in info.fixed}
            if example and _with_defaults(info.cls, example) != _with_defaults(info.cls, {}):
                built.append(registry.create("sde", info.name, **example))
                break
    return built


def _as_sdes(sdes: Sequence[Any] | None) -> list[SDE] | None:
    """``sdes=`` given as registered names, classes or instances, built."""
    if sdes is None:
        return None
    if isinstance(sdes, (str, SDE)) or isinstance(sdes, type):
        sdes = [sdes]
    return [get_registry().resolve("sde", spec) for spec in sdes]


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# SDEs -------------------------------------------------------------------------------


def check_sde(spec: str | type[SDE], *, examples: int = 4, n_paths: int = 20_000) -> ContractReport:
    """Interface, marginals against simulation, prior density, discretisation, reverse SDE.

    SDE parameters come from the class's ``example_options()`` hypothesis strategy.
    """
    name, cls, fixed = _resolve("sde", spec)
    report = ContractReport(f"sde {name!r}")
    default = cls(**fixed)
    has_marginals = default.has_marginals()

    for device in _devices():
        for dtype in (torch.float32, F64):
            for shape in ((3,), (1, 4, 4)):
                _check_sde_interface(default, shape, dtype, device, has_marginals)
    report.passed.append("shapes, dtypes and devices of every method; seeded prior sampling")

    overrides_t_from_log_snr = (
        isinstance(default, LinearSDE) and type(default).t_from_log_snr is not LinearSDE.t_from_log_snr
    )
    closed_forms = _overridden_closed_forms(default)

    @_hypothesis(examples)
    @given(
        options=option_sets(cls.example_options()),
        t=st.floats(0.05, 1.0),
        shape=st.sampled_from([(1,), (3,), (1, 2, 2)]),
        seed=st.integers(0, 2**31 - 1),
    )
    def properties(options, t, shape, seed):
        sde = cls(**{**fixed, **options})
        if has_marginals:
            _check_marginals(sde, t * sde.T, shape, seed, n_paths)
        _check_discretize(sde, t * sde.T, seed)
        _check_reverse_formula(sde, t * sde.T, seed)
        if isinstance(sde, LinearSDE):
            _check_transitions(sde, t * sde.T)
            if overrides_t_from_log_snr:
                _check_t_from_log_snr(sde)
            for method in closed_forms:
                CLOSED_FORMS[method](sde, t * sde.T, seed)

    properties()
    if has_marginals:
        report.passed.append("marginal_prob agrees with simulation of drift and diffusion")
    else:
        report.skipped.append("marginals: no marginal_prob")
    report.passed.append("discretize tends to drift dt and diffusion sqrt(dt)")
    report.passed.append("reverse() has drift f - g^2 s (SDE) and f - g^2 s / 2 (probability flow)")
    if isinstance(default, LinearSDE):
        report.passed.append("transition kernels compose and start from the marginals (alpha, sigma)")
    if overrides_t_from_log_snr:
        report.passed.append("the overridden t_from_log_snr inverts log_snr")
    elif isinstance(default, LinearSDE):
        report.skipped.append("t_from_log_snr: not overridden (the default bisection is exact by construction)")
    for method in closed_forms:
        report.passed.append(f"the overridden {method} agrees with alpha(t) and sigma(t)")

    _check_prior(default)
    report.passed.append("prior_logp is the normalised density of prior_sampling")

    if isinstance(default, LinearSDE):
        _check_reverse_sampling(default)
        report.passed.append("reverse SDE and probability-flow ODE with the exact score recover the data law")
    else:
        report.skipped.append("reverse-time sampling: not a LinearSDE, no exact score to sample with")
    return report


def _check_sde_interface(sde: SDE, shape, dtype, device, has_marginals: bool) -> None:
    where = f"(event shape {shape}, {dtype}, {device})"
    x = torch.randn(4, *shape, dtype=dtype, device=device)
    t = torch.linspace(0.1, 0.9, 4, dtype=dtype, device=device) * sde.T
    checks: list[tuple[str, Tensor, tuple[int, ...]]] = [
        ("drift(x, t)", sde.drift(x, t), x.shape),
        ("diffusion(t)", sde.diffusion(t), (4,)),
        ("prior_logp(z)", sde.prior_logp(x), (4,)),
    ]
    f, G = sde.discretize(x, t, torch.full_like(t, 0.01))
    checks += [("discretize(...)[0]", f, x.shape), ("discretize(...)[1]", G, (4,))]
    if has_marginals:
        mean, std = sde.marginal_prob(x, t)
        checks += [("marginal_prob(...)[0]", mean, x.shape), ("marginal_prob(...)[1]", std, (4,))]
    g1 = torch.Generator(device).manual_seed(3)
    z = sde.prior_sampling((4, *shape), g1, device, dtype)
    checks.append(("prior_sampling(shape)", z, x.shape))
    for label, value, expected in checks:
        if (
            tuple(value.shape) != tuple(expected)
            or value.dtype != dtype
            or value.device.type != torch.device(device).type
        ):
            _fail(
                f"{label} returned shape {tuple(value.shape)}, {value.dtype} on {value.device} {where}; "
                f"expected shape {tuple(expected)}, {dtype} on {device}"
            )
    again = sde.prior_sampling((4, *shape), torch.Generator(device).manual_seed(3), device, dtype)
    if not torch.equal(z, again):
        _fail(f"prior_sampling is not reproducible with a seeded generator {where}: draw noise from `generator`")


def _check_marginals(sde: SDE, t: float, shape, seed: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x0 = (2 * torch.randn((1, *shape), generator=g, dtype=F64)).expand(n, *shape)
    mean0, std0 = sde.marginal_prob(x0, torch.zeros(n, dtype=F64))
    start = mean0 + std0[0] * torch.randn(x0.shape, generator=g, dtype=F64)
    tt = torch.full((n,), t, dtype=F64)
    xt = simulate_forward(sde, start, tt, steps=200, generator=g)
    mean, std = sde.marginal_prob(x0, tt)
    sd = float(std[0])
    error = (xt.mean(0) - mean[0]).abs().max()
    if float(error) > 5 * sd / math.sqrt(n) + 1e-9:
        _fail(
            f"marginal_prob mean at t = {t:.4g} is off by {float(error):.4g} from the mean of {n} paths simulated "
            f"from drift() and diffusion() ({float(error) / (sd / math.sqrt(n)):.1f} standard errors). "
            f"Check marginal_prob's mean (alpha(t)) against drift()."
        )
    ratio = math.sqrt(float(xt.var(0).mean())) / sd
    tol = 5 * math.sqrt(1 / (2 * n * x0[0].numel()))  # 5 standard errors of a std estimate
    if abs(ratio - 1) > tol:
        _fail(
            f"marginal_prob std at t = {t:.4g} is {1 / ratio:.4f} times the std of {n} paths simulated from "
            f"drift() and diffusion() (allowed: 1 +- {tol:.4f}). Check marginal_prob's std (sigma(t)) against "
            f"diffusion()."
        )


def _check_discretize(sde: SDE, t: float, seed: int) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed), dtype=F64)
    tt = torch.full((3,), t, dtype=F64)
    drift, g = sde.drift(x, tt), sde.diffusion(tt)
    dt = 1e-5
    f, G = sde.discretize(x, tt, torch.full((3,), dt, dtype=F64))
    scale = float(drift.abs().max()) + 1e-12
    if float((f / dt - drift).abs().max()) > 1e-2 * scale + 1e-9:
        _fail(
            f"discretize(x, t={t:.4g}, dt={dt:g}) gives f / dt = {(f / dt)[0, :2].tolist()} but drift(x, t) = "
            f"{drift[0, :2].tolist()}: the discretisation must tend to the SDE as dt -> 0"
        )
    if float((G / math.sqrt(dt) - g).abs().max()) > 1e-2 * (float(g.abs().max()) + 1e-12):
        _fail(
            f"discretize(x, t={t:.4g}, dt={dt:g}) gives G / sqrt(dt) = {float(G[0] / math.sqrt(dt)):.6g} but "
            f"diffusion(t) = {float(g[0]):.6g}: the discretisation must tend to the SDE as dt -> 0"
        )


def _check_transitions(sde: LinearSDE, t: float) -> None:
    """Chapman-Kolmogorov for the Gaussian kernels, and the kernel from 0 against the marginals."""
    s_, u = torch.tensor([0.3 * t], dtype=F64), torch.tensor([0.6 * t], dtype=F64)
    tt = torch.tensor([t], dtype=F64)
    a_su, v_su = sde.transition(s_, u)
    a_ut, v_ut = sde.transition(u, tt)
    a_st, v_st = sde.transition(s_, tt)
    if not (
        torch.allclose(a_st, a_su * a_ut, rtol=1e-6)
        and torch.allclose(v_st, a_ut**2 * v_su + v_ut, rtol=1e-6, atol=1e-12)
    ):
        _fail(
            f"transition(s, t) does not compose at s = {float(s_):.4g}, u = {float(u):.4g}, t = {t:.4g}: "
            f"scale {float(a_st):.6g} vs {float(a_su * a_ut):.6g}, variance {float(v_st):.6g} vs "
            f"{float(a_ut**2 * v_su + v_ut):.6g}. Check transition() against alpha(t) and sigma(t)."
        )
    zero = torch.zeros(1, dtype=F64)
    a0, v0 = sde.transition(zero, tt)
    expected_v = sde.sigma(tt) ** 2 - (a0 * sde.sigma(zero)) ** 2
    if not (
        torch.allclose(a0, sde.alpha(tt) / sde.alpha(zero), rtol=1e-6)
        and torch.allclose(v0, expected_v, rtol=1e-6, atol=1e-12)
    ):
        _fail(
            f"transition(0, t) at t = {t:.4g} is ({float(a0):.6g}, {float(v0):.6g}) but the marginals give "
            f"({float(sde.alpha(tt) / sde.alpha(zero)):.6g}, {float(expected_v):.6g}): transition() disagrees with "
            "alpha(t) and sigma(t)"
        )


def _check_reverse_formula(sde: SDE, t: float, seed: int) -> None:
    g_ = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, generator=g_, dtype=F64)
    tt = torch.full((3,), t, dtype=F64)
    shift = torch.randn(3, 4, generator=g_, dtype=F64)

    def score(y, _t):
        return -(y - shift) / 2.0

    f, g2, s = sde.drift(x, tt), per_sample(sde.diffusion(tt) ** 2, x), score(x, tt)
    for probability_flow, weight, label in ((False, 1.0, "f - g^2 s"), (True, 0.5, "f - g^2 s / 2")):
        reverse = sde.reverse(score, probability_flow=probability_flow)
        got, want = reverse.drift(x, tt), f - weight * g2 * s
        if not torch.allclose(got, want, rtol=1e-6, atol=1e-9):
            flipped = torch.allclose(got, f + weight * g2 * s, rtol=1e-6, atol=1e-9)
            kind = "probability-flow ODE" if probability_flow else "reverse SDE"
            _fail(
                f"reverse(score, probability_flow={probability_flow}).drift is not {label} at t = {t:.4g}"
                + (
                    ": it is f + g^2 s, the sign of the score term is flipped"
                    if flipped
                    else f": max difference {float((got - want).abs().max()):.4g}"
                )
                + f" (the {kind} would not reverse the forward SDE)"
            )
        want_g = torch.zeros_like(sde.diffusion(tt)) if probability_flow else sde.diffusion(tt)
        if not torch.allclose(reverse.diffusion(tt), want_g):
            _fail(
                f"reverse(score, probability_flow={probability_flow}).diffusion(t) should be "
                f"{'0' if probability_flow else 'g(t)'}; got {reverse.diffusion(tt).tolist()}"
            )


def _check_prior(sde: SDE, n: int = 50_000, dim: int = 3, *, scale: bool = True) -> None:
    """prior_logp is the normalised density of prior_sampling: E_{z~prior}[q(z) / p(z)] = 1 for
    any normalised q. For a LinearSDE both also have the scale of the marginal at T of
    unit-variance data (the importance check alone has no power when the samples are the
    wider side: its weights then have infinite variance)."""
    z = sde.prior_sampling((n, dim), torch.Generator().manual_seed(0), "cpu", F64)
    logp = sde.prior_logp(z)
    if not isinstance(logp, Tensor) or logp.shape != (n,):
        shape = tuple(logp.shape) if isinstance(logp, Tensor) else type(logp).__name__
        _fail(f"prior_logp returned {shape} for {n} samples; it must return one log-density per sample, shape (batch,)")
    if not bool(torch.isfinite(logp).all()):
        _fail(f"prior_logp returned non-finite values for samples of prior_sampling (first: {float(logp[0])!r})")
    few = sde.prior_logp(z[:3])
    if not torch.allclose(few, logp[:3], rtol=1e-9, atol=1e-9):
        _fail(
            f"prior_logp of a sample depends on the rest of the batch: the same 3 samples get {few.tolist()} alone and "
            f"{logp[:3].tolist()} among {n}; sum over each sample's own coordinates only (a sum or mean over the "
            "whole batch, or its size, in the density?)"
        )
    mean, std = z.mean(0), z.std(0)
    log_q = torch.distributions.Normal(mean, std).log_prob(z).sum(1)
    log_w = log_q - logp
    # E[w] and its standard error in the log domain: a density off by a large factor must not overflow.
    log_mean = float(torch.logsumexp(log_w, 0)) - math.log(n)
    relative = torch.exp(log_w - log_w.max())
    log_se = float(log_w.max()) + math.log(max(float(relative.std()), 1e-300)) - 0.5 * math.log(n)
    m = math.exp(log_mean) if log_mean < 700 else math.inf
    se = math.exp(log_se) if log_se < 700 else math.inf
    samples, density, expected = _prior_scales(sde, z)
    off_scale = scale and expected is not None and max(abs(samples / expected - 1), abs(density / expected - 1)) > 0.1
    if not math.isfinite(m) or abs(m - 1) > 5 * se + 0.02 or off_scale:
        _fail(
            f"prior_sampling and prior_logp disagree: E[q(z) / p(z)] = {m:.4g} +- {se:.2g} over {n} samples "
            f"z ~ prior_sampling, with q a Gaussian fitted to them (it is 1 when prior_logp is their log-density; "
            f"log E = {log_mean:+.3f} nats). "
            f"{_prior_diagnosis(samples, density, expected)}"
        )


def _prior_scales(sde: SDE, z: Tensor) -> tuple[float, float, float | None]:
    """The samples' std; the density's scale from its curvature at the origin
    (log p(0) - log p(h e_1) = h^2 / (2 s^2) for a Gaussian); and for a LinearSDE the std
    both should have, that of the marginal at T of unit-variance data."""
    samples = float(z.std())
    h = max(samples, 1e-6)
    probe = torch.zeros(2, z.shape[1], dtype=F64)
    probe[1, 0] = h
    drop = float(sde.prior_logp(probe)[0] - sde.prior_logp(probe)[1])
    density = h / math.sqrt(2 * drop) if drop > 0 else float("inf")
    if not isinstance(sde, LinearSDE):
        return samples, density, None
    tt = torch.tensor([float(sde.T)], dtype=F64)
    return samples, density, math.sqrt(float(sde.alpha(tt)) ** 2 + float(sde.sigma(tt)) ** 2)


def _prior_diagnosis(samples: float, density: float, expected: float | None) -> str:
    """Which side is wrong: the scale of the samples, the scale of the density, or its constant."""
    if expected is None:
        return f"The samples have std {samples:.4g}, the density the scale of std {density:.4g}: " + (
            "the normalising constant of prior_logp is missing or wrong."
            if abs(density / samples - 1) < 0.05
            else "one of them has the wrong scale."
        )
    marginal = f"the marginal at T (sqrt(alpha(T)^2 + sigma(T)^2) = {expected:.4g})"
    samples_ok, density_ok = abs(samples / expected - 1) <= 0.1, abs(density / expected - 1) <= 0.1
    if samples_ok and density_ok:
        return f"Both have the scale of {marginal}: the normalising constant of prior_logp is missing or wrong."
    if density_ok:
        return f"prior_sampling is at fault: its samples have std {samples:.4g}; prior_logp and {marginal} agree."
    if samples_ok:
        return f"prior_logp is at fault: it is the density of std {density:.4g}; prior_sampling and {marginal} agree."
    return f"Both have the wrong scale: samples of std {samples:.4g}, a density of std {density:.4g}, and {marginal}."


def _check_log_snr(sde: LinearSDE, t: float, seed: int) -> None:
    tt = torch.tensor([t], dtype=F64)
    got, expected = sde.log_snr(tt), 2 * (torch.log(sde.alpha(tt)) - torch.log(sde.sigma(tt)))
    if not torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
        _fail(
            f"log_snr is not 2 (log alpha(t) - log sigma(t)): at t = {t:.4g} it gives {float(got):.6g}, alpha and "
            f"sigma give {float(expected):.6g}. Check the closed form (factors of 2, the sign) or drop the override."
        )


def _check_marginal_prob(sde: LinearSDE, t: float, seed: int) -> None:
    x0 = torch.randn(4, 3, dtype=F64, generator=torch.Generator().manual_seed(seed))
    tt = torch.full((4,), t, dtype=F64)
    mean, std = sde.marginal_prob(x0, tt)
    alpha, sigma = per_sample(sde.alpha(tt), x0), sde.sigma(tt)
    if not (torch.allclose(mean, alpha * x0, rtol=1e-6, atol=1e-9) and torch.allclose(std, sigma, rtol=1e-6)):
        _fail(
            f"marginal_prob(x0, t) at t = {t:.4g} is not (alpha(t) x0, sigma(t)): its std is {float(std[0]):.6g} "
            f"against sigma(t) = {float(sigma[0]):.6g}, its mean {float((mean / (alpha * x0)).mean()):.6g} times "
            "alpha(t) x0. Check the override, or drop it: a LinearSDE derives marginal_prob from alpha and sigma."
        )


def _check_data_prediction(sde: LinearSDE, t: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, score = torch.randn(4, 3, dtype=F64, generator=g), torch.randn(4, 3, dtype=F64, generator=g)
    tt = torch.full((4,), t, dtype=F64)
    alpha, sigma = per_sample(sde.alpha(tt), x), per_sample(sde.sigma(tt), x)
    expected = (x + sigma**2 * score) / alpha
    got = sde.data_prediction(x, tt, score)
    if not torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
        _fail(
            f"data_prediction(x, t, score) at t = {t:.4g} is not Tweedie's formula (x + sigma(t)^2 score) / alpha(t): "
            f"largest difference {float((got - expected).abs().max()):.3g}. Check the override, or drop it."
        )


#: LinearSDE methods with a closed form in alpha and sigma, checked when a subclass overrides them.
CLOSED_FORMS: dict[str, Callable[[LinearSDE, float, int], None]] = {
    "log_snr": _check_log_snr,
    "marginal_prob": _check_marginal_prob,
    "data_prediction": _check_data_prediction,
}


def _overridden_closed_forms(sde: SDE) -> list[str]:
    if not isinstance(sde, LinearSDE):
        return []
    return [m for m in CLOSED_FORMS if getattr(type(sde), m) is not getattr(LinearSDE, m)]


def _check_t_from_log_snr(sde: LinearSDE) -> None:
    """An overridden t_from_log_snr must invert log_snr on (0, T]."""
    t = torch.linspace(0.02, 1.0, 50, dtype=F64) * sde.T
    back = sde.t_from_log_snr(sde.log_snr(t))
    error = (back - t).abs()
    worst = int(error.argmax())
    if not bool(torch.isfinite(back).all()) or float(error[worst]) > 1e-6 * sde.T:
        _fail(
            f"t_from_log_snr is not the inverse of log_snr: t_from_log_snr(log_snr(t)) = {float(back[worst]):.6g} at "
            f"t = {float(t[worst]):.6g} (log_snr = {float(sde.log_snr(t[worst : worst + 1])):.6g}). Check the "
            "closed form against log_snr(t) = 2 (log alpha(t) - log sigma(t)), factors of 2 included, or drop the "
            "override: the default bisects log_snr to the last bit."
        )


def _reverse_sample(sde: LinearSDE, score, x: Tensor, steps: int, probability_flow: bool) -> Tensor:
    """The kit's own sampler, written only against sde.reverse(): Euler-Maruyama, or Heun for the ODE."""
    reverse = sde.reverse(score, probability_flow=probability_flow)
    times = torch.linspace(sde.T, sde.default_eps, steps + 1, dtype=x.dtype)
    g = torch.Generator().manual_seed(1)
    batch = x.shape[0]
    for i in range(steps):
        t, t_next = times[i].expand(batch), times[i + 1].expand(batch)
        dt = per_sample(t_next - t, x)
        d1 = reverse.drift(x, t)
        if probability_flow:
            x_pred = x + d1 * dt
            x = x + 0.5 * (d1 + reverse.drift(x_pred, t_next)) * dt
        else:
            noise = (
                per_sample(reverse.diffusion(t), x) * torch.sqrt(-dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
            )
            x = x + d1 * dt + noise
    t = times[-1].expand(batch)
    return sde.data_prediction(x, t, score(x, t))


def _check_reverse_sampling(sde: LinearSDE) -> None:
    mixture, null = _mixture_and_null()
    score = mixture.score_model(sde)
    x_T = sde.prior_sampling((null.n, 2), torch.Generator().manual_seed(0), "cpu", F64)
    for probability_flow, steps, what in (
        (False, 1000, "the reverse SDE (Euler-Maruyama, 1000 steps)"),
        (True, 200, "the probability-flow ODE (Heun, 200 steps)"),
    ):
        x = _reverse_sample(sde, score, x_T.clone(), steps, probability_flow)
        try:
            assert_same_law(x, lambda k, g: mixture.sample(k, g), null=null)
        except AssertionError as exc:
            _fail(
                f"{what} from prior_sampling with the exact score does not recover the data law: {exc}. "
                "Check reverse(), prior_sampling and that alpha(t), sigma(t) match drift() and diffusion()."
            )


# Predictors --------------------------------------------------------------------------


def _start(
    kind: str, spec: Any, sdes: Sequence[Any] | None, options: dict[str, Any] | None, *, oracle: bool = True
) -> tuple[str, type, list[dict[str, Any]], ContractReport, list[SDE]]:
    """Name, class, the option sets to check, an empty report and the SDEs to check a part
    with. A contract that would check nothing fails: a pass without a check would say nothing."""
    name, cls, defaults = _resolve(kind, spec, options)
    report = ContractReport(f"{kind} {name!r}")
    candidates = _as_sdes(sdes)
    given = candidates is not None
    candidates = _default_sdes() if candidates is None else candidates
    targets = _accepted(cls, candidates, oracle)
    accepted = getattr(cls, "sde_types", (SDE,))
    if not targets:
        wanted = " or ".join(c.__name__ for c in accepted)
        offered = ", ".join(f"{part_name(s)} ({type(s).__name__})" for s in candidates) or "none"
        needs = " with closed-form marginals (LinearSDE, which the exact scores need)" if oracle else ""
        _fail(
            f"{kind} {name!r} was checked against no SDE, so its contract would check nothing: it accepts "
            f"sde_types = {wanted}, and the {'SDEs given' if given else 'registered SDEs'}{needs} are: {offered}. "
            "Register an SDE it accepts in your plugin (register_sdes), or pass sdes=[...] (registered names, "
            "classes or instances)."
        )
    sets = [defaults] if options is not None else _option_sets(kind, name, cls, spec, defaults)
    for options in sets[1:]:  # each declared set is built once, so a bad one is named as such
        supplied = (targets[0], _unit_gaussian_score(targets[0])) if kind != "time_grid" else ()
        try:
            get_registry().resolve(kind, cls, *supplied, options=options)
        except SdeplugError as exc:
            _fail(f"{kind} {name!r}: example_options() declares {options!r}, which is refused: {error_text(exc)}")
    return name, cls, sets, report, targets


def _accepted(cls: type, sdes: Sequence[SDE], oracle: bool = True) -> list[SDE]:
    """The SDEs a part accepts (``sde_types``), LinearSDEs only where the checks need exact scores."""
    accepted = getattr(cls, "sde_types", (SDE,))
    return [s for s in sdes if isinstance(s, accepted) and (isinstance(s, LinearSDE) or not oracle)]


#: How many option sets the kit draws from an example_options() strategy of a predictor or corrector.
EXAMPLE_DRAWS = 3


def _draw(strategy, count: int) -> list[Any]:
    """``count`` examples of a hypothesis strategy, the same on every run."""
    drawn: list[Any] = []

    @_hypothesis(count)
    @given(strategy)
    def collect(example):
        drawn.append(example)

    collect()
    return drawn


def _option_sets(kind: str, name: str, cls: type, spec: Any, defaults: dict[str, Any]) -> list[dict[str, Any]]:
    """The part's options as given (its defaults, or a preset's fixed ones) and each set its
    ``example_options()`` declares (a list, or ``EXAMPLE_DRAWS`` draws of a strategy), each
    checked like a user's options; duplicates once."""
    declared = getattr(cls, "example_options", lambda: ())()
    if not isinstance(declared, st.SearchStrategy) and not (
        isinstance(declared, (list, tuple)) and all(isinstance(d, Mapping) for d in declared)
    ):
        _fail(
            f"{kind} {name!r}: example_options() must return a list of option dicts or a hypothesis strategy of "
            f"them; got {type(declared).__name__} {declared!r:.100}"
        )
    if not isinstance(declared, st.SearchStrategy) and not declared:
        return [defaults]
    examples = _draw(option_sets(declared), EXAMPLE_DRAWS) if isinstance(declared, st.SearchStrategy) else declared
    by_name_or_class = isinstance(spec, (str, type))
    fixed = get_registry().get(kind, spec).fixed if isinstance(spec, str) else {}
    sets: list[dict[str, Any]] = []
    for example in [{}, *examples]:
        example = {k: v for k, v in dict(example).items() if k not in fixed}  # a preset keeps its own
        try:
            base, given = (spec, example) if by_name_or_class else (cls, {**defaults, **example})
            _, _, options = _resolve(kind, base, given)
        except SdeplugError as exc:
            _fail(f"{kind} {name!r}: example_options() declares {example!r}, which is refused: {error_text(exc)}")
        if all(_with_defaults(cls, options) != _with_defaults(cls, seen) for seen in sets):
            sets.append(options)
    return sets


def _with_defaults(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """The options with every default of the constructor filled in: equal sets compare equal."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return options
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **options}


def _label(sde: SDE, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> str:
    """The SDE (with its options that differ from its defaults), and the part's options that
    differ from the part's defaults."""
    changed = {k: v for k, v in options.items() if defaults is None or defaults.get(k, _MISSING) != v}
    return _sde_label(sde) + (f", options {changed}" if changed else "")


def _sde_label(sde: SDE) -> str:
    accepted = part_options(type(sde)) or {}
    own = {}
    for option, default in accepted.items():
        value = getattr(sde, option, getattr(sde, f"_{option}", default))
        if default is not inspect.Parameter.empty and value != default:
            own[option] = value
    return type(sde).__name__ + (f"({', '.join(f'{k}={v!r}' for k, v in own.items())})" if own else "")


_MISSING = object()


def _check_cases(
    kind: str,
    spec: Any,
    sdes: Sequence[Any] | None,
    options: dict[str, Any] | None,
    local_sdes: Sequence[Any],
    check_on: Callable[..., None],
) -> ContractReport:
    """Run ``check_on(name, cls, options, sde, label, report, local_only=...)`` for each option
    set on each SDE to check, then with the local checks alone on each of ``local_sdes``."""
    name, cls, sets, report, targets = _start(kind, spec, sdes, options)
    local = _accepted(cls, _as_sdes(local_sdes) or [])
    cases = [(sde, False) for sde in targets] + [(sde, True) for sde in local]
    for sde, _ in cases:
        _check_sde_first(sde, f"{kind} {name!r}")
    for options in sets:
        for sde, local_only in cases:
            check_on(name, cls, options, sde, _label(sde, options, sets[0]), report, local_only=local_only)
    return report


_SOUND_SDES: set[str] = set()


def _check_sde_first(sde: SDE, part: str) -> None:
    """The quick closed-form checks of the SDE a part is checked on, once per SDE and process:
    a fault of the SDE is reported as the SDE's, not blamed on the predictor or corrector."""
    key = f"{type(sde).__module__}.{type(sde).__qualname__}:{_sde_label(sde)}"
    if key in _SOUND_SDES:
        return
    try:
        if isinstance(sde, LinearSDE):
            if type(sde).t_from_log_snr is not LinearSDE.t_from_log_snr:
                _check_t_from_log_snr(sde)
            for method in _overridden_closed_forms(sde):
                for t in (0.1, 0.5, 0.9):
                    CLOSED_FORMS[method](sde, t * sde.T, 0)
        _check_prior(sde, scale=False)  # an SDE built with example options need not fit unit-variance data
    except ContractError as exc:
        raise ContractError(
            f"{part} was not checked on {_sde_label(sde)}: that SDE fails its own contract first: {exc}"
        ) from None
    _SOUND_SDES.add(key)


def check_predictor(
    spec: Any,
    *,
    sdes: Sequence[Any] | None = None,
    steps: int = 500,
    options: dict[str, Any] | None = None,
    local_sdes: Sequence[Any] = (),
) -> ContractReport:
    """Shapes and dtypes, the explicit state, seeded determinism, one short step that carries
    p_t to p_t_next, the right law with the exact score, and the orders the built part
    declares (``weak_order``, ``ode_order``) on Gaussian problems with a known solution; for
    its options as given, or else its defaults and each set its ``example_options()`` declares."""
    return _check_cases(
        "predictor", spec, sdes, options, local_sdes, functools.partial(_check_predictor_on, steps=steps)
    )


def _check_predictor_on(
    name: str,
    cls: type,
    options: dict[str, Any],
    sde: SDE,
    label: str,
    report: ContractReport,
    *,
    steps: int,
    local_only: bool = False,
) -> None:
    mixture, null = _mixture_and_null()
    score = mixture.score_model(sde)
    gaussian = cls(sde, _unit_gaussian_score(sde), **options)  # any event shape
    where = f"predictor {name!r} with {label}"
    _check_step_interface(sde, lambda x, t, g, part=gaussian, at=where: _first_step(part, x, t, g, at), where)
    if getattr(gaussian, "identity", False):
        _check_identity(lambda x, t, part=gaussian, at=where: _first_step(part, x, t, None, at), f"predictor {name!r}")
        report.passed.append(f"{label}: shapes, dtypes, leaves x unchanged (declared identity)")
        return
    _probe_step(
        lambda x, t, g, part=gaussian, at=where: _first_step(part, x, t, g, at), gaussian, sde, where, label, report
    )
    _check_one_step(cls, sde, options, where)
    report.passed.append(f"{label}: one short step carries p_t to p_t_next (mean and variance within 5%)")
    if local_only:
        return
    # From exact samples of p_T, not prior_sampling: the predictor is on trial, and an SDE
    # built with example options need not make its prior match p_T of this data.
    generator = torch.Generator().manual_seed(0)
    result = sample_pc(
        sde,
        score,
        predictor=cls,
        predictor_options=options,
        corrector="none",
        steps=steps,
        x_init=mixture.sample(null.n, generator, sde, sde.T),
        generator=generator,
        dtype=F64,
    )
    try:
        assert_same_law(result.x, lambda k, g: mixture.sample(k, g), null=null)
    except AssertionError as exc:
        _fail(
            f"{where}, {steps} steps and the exact score does not recover the data "
            f"law: {exc}. Its step does not follow the reverse SDE from t to t_next."
        )
    report.passed.append(f"{label}: shapes, dtypes, seeded determinism, recovers the data law in {steps} steps")
    declared = getattr(gaussian, "weak_order", None)
    if declared is not None:
        observed, errors = weak_order(cls, sde, options)
        if observed < declared - 0.3:
            _fail(
                f"{where}: observed weak order {observed:.2f} is below its declared "
                f"weak_order {declared:g} (relative errors {', '.join(f'{e:.2e}' for e in errors)} at "
                f"{', '.join(map(str, WEAK_ORDER_STEPS))} steps): the step is of a lower order than claimed, "
                "or inconsistent"
            )
        report.passed.append(f"{label}: observed weak order {observed:.2f} (declared {declared:g})")
    else:
        report.skipped.append(f"{label}: weak order (none declared)")
    declared = getattr(gaussian, "ode_order", None)
    if declared is not None:
        observed, errors = ode_order(cls, sde, options)
        if observed < declared - 0.3:
            _fail(
                f"{where}: observed order {observed:.2f} on the probability-flow ODE is "
                f"below its declared ode_order {declared:g} (largest errors against the exact flow "
                f"{', '.join(f'{e:.2e}' for e in errors)} at {', '.join(map(str, ODE_ORDER_STEPS))} steps "
                "uniform in log-SNR): a term of the step is missing or mis-weighted"
            )
        report.passed.append(
            f"{label}: observed order {observed:.2f} on the probability-flow ODE (declared {declared:g})"
        )


#: Gaussian data N(mean, std^2) per coordinate for the one-step and balance checks.
_DATA_MEAN, _DATA_STD = 0.3, 0.5


def _gaussian_marginal(sde: LinearSDE, t: float) -> tuple[float, float]:
    """Mean and variance of p_t for the Gaussian data."""
    tt = torch.tensor([t], dtype=F64)
    a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
    return a * _DATA_MEAN, a**2 * _DATA_STD**2 + s**2


def _exact_samples(sde: LinearSDE, t: float, n: int, seed: int = 0) -> Tensor:
    """n samples of p_t for the Gaussian data (1-D), moment-matched: their mean and variance are exact."""
    mean, var = _gaussian_marginal(sde, t)
    z = torch.randn(n, 1, dtype=F64, generator=torch.Generator().manual_seed(seed))
    return mean + (z - z.mean()) / z.std(correction=0) * math.sqrt(var)


def _check_times(sde: LinearSDE) -> list[float]:
    """Where the one-step and balance checks look: where the noise is a third of the signal's
    scale (log-SNR 2), where they are equal (log-SNR 0), and at 0.3 T."""
    at = sde.t_from_log_snr(torch.tensor([2.0, 0.0], dtype=F64)).tolist()
    low = min(10 * sde.default_eps, 0.01 * sde.T)  # an SDE whose log-SNR never reaches 2 or 0 maps them to an end
    times = [min(max(t, low), sde.T) for t in [*at, 0.3 * sde.T]]
    return sorted(set(times), key=times.index)


#: Samples, length in log-SNR and tolerance of the one-step check.
ONE_STEP_SAMPLES, ONE_STEP_LOG_SNR, ONE_STEP_TOLERANCE = 100_000, 0.1, 0.05


def _check_one_step(cls: type, sde: LinearSDE, options: dict[str, Any], where: str) -> None:
    """One step, over a grid of that step alone, from exact samples of p_t for Gaussian data to
    t_next (log-SNR 0.1 higher): mean and variance of p_t_next within 5%. Consistent steps are
    within a fraction of a percent; a wrong noise scale or a score at the wrong time is off by
    tens of percent, even where the multi-step checks average it away."""
    score = GaussianMixture([1.0], [[_DATA_MEAN]], stds=[_DATA_STD]).score_model(sde)
    for t in _check_times(sde):
        log_snr = sde.log_snr(torch.tensor([t], dtype=F64))
        t_next = float(sde.t_from_log_snr(log_snr + ONE_STEP_LOG_SNR))
        if not 0 < t_next < t:  # log-SNR 0.1 higher lies beyond t = 0
            t_next = 0.5 * t
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options,
            corrector="none",
            grid=torch.tensor([t, t_next], dtype=F64),
            denoise=False,
            x_init=_exact_samples(sde, t, ONE_STEP_SAMPLES),
            generator=torch.Generator().manual_seed(1),
            dtype=F64,
        ).x
        mean, var = _gaussian_marginal(sde, t_next)
        ratio, shift = float(x.var()) / var, (float(x.mean()) - mean) / math.sqrt(var)
        if not (abs(ratio - 1) <= ONE_STEP_TOLERANCE and abs(shift) <= ONE_STEP_TOLERANCE):
            _fail(
                f"{where}: one step of step() from exact samples of p_t at t = {t:.4g} to t_next = {t_next:.4g} "
                f"(Gaussian data, exact score, {ONE_STEP_SAMPLES} samples) gives variance {ratio:.3g} times "
                f"that of p_t_next and a mean {shift:+.3g} of its std off (a correct step is within "
                f"{ONE_STEP_TOLERANCE:.0%}): check the scale of the noise the step adds (a std, not a variance) "
                "and the time at which it evaluates the score (the noise level x has when it is evaluated)"
            )


def _probe_step(step: Callable, part: Any, sde: SDE, where: str, label: str, report: ContractReport) -> None:
    """The statistics-free probes of one step (``sdeplug.testing.probes``): seed dependence as
    declared, float64 precision, and batch independence unless the part declares coupling."""
    if isinstance(part, Predictor):
        weak, ode = getattr(part, "weak_order", None), getattr(part, "ode_order", None)
        declared = True if weak is not None else (False if ode is not None else None)
        why = (
            f"it declares weak_order {weak:g} (a stochastic sampler)"
            if weak is not None
            else f"it declares ode_order {ode:g} (a deterministic step)"
            if ode is not None
            else ""
        )
    else:
        declared, why = True, "a corrector is an MCMC step that draws noise"
    shown = probes.check_seed_dependence(step, sde.T, declared, where, why)
    if declared is None:
        report.skipped.append(f"{label}: seed dependence ({shown}; declare weak_order or ode_order to have it checked)")
    else:
        report.passed.append(f"{label}: {shown}, as {why.split(' (')[0].replace('it ', '')}")
    probes.check_float64_precision(step, sde.T, where)
    report.passed.append(f"{label}: a float64 step responds to a 1e-9 relative change of x, linearly")
    if getattr(part, "batch_coupled", False):
        report.skipped.append(f"{label}: batch independence (the part declares batch_coupled = True)")
    else:
        probes.check_batch_independence(step, sde.T, where)
        report.passed.append(f"{label}: each sample's step ignores the rest of the batch")


def _first_step(part: Predictor, x: Tensor, t: Tensor, generator, where: str) -> Tensor:
    """One step from t to t - 0.01 through the explicit-state protocol: init, then step."""
    t_next = t - 0.01
    state = part.init(x, torch.stack([t[0], t_next[0]]))
    out = part.step(x, t, t_next, state, generator, jumped=False)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], Tensor)):
        _fail(
            f"{where}: step(x, t, t_next, state, generator, jumped=...) must return (x, state); got "
            f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}"
        )
    return out[0]


def _check_identity(call: Callable, label: str) -> None:
    x = torch.randn(5, 2, dtype=F64)
    if not torch.equal(call(x, torch.full((5,), 0.5, dtype=F64)), x):
        _fail(f"{label} declares identity = True but changes x")


def _unit_gaussian_score(sde: SDE):
    """The exact score of p_t for N(0, I) data under a LinearSDE (-x for others): any shape."""

    def score(x, t):
        if isinstance(sde, LinearSDE):
            return -x / per_sample(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, x)
        return -x

    return score


def _check_step_interface(sde: SDE, call: Callable, label: str) -> None:
    for device in _devices():
        for dtype in (torch.float32, F64):
            x = torch.randn(3, 1, 2, 2, dtype=dtype, device=device)
            t = torch.full((3,), 0.5 * sde.T, dtype=dtype, device=device)
            out = call(x, t, torch.Generator(device).manual_seed(0))
            again = call(x, t, torch.Generator(device).manual_seed(0))
            if not isinstance(out, Tensor):
                _fail(f"{label}: step returned {type(out).__name__}; it must return the new x (a tensor)")
            if out.shape != x.shape or out.dtype != dtype or out.device.type != torch.device(device).type:
                _fail(
                    f"{label}: step returned shape {tuple(out.shape)}, {out.dtype} on {out.device} "
                    f"for x of shape {tuple(x.shape)}, {dtype} on {device}"
                )
            if not torch.equal(out, again):
                _fail(f"{label}: two steps with generators seeded alike differ: draw noise from `generator`")


def observed_order(steps: Sequence[int], errors: Sequence[float]) -> float:
    """The least-squares slope of -log2(error) against log2(steps), on the errors' envelope.

    Each error is first raised to the largest error at any finer step count: an error
    that crosses zero between two step counts (a lucky cancellation at a coarse grid)
    would otherwise pass for accuracy the method does not have. An inconsistent or
    lower-order method keeps its flat or shallow envelope and still fails.
    """
    envelope = [max(errors[i:]) for i in range(len(errors))]
    logs = torch.log2(torch.tensor(envelope, dtype=F64))
    levels = torch.log2(torch.tensor(list(steps), dtype=F64))
    slope = float(((levels - levels.mean()) * (logs - logs.mean())).sum() / ((levels - levels.mean()) ** 2).sum())
    return -slope


#: Step counts at which weak_order measures the error.
WEAK_ORDER_STEPS: tuple[int, ...] = (8, 16, 32, 64)


def weak_order(
    cls: type[Predictor],
    sde: SDE,
    options: dict[str, Any] | None = None,
    steps: Sequence[int] = WEAK_ORDER_STEPS,
    n: int = 100_000,
    seed: int = 0,
) -> tuple[float, list[float]]:
    """Observed weak order on Gaussian data: from exact samples of p_T down to t = 0.2, the
    relative error of the mean and variance against the exact p_0.2; the order is ``observed_order``."""
    data = GaussianMixture([1.0], [[0.3]], stds=[0.5])
    score = data.score_model(sde)
    t_end = _weak_order_end(sde)
    tt = torch.tensor([t_end], dtype=F64)
    alpha, sigma = (float(sde.alpha(tt)), float(sde.sigma(tt))) if isinstance(sde, LinearSDE) else (None, None)
    exact_mean, exact_var = alpha * 0.3, alpha**2 * 0.25 + sigma**2
    errors = []
    # Common to every step count, and moment-matched to p_T exactly: what remains is the
    # discretisation error (plus the noise a stochastic step injects).
    x_T = data.sample(n, torch.Generator().manual_seed(seed), sde, sde.T)
    t_T = torch.tensor([sde.T], dtype=F64)
    alpha_T, sigma_T = float(sde.alpha(t_T)), float(sde.sigma(t_T))
    x_T = (x_T - x_T.mean()) / x_T.std() * math.sqrt(alpha_T**2 * 0.25 + sigma_T**2) + alpha_T * 0.3
    for k in steps:
        g = torch.Generator().manual_seed(seed * 1000 + k)
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options or {},
            corrector="none",
            steps=k,
            eps=t_end,
            denoise=False,
            x_init=x_T,
            generator=g,
            dtype=F64,
        ).x
        errors.append(abs(float(x.var()) / exact_var - 1) + abs(float(x.mean()) - exact_mean) / math.sqrt(exact_var))
    return observed_order(steps, errors), errors


def _weak_order_end(sde: SDE) -> float:
    """Where the weak-order runs stop: at 0.2 T, or earlier where the noise std has fallen to
    the signal's scale (sigma = alpha), so that the data's part of p_t is not lost in noise
    (for sigma(t) = t up to T = 80, 0.2 T would stop where p_t is the prior to 1e-3)."""
    if not isinstance(sde, LinearSDE):
        return 0.2 * sde.T
    equal = float(sde.t_from_log_snr(torch.zeros(1, dtype=F64)))
    return min(0.2 * sde.T, equal)


#: Step counts at which ode_order measures the error.
ODE_ORDER_STEPS: tuple[int, ...] = (16, 32, 64, 128)


def ode_order(
    cls: type[Predictor], sde: SDE, options: dict[str, Any] | None = None, steps: Sequence[int] = ODE_ORDER_STEPS
) -> tuple[float, list[float]]:
    """Observed order of a deterministic predictor on the probability-flow ODE of Gaussian
    data N(0.3, 0.5^2), whose flow is known exactly: x_t = a_t m + (S_t / S_T)(x_T - a_T m)
    with S_t^2 = a_t^2 v + sigma_t^2. From 65 points spread over p_T down to the SDE's eps,
    on grids uniform in log-SNR; the largest error per step count, the order by ``observed_order``."""
    if not isinstance(sde, LinearSDE):
        raise TypeError("ode_order needs a LinearSDE: the exact flow comes from alpha(t) and sigma(t)")
    mean, var = 0.3, 0.25
    data = GaussianMixture([1.0], [[mean]], stds=[math.sqrt(var)])
    score = data.score_model(sde)
    t_end = sde.default_eps

    def spread(t: float) -> tuple[float, float]:
        tt = torch.tensor([t], dtype=F64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        return a, math.sqrt(a**2 * var + s**2)

    (a_T, S_T), (a_end, S_end) = spread(sde.T), spread(t_end)
    x_T = a_T * mean + S_T * torch.linspace(-3, 3, 65, dtype=F64)[:, None]
    exact = a_end * mean + (S_end / S_T) * (x_T - a_T * mean)
    errors = []
    for k in steps:
        x = sample_pc(
            sde,
            score,
            predictor=cls,
            predictor_options=options or {},
            corrector="none",
            grid=log_snr_grid(sde, k, t_end),
            denoise=False,
            x_init=x_T,
            dtype=F64,
        ).x
        errors.append(float((x - exact).abs().max() / S_end))
    return observed_order(steps, errors), errors


# Correctors --------------------------------------------------------------------------


def check_corrector(
    spec: Any,
    *,
    sdes: Sequence[Any] | None = None,
    sweeps: int = 50,
    options: dict[str, Any] | None = None,
    local_sdes: Sequence[Any] = (),
) -> ContractReport:
    """Shapes and dtypes, seeded determinism, the balance of drift and noise in one step (at
    whatever step size the corrector takes), and invariance: exact samples of p_t stay
    distributed as p_t after ``sweeps`` steps with the exact score; for its options as given,
    or else its defaults and each set its ``example_options()`` declares."""
    return _check_cases(
        "corrector", spec, sdes, options, local_sdes, functools.partial(_check_corrector_on, sweeps=sweeps)
    )


def _check_corrector_on(
    name: str,
    cls: type,
    options: dict[str, Any],
    sde: SDE,
    label: str,
    report: ContractReport,
    *,
    sweeps: int,
    local_only: bool = False,
) -> None:
    mixture, null = _mixture_and_null()
    corrector = cls(sde, mixture.score_model(sde), **options).for_grid(_kit_grid(sde))
    gaussian = cls(sde, _unit_gaussian_score(sde), **options).for_grid(_kit_grid(sde))  # any event shape
    where = f"corrector {name!r} with {label}"
    _check_step_interface(sde, lambda x, t, g, part=gaussian: part.step(x, t, g), where)
    if getattr(gaussian, "identity", False):
        _check_identity(lambda x, t, part=gaussian: part.step(x, t), f"corrector {name!r}")
        report.passed.append(f"{label}: shapes, dtypes, leaves x unchanged (declared identity)")
        return
    probes.check_moves(lambda x, t, g, part=gaussian: part.step(x, t, g), sde.T, where)
    _probe_step(lambda x, t, g, part=gaussian: part.step(x, t, g), gaussian, sde, where, label, report)
    judged = _check_balance(cls, sde, options, where)
    if judged:
        report.passed.append(f"{label}: one step's noise adds the variance its drift removes (at t = {judged})")
    else:
        report.skipped.append(f"{label}: balance of drift and noise (the step moves x too little to judge)")
    if local_only:
        return
    t = 0.3 * sde.T
    g = torch.Generator().manual_seed(2)
    x = mixture.sample(null.n, g, sde, t)
    tt = torch.full((null.n,), t, dtype=F64)
    for _ in range(sweeps):
        x = corrector.step(x, tt, g)

    def sample_p_t(k, gen, sde=sde, t=t):
        return mixture.sample(k, gen, sde, t)

    try:
        assert_same_law(x, sample_p_t, null=energy_null(sample_p_t, null.n, reps=20))
    except AssertionError as exc:
        _fail(
            f"{where} does not leave p_t invariant: after {sweeps} steps at t = {t:g} "
            f"from exact samples of p_t, with the exact score, {exc}. Its drift and noise balance on Gaussian p_t "
            "(checked), so the fault shows only on a non-Gaussian law: the step does not follow the score it is "
            "given (a Gaussian or batch-statistics shortcut, clipping), or a step size tied to the batch."
        )
    report.passed.append(f"{label}: shapes, dtypes, seeded determinism, leaves p_t invariant ({sweeps} steps)")


def _kit_grid(sde: SDE, steps: int = 100) -> Tensor:
    """The grid correctors are told about (``for_grid``) in their checks: uniform, T to eps."""
    return torch.linspace(sde.T, sde.default_eps, steps + 1, dtype=F64)


#: Samples (pairs) of the balance check, and how far its ratio may stray.
BALANCE_SAMPLES, BALANCE_TOLERANCE = 50_000, 0.2


def _check_balance(cls: type, sde: LinearSDE, options: dict[str, Any], where: str) -> str:
    """One corrector step from exact samples of p_t = N(m, v) (Gaussian data, exact score).

    Its drift pulls x towards m by a factor b (the regression slope of the output on the
    input), removing (1 - b^2) v of variance; its noise must add it back. The statistic
    rho = (var(x') / v - 1) / (1 - b^2) is the excess of noise over that, in units of what
    the drift removes: 0 for an exact MCMC step, c / (2 - c) for unadjusted Langevin with
    c = 1 - b, -1/2 for noise sqrt(eps) instead of sqrt(2 eps), +1 for a halved drift,
    whatever the step size. Each sample is paired with its mirror image 2m - x under the
    same seed, so the sampling noise of the cross terms cancels and the check keeps its
    power at small steps. Returns the times judged (none if x hardly moves)."""
    score = GaussianMixture([1.0], [[_DATA_MEAN]], stds=[_DATA_STD]).score_model(sde)
    corrector = cls(sde, score, **options).for_grid(_kit_grid(sde))
    judged = []
    for t in _check_times(sde):
        mean, var = _gaussian_marginal(sde, t)
        x = _exact_samples(sde, t, BALANCE_SAMPLES)
        tt = torch.full((BALANCE_SAMPLES,), t, dtype=F64)
        y = corrector.step(x, tt, torch.Generator().manual_seed(3))
        y_mirror = corrector.step(2 * mean - x, tt, torch.Generator().manual_seed(3))
        xs, ys = torch.cat([x, 2 * mean - x]) - mean, torch.cat([y, y_mirror])
        spread = (xs**2).mean()  # the input's own variance: its rounding must not pass for a step's effect
        slope = float((xs * (ys - ys.mean())).mean() / spread)
        removed = 1 - slope**2
        ratio, shift = float(ys.var(correction=0) / spread), (float(ys.mean()) - mean) / math.sqrt(var)
        at = f"t = {t:.4g} (p_t = N({mean:.3g}, {var:.3g}), exact score, {2 * BALANCE_SAMPLES} samples)"
        if slope > 1 + 1e-9:
            _fail(
                f"{where}: step() pushes x away from the mode of p_t at {at}: one step multiplies the distance "
                f"to the mean by {slope:.6g}; its drift must follow the score (is its sign flipped?)"
            )
        contraction = 1 - slope
        if abs(ratio - 1) < 1e-12 and contraction < 1e-9:
            continue  # x hardly moves: nothing to judge at this t
        noise = math.sqrt(max(removed, 1e-300) / BALANCE_SAMPLES)
        if abs(shift) > 6 * noise + BALANCE_TOLERANCE * contraction * max(abs(mean) / math.sqrt(var), 1.0):
            _fail(
                f"{where}: one step of step() from exact samples of p_t at {at} moves their mean by {shift:+.3g} "
                f"of its std, while its drift contracts x by {contraction:.3g}: the drift does not point to the "
                "mode of p_t (a score for another time or data, or a wrong offset)"
            )
        rho = (ratio - 1) / removed
        if not -BALANCE_TOLERANCE <= rho <= BALANCE_TOLERANCE + contraction:
            side = (
                "too little noise for its drift: noise sqrt(eps) where Langevin needs sqrt(2 eps) for a drift "
                "eps * score, or a drift weighted too much"
                if rho < 0
                else "too much noise for its drift: a drift weighted too little (eps/2 * score with noise "
                "sqrt(2 eps)), or noise too large"
            )
            _fail(
                f"{where}: step() does not balance drift and noise at {at}: its drift removes {removed:.3g} of the "
                f"variance of p_t, its noise adds {removed + ratio - 1:.3g} ({1 + rho:.3g} times as much; p_t is "
                f"kept only if they are equal, up to the step's own bias): {side}. The step moves x by "
                f"{contraction:.3g} of its distance to the mean, whatever its step size."
            )
        judged.append(f"{t:.4g}")
    return ", ".join(judged)


# ODE solvers -------------------------------------------------------------------------


def check_ode_solver(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Exactly solvable ODEs forwards and backwards in float32 and float64, the function
    evaluations it reports, and for fixed-step solvers the order the built solver declares."""
    name, cls, options = _resolve("ode_solver", spec, options)
    report = ContractReport(f"ode_solver {name!r}")
    solver = cls(**options)
    order, adaptive = getattr(solver, "order", None), bool(getattr(solver, "adaptive", False))
    accepted = part_options(cls) or {}
    for device in _devices():
        for dtype in (torch.float32, F64):
            tuned = solver
            if adaptive and {"rtol", "atol"} <= accepted.keys():
                # An adaptive solver must converge as its tolerances tighten (the accuracy
                # contract is in float64; float32 only has to keep its dtype and stay sane).
                tol = 1e-5 if dtype == torch.float32 else 1e-8
                tuned = cls(**{**options, "rtol": tol, "atol": tol})
            for t0, t1 in ((0.0, 1.5), (1.5, 0.2)):
                _check_known_ode(tuned, name, order, adaptive, dtype, device, t0, t1)
            for t0, t1 in ((0.0, 1.0), (1.0, 0.0)):
                _check_stable_decay(solver, name, adaptive, dtype, device, t0, t1)
            if getattr(tuned, "dense_output", False):
                for t0, t1 in ((0.0, 1.5), (1.5, 0.2)):
                    _check_dense_output(tuned, name, dtype, device, t0, t1)
    report.passed.append(
        "dy/dt = -t y forwards and backwards, float32 and float64, with its NFE"
        + (" (adaptive: within 1e-5 at rtol = atol = 1e-8 in float64)" if adaptive else "")
    )
    if getattr(solver, "dense_output", False):
        report.passed.append("dense output: accepted steps from t0 to t1, and the states within them, with their NFE")
    else:
        report.skipped.append("dense output: not offered")
    report.passed.append("stable on a decaying ODE (rate 5, 100 steps) forwards and backwards")
    if not adaptive and order is not None:
        observed = _observed_order(solver)
        if observed < order - 0.3:
            _fail(
                f"ode_solver {name!r}: observed order {observed:.2f} on dy/dt = cos(t) y (40 vs 80 steps) is below "
                f"its declared order {order}"
            )
        report.passed.append(f"observed order {observed:.2f} (declared {order})")
    else:
        report.skipped.append("order of convergence: adaptive, or no order declared")
    return report


class _KnownODE:
    """dy/dt = -t y from a fixed y0, counting its calls: y(t) = y0 exp((t0^2 - t^2) / 2)."""

    def __init__(self, dtype, device) -> None:
        self.y0 = torch.tensor([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]], dtype=dtype, device=device)
        self.calls = 0

    def __call__(self, t, y):
        self.calls += 1
        return -t * y


def _check_known_ode(solver, name, order, adaptive, dtype, device, t0, t1) -> None:
    F = _KnownODE(dtype, device)
    y0 = F.y0
    grid = None if adaptive else torch.linspace(t0, t1, 401, dtype=dtype, device=device)
    solution = solver.solve(F, y0, t0, t1, grid=grid)
    exact = y0 * math.exp((t0**2 - t1**2) / 2)
    where = f"ode_solver {name!r} from t = {t0} to {t1} in {dtype} on {device}"
    if solution.y.shape != y0.shape or solution.y.dtype != dtype or solution.y.device.type != torch.device(device).type:
        _fail(
            f"{where}: solution of shape {tuple(solution.y.shape)}, {solution.y.dtype} for y0 of shape "
            f"{tuple(y0.shape)}, {dtype}"
        )
    if solution.nfe != F.calls:
        _fail(f"{where}: reported nfe = {solution.nfe} but F was called {F.calls} times")
    if adaptive:
        tol = 1e-2 if dtype == torch.float32 else 1e-5
    else:
        tol = max(1e-3 if (order or 1) >= 2 else 2e-2, 1e-4 if dtype == torch.float32 else 0)
    error = float(((solution.y - exact).abs() / exact.abs()).max())
    if error > tol:
        _fail(
            f"{where}: relative error {error:.2e} against the exact solution y0 exp((t0^2 - t1^2) / 2) "
            f"(allowed {tol:g}{', 400 steps' if not adaptive else ''})"
        )


def _check_dense_output(solver, name, dtype, device, t0, t1) -> None:
    """solve_dense: the same end state as an exact solution, its accepted steps running from t0
    to t1, and states at the steps' midpoints (and t1) that match the exact solution."""
    F = _KnownODE(dtype, device)
    y0 = F.y0
    where = f"ode_solver {name!r} solve_dense from t = {t0} to {t1} in {dtype} on {device}"
    solution = solver.solve_dense(F, y0, t0, t1)
    if solution.nfe != F.calls:
        _fail(f"{where}: reported nfe = {solution.nfe} but F was called {F.calls} times")
    tol = 1e-2 if dtype == torch.float32 else 1e-5
    exact_end = y0 * math.exp((t0**2 - t1**2) / 2)
    end_error = float(((solution.y - exact_end).abs() / exact_end.abs()).max())
    if end_error > tol:
        _fail(f"{where}: relative error {end_error:.2e} of the end state against the exact solution (allowed {tol:g})")
    steps = solution.steps.detach().to("cpu", F64)
    direction = 1.0 if t1 > t0 else -1.0
    if (
        steps.dim() != 1
        or steps.numel() < 2
        or abs(float(steps[0]) - t0) > 1e-6
        or abs(float(steps[-1]) - t1) > 1e-6
        or not bool(((steps[1:] - steps[:-1]) * direction > 0).all())
    ):
        _fail(f"{where}: steps must run strictly from t0 to t1, both included; got {steps.tolist()}")
    times = torch.cat([(steps[:-1] + steps[1:]) / 2, steps[-1:]]).to(device=device, dtype=dtype)
    before = F.calls
    states, nfe = solution.states_at(times)
    if nfe != F.calls - before:
        _fail(f"{where}: states_at reported nfe = {nfe} but F was called {F.calls - before} times")
    if tuple(states.shape) != (times.numel(), *y0.shape):
        _fail(f"{where}: states_at gave shape {tuple(states.shape)} for {times.numel()} times and y0 {tuple(y0.shape)}")
    exact = y0 * torch.exp((t0**2 - times.to(F64) ** 2) / 2).to(dtype)[:, None, None]
    error = float(((states - exact).abs() / exact.abs()).max())
    if error > tol:
        _fail(f"{where}: states_at at the steps' midpoints is off by {error:.2e} relative (allowed {tol:g})")


def _check_stable_decay(solver, name, adaptive, dtype, device, t0, t1) -> None:
    """y decays by exp(-5) from t0 to t1 at rate 5 per unit time, as the probability flow's
    stiff directions do near t = 0; 100 steps (lambda h = 0.05) must not blow it up."""
    rate = 5.0 if t1 > t0 else -5.0
    y0 = torch.tensor([[1.0, -2.0]], dtype=dtype, device=device)
    grid = None if adaptive else torch.linspace(t0, t1, 101, dtype=dtype, device=device)
    y1 = solver.solve(lambda t, y: -rate * y, y0, t0, t1, grid=grid).y
    decay = float((y1 / y0).max()), float((y1 / y0).min())
    exact = math.exp(-5.0)
    if not (0.5 * exact <= decay[1] and decay[0] <= 1.5 * exact):
        _fail(
            f"ode_solver {name!r} from t = {t0} to {t1} in {dtype} on {device}: unstable on dy/dt = {-rate:g} y "
            f"with 100 steps; y(t1) / y(t0) = {decay[0]:.3g}, exactly exp(-5) = {exact:.3g}. A stiff direction "
            f"like this one is what the probability flow has near t = 0."
        )


def _observed_order(solver) -> float:
    def error(steps: int) -> float:
        grid = torch.linspace(0.0, 2.0, steps + 1, dtype=F64)
        y = solver.solve(lambda t, y: torch.cos(t) * y, torch.ones(1, dtype=F64), 0.0, 2.0, grid=grid).y
        return abs(float(y) - math.exp(math.sin(2.0)))

    return math.log2(error(40) / error(80))


# Score models ------------------------------------------------------------------------


def check_score_model(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with ``options``, else with each option set its class's ``example_options()``
    lists (for networks whose defaults are too large to build in a test), else with its
    defaults, the network maps (x, t) to a tensor like x."""
    name, cls, resolved = _resolve("score_model", spec, options)
    report = ContractReport(f"score_model {name!r}")
    declared = list(getattr(cls, "example_options", lambda: [])()) if options is None else []
    option_list = [_resolve("score_model", spec, dict(example))[2] for example in declared] or [resolved]
    for chosen in option_list:
        model = cls(**chosen)
        shape = tuple(getattr(model, "event_shape", (2,)))
        for dtype in (torch.float32, F64):
            x = torch.randn(3, *shape, dtype=dtype)
            out = model.to(dtype)(x, torch.rand(3, dtype=dtype))
            if out.shape != x.shape or out.dtype != dtype:
                _fail(
                    f"score_model {name!r}: forward(x, t) returned shape {tuple(out.shape)}, {out.dtype} for x of "
                    f"shape {tuple(x.shape)}, {dtype}"
                )
        report.passed.append(f"forward(x, t) keeps the shape {shape} and dtype")
    return report


# Classifiers ---------------------------------------------------------------------------


def check_classifier(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with its defaults (or ``options``), the network maps (x, t) to finite logits of
    shape (batch, num_classes) in x's dtype, with a gradient in x (guidance needs it), and
    each sample's logits depend on that sample alone."""
    name, cls, options = _resolve("classifier", spec, options)
    report = ContractReport(f"classifier {name!r}")
    model = cls(**options).eval()
    shape, classes = tuple(getattr(model, "event_shape", (2,))), getattr(model, "num_classes", None)
    if not isinstance(classes, int) or classes < 2:
        _fail(f"classifier {name!r}: num_classes must be an int >= 2; got {classes!r}")
    for dtype in (torch.float32, F64):
        model = model.to(dtype)
        x = torch.randn(3, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
        t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
        logits = model(x, t)
        if logits.shape != (3, classes) or logits.dtype != dtype:
            _fail(
                f"classifier {name!r}: forward(x, t) returned shape {tuple(logits.shape)}, {logits.dtype} for x of "
                f"shape {tuple(x.shape)}, {dtype}; it must return logits of shape (batch, num_classes) = (3, {classes})"
            )
        if not bool(torch.isfinite(logits).all()):
            _fail(f"classifier {name!r}: forward(x, t) returned non-finite logits")
        (grad,) = torch.autograd.grad(torch.log_softmax(logits, -1)[:, 0].sum(), x)
        if not bool(torch.isfinite(grad).all()) or not bool((grad.reshape(3, -1).abs().sum(1) > 0).all()):
            _fail(f"classifier {name!r}: grad_x log p(y | x) is zero or non-finite; guidance needs a gradient in x")
        with torch.no_grad():
            alone = model(x[:1].detach(), t[:1])
        if not torch.allclose(alone, logits[:1].detach(), rtol=1e-4, atol=1e-4):
            _fail(
                f"classifier {name!r}: a sample's logits change with the rest of the batch "
                "(batch statistics in eval mode?)"
            )
    report.passed.append(
        f"forward(x, t) gives finite logits (batch, {classes}) for {shape}, float32 and float64, "
        "differentiable in x, per sample"
    )
    return report


# Feature extractors --------------------------------------------------------------------


def check_feature_extractor(spec: Any, *, options: dict[str, Any] | None = None) -> ContractReport:
    """Built with ``options``, else with each set its ``example_options()`` lists, else its
    defaults: finite features (batch, dim) with the same dim for float32 and float64 input
    (the extractor is not converted: samples come in either dtype),
    the same features on a second call (metrics are computed once), each sample's features
    independent of the rest of the batch, and an ``identity()`` that is a JSON-able dict
    naming the extractor (statistics files record it)."""
    name, cls, resolved = _resolve("feature_extractor", spec, options)
    report = ContractReport(f"feature_extractor {name!r}")
    declared = list(getattr(cls, "example_options", lambda: [])()) if options is None else []
    for chosen in [_resolve("feature_extractor", spec, dict(e))[2] for e in declared] or [resolved]:
        extractor = cls(**chosen).eval()
        shape = tuple(getattr(extractor, "event_shape", (2,)))
        dims = set()
        for dtype in (torch.float32, F64):
            x = torch.rand(4, *shape, dtype=dtype, generator=torch.Generator().manual_seed(0)) * 2 - 1
            with torch.no_grad():
                f, again, alone = extractor(x), extractor(x), extractor(x[:1])
            if f.ndim != 2 or f.shape[0] != 4 or not bool(torch.isfinite(f).all()):
                _fail(
                    f"feature_extractor {name!r}: forward(x) must give finite features of shape (batch, dim) = "
                    f"(4, dim) for x of shape {tuple(x.shape)}; got {tuple(f.shape)}"
                )
            if not torch.equal(f, again):
                _fail(f"feature_extractor {name!r}: two calls on the same batch gave different features")
            if not torch.allclose(alone, f[:1], rtol=1e-4, atol=1e-5):
                _fail(f"feature_extractor {name!r}: a sample's features change with the rest of the batch")
            dims.add(f.shape[1])
        if len(dims) != 1:
            _fail(f"feature_extractor {name!r}: the feature dimension depends on the input dtype: {sorted(dims)}")
        identity = extractor.identity()
        try:
            named = isinstance(identity, dict) and identity.get("name") == name and json.dumps(identity) is not None
        except (TypeError, ValueError):
            named = False
        if not named:
            _fail(
                f"feature_extractor {name!r}: identity() must be a JSON-able dict with name {name!r}; got {identity!r}"
            )
        report.passed.append(f"finite per-sample features (batch, {dims.pop()}) for {shape}, repeatable, identity")
    return report


# Time grids ----------------------------------------------------------------------------


def check_time_grid(
    spec: Any, *, sdes: Sequence[Any] | None = None, options: dict[str, Any] | None = None
) -> ContractReport:
    """For every compatible SDE: steps + 1 strictly decreasing times from exactly T to exactly
    eps, in the dtype and on the device asked for, the same on every call, and a mesh that
    shrinks as steps grow (samplers converge only if it does)."""
    name, cls, sets, report, targets = _start("time_grid", spec, sdes, options, oracle=False)
    for options, sde in [(options, sde) for options in sets for sde in targets]:
        rule = cls(**options)
        label = f"time_grid {name!r} with {type(sde).__name__}"
        eps = sde.default_eps
        for steps in (1, 7, 50):
            for device in _devices():
                for dtype in (torch.float32, F64):
                    times = rule.times(sde, steps, eps, device=device, dtype=dtype)
                    if not isinstance(times, Tensor) or times.shape != (steps + 1,):
                        _fail(
                            f"{label}: times(steps={steps}) returned shape {tuple(getattr(times, 'shape', ()))}; "
                            f"it must return steps + 1 = {steps + 1} times"
                        )
                    if times.dtype != dtype or times.device.type != torch.device(device).type:
                        _fail(f"{label}: asked for {dtype} on {device}, got {times.dtype} on {times.device}")
                    ends = torch.tensor([sde.T, eps], dtype=dtype)
                    if not torch.equal(times[[0, -1]].cpu(), ends):
                        _fail(
                            f"{label}: the grid must run from exactly T = {sde.T} to exactly eps = {eps}; "
                            f"got {float(times[0])!r} to {float(times[-1])!r}"
                        )
                    if not bool((times.diff() < 0).all()) or not bool(torch.isfinite(times).all()):
                        _fail(f"{label}: times must be finite and strictly decreasing; got {times.tolist()[:10]}")
            if not torch.equal(rule.times(sde, steps, eps, dtype=F64), rule.times(sde, steps, eps, dtype=F64)):
                _fail(f"{label}: two calls with the same arguments give different grids")
        coarse = float(rule.times(sde, 50, eps, dtype=F64).diff().abs().max())
        fine = float(rule.times(sde, 400, eps, dtype=F64).diff().abs().max())
        if fine > coarse / 4:
            _fail(
                f"{label}: the largest step shrinks only from {coarse:.3g} (50 steps) to {fine:.3g} (400 steps); "
                "a sampler can converge only if every step shrinks with 1/steps"
            )
        report.passed.append(
            f"{type(sde).__name__}: ends at T and eps exactly, decreasing, dtypes, devices, "
            f"deterministic, largest step {coarse:.3g} -> {fine:.3g} from 50 to 400 steps"
        )
    return report


# Whole plugins -------------------------------------------------------------------------

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
