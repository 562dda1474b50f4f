"""NCSN++ and DDPM++, the continuous-time score networks of Song et al. (ICLR 2021).

One class covers both: DDPM++ is NCSN++ with positional embeddings, no FIR filter and no
progressive paths. Every option of the paper's configs is an option here, under the same
name; ``preset`` names one of the paper's CIFAR-10 configurations (PRESETS), and options
given beside it override its values.

The network is conditioned on a noise label: the noise level sigma(t) with the Fourier
embedding (the paper's VE models, which take its log) and 999 t with the positional one
(its VP and sub-VP models). ``time_input`` says which, and the sdeplug score wrapper feeds it.

Submodules are registered in the order the paper's code appends them to its flat
``all_modules`` list, and 1x1 projections keep its (in, out) weight layout, so a
checkpoint of that code maps onto this network tensor by tensor (sdeplug.score_sde_checkpoints).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sdeplug import ScoreModel
from sdeplug_models import fir
from sdeplug_models.checks import check_num_classes
from sdeplug_models.embedding import ClassEmbedding

RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
COMBINE = ("sum", "cat")
EMBEDDINGS = ("fourier", "positional")
TIME_INPUTS = ("sigma", "999t", "t")


def _init(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM's initialisation: uniform with variance ``scale`` / mean(fan_in, fan_out) (0 means 1e-10)."""
    scale = 1e-10 if scale == 0 else scale
    receptive = weight[0, 0].numel() if weight.ndim > 2 else 1
    fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2
    bound = math.sqrt(3 * scale / fan_avg)
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def _conv(c_in: int, c_out: int, kernel: int = 3, init_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kwargs.pop("padding", kernel // 2), **kwargs)
    _init(conv.weight, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(c_in: int, c_out: int) -> nn.Linear:
    linear = nn.Linear(c_in, c_out)
    _init(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def _merge(x: Tensor, h: Tensor, skip_rescale: bool) -> Tensor:
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class ChannelLinear(nn.Module):
    """A linear map of the channels at every pixel (a 1x1 convolution, weight stored (in, out))."""

    def __init__(self, c_in: int, c_out: int, init_scale: float = 0.1) -> None:
        super().__init__()
        self.weight = nn.Parameter(_init(torch.empty(c_in, c_out), init_scale))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.weight) + self.bias[:, None, None]


class FourierEmbedding(nn.Module):
    """Fixed random Fourier features of log(sigma)."""

    def __init__(self, size: int, scale: float) -> None:
        super().__init__()
        self.register_buffer("freqs", torch.randn(size) * scale)

    def forward(self, sigma: Tensor) -> Tensor:
        angles = torch.log(sigma)[:, None] * self.freqs * (2 * math.pi)
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def positional_embedding(label: Tensor, dim: int, max_positions: int = 10000) -> Tensor:
    """Transformer sinusoidal features of a (possibly fractional) time step, in the label's
    floating dtype (float32 for an integer label)."""
    half = dim // 2
    dtype = label.dtype if label.is_floating_point() else torch.get_default_dtype()
    freqs = torch.exp(torch.arange(half, device=label.device, dtype=dtype) * (-math.log(max_positions) / (half - 1)))
    angles = label.to(dtype)[:, None] * freqs
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class Attention(nn.Module):
    """Single-head self-attention over the pixels, with a residual connection."""

    def __init__(self, channels: int, skip_rescale: bool, init_scale: float) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v = (ChannelLinear(channels, channels) for _ in range(3))
        self.out = ChannelLinear(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (proj(n).reshape(b, c, h * w).transpose(1, 2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return _merge(x, self.out(out), self.skip_rescale)


class Resample(nn.Module):
    """Up- or down-sampling by 2: FIR-filtered or nearest/average, with or without a 3x3 convolution."""

    def __init__(self, direction: str, c_in: int, c_out: int | None, with_conv: bool, fir_kernel) -> None:
        super().__init__()
        self.direction, self.with_conv = direction, with_conv
        c_out = c_out or c_in
        self.use_fir = fir_kernel is not None
        if self.use_fir:
            self.register_buffer("kernel", fir.fir_filter(fir_kernel), persistent=False)
        if with_conv:
            stride = 2 if direction == "down" and not self.use_fir else 1
            self.conv = _conv(c_in, c_out, stride=stride, padding=0 if stride == 2 else 1)

    def forward(self, x: Tensor) -> Tensor:
        up = self.direction == "up"
        if self.use_fir and self.with_conv:
            resample = fir.upsample_conv if up else fir.conv_downsample
            return resample(x, self.conv.weight, self.kernel) + self.conv.bias[:, None, None]
        if self.use_fir:
            return (fir.upsample if up else fir.downsample)(x, self.kernel)
        if up:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            return self.conv(x) if self.with_conv else x
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """DDPM's residual block ("ddpm") or BigGAN's ("biggan", which can resample inside)."""

    def __init__(
        self,
        kind: str,
        c_in: int,
        c_out: int | None,
        temb_dim: int,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        resample: str | None = None,
        fir_kernel=None,
    ) -> None:
        super().__init__()
        c_out = c_out or c_in
        self.kind, self.resample, self.skip_rescale = kind, resample, skip_rescale
        self.norm1, self.conv1 = _norm(c_in), _conv(c_in, c_out)
        self.time = _linear(temb_dim, c_out)
        self.norm2, self.dropout = _norm(c_out), nn.Dropout(dropout)
        self.conv2 = _conv(c_out, c_out, init_scale=init_scale)
        self.skip: nn.Module | None = None
        if kind == "ddpm" and c_in != c_out:
            self.skip = ChannelLinear(c_in, c_out)
        elif kind == "biggan" and (c_in != c_out or resample):
            self.skip = _conv(c_in, c_out, kernel=1)
        if fir_kernel is not None:
            self.register_buffer("kernel", fir.fir_filter(fir_kernel), persistent=False)
        self.use_fir = fir_kernel is not None

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return fir.upsample(x, self.kernel) if self.use_fir else fir.naive_upsample(x)
        return fir.downsample(x, self.kernel) if self.use_fir else fir.naive_downsample(x)

    def forward(self, x: Tensor, temb: Tensor | None) -> Tensor:
        h = F.silu(self.norm1(x))
        if self.resample:
            h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        if temb is not None:
            h = h + self.time(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if self.skip is not None:
            x = self.skip(x)
        return _merge(x, h, self.skip_rescale)


class Combine(nn.Module):
    """Adds (or concatenates) a 1x1 projection of the input pyramid to the features."""

    def __init__(self, c_pyramid: int, c_features: int, method: str) -> None:
        super().__init__()
        self.conv, self.method = _conv(c_pyramid, c_features, kernel=1), method

    def forward(self, pyramid: Tensor, h: Tensor) -> Tensor:
        p = self.conv(pyramid)
        return torch.cat([p, h], dim=1) if self.method == "cat" else p + h


class Stage(nn.Module):
    """A residual block and, at attention resolutions, self-attention after it."""

    def __init__(self, block: ResBlock, attention: Attention | None) -> None:
        super().__init__()
        self.block, self.attention = block, attention

    def forward(self, h: Tensor, temb: Tensor | None) -> Tensor:
        h = self.block(h, temb)
        return self.attention(h) if self.attention is not None else h


#: The value of each option when neither the config nor a preset gives it: DDPM++'s.
DEFAULTS: dict[str, object] = dict(
    nf=128,
    ch_mult=(1, 2, 2, 2),
    num_res_blocks=4,
    attn_resolutions=(16,),
    dropout=0.1,
    resamp_with_conv=True,
    conditional=True,
    fir=False,
    fir_kernel=(1, 3, 3, 1),
    skip_rescale=True,
    resblock_type="biggan",
    progressive="none",
    progressive_input="none",
    progressive_combine="sum",
    embedding_type="positional",
    fourier_scale=16.0,
    init_scale=0.0,
    scale_by_sigma=False,
    centered=True,
    time_input=None,
)


class NCSNpp(ScoreModel):
    """NCSN++ / DDPM++ for images (C, H, W), H and W divisible by 2^(len(ch_mult) - 1).

    With ``scale_by_sigma`` the output is divided by the noise label (the paper's VE
    models, read as a score); without, the output is read through the training
    parameterization (the paper's VP models predict the noise). ``centered=False`` means
    the data lie in [0, 1], and the network maps them to [-1, 1] first, as the paper's VE
    models do.
    """

    name = "ncsnpp"

    def __init__(
        self,
        event_shape: Sequence[int] = (3, 32, 32),
        preset: str | None = None,
        nf: int | None = None,
        ch_mult: Sequence[int] | None = None,
        num_res_blocks: int | None = None,
        attn_resolutions: Sequence[int] | None = None,
        dropout: float | None = None,
        resamp_with_conv: bool | None = None,
        conditional: bool | None = None,
        fir: bool | None = None,
        fir_kernel: Sequence[float] | None = None,
        skip_rescale: bool | None = None,
        resblock_type: str | None = None,
        progressive: str | None = None,
        progressive_input: str | None = None,
        progressive_combine: str | None = None,
        embedding_type: str | None = None,
        fourier_scale: float | None = None,
        init_scale: float | None = None,
        scale_by_sigma: bool | None = None,
        centered: bool | None = None,
        time_input: str | None = None,
        num_classes: int | None = None,
    ) -> None:
        """Options left out take the ``preset``'s value (one of PRESETS), else DEFAULTS.
        ``num_classes`` makes the network class-conditional (off in every preset)."""
        given = {k: v for k, v in locals().items() if k in DEFAULTS and v is not None}
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}; got {preset!r}")
        chosen = {**DEFAULTS, **(PRESETS[preset][0] if preset else {}), **given}
        self._build(event_shape, **chosen)
        # after the paper's modules, so that an unconditional network's state is the paper's
        self.num_classes = check_num_classes(num_classes)
        self.classes = None
        if self.num_classes:
            if self.time_mlp is None:
                raise ValueError("num_classes needs conditional = true: the class embedding joins the time embedding")
            self.classes = ClassEmbedding(self.num_classes, self.time_mlp[0].in_features)
        self.preset = preset
        self.sde_name = PRESETS[preset][1] if preset else None  # the SDE the paper trained this preset on

    @classmethod
    def example_options(cls) -> list[dict]:
        """Small networks for contract checks: a paper preset at width 8, and the other paths."""
        return [
            {"event_shape": (3, 16, 16), "preset": "ncsnpp_cifar10_ve", "nf": 8},
            {
                "event_shape": (1, 8, 8),
                "nf": 8,
                "ch_mult": (1, 2),
                "num_res_blocks": 1,
                "attn_resolutions": (4,),
                "resblock_type": "ddpm",
                "fir": True,
                "progressive": "output_skip",
                "progressive_input": "input_skip",
                "progressive_combine": "cat",
            },
        ]

    def _build(
        self,
        event_shape: Sequence[int],
        nf: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float,
        resamp_with_conv: bool,
        conditional: bool,
        fir: bool,
        fir_kernel: Sequence[float],
        skip_rescale: bool,
        resblock_type: str,
        progressive: str,
        progressive_input: str,
        progressive_combine: str,
        embedding_type: str,
        fourier_scale: float,
        init_scale: float,
        scale_by_sigma: bool,
        centered: bool,
        time_input: str | None,
    ) -> None:
        super().__init__()
        self.event_shape = tuple(int(d) for d in event_shape)
        for option, value, allowed in (
            ("resblock_type", resblock_type, RESBLOCK_TYPES),
            ("progressive", progressive, PROGRESSIVE),
            ("progressive_input", progressive_input, PROGRESSIVE_INPUT),
            ("progressive_combine", progressive_combine, COMBINE),
            ("embedding_type", embedding_type, EMBEDDINGS),
            ("time_input", time_input, (*TIME_INPUTS, None)),
        ):
            if value not in allowed:
                raise ValueError(f"{option} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
        if len(self.event_shape) != 3:
            raise ValueError(f"event_shape must be (channels, height, width); got {self.event_shape}")
        channels, height, width = self.event_shape
        levels = len(ch_mult)
        if nf < 4 or levels < 1 or num_res_blocks < 1:
            raise ValueError(
                f"nf must be >= 4, ch_mult non-empty, num_res_blocks >= 1; got {nf}, {ch_mult}, {num_res_blocks}"
            )
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise ValueError(f"height and width must be divisible by {2 ** (levels - 1)} for {levels} levels")
        # what the network is conditioned on: the paper's VE models take sigma, its VP models 999 t
        self.time_input = time_input or ("sigma" if embedding_type == "fourier" else "999t")
        if scale_by_sigma and self.time_input != "sigma":
            raise ValueError("scale_by_sigma divides the output by the noise label, so it needs time_input 'sigma'")
        self.nf, self.ch_mult, self.num_res_blocks = nf, tuple(ch_mult), num_res_blocks
        self.attn_resolutions, self.embedding_type = tuple(attn_resolutions), embedding_type
        self.conditional, self.scale_by_sigma, self.centered = conditional, scale_by_sigma, centered
        self.progressive, self.progressive_input, self.skip_rescale = progressive, progressive_input, skip_rescale
        kernel = tuple(fir_kernel) if fir else None

        def res_block(c_in: int, c_out: int | None = None, resample: str | None = None) -> ResBlock:
            return ResBlock(resblock_type, c_in, c_out, 4 * nf, dropout, skip_rescale, init_scale, resample, kernel)

        def attention(c: int) -> Attention:
            return Attention(c, skip_rescale, init_scale)

        # registration order = the paper's all_modules order (see the module docstring)
        self.fourier = FourierEmbedding(nf, fourier_scale) if embedding_type == "fourier" else None
        embed_dim = 2 * nf if embedding_type == "fourier" else nf
        self.time_mlp = (
            nn.Sequential(_linear(embed_dim, 4 * nf), nn.SiLU(), _linear(4 * nf, 4 * nf)) if conditional else None
        )
        self.input = _conv(channels, nf)

        self.down = nn.ModuleList()
        skips, c, pyramid_c, res = [nf], nf, channels, width
        for level, mult in enumerate(ch_mult):
            stages = nn.ModuleList()
            for _ in range(num_res_blocks):
                stages.append(Stage(res_block(c, nf * mult), attention(nf * mult) if res in attn_resolutions else None))
                c = nf * mult
                skips.append(c)
            parts = nn.ModuleDict({"stages": stages})
            if level < levels - 1:
                if resblock_type == "ddpm":
                    parts["downsample"] = Resample("down", c, None, resamp_with_conv, kernel)
                else:
                    parts["downsample"] = res_block(c, resample="down")
                if progressive_input == "input_skip":
                    parts["pyramid"] = Combine(pyramid_c, c, progressive_combine)
                    c = 2 * c if progressive_combine == "cat" else c
                elif progressive_input == "residual":
                    parts["pyramid"] = Resample("down", pyramid_c, c, True, kernel)
                    pyramid_c = c
                skips.append(c)
                res //= 2
            self.down.append(parts)

        # resamplers without weights, used by the progressive paths
        if progressive_input == "input_skip":
            self.pyramid_downsample = Resample("down", channels, None, False, kernel)
        if progressive == "output_skip":
            self.pyramid_upsample = Resample("up", channels, None, False, kernel)
        self.mid = nn.ModuleList([res_block(c), attention(c), res_block(c)])

        self.up = nn.ModuleList()
        pyramid_c = 0
        for level, mult in reversed(list(enumerate(ch_mult))):
            parts = nn.ModuleDict()
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(res_block(c + skips.pop(), nf * mult))
                c = nf * mult
            parts["blocks"] = blocks
            if res in attn_resolutions:
                parts["attention"] = attention(c)
            if progressive != "none":
                top = level == levels - 1
                if progressive == "output_skip" or top:
                    parts["pyramid_norm"] = _norm(c)
                    out_c = channels if progressive == "output_skip" else c
                    parts["pyramid_conv"] = _conv(
                        c, out_c, init_scale=init_scale if progressive == "output_skip" else 1.0
                    )
                    pyramid_c = out_c
                else:
                    parts["pyramid_up"] = Resample("up", pyramid_c, c, True, kernel)
                    pyramid_c = c
            if level > 0:
                if resblock_type == "ddpm":
                    parts["upsample"] = Resample("up", c, None, resamp_with_conv, kernel)
                else:
                    parts["upsample"] = res_block(c, resample="up")
                res *= 2
            self.up.append(parts)
        if progressive == "output_skip":
            self.out_norm, self.out = None, None
        else:
            self.out_norm, self.out = _norm(c), _conv(c, channels, init_scale=init_scale)

    def embed(self, label: Tensor, labels: Tensor | None = None) -> Tensor | None:
        """The conditioning vector of each sample's noise label (None when not conditional),
        with the class embedding of ``labels`` added before the MLP in a class-conditional one."""
        emb = self.fourier(label) if self.fourier is not None else positional_embedding(label, self.nf)
        emb = emb.to(self.input.weight.dtype)
        if self.classes is not None:
            emb = emb + self.classes(labels, emb.shape[0]).to(emb.dtype)
        return self.time_mlp(emb) if self.time_mlp is not None else None

    def forward(self, x: Tensor, label: Tensor, labels: Tensor | None = None) -> Tensor:
        temb = self.embed(label, labels)
        if not self.centered:
            x = 2 * x - 1
        pyramid = x if self.progressive_input != "none" else None
        hs = [self.input(x)]
        for parts in self.down:
            for stage in parts["stages"]:
                hs.append(stage(hs[-1], temb))
            if "downsample" not in parts:
                continue
            down = parts["downsample"]
            h = down(hs[-1], temb) if isinstance(down, ResBlock) else down(hs[-1])
            if self.progressive_input == "input_skip":
                pyramid = self.pyramid_downsample(pyramid)
                h = parts["pyramid"](pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = _merge(parts["pyramid"](pyramid), h, self.skip_rescale)
                h = pyramid
            hs.append(h)

        h = self.mid[0](hs[-1], temb)
        h = self.mid[2](self.mid[1](h), temb)

        pyramid = None
        for parts in self.up:
            for block in parts["blocks"]:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if "attention" in parts:
                h = parts["attention"](h)
            if "pyramid_norm" in parts:
                p = parts["pyramid_conv"](F.silu(parts["pyramid_norm"](h)))
                if self.progressive == "output_skip" and pyramid is not None:
                    pyramid = self.pyramid_upsample(pyramid) + p
                else:
                    pyramid = p
            elif "pyramid_up" in parts:
                pyramid = _merge(parts["pyramid_up"](pyramid), h, self.skip_rescale)
                h = pyramid
            if "upsample" in parts:
                up = parts["upsample"]
                h = up(h, temb) if isinstance(up, ResBlock) else up(h)

        if self.progressive == "output_skip":
            h = pyramid
        else:
            h = self.out(F.silu(self.out_norm(h)))
        if self.scale_by_sigma:
            h = h / label.reshape(-1, *([1] * (h.ndim - 1)))
        return h


# DEFAULTS are DDPM++ cont.'s values; NCSN++ adds the FIR filter and the residual input
# pyramid, and its VE models Fourier features of sigma, the output divided by sigma, data in [0, 1].
_DDPMPP = {k: v for k, v in DEFAULTS.items() if k != "time_input"}
_NCSNPP_VP = dict(_DDPMPP, fir=True, progressive_input="residual")
_NCSNPP_VE = dict(_NCSNPP_VP, embedding_type="fourier", scale_by_sigma=True, centered=False)

#: The paper's continuous-time CIFAR-10 networks (configs/{ve,vp,subvp}/cifar10_*_continuous.py),
#: each with the SDE it was trained with; "deep" variants have 8 residual blocks per level.
PRESETS: dict[str, tuple[dict, str]] = {
    "ncsnpp_cifar10_ve": (dict(_NCSNPP_VE, num_res_blocks=4), "ve"),
    "ncsnpp_deep_cifar10_ve": (dict(_NCSNPP_VE, num_res_blocks=8), "ve"),
    "ncsnpp_cifar10_vp": (dict(_NCSNPP_VP, num_res_blocks=4), "vp"),
    "ncsnpp_deep_cifar10_vp": (dict(_NCSNPP_VP, num_res_blocks=8), "vp"),
    "ncsnpp_cifar10_subvp": (dict(_NCSNPP_VP, num_res_blocks=4), "subvp"),
    "ncsnpp_deep_cifar10_subvp": (dict(_NCSNPP_VP, num_res_blocks=8), "subvp"),
    "ddpmpp_cifar10_vp": (dict(_DDPMPP, num_res_blocks=4), "vp"),
    "ddpmpp_deep_cifar10_vp": (dict(_DDPMPP, num_res_blocks=8), "vp"),
    "ddpmpp_cifar10_subvp": (dict(_DDPMPP, num_res_blocks=4), "subvp"),
    "ddpmpp_deep_cifar10_subvp": (dict(_DDPMPP, num_res_blocks=8), "subvp"),
}
