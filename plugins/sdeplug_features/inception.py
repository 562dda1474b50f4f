"""Inception-v3 pool features as FID uses them (the network of TensorFlow's FID code, as
pytorch-fid ports it), written here; the weights come from a file the user names.

The weights file is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, a plain state
dict, read with ``weights_only`` loading (or a safetensors file with the same keys).
sdeplug never downloads it.

Preprocessing, recorded in the identity:
1. samples are clipped to the data range and quantised to 8 bits, as writing them to PNG
   files would;
2. they are resized to 299x299 bilinearly (torch, align_corners=False, as pytorch-fid);
3. they are scaled to [-1, 1];
4. grey images are repeated over three channels.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sdeplug import FeatureExtractor

DATA_RANGES = ("[-1,1]", "[0,1]")


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TF's pooling, as in FID


class BlockA(nn.Module):
    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(c_in, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(c_in, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class BlockB(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = Conv(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(c_in, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        deep = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), deep, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = Conv(c_in, 192, 1)
        self.branch7x7_1 = Conv(c_in, c7, 1)
        self.branch7x7_2 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = Conv(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = Conv(c_in, c7, 1)
        self.branch7x7dbl_2 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = Conv(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = Conv(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):
    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(c_in, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(c_in, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_2(self.branch3x3_1(x))
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([three, seven, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """The last blocks; the first pools by average (TF's), the second by maximum (as FID's network)."""

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(c_in, 320, 1)
        self.branch3x3_1 = Conv(c_in, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(c_in, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_1(x)
        three = torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), three, double, self.branch_pool(pooled)], 1)


class InceptionFeatures(FeatureExtractor):
    """The 2048 pool features of FID's Inception-v3; ``weights`` is the file of its weights."""

    name = "inception"
    #: ``sdeplug evaluate`` refuses to run it without its weights file
    needs_weights = True

    def __init__(self, event_shape: Sequence[int] = (3, 32, 32), weights: str = "", data_range: str = "[-1,1]") -> None:
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)
        if len(self.event_shape) != 3 or self.event_shape[0] not in (1, 3):
            raise ValueError(f"Inception features take grey or RGB images (1 or 3, H, W); got {self.event_shape}")
        if data_range not in DATA_RANGES:
            raise ValueError(f"data_range must be one of {', '.join(map(repr, DATA_RANGES))}; got {data_range!r}")
        self.weights, self.data_range = weights, data_range
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the 1008-way classifier of the weights file (unused for features)
        self.weights_sha256: str | None = None
        if weights:
            self.load(weights)
        self.eval()

    @property
    def comparable_with_published(self) -> bool:
        """With FID's weights loaded (a random network compares with nothing)."""
        return self.weights_sha256 is not None

    def load(self, path: str) -> None:
        """Load the weights file (torch state dict read with weights_only, or safetensors)."""
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(
                f"Inception weights not found: {file}; name pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                "(sdeplug never downloads it)"
            )
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
                reason = next((line for line in str(exc).splitlines()[1:] if line.strip()), type(exc).__name__)
                raise ValueError(
                    f"{file} is not a weights file that loads without running code ({reason.strip()[:160]}); "
                    "give a torch state dict (pytorch-fid's .pth) or a .safetensors file"
                ) from None
        state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
        try:
            self.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{file} does not hold FID Inception-v3 weights: {str(exc).splitlines()[0]}") from None
        self.weights_sha256 = hashlib.sha256(file.read_bytes()).hexdigest()

    def preprocess(self, x: Tensor) -> Tensor:
        """Clip, quantise to 8 bits, resize to 299 and scale to [-1, 1] (see the module docstring)."""
        x = x.to(self.fc.weight.dtype)
        unit = (x + 1) / 2 if self.data_range == "[-1,1]" else x
        unit = torch.round(unit.clamp(0, 1) * 255) / 255
        if unit.shape[1] == 1:
            unit = unit.expand(-1, 3, -1, -1)
        unit = F.interpolate(unit, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * unit - 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.preprocess(x)
        for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3):
            x = layer(x)
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def identity(self) -> dict:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "preprocessing": f"data {self.data_range} clipped, 8-bit, bilinear 299x299 (torch, align_corners=False)",
        }
