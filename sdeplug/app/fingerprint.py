"""A cheap identity of the data behind a [data] section, to notice data that changed under a
checkpoint, or ranks of one run reading different data.

A file is known by its size and a hash of up to 64 evenly spaced blocks of it; a folder of
images by the number of images, their relative paths and sizes, and a hash of up to 16 of
them in full. Built-in data sets are made from their options and seed, which the config
already records: they have no fingerprint. Reading costs a few megabytes at most.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdeplug.data import image_files
from sdeplug.errors import DataError

BLOCK = 1 << 16
BLOCKS = 64
WHOLE_FILES = 16


def _evenly_spaced(count: int, limit: int) -> list[int]:
    return sorted({i * (count - 1) // max(1, limit - 1) for i in range(min(count, limit))}) if count else []


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size, modification time and a hash of up to BLOCKS evenly spaced blocks of one file."""
    stat = path.stat()
    digest = hashlib.sha256()
    blocks = max(1, -(-stat.st_size // BLOCK))
    with open(path, "rb") as f:
        for index in _evenly_spaced(blocks, BLOCKS):
            digest.update(os.pread(f.fileno(), BLOCK, index * BLOCK))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256_sampled": digest.hexdigest()}


def folder_fingerprint(folder: Path) -> dict[str, Any]:
    """Number of images, total size and a hash of every relative path and size, and of up to
    WHOLE_FILES evenly spaced images' bytes."""
    files = image_files(folder)
    digest = hashlib.sha256()
    total = 0
    for path in files:
        size = path.stat().st_size
        total += size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
    for index in _evenly_spaced(len(files), WHOLE_FILES):
        digest.update(files[index].read_bytes())
    return {"images": len(files), "size": total, "sha256_sampled": digest.hexdigest()}


def data_fingerprint(name: str, options: Mapping[str, Any]) -> dict[str, Any] | None:
    """The identity of the data a [data] section names (None for built-in data sets)."""
    if name not in ("file", "images") or not isinstance(options.get("path"), str):
        return None
    path = Path(options["path"]).expanduser()
    try:
        if name == "images":
            return folder_fingerprint(path)  # its paths name the class subfolders
        fingerprint = file_fingerprint(path)
        if isinstance(options.get("labels"), str):
            path = Path(options["labels"]).expanduser()
            fingerprint["labels_sha256_sampled"] = file_fingerprint(path)["sha256_sampled"]
        return fingerprint
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None


def same_data(recorded: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
    """Whether two fingerprints name the same content (the modification time may differ: a copy)."""
    if recorded is None or current is None:
        return True
    keys = ("images", "size", "sha256_sampled", "labels_sha256_sampled")
    return all(recorded.get(k) == current.get(k) for k in keys)


def describe_change(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """What differs between two fingerprints, in a few words."""
    parts = []
    for key, what in (("images", "images"), ("size", "bytes")):
        if key in recorded and recorded.get(key) != current.get(key):
            parts.append(f"{recorded[key]} {what} then, {current.get(key)} now")
    if recorded.get("labels_sha256_sampled") != current.get("labels_sha256_sampled"):
        parts.append("other labels")
    return "; ".join(parts) or "the same size, other contents"
