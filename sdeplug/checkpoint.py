"""Checkpoints: safetensors files written atomically, checksummed, and loaded without running code.

A checkpoint holds named tensors plus JSON metadata. A SHA-256 digest of both is
stored in the header and checked on load, so a truncated or damaged file is refused
with a clear error instead of silently resuming from wrong state. The digest has no
key: it catches accidents, not deliberate edits (anyone can recompute it), so readers
check every field they use (``sdeplug.trainer.checked_metadata``). Writing goes to a
temporary file in the same folder, fsync'd and renamed over the target, so an
interruption never leaves half a checkpoint behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from sdeplug.errors import SdeplugError, WriteError  # noqa: F401 (WriteError: re-exported, as before)
from sdeplug.files import remove_stale_temporaries, write_safetensors

FORMAT = "sdeplug-checkpoint-1"


class CheckpointError(SdeplugError, ValueError):
    """A checkpoint is missing, truncated, tampered with, or not an sdeplug checkpoint."""


class CheckpointInUseError(CheckpointError):
    """Another process is training into the same checkpoint."""


#: Checkpoints whose lock this process holds.
_held: set[Path] = set()


@contextlib.contextmanager
def exclusive_writer(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (beside it, ``<name>.lock``) for the block, so that
    two training runs never write one checkpoint. The operating system drops the lock when
    its process ends, killed or not, so a stale lock never blocks the next run. Where the
    platform has no ``fcntl`` (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path).resolve()
    if path in _held:  # this process holds it already (the CLI locks load and fit together)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise CheckpointInUseError(
                f"{path} is being trained into by another run ({holder}); wait for it to finish, stop it, or "
                "write to another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}".encode(), 0)
        remove_stale_temporaries(path)  # no one else writes it now: any temporary file is a killed run's
        _held.add(path)
        try:
            yield
        finally:
            _held.discard(path)
    finally:
        os.close(fd)  # releases the lock


def _digest(tensors: dict[str, Tensor], meta_json: str) -> str:
    h = hashlib.sha256()
    h.update(FORMAT.encode())
    h.update(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-serialisable ``meta`` to ``path`` atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    header = {"format": FORMAT, "meta": meta_json, "sha256": _digest(tensors, meta_json)}
    return write_safetensors(path, tensors, header)


def is_pickle(path: Path) -> bool:
    """Whether ``path`` looks like a Python pickle (protocol 2 to 5, or a .pkl/.pickle name)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(2)
    return path.suffix in (".pkl", ".pickle") or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raise CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        if is_pickle(path):
            raise CheckpointError(
                f"{path} is a Python pickle (like EDM's network-snapshot-*.pkl): loading it would run code from "
                "the file, so sdeplug never does. In an environment you trust, save the network's state_dict with "
                "safetensors.torch.save_file, and load those weights into the same network here (a denoiser "
                "D(x, sigma) wrapped in sdeplug.denoisers.DenoiserScore)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable safetensors checkpoint (truncated, corrupted or another format): {exc}"
        ) from exc
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an sdeplug checkpoint (format {header.get('format')!r}, expected {FORMAT!r})"
        )
    meta_json = header.get("meta", "")
    if _digest(tensors, meta_json) != header.get("sha256"):
        raise CheckpointError(f"{path} failed its checksum: the file was modified or damaged after it was written")
    return tensors, json.loads(meta_json)
