"""Conditional models and their guidance, checked against the Gaussian-mixture oracle.

With the mixture's components as the classes, the exact conditional score is the score of
component k, and the unconditional one the mixture's: classifier-free guidance at w = 1 must
sample component k, at w = 0 the mixture, and at any w it is a known probability-flow ODE that
an independent accurate solve integrates without any of sdeplug's sampling code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

import sdeplug
from conftest import LazyModule
from sdeplug import NULL_LABEL, Conditioned, autoguidance, classifier_free_guidance
from sdeplug.conditioning import DynamicThresholding, threshold_data
from sdeplug.grids import resolve_grid
from sdeplug.likelihood import log_likelihood
from sdeplug.oracle import GaussianMixture, preset
from sdeplug.sampling import sample_ode, sample_pc
from sdeplug.testing import assert_same_law, energy_null
from sdeplug.testing.contracts import observed_order

torchdiffeq = LazyModule("torchdiffeq")  # imported by the first test that uses it, not at collection

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixture():
    return preset("mixture3").to(F64)


@pytest.fixture(scope="module")
def even_mixture():
    """Components of one width: p_k^w p^(1-w) is then normalisable for every w > 1. With
    unequal widths the guided flow of a large w can leave for infinity near t = 0 (the
    narrower component's repulsion outgrows the attraction), and there is nothing to compare."""
    return GaussianMixture([0.3, 0.5, 0.2], [[-1.0, 0.5], [1.2, 0.8], [0.3, -1.2]], stds=[0.25, 0.25, 0.25]).to(F64)


def _labels(n: int, classes: int) -> torch.Tensor:
    return torch.arange(n) % classes


def _conditional_half(model, x, t, labels):
    """The conditional scores as guidance with an interval computes them: the first half of one
    forward of the doubled batch (labels, then null labels). A network's kernels may depend on
    the batch's size, so only this is bit for bit what it must return where w is 1."""
    null = torch.full_like(labels, NULL_LABEL)
    return model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))[: x.shape[0]]


class CountingModel(torch.nn.Module):
    """A conditional model that records the batch sizes it was called with."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.num_classes, self.batches = model, model.num_classes, []

    def forward(self, x, t, labels):
        self.batches.append(x.shape[0])
        return self.model(x, t, labels)


# The guided score's arithmetic --------------------------------------------------------------


@pytest.mark.parametrize("sde_name", ["ve", "vp", "subvp"])
def test_the_oracles_conditional_score_is_its_components_score(mixture, sde_name):
    sde = sdeplug.create("sde", sde_name)
    model = mixture.score_model(sde, conditional=True)
    g = torch.Generator().manual_seed(0)
    x, t = mixture.sample(60, g, sde, 0.4), torch.full((60,), 0.4, dtype=F64)
    labels = torch.tensor([0, 1, 2, NULL_LABEL]).repeat(15)
    got = model(x, t, labels)
    for k in range(3):
        rows = labels == k
        torch.testing.assert_close(got[rows], mixture.component(k).score(x[rows], t[rows], sde), rtol=1e-12, atol=1e-12)
    rows = labels == NULL_LABEL
    torch.testing.assert_close(got[rows], mixture.score(x[rows], t[rows], sde), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight", [0.0, 1.0, 3.5])
def test_classifier_free_guidance_is_its_formula_on_exact_scores(mixture, weight):
    sde = sdeplug.create("sde", "vp")
    model = mixture.score_model(sde, conditional=True)
    g = torch.Generator().manual_seed(1)
    x, t = mixture.sample(30, g, sde, 0.3), torch.full((30,), 0.3, dtype=F64)
    labels = _labels(30, 3)
    conditional = torch.cat([mixture.component(int(k)).score(x[i : i + 1], t[:1], sde) for i, k in enumerate(labels)])
    unconditional = mixture.score(x, t, sde)
    expected = unconditional + weight * (conditional - unconditional)
    got = classifier_free_guidance(model, labels, weight)(x, t)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if weight == 1.0:  # exactly the conditional score, not a rounding of it
        assert torch.equal(got, model(x, t, labels))
    if weight == 0.0:  # exactly the unconditional score
        assert torch.equal(got, model(x, t, torch.full_like(labels, NULL_LABEL)))


def test_classifier_free_guidance_costs_one_forward_of_a_doubled_batch(mixture):
    sde = sdeplug.create("sde", "vp")
    spy = CountingModel(mixture.score_model(sde, conditional=True))
    guided = classifier_free_guidance(spy, 1, 2.0)
    result = sample_ode(sde, guided, (16, 2), solver="euler", steps=5, dtype=F64, denoise=False)
    assert spy.batches == [32] * 5
    assert result.nfe == 5 and result.network_evaluations == 10


@pytest.mark.parametrize(("weight", "label"), [(1.0, 2), (0.0, NULL_LABEL)])
def test_at_weight_one_or_zero_guidance_evaluates_only_the_score_it_equals(mixture, weight, label):
    """w = 1 is the conditional score and w = 0 the unconditional one: one forward pass of the
    batch as it is, and one network evaluation per score call."""
    sde = sdeplug.create("sde", "vp")
    spy = CountingModel(mixture.score_model(sde, conditional=True))
    guided = classifier_free_guidance(spy, 2, weight)

    def draw(score):
        return sample_ode(
            sde, score, (16, 2), solver="euler", steps=5, dtype=F64, denoise=False,
            generator=torch.Generator().manual_seed(4),
        )  # fmt: skip

    result, plain = draw(guided), draw(Conditioned(spy.model, label))
    assert spy.batches == [16] * 5 and torch.equal(result.x, plain.x)
    assert result.network_evaluations == result.nfe == 5
    limited = classifier_free_guidance(spy, 2, weight, sde=sde, interval=(0.5, 2.0))
    assert limited.evaluations_per_call == (1 if weight == 1 else 2)  # w = 0 is 1 outside: both scores


def test_the_guidance_interval_applies_the_weight_between_its_noise_levels_only(mixture):
    sde = sdeplug.create("sde", "vp")
    model = mixture.score_model(sde, conditional=True)
    plain = classifier_free_guidance(model, 0, 4.0)
    limited = classifier_free_guidance(model, 0, 4.0, sde=sde, interval=(0.5, 2.0))
    times = torch.linspace(0.02, 1.0, 50, dtype=F64)
    level = sde.sigma(times) / sde.alpha(times)
    inside = (level > 0.5) & (level <= 2.0)
    assert inside.any() and (~inside).any()
    x = mixture.sample(50, torch.Generator().manual_seed(2), sde, 0.5)
    got = limited(x, times)
    torch.testing.assert_close(got[inside], plain(x, times)[inside], rtol=0, atol=0)
    conditional = _conditional_half(model, x, times, torch.zeros(50, dtype=torch.int64))
    assert torch.equal(got[~inside], conditional[~inside])


@pytest.mark.parametrize("conditional", [False, True])
def test_autoguidance_with_a_model_as_its_own_guide_is_unguided_sampling(mixture, conditional):
    sde = sdeplug.create("sde", "ve")
    model = mixture.score_model(sde, conditional=conditional)
    labels = _labels(40, 3) if conditional else None
    unguided = Conditioned(model, labels) if conditional else model
    guided = autoguidance(model, model, 2.5, labels)

    def draw(score):
        return sample_pc(sde, score, (40, 2), steps=20, generator=torch.Generator().manual_seed(3), dtype=F64)

    plain, result = draw(unguided), draw(guided)
    assert torch.equal(result.x, plain.x)
    assert result.network_evaluations == 2 * plain.network_evaluations


def test_autoguidance_by_a_weaker_model_is_its_formula(mixture):
    sde = sdeplug.create("sde", "vp")
    good = mixture.score_model(sde, conditional=True)
    blurred = GaussianMixture([1, 1, 1], mixture.means, stds=torch.full((3,), 0.6, dtype=F64)).to(F64)
    bad = blurred.score_model(sde, conditional=True)
    x, t = mixture.sample(20, torch.Generator().manual_seed(4), sde, 0.2), torch.full((20,), 0.2, dtype=F64)
    labels = _labels(20, 3)
    s_good, s_bad = good(x, t, labels), bad(x, t, labels)
    got = autoguidance(good, bad, 3.0, labels)(x, t)
    torch.testing.assert_close(got, s_good + 2.0 * (s_good - s_bad), rtol=1e-12, atol=1e-12)


def test_labels_follow_their_samples_through_batches_and_copies(mixture):
    sde = sdeplug.create("sde", "vp")
    model = mixture.score_model(sde, conditional=True)
    labels = torch.tensor([2, 0, NULL_LABEL, 1, 1, 2])
    x, t = mixture.sample(6, torch.Generator().manual_seed(5), sde, 0.3), torch.full((6,), 0.3, dtype=F64)
    whole = Conditioned(model, labels)(x, t)
    halves = torch.cat([Conditioned(model, labels[:3])(x[:3], t[:3]), Conditioned(model, labels[3:])(x[3:], t[3:])])
    assert torch.equal(whole, halves)
    copies = Conditioned(model, labels)(torch.cat([x, x, x]), torch.cat([t, t, t]))
    assert torch.equal(copies, torch.cat([whole, whole, whole]))


@pytest.mark.slow
def test_the_likelihood_of_a_conditional_model_is_its_components(mixture):
    sde = sdeplug.create("sde", "vp")
    model = mixture.score_model(sde, conditional=True)
    k = 2
    x = mixture.component(k).sample(8, torch.Generator().manual_seed(6))
    solver = {"rtol": 1e-9, "atol": 1e-9}
    got = log_likelihood(sde, Conditioned(model, k), x, solver_options=solver).logp
    exact = mixture.component(k).log_prob(x, 1e-5, sde)
    # the ODE ends at T with the prior instead of the exact p_T: give it the exact one
    got_exact_prior = log_likelihood(
        sde,
        Conditioned(model, k),
        x,
        solver_options=solver,
        prior_logp=lambda z: mixture.component(k).log_prob(z, sde.T, sde),
    ).logp
    torch.testing.assert_close(got_exact_prior, exact, rtol=0, atol=1e-5)
    assert (got - exact).abs().max() < 0.05  # only the prior's mismatch at T remains


# Sampling the right law ----------------------------------------------------------------------

N = 1000


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_guidance_at_weight_one_samples_the_exact_conditional_law(mixture, sde_name):
    sde = sdeplug.create("sde", sde_name)
    model = mixture.score_model(sde, conditional=True)
    labels = _labels(3 * N, 3)  # N per class
    g = torch.Generator().manual_seed(7)
    guided = classifier_free_guidance(model, labels, 1.0)
    x = sample_ode(sde, guided, (3 * N, 2), solver="dopri5", generator=g, dtype=F64).x
    for k in range(3):
        true = lambda n, gen, k=k: mixture.component(k).sample(n, gen)  # noqa: E731
        null = energy_null(true, N)
        assert_same_law(x[labels == k], true, null=null, what=f"{sde_name} samples of class {k} at w = 1")
        with pytest.raises(AssertionError):  # the check can fail: another class is another law
            assert_same_law(x[labels == (k + 1) % 3], true, null=null)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_guidance_at_weight_zero_samples_the_unconditional_law(mixture, sde_name):
    sde = sdeplug.create("sde", sde_name)
    model = mixture.score_model(sde, conditional=True)
    g = torch.Generator().manual_seed(8)
    x = sample_ode(sde, classifier_free_guidance(model, 0, 0.0), (N, 2), solver="dopri5", generator=g, dtype=F64).x
    true = lambda n, gen: mixture.sample(n, gen)  # noqa: E731
    null = energy_null(true, N)
    assert_same_law(x, true, null=null, what=f"{sde_name} samples at w = 0")
    with pytest.raises(AssertionError):
        assert_same_law(x, lambda n, gen: mixture.component(0).sample(n, gen), null=null)


def _reference_flow(mixture, sde, labels, weight, x_T, t1):
    """The guided probability-flow ODE from the oracle's scores alone, solved by torchdiffeq's
    dopri5 at a tight tolerance: no sdeplug sampling or guidance code."""
    components = [mixture.component(k) for k in range(mixture.num_components)]

    def drift(t, x):
        tt = t.expand(x.shape[0])
        unconditional = mixture.score(x, tt, sde)
        conditional = torch.empty_like(x)
        for k, comp in enumerate(components):
            rows = labels == k
            conditional[rows] = comp.score(x[rows], tt[rows], sde)
        score = unconditional + weight * (conditional - unconditional)
        g2 = sde.diffusion(tt)[:, None] ** 2
        return sde.drift(x, tt) - 0.5 * g2 * score

    ends = torch.tensor([sde.T, t1], dtype=F64)
    options = {"step_t": ends[-1:]}  # end a step at t1 rather than step past it (t < 0 is outside the SDE)
    return torchdiffeq.odeint(drift, x_T, ends, rtol=1e-11, atol=1e-11, method="dopri5", options=options)[-1]


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_guided_sampling_at_large_weight_is_an_independent_accurate_solve(even_mixture, sde_name):
    mixture = even_mixture
    sde, weight = sdeplug.create("sde", sde_name), 3.0
    model = mixture.score_model(sde, conditional=True)
    labels = _labels(64, 3)
    x_T = sde.prior_sampling((64, 2), torch.Generator().manual_seed(9), dtype=F64)
    eps = sde.default_eps
    expected = _reference_flow(mixture, sde, labels, weight, x_T, eps)
    got = sample_ode(
        sde,
        classifier_free_guidance(model, labels, weight),
        solver="dopri5",
        solver_options={"rtol": 1e-10, "atol": 1e-10},
        x_init=x_T,
        denoise=False,
    ).x
    # both solves hold a local error of 1e-10 relative; the flow near eps amplifies it by at
    # most sigma_max / sigma_min-like factors of a few hundred
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-6 * scale


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpmpp_2m", "dpmpp_3m", "unipc", "edm_heun"])
def test_the_fast_samplers_keep_their_order_on_the_guided_ode(even_mixture, name):
    mixture = even_mixture
    sde, weight = sdeplug.create("sde", "vp"), 3.0
    model = mixture.score_model(sde, conditional=True)
    labels = _labels(64, 3)
    x_T = sde.prior_sampling((64, 2), torch.Generator().manual_seed(10), dtype=F64)
    eps = sde.default_eps
    expected = _reference_flow(mixture, sde, labels, weight, x_T, eps)
    guided = classifier_free_guidance(model, labels, weight)
    # Guidance roughens the flow: the multistep methods are further from their asymptotic
    # order at 16 steps than on the unguided flow (3M: 2.8 from 16 to 128 steps, 2.9 from 32)
    steps = (32, 64, 128, 256)
    errors = []
    for n in steps:
        grid = resolve_grid(sde, "logsnr", n, eps, dtype=F64)
        x = sample_pc(sde, guided, predictor=name, corrector="none", grid=grid, x_init=x_T, denoise=False).x
        errors.append(float((x - expected).abs().max()))
    claimed = sdeplug.create("predictor", name, sde, guided).ode_order
    measured = observed_order(steps, errors)
    assert measured >= claimed - 0.3, f"{name}: order {measured:.2f} on the guided ODE, claims {claimed} ({errors})"


def _import_from(folder: Path, module: str):
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


THIRD_PARTY = [
    ("tests/plugins/thirdparty", "sdeplug_ou_example", "StochasticHeun", {}),
    ("docs/examples/sdeplug-cosine", "sdeplug_cosine", "DDIM", {"eta": 1.0}),
]


@pytest.mark.parametrize(("folder", "module", "cls", "options"), THIRD_PARTY, ids=[c for _, _, c, _ in THIRD_PARTY])
def test_a_third_party_predictor_samples_a_conditional_model_unedited(mixture, folder, module, cls, options):
    """Predictors written against score(x, t) (the example plugin's, the plugin guide's) sample
    a conditional model through Conditioned or a guidance, without knowing labels exist."""
    predictor = getattr(_import_from(ROOT / folder, module), cls)
    sde, n, k = sdeplug.create("sde", "vp"), 400, 1
    model = mixture.score_model(sde, conditional=True)
    g = torch.Generator().manual_seed(11)
    x = sample_pc(
        sde,
        classifier_free_guidance(model, k, 1.0),
        (n, 2),
        predictor=predictor,
        predictor_options=options,
        corrector="none",
        steps=200,
        generator=g,
        dtype=F64,
    ).x
    in_class = mixture.posterior_weights(x)[:, k] > 0.5
    assert in_class.double().mean() > 0.97
    reference = mixture.component(k).sample(50_000, torch.Generator().manual_seed(12))
    error = (x.mean(0) - reference.mean(0)).abs() / (reference.std(0) / n**0.5)
    assert error.max() < 5, f"{cls}: sample mean {error.max():.1f} standard errors off class {k}'s"


# Dynamic thresholding ------------------------------------------------------------------------


@pytest.mark.parametrize("max_value", [1.0, 1.5, 3.0])
def test_dynamic_thresholding_is_diffusers_own(max_value):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=max_value)
    x0 = 2.5 * torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(13))
    torch.testing.assert_close(threshold_data(x0, 0.9, max_value), scheduler._threshold_sample(x0), rtol=0, atol=0)


def test_dynamic_thresholding_clips_the_data_prediction(mixture):
    sde = sdeplug.create("sde", "vp")
    model = Conditioned(mixture.score_model(sde, conditional=True), 0)
    thresholded = DynamicThresholding(model, sde, ratio=0.995, max_value=1.0)
    x, t = 3 * torch.randn(10, 2, dtype=F64), torch.full((10,), 0.5, dtype=F64)
    x0 = sde.data_prediction(x, t, thresholded(x, t))
    assert x0.abs().max() <= 1 + 1e-12
    torch.testing.assert_close(x0, threshold_data(sde.data_prediction(x, t, model(x, t))))


# Bad input -----------------------------------------------------------------------------------


def test_bad_conditioning_is_refused_with_one_clear_line(mixture):
    sde = sdeplug.create("sde", "vp")
    conditional = mixture.score_model(sde, conditional=True)
    unconditional = mixture.score_model(sde)
    with pytest.raises(ValueError, match=r"class label 3 is out of range: .* classes 0 to 2 \(and -1 for no class\)"):
        Conditioned(conditional, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class labels must be an int or a 1-D integer tensor"):
        Conditioned(conditional, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="needs a conditional model"):
        classifier_free_guidance(unconditional, 0, 2.0)
    with pytest.raises(ValueError, match="same classes"):
        autoguidance(conditional, unconditional, 2.0, 0)
    other_shape = GaussianMixture([1.0], [[0.0, 0.0, 0.0]], stds=[1.0]).score_model(sde)
    with pytest.raises(ValueError, match=r"same data shape; got \(2,\) and \(3,\)"):
        autoguidance(unconditional, other_shape, 2.0)
    with pytest.raises(ValueError, match="finite"):
        classifier_free_guidance(conditional, 0, float("inf"))
    with pytest.raises(ValueError, match="interval must satisfy 0 <= low < high"):
        classifier_free_guidance(conditional, 0, 2.0, sde=sde, interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="3 class labels for a batch of 4"):
        Conditioned(conditional, [0, 1, 2])(torch.zeros(4, 2, dtype=F64), torch.full((4,), 0.5, dtype=F64))
    for run in (
        lambda: sample_pc(sde, conditional, (4, 2), steps=2),
        lambda: sample_ode(sde, conditional, (4, 2), steps=2),
        lambda: log_likelihood(sde, conditional, torch.zeros(4, 2)),
    ):
        with pytest.raises(ValueError, match=r"conditional \(3 classes\) and needs labels"):
            run()


# Training a conditional network (trained end to end in tests/test_cli_conditional.py) ----------------


def test_label_dropout_is_drawn_for_the_global_batch(mixture):
    from sdeplug.trainer import Trainer, TrainSettings

    sde = sdeplug.create("sde", "vp")
    x, labels = mixture.float().sample(64, torch.Generator().manual_seed(22), return_labels=True)
    network = sdeplug.create("score_model", "mlp", event_shape=(2,), width=16, depth=1, num_classes=3)
    trainer = Trainer(
        network, sde, x, TrainSettings(steps=3, batch_size=4000, label_dropout=0.25, progress=False), labels=labels
    )
    default = Trainer(network, sde, x, TrainSettings(steps=3, progress=False), labels=labels)
    assert default.label_dropout == 0.1  # a conditional network's default
    dropped = trainer._dropped_labels()
    assert abs(float(dropped.double().mean()) - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5
    assert torch.equal(dropped, trainer._dropped_labels())  # seeded by (seed, step) alone
    trainer.step = 1
    assert not torch.equal(dropped, trainer._dropped_labels())


def test_conditional_training_refuses_what_it_cannot_use(mixture):
    from sdeplug.trainer import Trainer, TrainSettings

    sde = sdeplug.create("sde", "vp")
    x, labels = mixture.float().sample(64, torch.Generator().manual_seed(23), return_labels=True)
    conditional = sdeplug.create("score_model", "mlp", event_shape=(2,), width=16, depth=1, num_classes=2)
    with pytest.raises(ValueError, match="needs labels: an int64 tensor of shape"):
        Trainer(conditional, sde, x, TrainSettings(progress=False))
    with pytest.raises(ValueError, match="the labels run from 0 to 2; the network has classes 0 to 1"):
        Trainer(conditional, sde, x, TrainSettings(progress=False), labels=labels)
    plain = sdeplug.create("score_model", "mlp", event_shape=(2,), width=16, depth=1)
    with pytest.raises(ValueError, match="label_dropout is for a class-conditional network"):
        Trainer(plain, sde, x, TrainSettings(label_dropout=0.2, progress=False))
    with pytest.raises(ValueError, match="label_dropout must be a probability"):
        TrainSettings(label_dropout=1.5)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("mlp", {"event_shape": (2,), "width": 32, "depth": 2}),
        ("unet", {"event_shape": (1, 8, 8), "channels": 8}),
        ("ncsnpp", {"event_shape": (3, 8, 8), "preset": "ddpmpp_cifar10_vp", "nf": 8, "ch_mult": (1, 2)}),
    ],
)
def test_the_bundled_networks_take_a_class_embedding_only_when_asked(name, options):
    plain = sdeplug.create("score_model", name, **options)
    assert plain.num_classes is None and not any("classes" in k for k in plain.state_dict())
    torch.manual_seed(0)
    network = sdeplug.create("score_model", name, **options, num_classes=4).double().eval()
    with torch.no_grad():  # zero-initialised output layers would hide what the labels do
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()), dtype=F64) * 0.2)
    shape = (6, *options["event_shape"])
    x, t = torch.randn(shape, dtype=F64), torch.rand(6, dtype=F64)
    labels = torch.tensor([0, 1, 2, 3, NULL_LABEL, 1])
    out = network(x, t, labels)
    assert out.shape == x.shape
    assert torch.equal(network(x, t), network(x, t, torch.full((6,), NULL_LABEL)))  # no labels: no class
    other = network(x[:1], t[:1], torch.tensor([2]))[0]
    assert (out[0] - other).abs().max() > 1e-3 * out[0].abs().max()  # the label matters
    alone = torch.cat([network(x[i : i + 1], t[i : i + 1], labels[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(out, alone, rtol=1e-10, atol=1e-12)  # each sample its own label


# Every sampling part, unchanged ---------------------------------------------------------------

_REGISTRY = sdeplug.get_registry()
EVERY_PART = (
    [("predictor", name) for name in _REGISTRY.names("predictor") if name != "none"]
    + [("corrector", name) for name in _REGISTRY.names("corrector") if name != "none"]
    + [("ode_solver", name) for name in _REGISTRY.names("ode_solver")]
)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "name"), EVERY_PART, ids=[f"{k}-{n}" for k, n in EVERY_PART])
def test_classifier_free_guidance_works_with_every_registered_sampling_part(even_mixture, kind, name):
    """The guided score is an ordinary score: each part, untouched, lands in the requested class."""
    mixture, k, n = even_mixture, 1, 300
    sde = sdeplug.create("sde", "vp")
    guided = classifier_free_guidance(mixture.score_model(sde, conditional=True), k, 2.0)
    g = torch.Generator().manual_seed(30)
    if kind == "predictor":
        steps = 40 if name == "torchsde" else 100
        x = sample_pc(sde, guided, (n, 2), predictor=name, corrector="none", steps=steps, generator=g, dtype=F64).x
    elif kind == "corrector":
        x = sample_pc(
            sde, guided, (n, 2), predictor="reverse_diffusion", corrector=name, steps=100, generator=g, dtype=F64
        ).x
    else:
        x = sample_ode(sde, guided, (n, 2), solver=name, generator=g, dtype=F64).x
    in_class = float((mixture.posterior_weights(x)[:, k] > 0.5).double().mean())
    assert in_class > 0.97, f"{kind} {name!r}: {in_class:.3f} in class {k}"


def test_classifier_free_guidance_combines_with_inpainting(even_mixture):
    """Replacement keeps the measured coordinate; guidance picks the class among the completions."""
    from sdeplug.guidance import Measurement, Replacement

    mixture, sde, n = even_mixture, sdeplug.create("sde", "vp"), 300
    model = mixture.score_model(sde, conditional=True)
    known = torch.tensor([0.75, 0.0], dtype=F64)  # halfway between classes 1 and 2 in x_0; far apart in x_1
    mask = torch.tensor([1.0, 0.0], dtype=F64)
    constraint = Replacement(sde, Measurement(known, mask=mask))
    for k in (1, 2):
        x = sample_pc(
            sde,
            classifier_free_guidance(model, k, 3.0),
            (n, 2),
            predictor="reverse_diffusion",
            corrector="none",
            steps=200,
            generator=torch.Generator().manual_seed(31),
            dtype=F64,
            constraint=constraint,
        ).x
        assert torch.equal(x[:, 0], known[0].expand(n))
        in_class = float((mixture.posterior_weights(x)[:, k] > 0.5).double().mean())
        assert in_class > 0.9, f"class {k}: {in_class:.3f}"
