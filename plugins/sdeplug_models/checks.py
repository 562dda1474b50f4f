"""Checks of the networks' size options, so that a bad one is refused by name before torch
fails on it deep inside the construction (or, for an odd embedding width, at the first call)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

#: The bundled U-Net and image classifier normalise with GroupNorm in groups of this many.
GROUPS = 8


def check_sizes(**sizes: tuple[object, int]) -> None:
    """Each ``name=(value, least)``: value must be an integer (not a bool) of at least ``least``."""
    for name, (value, least) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")


def check_embed_dim(embed_dim: object) -> None:
    """The Fourier time embedding takes the sine and cosine of embed_dim / 2 frequencies."""
    check_sizes(embed_dim=(embed_dim, 2))
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even (sines and cosines of embed_dim / 2 frequencies); got {embed_dim}")


def check_event_shape(event_shape: object, image: bool = False) -> tuple[int, ...]:
    """The event shape as a tuple of positive ints: (channels, height, width) when ``image``."""
    wanted = "(channels, height, width)" if image else "a non-empty sequence of sizes"
    is_sequence = isinstance(event_shape, Sequence) and not isinstance(event_shape, (str, bytes))
    if (
        not is_sequence
        or not event_shape
        or (image and len(event_shape) != 3)
        or any(isinstance(d, bool) or not isinstance(d, Integral) or d < 1 for d in event_shape)
    ):
        shown = tuple(event_shape) if is_sequence else event_shape
        raise ValueError(f"event_shape must be {wanted}, each a positive integer; got {shown!r}")
    return tuple(int(d) for d in event_shape)


def check_channels(channels: object, channel_mult: object) -> tuple[int, ...]:
    """``channels`` a positive multiple of GROUPS, ``channel_mult`` a non-empty sequence of
    positive integers; returns the multipliers as a tuple."""
    check_sizes(channels=(channels, GROUPS))
    if channels % GROUPS:
        raise ValueError(f"channels must be a multiple of {GROUPS} (GroupNorm in {GROUPS} groups); got {channels}")
    if isinstance(channel_mult, (str, bytes)) or not isinstance(channel_mult, Sequence) or not channel_mult:
        raise ValueError(f"channel_mult must be a non-empty sequence of positive integers; got {channel_mult!r}")
    for mult in channel_mult:
        check_sizes(channel_mult=(mult, 1))
    return tuple(int(m) for m in channel_mult)


def check_dropout(dropout: object) -> None:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")


def check_num_classes(num_classes: object) -> int | None:
    """None (an unconditional network) or the number of classes, an integer >= 1."""
    if num_classes is None:
        return None
    check_sizes(num_classes=(num_classes, 1))
    return int(num_classes)
