"""The SDE contract: interface, marginals against simulation, discretisation, the reverse SDE,
transitions, overridden closed forms, the prior's normalisation and reverse-time sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from sdeplug.interfaces import (
    SDE,
    LinearSDE,
)
from sdeplug.stats import assert_same_law
from sdeplug.tensors import per_sample
from sdeplug.testing.kit_base import (
    ContractError,
    ContractReport,
    _devices,
    _fail,
    _hypothesis,
    _mixture_and_null,
    _resolve,
    _sde_label,
)
from sdeplug.testing.simulate import simulate_forward
from sdeplug.testing.strategies import option_sets

F64 = torch.float64


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
            for method in closed_forms:  # log_snr among them: the inverse is checked against it after
                CLOSED_FORMS[method](sde, t * sde.T, seed)
            if overrides_t_from_log_snr:
                _check_t_from_log_snr(sde)

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
    # The mean's standard error from the paths' own spread: a wrong sigma(t) must fail the std
    # check below, naming sigma, not tighten or loosen this one.
    error, standard_error = (xt.mean(0) - mean[0]).abs(), xt.std(0) / math.sqrt(n)
    if bool((error > 5 * standard_error + 1e-9).any()):
        worst = int(torch.argmax(error / (standard_error + 1e-300)))
        _fail(
            f"marginal_prob mean at t = {t:.4g} is off by {float(error.flatten()[worst]):.4g} from the mean of {n} "
            f"paths simulated from drift() and diffusion() "
            f"({float(error.flatten()[worst] / standard_error.flatten()[worst]):.1f} standard errors). "
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


_SOUND_SDES: set[str] = set()


def _check_sde_first(sde: SDE, part: str) -> None:
    """The quick closed-form checks of the SDE a part is checked on, once per SDE and process:
    a fault of the SDE is reported as the SDE's, not blamed on the predictor or corrector."""
    key = f"{type(sde).__module__}.{type(sde).__qualname__}:{_sde_label(sde)}"
    if key in _SOUND_SDES:
        return
    try:
        if isinstance(sde, LinearSDE):
            for method in _overridden_closed_forms(sde):
                for t in (0.1, 0.5, 0.9):
                    CLOSED_FORMS[method](sde, t * sde.T, 0)
            if type(sde).t_from_log_snr is not LinearSDE.t_from_log_snr:
                _check_t_from_log_snr(sde)
        _check_prior(sde, scale=False)  # an SDE built with example options need not fit unit-variance data
    except ContractError as exc:
        raise ContractError(
            f"{part} was not checked on {_sde_label(sde)}: that SDE fails its own contract first: {exc}"
        ) from None
    _SOUND_SDES.add(key)
