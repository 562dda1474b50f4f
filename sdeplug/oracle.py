"""Closed-form truth: a Gaussian-mixture data law with its exact score and log-density at every t.

Under a LinearSDE, x_t = alpha(t) x_0 + sigma(t) z, so a mixture sum_k w_k N(mu_k, C_k)
at t = 0 is the mixture sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I) at time t.
With it a sampler or a likelihood is checked without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from sdeplug.interfaces import SDE, LinearSDE, ScoreModel
from sdeplug.moments import DataMoments
from sdeplug.tensors import randn


def _as_tensor(value, dtype=torch.float64) -> Tensor:
    return torch.as_tensor(value, dtype=dtype).clone()


class GaussianMixture(torch.nn.Module):
    """sum_k w_k N(mu_k, C_k) in D = prod(event_shape) dimensions.

    Covariances are given as ``stds`` (shape (K,) isotropic or (K, D) diagonal) or as
    full ``covs`` (K, D, D). Stored as eigen-decompositions, so the marginal at any t
    is diagonal in each component's own basis. A torch module: ``.to(device)`` works;
    results come in the dtype of the input (``sample`` in the parameters' dtype, float64
    unless converted).
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[Sequence[float]] | Tensor,
        *,
        stds: Sequence | Tensor | None = None,
        covs: Sequence | Tensor | None = None,
        event_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        weights, means = _as_tensor(weights), _as_tensor(means)
        if weights.ndim != 1 or means.ndim != 2 or means.shape[0] != weights.shape[0]:
            raise ValueError(
                f"weights must have shape (K,) and means (K, D); got {tuple(weights.shape)} and {tuple(means.shape)}"
            )
        if (weights <= 0).any():
            raise ValueError("mixture weights must be positive")
        k, d = means.shape
        if (stds is None) == (covs is None):
            raise ValueError("give exactly one of stds (shape (K,) or (K, D)) or covs (shape (K, D, D))")
        if covs is not None:
            covs = _as_tensor(covs)
            if covs.shape != (k, d, d):
                raise ValueError(f"covs must have shape (K, D, D) = ({k}, {d}, {d}); got {tuple(covs.shape)}")
            evals, evecs = torch.linalg.eigh(0.5 * (covs + covs.transpose(-1, -2)))
            if (evals <= 0).any():
                raise ValueError("every covariance must be positive definite")
            self.register_buffer("evecs", evecs)
        else:
            stds = _as_tensor(stds)
            if stds.shape not in ((k,), (k, d)):
                raise ValueError(f"stds must have shape (K,) = ({k},) or (K, D) = ({k}, {d}); got {tuple(stds.shape)}")
            if (stds <= 0).any():
                raise ValueError("component stds must be positive")
            evals = (stds[:, None] if stds.ndim == 1 else stds).expand(k, d) ** 2
            self.register_buffer("evecs", None)
        self.event_shape = tuple(event_shape) if event_shape is not None else (d,)
        if math.prod(self.event_shape) != d:
            raise ValueError(f"event_shape {self.event_shape} does not hold D = {d} entries")
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("means", means)
        self.register_buffer("evals", evals.clone())
        # Parameters stay in float64 (an orthogonal basis in float32 is orthogonal only
        # to 1e-7); every computation runs in the dtype of its input.

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def _check_sde(self, sde: SDE | None) -> LinearSDE | None:
        if sde is not None and not isinstance(sde, LinearSDE):
            raise TypeError(
                f"the Gaussian-mixture oracle needs a LinearSDE (alpha(t), sigma(t)); got {type(sde).__name__}"
            )
        return sde

    def _components_at(self, sde: LinearSDE | None, t: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """Means and eigenvalues (K, T, D) of the components of p_t at the T times ``t`` (T = 1
        without an SDE), in ``dtype``."""
        means, evals = self.means.to(dtype)[:, None, :], self.evals.to(dtype)[:, None, :]
        if sde is None:
            return means, evals
        alpha, sigma = sde.alpha(t)[None, :, None], sde.sigma(t)[None, :, None]
        return alpha * means, alpha**2 * evals + sigma**2

    def _whitened(self, x: Tensor, sde: SDE | None, t: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The residual y (K, B, D) of x from each component's mean in its eigenbasis, y / lambda,
        and the eigenvalues lambda (K, 1 or B, D)."""
        sde = self._check_sde(sde)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"x has {flat.shape[1]} entries per sample; this mixture has event shape {self.event_shape}"
            )
        if t is not None:
            t = torch.as_tensor(t, device=flat.device, dtype=flat.dtype).expand(flat.shape[0])
            if t.stride(0) == 0:  # one time for the whole batch (a sampler's step): the components once
                t = t[:1]
        means, evals = self._components_at(sde, t, flat.dtype)
        resid = flat[None] - means
        if self.evecs is not None:
            resid = torch.bmm(resid, self.evecs.to(flat.dtype))
        return resid, resid / evals, evals

    def _component_terms(self, x: Tensor, sde: SDE | None, t: Tensor | None) -> tuple[Tensor, Tensor]:
        """log w_k N_k(x) (K, B) and the whitened residual y / lambda (K, B, D).

        Component-major, so that every sum over the few components or dimensions runs along
        the batch: CPU reductions over a short innermost dimension are many times slower."""
        resid, scaled, evals = self._whitened(x, sde, t)
        ones = torch.ones(self.dim, device=x.device, dtype=resid.dtype)
        log_norm = -0.5 * (self.dim * math.log(2 * math.pi) + torch.log(evals) @ ones)
        log_comp = self.log_weights.to(resid.dtype)[:, None] + log_norm - 0.5 * ((resid * scaled) @ ones)
        return log_comp, scaled

    def log_prob(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """log p_t(x) per sample under ``sde`` (the data law itself when sde is None)."""
        log_comp, _ = self._component_terms(x, sde, t)
        return torch.logsumexp(log_comp, dim=0)

    def score(
        self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None, labels: Tensor | None = None
    ) -> Tensor:
        """grad_x log p_t(x), exact, like x. With ``labels`` (batch,) of components, the score
        of each sample's own component, grad_x log p_t(x | k), and of the whole mixture where
        the label is ``NULL_LABEL`` (-1)."""
        if self.num_components == 1 and labels is None:  # a Gaussian: no posterior to weigh by
            scaled, resp = self._whitened(x, sde, t)[1], None
        else:
            log_comp, scaled = self._component_terms(x, sde, t)
            resp = torch.softmax(log_comp, dim=0)
        if labels is not None:
            labels = labels.to(device=resp.device, dtype=torch.int64)
            if labels.shape != (x.shape[0],):
                raise ValueError(f"labels must have shape (batch,) = ({x.shape[0]},); got {tuple(labels.shape)}")
            own = torch.nn.functional.one_hot(labels.clamp(min=0), self.num_components).to(resp.dtype).T
            resp = torch.where(labels >= 0, own, resp)
        comp_scores = -scaled
        if self.evecs is not None:
            comp_scores = torch.bmm(comp_scores, self.evecs.to(x.dtype).transpose(1, 2))
        if resp is None:
            return comp_scores[0].reshape(x.shape)
        return (resp[..., None] * comp_scores).sum(0).reshape(x.shape)

    def posterior_weights(self, x: Tensor, t: Tensor | float | None = None, sde: SDE | None = None) -> Tensor:
        """p_t(component k | x), shape (B, K): the exact time-dependent classifier."""
        log_comp, _ = self._component_terms(x, sde, t)
        return torch.softmax(log_comp, dim=0).T.contiguous()

    def classifier(self, sde: SDE) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact time-dependent classifier with the component as the class: (x, t) -> log
        p_t(k | x), shape (B, K), usable as logits (differentiable in x)."""
        self._check_sde(sde)

        def log_posterior(x: Tensor, t: Tensor) -> Tensor:
            log_comp, _ = self._component_terms(x, sde, t)
            return torch.log_softmax(log_comp, dim=0).T.contiguous()

        return log_posterior

    def component(self, k: int) -> GaussianMixture:
        """Component k alone, as a one-component mixture (the class-conditional law)."""
        if not 0 <= k < self.num_components:
            raise ValueError(f"component index must lie in [0, {self.num_components}); got {k}")
        part = GaussianMixture.__new__(GaussianMixture)
        torch.nn.Module.__init__(part)
        part.event_shape = self.event_shape
        part.register_buffer("evecs", None if self.evecs is None else self.evecs[k : k + 1].clone())
        part.register_buffer("log_weights", torch.zeros(1, dtype=self.log_weights.dtype, device=self.means.device))
        part.register_buffer("means", self.means[k : k + 1].clone())
        part.register_buffer("evals", self.evals[k : k + 1].clone())
        return part

    def covariances(self) -> Tensor:
        """The component covariances C_k, shape (K, D, D)."""
        if self.evecs is None:
            return torch.diag_embed(self.evals)
        return self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(-1, -2)

    def moments(self) -> DataMoments:
        """The mixture's mean mu and covariance sum_k w_k (C_k + (mu_k - mu)(mu_k - mu)^T)."""
        w = torch.softmax(self.log_weights, 0)
        mean = w @ self.means
        apart = self.means - mean
        covariance = (w[:, None, None] * (self.covariances() + apart[:, :, None] * apart[:, None, :])).sum(0)
        return DataMoments.from_covariance(mean.reshape(self.event_shape), covariance)

    def condition(self, A: Tensor, y: Tensor, B: Tensor | None = None) -> GaussianMixture:
        """The law of B x given the noiseless measurement A x = y, again a Gaussian mixture.

        ``A`` is (M, D) with full row rank and ``y`` is (M,). ``B`` (R, D) picks what to
        report; by default the coordinates A does not observe when A selects coordinates
        (inpainting: the missing entries), else an orthonormal basis of A's null space.
        Component k: mean B mu + B C A^T (A C A^T)^-1 (y - A mu), covariance
        B C B^T - B C A^T (A C A^T)^-1 A C B^T, weight w_k N(y; A mu, A C A^T).
        """
        A, y = _as_tensor(A).to(self.means), _as_tensor(y).to(self.means)
        if A.ndim != 2 or A.shape[1] != self.dim or y.shape != (A.shape[0],):
            raise ValueError(f"A must be (M, {self.dim}) and y (M,); got {tuple(A.shape)} and {tuple(y.shape)}")
        B = complement_rows(A) if B is None else _as_tensor(B).to(self.means)
        C = self.covariances()
        cov_aa = A @ C @ A.T  # (K, M, M)
        cov_ba = B @ C @ A.T  # (K, R, M)
        gain = torch.linalg.solve(cov_aa, cov_ba.transpose(-1, -2)).transpose(-1, -2)  # B C A^T (A C A^T)^-1
        resid = y - self.means @ A.T  # (K, M)
        means = self.means @ B.T + (gain @ resid[..., None])[..., 0]
        covs = B @ C @ B.T - gain @ cov_ba.transpose(-1, -2)
        log_evidence = torch.distributions.MultivariateNormal(self.means @ A.T, cov_aa).log_prob(y)
        log_w = self.log_weights + log_evidence
        return GaussianMixture(torch.softmax(log_w, 0), means, covs=0.5 * (covs + covs.transpose(-1, -2)))

    def measurement_log_likelihood(self, sde: SDE, A: Tensor, y: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """(x, t) -> log p(A x_0 = y | x_t = x), shape (B,): the exact likelihood term that turns
        the unconditional score into the score of p_t(x | A x_0 = y) (differentiable in x)."""
        sde = self._check_sde(sde)
        A, y = _as_tensor(A).to(self.means), _as_tensor(y).to(self.means)
        C = self.covariances()

        def log_likelihood(x: Tensor, t: Tensor) -> Tensor:
            flat = x.reshape(x.shape[0], -1)
            dt = flat.dtype
            t = torch.as_tensor(t, device=flat.device, dtype=dt).expand(flat.shape[0])
            if t.stride(0) == 0:  # one time for the whole batch: one solve per component
                t = t[:1]
            alpha, sigma = sde.alpha(t)[:, None, None], sde.sigma(t)[:, None, None]
            Cd, Ad, mu = C.to(dt), A.to(dt), self.means.to(dt)
            # x_0 | x_t, component k: Gaussian with covariance (C^-1 + alpha^2/sigma^2 I)^-1
            eye = torch.eye(self.dim, dtype=dt, device=flat.device)
            cov_t = alpha[..., None] ** 2 * Cd + sigma[..., None] ** 2 * eye  # (B or 1, K, D, D)
            gain = torch.linalg.solve(cov_t, alpha[..., None] * Cd).transpose(-1, -2)  # C alpha (cov_t)^-1
            resid = flat[:, None, :] - alpha * mu  # (B, K, D)
            post_mean = mu + (gain @ resid[..., None])[..., 0]
            post_cov = Cd - gain @ (alpha[..., None] * Cd)
            log_resp = torch.distributions.MultivariateNormal(alpha * mu, cov_t).log_prob(flat[:, None, :])
            log_resp = torch.log_softmax(self.log_weights.to(dt) + log_resp, dim=-1)
            m_y = post_mean @ Ad.T
            c_y = Ad @ post_cov @ Ad.T
            c_y = 0.5 * (c_y + c_y.transpose(-1, -2))
            log_py = torch.distributions.MultivariateNormal(m_y, c_y).log_prob(y.to(dt))
            return torch.logsumexp(log_resp + log_py, dim=-1)

        return log_likelihood

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        sde: SDE | None = None,
        t: float | Tensor | None = None,
        *,
        return_labels: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n exact samples of p_t (of the data law when sde is None), shape (n, *event_shape)."""
        sde = self._check_sde(sde)
        device, dtype = self.means.device, self.means.dtype
        labels = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        if t is not None:
            t = torch.as_tensor(t, device=device, dtype=dtype).expand(n)
            if t.stride(0) == 0:
                t = t[:1]
        means, evals = self._components_at(sde, t, dtype)
        at = torch.arange(n, device=device) if means.shape[1] == n else torch.zeros(n, device=device, dtype=torch.int64)
        z = randn((n, self.dim), generator, device, dtype) * evals[labels, at].sqrt()
        if self.evecs is not None:
            z = torch.einsum("bkd,bd->bk", self.evecs[labels], z)
        x = (means[labels, at] + z).reshape(n, *self.event_shape)
        return (x, labels) if return_labels else x

    def score_model(self, sde: SDE, *, conditional: bool = False) -> MixtureScore:
        """This mixture's exact score under ``sde`` as a ScoreModel (conditional on the
        component with ``conditional=True``)."""
        return MixtureScore(self, sde, conditional=conditional)


class MixtureScore(ScoreModel):
    """The exact score of a Gaussian mixture under a LinearSDE, usable like a trained network.

    ``conditional=True`` makes it a conditional model with the components as its classes:
    ``forward(x, t, labels)`` is the exact score of each label's component (of the mixture for
    ``NULL_LABEL``), the truth that classifier-free guidance is checked against.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE, *, conditional: bool = False) -> None:
        super().__init__()
        mixture._check_sde(sde)
        self.mixture = mixture
        self.sde = sde
        self.num_classes = mixture.num_components if conditional else None
        self.event_shape = mixture.event_shape

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        if labels is not None and self.num_classes is None:
            raise ValueError("class labels were given to an unconditional mixture score (conditional=False)")
        return self.mixture.score(x, t, self.sde, labels)


def complement_rows(A: Tensor) -> Tensor:
    """Rows spanning what A does not see: the unobserved unit vectors when A selects
    coordinates, else an orthonormal basis of A's null space."""
    is_selector = bool(((A == 0) | (A == 1)).all()) and bool((A.sum(1) == 1).all()) and bool((A.sum(0) <= 1).all())
    if is_selector:
        return torch.eye(A.shape[1], dtype=A.dtype, device=A.device)[A.sum(0) == 0]
    _, s, vh = torch.linalg.svd(A)
    return vh[int((s > s.max() * 1e-10).sum()) :]


def ring_mixture(
    num_components: int = 8, radius: float = 2.0, std: float = 0.15, weights: Sequence[float] | None = None
) -> GaussianMixture:
    """Components evenly spaced on a circle in 2-D (the classic 8-Gaussians toy)."""
    angles = torch.arange(num_components, dtype=torch.float64) * (2 * math.pi / num_components)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    weights = weights if weights is not None else [1.0] * num_components
    return GaussianMixture(weights, means, stds=[std] * num_components)


def random_mixture(
    dim: int,
    num_components: int,
    *,
    seed: int = 0,
    spread: float = 2.0,
    std_range: tuple[float, float] = (0.2, 0.5),
    full_covariance: bool = True,
    event_shape: Sequence[int] | None = None,
) -> GaussianMixture:
    """A reproducible random mixture: unequal weights, scattered means, anisotropic covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = 0.5 + torch.rand(num_components, generator=g, dtype=torch.float64)
    means = spread * torch.randn(num_components, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    lo, hi = std_range
    stds = lo + (hi - lo) * torch.rand(num_components, dim, generator=g, dtype=torch.float64)
    if not full_covariance:
        return GaussianMixture(weights, means, stds=stds, event_shape=event_shape)
    q, _ = torch.linalg.qr(torch.randn(num_components, dim, dim, generator=g, dtype=torch.float64))
    covs = q @ torch.diag_embed(stds**2) @ q.transpose(-1, -2)
    return GaussianMixture(weights, means, covs=covs, event_shape=event_shape)


PRESETS = {
    "ring8": lambda: ring_mixture(8),
    "ring8_tight": lambda: ring_mixture(8, std=0.05),
    "mixture3": lambda: GaussianMixture(
        [0.5, 0.3, 0.2],
        [[-1.0, 0.5], [1.2, 0.8], [0.3, -1.2]],
        covs=[[[0.09, 0.05], [0.05, 0.09]], [[0.04, 0.0], [0.0, 0.16]], [[0.02, -0.01], [-0.01, 0.05]]],
    ),
    "blobs16": lambda: random_mixture(16, 4, seed=1),
}


def preset(name: str) -> GaussianMixture:
    """A named built-in mixture: ring8, ring8_tight, mixture3 (2-D, unequal, correlated), blobs16 (16-D)."""
    from sdeplug.errors import UnknownPartError

    if name not in PRESETS:
        raise UnknownPartError("oracle mixture", name, PRESETS)
    return PRESETS[name]()
