"""Features learnt from the data set itself: a small CNN (or MLP for vectors) trained to
classify the clean data by their labels; its penultimate layer gives the features and its
softmax the class probabilities of an Inception-Score-like number."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sdeplug import FeatureExtractor


class DataClassifierFeatures(FeatureExtractor):
    """Penultimate-layer features of a classifier trained on the data's labels (``fit``), or
    loaded from ``weights`` (a safetensors file written by ``save``)."""

    name = "data_classifier"

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 8, 8),
        num_classes: int = 10,
        width: int = 32,
        features: int = 64,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)
        if num_classes < 2 or width < 1 or features < 1:
            raise ValueError(
                f"need num_classes >= 2, width >= 1, features >= 1; got {num_classes}, {width}, {features}"
            )
        self.num_classes, self.width, self.features = num_classes, width, features
        if len(self.event_shape) == 3:
            c = self.event_shape[0]
            self.body = nn.Sequential(
                nn.Conv2d(c, width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(width, 2 * width, 3, padding=1, stride=2),
                nn.SiLU(),
                nn.Conv2d(2 * width, 2 * width, 3, padding=1),
                nn.SiLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(2 * width, features),
                nn.SiLU(),
            )
        else:
            dim = int(torch.tensor(self.event_shape).prod())
            self.body = nn.Sequential(
                nn.Flatten(), nn.Linear(dim, 4 * width), nn.SiLU(), nn.Linear(4 * width, features), nn.SiLU()
            )
        self.head = nn.Linear(features, num_classes)
        self.weights, self.weights_sha256 = weights, None
        if weights is not None:
            self.load(weights)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.to(self.head.weight.dtype))  # samples may come in any float dtype

    def class_probabilities(self, x: Tensor) -> Tensor:
        """softmax of the classifier's logits (batch, num_classes)."""
        return torch.softmax(self.head(self(x)), dim=-1)

    def fit(
        self, data: Tensor, labels: Tensor, *, steps: int = 2000, batch_size: int = 128, seed: int = 0
    ) -> DataClassifierFeatures:
        """Train on clean data (batch, *event_shape) and labels (batch,) with Adam, seeded."""
        if labels.shape != (len(data),) or int(labels.min()) < 0 or int(labels.max()) >= self.num_classes:
            raise ValueError(f"labels must be (batch,) integers in [0, {self.num_classes}); got {tuple(labels.shape)}")
        g = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for module in self.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        optimizer = torch.optim.Adam(self.parameters(), lr=2e-3)
        data, labels = data.to(next(self.parameters()).dtype), labels.long()
        self.train()
        for _ in range(steps):
            index = torch.randint(len(data), (batch_size,), generator=g)
            loss = nn.functional.cross_entropy(self.head(self.body(data[index])), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.eval()
        self.weights_sha256 = _digest(self.state_dict())
        return self

    def save(self, path: str) -> None:
        """Write the trained weights (safetensors)."""
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, path)

    def load(self, path: str) -> None:
        state = load_file(path)
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path} does not hold weights of this feature network: {exc}") from None
        self.eval()
        self.weights_sha256 = _digest(self.state_dict())

    def identity(self) -> dict:
        return {
            "name": self.name,
            "event_shape": list(self.event_shape),
            "num_classes": self.num_classes,
            "width": self.width,
            "features": self.features,
            "weights_sha256": self.weights_sha256,
            "comparable_with_published": False,
        }


def _digest(state: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
