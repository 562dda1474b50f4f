"""The data as their own features."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from sdeplug import FeatureExtractor


class PixelFeatures(FeatureExtractor):
    """Each sample flattened: metrics in data space (toy data)."""

    name = "pixels"

    def __init__(self, event_shape: Sequence[int] = (2,)) -> None:
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def identity(self) -> dict:
        return {"name": self.name, "event_shape": list(self.event_shape)}
