"""Classifier guidance checked against the Gaussian-mixture oracle.

Taking the mixture component as the class, the exact time-dependent classifier is
p_t(k | x), known in closed form, and the class-conditional law is component k itself.
"""

from __future__ import annotations

import pytest
import torch

import sdeplug
from sdeplug.guidance import ClassifierGuidance
from sdeplug.oracle import preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null

F64 = torch.float64
N = 2000


@pytest.fixture(scope="module")
def mixture():
    return preset("mixture3").to(F64)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
@pytest.mark.parametrize("k", [0, 2])
def test_guided_score_with_the_exact_classifier_is_the_class_conditional_score(mixture, sde_name, k):
    sde = sdeplug.create("sde", sde_name)
    guided = ClassifierGuidance(mixture.score_model(sde), mixture.classifier(sde), k, scale=1.0)
    g = torch.Generator().manual_seed(k)
    for t in (0.01, 0.3, 0.9):
        x = mixture.sample(50, g, sde, t)
        tt = torch.full((50,), t, dtype=F64)
        with torch.no_grad():  # as inside the samplers
            got = guided(x, tt)
        torch.testing.assert_close(got, mixture.component(k).score(x, tt, sde), rtol=1e-8, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
@pytest.mark.parametrize("kind", ["pc", "ode"])
def test_guided_sampling_draws_from_the_requested_component(mixture, sde_name, kind):
    sde, k = sdeplug.create("sde", sde_name), 1
    component = mixture.component(k)
    guided = ClassifierGuidance(mixture.score_model(sde), mixture.classifier(sde), k)
    g = torch.Generator().manual_seed(0)
    if kind == "pc":
        x = sample_pc(
            sde, guided, (N, 2), predictor="reverse_diffusion", corrector="langevin", steps=500, generator=g, dtype=F64
        ).x
    else:
        x = sample_ode(sde, guided, (N, 2), solver="dopri5", generator=g, dtype=F64).x
    true = lambda n, gen: component.sample(n, gen)  # noqa: E731
    assert_same_law(x, true, null=energy_null(true, N), what=f"{sde_name} {kind} class-{k} samples")
    # ... and the unguided score does not: the test can fail
    with pytest.raises(AssertionError):
        plain = sample_ode(sde, mixture.score_model(sde), (N, 2), solver="dopri5", generator=g, dtype=F64).x
        assert_same_law(plain, true, null=energy_null(true, N))


def test_guidance_errors_name_what_is_wrong(mixture):
    sde = sdeplug.create("sde", "vp")
    score, clf = mixture.score_model(sde), mixture.classifier(sde)
    x, t = torch.zeros(4, 2, dtype=F64), torch.full((4,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="class 7 does not exist: the classifier has 3 classes"):
        ClassifierGuidance(score, clf, 7)(x, t)
    with pytest.raises(ValueError, match="finite number"):
        ClassifierGuidance(score, clf, 0, scale=float("nan"))
    with pytest.raises(ValueError, match="3 labels for a batch of 4"):
        ClassifierGuidance(score, clf, torch.tensor([0, 1, 2]))(x, t)
    with pytest.raises(ValueError, match=r"logits of shape \(batch, classes\)"):
        ClassifierGuidance(score, lambda x, t: x.sum(), 0)(x, t)
    with pytest.raises(TypeError, match="callable"):
        ClassifierGuidance(score, "classifier", 0)


_REGISTRY = sdeplug.get_registry()
#: One run per registered sampling part, with the guided score in place of the plain one.
#: Predictors run alone, correctors after reverse diffusion, ODE solvers with their defaults.
EVERY_PART = (
    [("predictor", name) for name in _REGISTRY.names("predictor") if name != "none"]
    + [("corrector", name) for name in _REGISTRY.names("corrector") if name != "none"]
    + [("ode_solver", name) for name in _REGISTRY.names("ode_solver")]
)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), EVERY_PART, ids=[f"{k}-{n}" for k, n in EVERY_PART])
def test_guidance_works_unchanged_with_every_registered_sampling_part(mixture, kind, name):
    """The guided score is an ordinary score: each part, untouched, lands in the requested class."""
    sde, k, n = sdeplug.create("sde", "vp"), 1, 400
    guided = ClassifierGuidance(mixture.score_model(sde), mixture.classifier(sde), k)
    g = torch.Generator().manual_seed(1)
    if kind == "predictor":
        steps = 40 if name == "torchsde" else 200
        x = sample_pc(sde, guided, (n, 2), predictor=name, corrector="none", steps=steps, generator=g, dtype=F64).x
    elif kind == "corrector":
        x = sample_pc(
            sde, guided, (n, 2), predictor="reverse_diffusion", corrector=name, steps=200, generator=g, dtype=F64
        ).x
    else:
        x = sample_ode(sde, guided, (n, 2), solver=name, generator=g, dtype=F64).x
    in_class = mixture.posterior_weights(x)[:, k] > 0.5
    assert in_class.double().mean() > 0.97, f"{kind} {name!r}: {in_class.double().mean():.3f} in class {k}"
    reference = mixture.component(k).sample(50_000, torch.Generator().manual_seed(2))
    error = (x.mean(0) - reference.mean(0)).abs() / (reference.std(0) / n**0.5)
    assert error.max() < 5, f"{kind} {name!r}: sample mean {error.max():.1f} standard errors off class {k}'s"
