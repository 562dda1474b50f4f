"""Files written whole or not at all: a temporary file beside the target, renamed over it;
safetensors files whose bytes depend on their content only."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from sdeplug.errors import WriteError


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    """Where ``path`` is written before it is renamed into place: beside it, hidden, named by process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files a killed writer of ``path`` left behind; call it only while no
    other process can be writing ``path`` (under ``exclusive_writer``). Returns what was removed."""
    path = Path(path)
    stale = sorted(path.parent.glob(f".{glob.escape(path.name)}.tmp-*"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def write_atomically(path: str | Path, write: Callable[[Path], object], *, sync: bool = False) -> Path:
    """Write ``path`` whole or not at all: ``write`` fills a temporary file beside it, which is
    renamed over ``path``; if anything fails (a full disk, Ctrl-C) the old file stays as it was
    and the temporary file is removed. ``sync`` flushes the data to disk before the rename."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        if sync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise WriteError(f"could not write {path}: {exc.strerror or exc}; {kept}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        try:
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
            pass
    return path


def _canonical_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> list[bytes | memoryview]:
    """The safetensors encoding of ``tensors`` with the header's metadata in sorted order, in
    pieces to write one after another. safetensors keeps the metadata in a hash map whose order
    changes from process to process; the same state should give the same bytes."""
    data = safetensors_bytes(tensors, metadata=metadata)
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header to 8 bytes
    return [struct.pack("<Q", len(text)), text, memoryview(data)[8 + size :]]


def write_safetensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None, *, sync: bool = True
) -> Path:
    """Write ``tensors`` (and string ``metadata``) as a safetensors file, atomically and byte for
    byte the same for the same input; a full disk or read-only folder is a WriteError."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    pieces = _canonical_safetensors(tensors, metadata)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)

    return write_atomically(path, write, sync=sync)
