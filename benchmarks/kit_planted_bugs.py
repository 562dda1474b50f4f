"""How many realistic bugs the testing kit's one-line contract test catches in a newcomer's plugin.

The plugin is the documentation's own example (docs/examples/sdeplug-cosine: a cosine-schedule
VP SDE, DDIM with ``eta`` and a Langevin corrector whose step follows the noise level), written
against the public API alone. Each planted bug is that plugin with one realistic mistake in one
method; the part is registered in place of the correct one and its contract run as a plugin's
own tests run it (``sdeplug.testing.contract_tests``). A bug counts as caught when the contract
fails with the kit's ContractError; the first line of the message says whether it named the
method at fault. The correct plugin is run first: it must pass, and the checks it skipped are
listed.

    python benchmarks/kit_planted_bugs.py [--only NAME ...] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "docs" / "examples" / "sdeplug-cosine"))
import sdeplug_cosine as cosine  # noqa: E402
from report import machine, replace_section  # noqa: E402

import sdeplug  # noqa: E402
from sdeplug import hookimpl, per_sample, randn_like, sum_except_batch, tweedie  # noqa: E402
from sdeplug.registry import unregister_plugin  # noqa: E402
from sdeplug.testing import ContractError, contract_tests  # noqa: E402
from sdeplug.testing.kit_base import ContractSkipWarning  # noqa: E402

HEADING = "## Testing kit: planted bugs in a newcomer's plugin"
PLUGIN = "cosine_newcomer"


# The SDE ------------------------------------------------------------------------------------


class BetaMissingAFactor(cosine.CosineVPSDE):
    def beta(self, t):
        return math.pi * torch.tan(self._angle(t))  # d angle/dt's 1/(1 + s) forgotten


class DiffusionIsBeta(cosine.CosineVPSDE):
    def diffusion(self, t):
        return self.beta(t)  # g(t) = beta(t) where it is sqrt(beta(t))


class DriftSignFlipped(cosine.CosineVPSDE):
    def drift(self, x, t):
        return 0.5 * per_sample(self.beta(t), x) * x


class SigmaWithoutSqrt(cosine.CosineVPSDE):
    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))  # the variance, not the std


class TransitionGivesAStd(cosine.CosineVPSDE):
    def transition(self, s, t):
        log_a = self.log_alpha(t) - self.log_alpha(s)
        return torch.exp(log_a), torch.sqrt(-torch.expm1(2 * log_a))  # the contract asks for a variance


class PriorWithoutNormaliser(cosine.CosineVPSDE):
    def prior_logp(self, z):
        return -0.5 * sum_except_batch(z**2)


class PriorNormalisedOverTheBatch(cosine.CosineVPSDE):
    def prior_logp(self, z):
        return -0.5 * z.numel() * math.log(2 * math.pi) - 0.5 * sum_except_batch(z**2)  # z.numel(), not z[0]


class PriorIgnoresTheGenerator(cosine.CosineVPSDE):
    def prior_sampling(self, shape, generator=None, device=None, dtype=None):
        return torch.randn(shape, device=device, dtype=dtype)  # the global generator: not seeded by the run


# The predictor ------------------------------------------------------------------------------


class _BuggyDDIM(cosine.DDIM):
    """The example's DDIM step with switches for the mistakes below (all off: the correct step)."""

    ignore_eta = score_at_next = sigma_not_squared = variance_as_std = False
    unseeded = float32 = batch_clip = direction_sign = False

    def step(self, x, t, t_next, state, generator=None, *, jumped=False):
        work = x.float() if self.float32 else x
        tw, nw = (t.float(), t_next.float()) if self.float32 else (t, t_next)
        a_t, s_t = self.sde.alpha(tw), self.sde.sigma(tw)
        a_s, s_s = self.sde.alpha(nw), self.sde.sigma(nw)
        score = self.score(x, t_next if self.score_at_next else t)
        score = score.float() if self.float32 else score
        eps_hat = -per_sample(s_t, work) * score
        if self.sigma_not_squared:
            x0_hat = (work + per_sample(s_t, work) * score) / per_sample(a_t, work)
        else:
            x0_hat = tweedie(work, score, per_sample(a_t, work), per_sample(s_t, work))
        if self.batch_clip:  # "dynamic thresholding", at the whole batch's quantile
            bound = torch.quantile(x0_hat.abs().flatten().to(torch.float64), 0.995).to(x0_hat.dtype)
            x0_hat = x0_hat.clamp(-bound, bound)
        eta = 0.0 if self.ignore_eta else self.eta
        posterior_var = s_s**2 * (1 - (a_t * s_s / (a_s * s_t)) ** 2)
        s_eta = eta * (posterior_var.clamp(min=0) if self.variance_as_std else torch.sqrt(posterior_var.clamp(min=0)))
        direction = per_sample(torch.sqrt((s_s**2 - s_eta**2).clamp(min=0)), work) * eps_hat
        x_next = per_sample(a_s, work) * x0_hat + (-direction if self.direction_sign else direction)
        if eta != 0:
            noise = torch.randn_like(work) if self.unseeded else randn_like(work, generator)
            x_next = x_next + per_sample(s_eta, work) * noise
        return x_next.to(x.dtype), None


def _ddim(flag: str) -> type:
    return type(f"DDIM_{flag}", (_BuggyDDIM,), {flag: True})


# The corrector ------------------------------------------------------------------------------


class IdleLangevin(cosine.NoiseScaledLangevin):
    def step(self, x, t, generator=None):
        return x  # the loop's body lost in a refactor


class HalfNoiseLangevin(cosine.NoiseScaledLangevin):
    def step(self, x, t, generator=None):
        e = per_sample(self.ratio * self.sde.sigma(t) ** 2, x)
        for _ in range(self.n_steps):
            x = x + e * self.score(x, t) + torch.sqrt(e) * randn_like(x, generator)  # sqrt(e), not sqrt(2 e)
        return x


class StaleScoreLangevin(cosine.NoiseScaledLangevin):
    def step(self, x, t, generator=None):
        e = per_sample(self.ratio * self.sde.sigma(t) ** 2, x)
        score = self.score(x, t)  # evaluated once, outside the loop
        for _ in range(self.n_steps):
            x = x + e * score + torch.sqrt(2 * e) * randn_like(x, generator)
        return x


class UnseededLangevin(cosine.NoiseScaledLangevin):
    def step(self, x, t, generator=None):
        e = per_sample(self.ratio * self.sde.sigma(t) ** 2, x)
        for _ in range(self.n_steps):
            x = x + e * self.score(x, t) + torch.sqrt(2 * e) * torch.randn_like(x)
        return x


class InPlaceLangevin(cosine.NoiseScaledLangevin):
    def step(self, x, t, generator=None):
        e = per_sample(self.ratio * self.sde.sigma(t) ** 2, x)
        for _ in range(self.n_steps):
            x += e * self.score(x, t) + torch.sqrt(2 * e) * randn_like(x, generator)  # overwrites the caller's x
        return x


#: name -> (kind, broken class, the method at fault)
PLANTED: dict[str, tuple[str, type, str]] = {
    "beta missing 1/(1 + s)": ("sde", BetaMissingAFactor, "beta"),
    "diffusion = beta, not sqrt(beta)": ("sde", DiffusionIsBeta, "diffusion"),
    "drift with the wrong sign": ("sde", DriftSignFlipped, "drift"),
    "sigma without its sqrt": ("sde", SigmaWithoutSqrt, "sigma"),
    "transition gives a std, not a variance": ("sde", TransitionGivesAStd, "transition"),
    "prior_logp without its normaliser": ("sde", PriorWithoutNormaliser, "prior_logp"),
    "prior_logp normalised over the batch": ("sde", PriorNormalisedOverTheBatch, "prior_logp"),
    "prior_sampling ignores the generator": ("sde", PriorIgnoresTheGenerator, "prior_sampling"),
    "DDIM ignores eta": ("predictor", _ddim("ignore_eta"), "step"),
    "DDIM's score at t_next": ("predictor", _ddim("score_at_next"), "step"),
    "x0 with sigma, not sigma^2": ("predictor", _ddim("sigma_not_squared"), "step"),
    "posterior variance used as a std": ("predictor", _ddim("variance_as_std"), "step"),
    "DDIM's noise ignores the generator": ("predictor", _ddim("unseeded"), "step"),
    "DDIM computed in float32": ("predictor", _ddim("float32"), "step"),
    "x0 clipped at the batch's quantile": ("predictor", _ddim("batch_clip"), "step"),
    "noise direction with the wrong sign": ("predictor", _ddim("direction_sign"), "step"),
    "corrector returns x unchanged": ("corrector", IdleLangevin, "step"),
    "Langevin noise sqrt(e), not sqrt(2 e)": ("corrector", HalfNoiseLangevin, "step"),
    "score evaluated once for n_steps": ("corrector", StaleScoreLangevin, "step"),
    "corrector noise ignores the generator": ("corrector", UnseededLangevin, "step"),
    "corrector updates x in place": ("corrector", InPlaceLangevin, "step"),
}


#: Planted mistakes that leave the part a correct sampler of the same law, so no check of the
#: law can see them: only the option's meaning changes.
SAME_LAW = {
    "posterior variance used as a std": (
        "DDIM's step keeps the marginals for any noise level s_eta between 0 and sigma(t_next) (Song et al. "
        "2021, eq. 12); eta * variance is such a level, so the step is DDIM at another eta, and eta = 1 no longer "
        "gives ancestral sampling. Only a comparison with the ancestral step could tell."
    ),
    "score evaluated once for n_steps": (
        "two Langevin steps of size e with the score of the first point are one Langevin step of size 2 e "
        "exactly (the two noises add to one of twice the variance): a valid corrector with another ratio."
    ),
}


class Newcomer:
    """The example plugin's hooks, with any of its three parts replaced."""

    def __init__(self, sde=cosine.CosineVPSDE, predictor=cosine.DDIM, corrector=cosine.NoiseScaledLangevin) -> None:
        self.parts = sde, predictor, corrector

    @hookimpl
    def register_sdes(self, register):
        register(self.parts[0])

    @hookimpl
    def register_predictors(self, register):
        register(self.parts[1])

    @hookimpl
    def register_correctors(self, register):
        register(self.parts[2])


NAMES = {"sde": cosine.CosineVPSDE.name, "predictor": cosine.DDIM.name, "corrector": cosine.NoiseScaledLangevin.name}


def run_contract(plugin: Newcomer, kind: str) -> tuple[str, str, float]:
    """(outcome, first line of the message or the skipped checks, seconds) of one part's contract."""
    sdeplug.register_plugin(plugin, PLUGIN)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("always", ContractSkipWarning)  # the kit's report goes to stdout: kept quiet
            contract_tests(PLUGIN)(kind, NAMES[kind])
        skipped = [str(w.message) for w in caught if issubclass(w.category, ContractSkipWarning)]
        return "passed", "; ".join(skipped), time.perf_counter() - started
    except ContractError as exc:
        return "caught", str(exc).splitlines()[0], time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - a crash of the kit itself is a finding, not a catch
        return (
            "crashed",
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            (time.perf_counter() - started),
        )
    finally:
        unregister_plugin(plugin)


def _cell(text: str, limit: int = 260) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="run these planted bugs only (names as in PLANTED)")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, caught, named, total, ran = [], 0, 0, 0, set()
    for kind in ("sde", "predictor", "corrector"):
        outcome, text, seconds = run_contract(Newcomer(), kind)
        row = f"| correct {kind} | {outcome} | {_cell(text) or '-'} | {seconds:.0f} |"
        print(row, flush=True)
        rows.append(row)
    for bug, (kind, broken, method) in PLANTED.items():
        if args.only and bug not in args.only:
            continue
        parts = {"sde": cosine.CosineVPSDE, "predictor": cosine.DDIM, "corrector": cosine.NoiseScaledLangevin}
        parts[kind] = broken
        outcome, text, seconds = run_contract(Newcomer(parts["sde"], parts["predictor"], parts["corrector"]), kind)
        total += 1
        ran.add(bug)
        caught += outcome == "caught"
        names = outcome == "caught" and method in text
        named += names
        mark = "caught" + (", names it" if names else "") if outcome == "caught" else f"**{outcome}**"
        row = f"| {bug} ({kind}.{method}) | {mark} | {_cell(text)} | {seconds:.0f} |"
        print(row, flush=True)
        rows.append(row)
    body = (
        f"Command: `python benchmarks/kit_planted_bugs.py --write docs/benchmarks.md`. Machine: {machine()}.\n\n"
        "The documentation's example plugin (docs/examples/sdeplug-cosine), one realistic mistake at a time, "
        "each part checked by the one-line contract test a plugin's own tests run. *names it*: the message's "
        "first line names the method at fault (a predictor's or corrector's mistakes all live in step(), "
        "so there it says only that the message names the part's step). Seconds: the part's whole contract, "
        "one thread.\n\n"
        f"**Caught: {caught} of {total}** (the method named in {named}).\n\n"
        + "".join(f"- *{bug}* passes by design: {why}\n" for bug, why in SAME_LAW.items() if bug in ran)
        + "\n"
        "| plugin | outcome | first line of the kit's message (or what it skipped) | s |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
    print(body)
    if args.write:
        replace_section(args.write, HEADING, f"{HEADING}\n\n{body}\n")


if __name__ == "__main__":
    main()
