"""Judging samples without an oracle: a classifier's view of generated images, and a Gaussian baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from sdeplug.app.datasets import Dataset
from sdeplug.extras import require


def _flat(x: Tensor) -> np.ndarray:
    return x.detach().cpu().double().reshape(x.shape[0], -1).numpy()


def reference_classifier(dataset: Dataset, seed: int = 0):
    """A logistic-regression classifier (scikit-learn) fitted on the real training data: an
    outside judge of samples, independent of anything sdeplug trained."""
    LogisticRegression = require("sklearn.linear_model", "judging samples of labelled data").LogisticRegression
    if dataset.train_labels is None:
        raise ValueError(f"the data set {dataset.name!r} has no labels")
    return LogisticRegression(max_iter=3000, random_state=seed).fit(_flat(dataset.train), dataset.train_labels.numpy())


def predicted_labels(clf, x: Tensor) -> Tensor:
    """The reference classifier's labels for x (clipped to the data range [-1, 1])."""
    return torch.as_tensor(clf.predict(_flat(x.clamp(-1, 1))), dtype=torch.int64)


def classifier_report(dataset: Dataset, samples: Tensor, seed: int = 0) -> dict[str, object]:
    """Fit a logistic-regression classifier on the real training data; compare how it sees
    held-out real data and the samples: mean confidence and the spread over classes.

    Recognisable samples get a confidence close to the real data's and a class spread close
    to uniform-like real frequencies; noise or mode collapse shows in either.
    """
    clf = reference_classifier(dataset, seed)
    flat = _flat
    classes = len(clf.classes_)

    def view(x: Tensor) -> tuple[float, list[float]]:
        proba = clf.predict_proba(flat(x.clamp(-1, 1)))
        freq = np.bincount(proba.argmax(1), minlength=classes) / len(proba)
        return float(proba.max(1).mean()), freq.tolist()

    real_conf, real_freq = view(dataset.test)
    conf, freq = view(samples)
    return {
        "real_confidence": real_conf,
        "sample_confidence": conf,
        "real_class_frequencies": real_freq,
        "sample_class_frequencies": freq,
        "class_frequency_tv_distance": 0.5 * float(np.abs(np.array(freq) - np.array(real_freq)).sum()),
        "real_test_accuracy": float(clf.score(flat(dataset.test), dataset.test_labels.numpy())),
    }


def gaussian_logp(train: Tensor, x: Tensor) -> Tensor:
    """log density of x under the full-covariance Gaussian fitted to ``train`` (a baseline)."""
    flat_train = train.reshape(train.shape[0], -1).double()
    mean = flat_train.mean(0)
    cov = torch.cov(flat_train.T).reshape(flat_train.shape[1], flat_train.shape[1])
    cov = cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype)
    dist = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return dist.log_prob(x.reshape(x.shape[0], -1).double().cpu())
