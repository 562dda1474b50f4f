"""``sdeplug moments``: the mean and covariance of the config's training data, written where
the ``gaussian_start`` predictor's ``moments`` option can name it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from sdeplug.app.assemble import build_dataset
from sdeplug.app.config import Config
from sdeplug.app.datasets import take
from sdeplug.errors import ConfigError
from sdeplug.moments import DataMoments

#: Above this many numbers per sample the covariance is per-coordinate unless asked otherwise.
FULL_COVARIANCE_UP_TO = 4096
#: Rows read at a time: the covariance is accumulated, never the data held whole.
CHUNK = 2048


def default_moments_file(config: Config) -> Path:
    return Path(config.output.dir).expanduser() / "moments.safetensors"


def data_moments(data, count: int, shape: tuple[int, ...], full: bool) -> DataMoments:
    """Mean and covariance (full, or per-coordinate) of the first ``count`` rows, samples of
    ``shape``, read in float64 chunks. The sums are of the rows less the first chunk's mean, so
    that data far from zero keep the digits of their small variances."""
    if count < 2:
        raise ConfigError(f"data moments need at least 2 training samples; the data set has {count}")
    dim = math.prod(shape)
    shift = total = squares = None
    for start in range(0, count, CHUNK):
        flat = take(data, torch.arange(start, min(count, start + CHUNK))).reshape(-1, dim).to(torch.float64)
        shift = flat.mean(0) if shift is None else shift
        flat = flat - shift
        part = flat.T @ flat if full else (flat**2).sum(0)
        total = flat.sum(0) if total is None else total + flat.sum(0)
        squares = part if squares is None else squares + part
    offset = total / count  # the mean, less the shift
    mean = (shift + offset).reshape(shape)
    if full:
        covariance = (squares - count * torch.outer(offset, offset)) / (count - 1)
        return DataMoments.from_covariance(mean, covariance)
    variances = ((squares - count * offset**2) / (count - 1)).clamp_min(0.0)
    return DataMoments(mean, variances.reshape(shape))


def moments_job(config: Config, out_file: Path, *, num: int | None, full: bool | None) -> dict[str, Any]:
    """Compute the training data's moments and write them to ``out_file`` (only [data] is read:
    the [sampler] may name the file not yet written)."""
    dataset = build_dataset(config)
    count = len(dataset.train) if num is None else min(num, len(dataset.train))
    shape = tuple(dataset.event_shape)
    dim = math.prod(shape)
    full = dim <= FULL_COVARIANCE_UP_TO if full is None else full
    moments = data_moments(dataset.train, count, shape, full)
    moments.save(out_file)
    return {
        "samples": count,
        "dim": dim,
        "covariance": "full" if full else "per-coordinate",
        "written": [str(out_file)],
    }
