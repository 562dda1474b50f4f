"""Training data read item by item (image folders, memory-mapped arrays), and the batch of
each optimiser step.

A ``Source`` is a map-style ``torch.utils.data.Dataset`` of float32 tensors of one event
shape. The batch of step k is a pure function of (seed, k): its indices and flips come
from a generator seeded for that step, so DataLoader workers can read ahead without
changing anything a checkpoint must save, and a resumed run reads what the uninterrupted
one read. Every rank derives the same global batch and reads only its own slice of it.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdeplug.errors import DataError, DataNotice, load_refusal
from sdeplug.extras import require
from sdeplug.tensors import derived_seed

#: The file endings an image folder's images may have (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Pillow modes with more than 8 bits per channel, which an image folder refuses.
WIDE_MODES = {m: "16-bit" for m in ("I;16", "I;16B", "I;16L", "I;16N")} | {"I": "32-bit integer", "F": "32-bit float"}


class Source(torch.utils.data.Dataset):
    """Items of one event shape read one at a time: ``source[i]`` is a float32 tensor of shape
    ``event_shape``; ``describe(i)`` names where item i comes from, for error messages."""

    event_shape: tuple[int, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tensor:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"item {index}"


class Subset(Source):
    """The items of ``source`` at ``indices``, in that order (a train or test split)."""

    def __init__(self, source: Source, indices: Sequence[int] | Tensor) -> None:
        self.source = source
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.event_shape = source.event_shape

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tensor:
        return self.source[int(self.indices[index])]

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))


def _check_finite(item: Tensor, source: Source, index: int) -> Tensor:
    if not bool(torch.isfinite(item).all()):
        raise DataError(f"{source.describe(index)} has NaN or inf values; every value must be finite")
    return item


def open_npy(path: Path, file=None, start: int = 0) -> np.ndarray:
    """A .npy array (or one stored uncompressed inside a .npz at byte ``start``) as a read-only
    memory map, its header checked first: no objects (pickles), and no more data claimed than
    the file holds, so a lying header never allocates."""
    from numpy.lib import format as npy

    with open(path, "rb") if file is None else contextlib.nullcontext(file) as f:
        f.seek(start)
        try:
            major, _ = npy.read_magic(f)
            read_header = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
        except (ValueError, EOFError, OSError, SyntaxError) as exc:
            raise DataError(
                f"{path} is not a readable .npy file (empty, truncated or another format): {load_refusal(exc)}"
            ) from None
        if dtype.hasobject:
            raise DataError(f"{path} holds Python objects, which would need unpickling; save a numeric array")
        offset = f.tell()
        needed, held = math.prod(shape) * dtype.itemsize, path.stat().st_size - offset
        if needed > held:
            raise DataError(
                f"{path} is truncated or its header lies: shape {shape} of {dtype} needs {needed} bytes of data, "
                f"the file holds {held}"
            )
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def npz_member(path: Path, key: str | None) -> str:
    """The name of the array to read from a .npz: ``key``, or its only array."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    if key is None:
        if len(names) != 1:
            raise DataError(f"{path} holds the arrays {names}; name the one to train on with [data] key")
        return names[0]
    if key not in names:
        raise DataError(f"{path} has no array {key!r}; it holds {names}")
    return key


def open_npz(path: Path, key: str | None = None) -> np.ndarray:
    """One array of an uncompressed .npz (``numpy.savez``) as a read-only memory map."""
    try:
        member = npz_member(path, key) + ".npy"
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file: {exc}") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(
            f"{path}: the array {member[:-4]!r} is compressed (numpy.savez_compressed), which cannot be "
            "memory-mapped; save it with numpy.savez or as .npy, or hold it in memory (in_memory = true)"
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # the zip local file header; the data follow its name and extra field
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{path} is not a readable .npz file (a damaged zip entry for {member!r})")
        start = (
            info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
        )
        return open_npy(path, f, start)


def check_rows_of_data(path: Path, shape: tuple[int, ...], dtype: object, real: bool) -> None:
    """Refuse an array that is not of real numbers, of shape (batch, ...) with at least one
    non-empty row, naming the file."""
    if len(shape) < 2 or not real:
        raise DataError(f"{path} must hold real numbers of shape (batch, ...); got {dtype} {shape}")
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise DataError(f"{path} holds no data (shape {shape}); it needs at least one point")


class ArraySource(Source):
    """The rows of a .npy file or of one array of an uncompressed .npz, opened as a memory map
    (``array``). A row is read with ``os.pread`` where the rows are contiguous, so only its
    bytes enter the process (touching a mapped page also maps its cached neighbours, and the
    resident memory would grow with the file). A row with NaN or inf is an error naming the
    file and row."""

    def __init__(self, path: str | Path, key: str | None = None) -> None:
        self.path, self.key = Path(path), key
        self.array = open_npz(self.path, key) if self.path.suffix == ".npz" else open_npy(self.path)
        real = self.array.dtype.kind in "iuf"
        check_rows_of_data(self.path, tuple(self.array.shape), self.array.dtype, real)
        self.event_shape = tuple(self.array.shape[1:])
        contiguous_rows = isinstance(self.array, np.memmap) and self.array.flags.c_contiguous
        row_bytes = self.array.dtype.itemsize * math.prod(self.event_shape)
        self._rows = (self.array.offset, row_bytes) if contiguous_rows and hasattr(os, "pread") else None
        self._file: tuple[int, int] | None = None  # (process id, descriptor): opened once per process

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the path, never a pickled copy of the array
        return {"path": self.path, "key": self.key}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["key"])

    def __len__(self) -> int:
        return self.array.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {self.path}, which has {len(self)} rows")
        index %= len(self)
        if self._rows is None:
            row = self.array[index]
        else:
            if self._file is None or self._file[0] != os.getpid():
                self._file = (os.getpid(), os.open(self.path, os.O_RDONLY))
            start, size = self._rows
            row = np.frombuffer(os.pread(self._file[1], size, start + index * size), self.array.dtype)
        item = torch.from_numpy(np.array(row, dtype=np.float32).reshape(self.event_shape))
        return _check_finite(item, self, index)

    def describe(self, index: int) -> str:
        return f"{self.path}: row {index}"


def image_files(folder: Path) -> list[Path]:
    """The images under ``folder`` (any depth), in a fixed order (sorted relative paths).
    Symbolic links to folders are followed, as torchvision's ImageFolder follows them; a
    folder reached a second time (a link loop, or two links to one folder) is read once."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of images")
    found, seen = [], set()
    for root, subfolders, names in os.walk(folder, followlinks=True):
        stat = os.stat(root)
        identity = (stat.st_dev, stat.st_ino)
        if identity in seen:
            subfolders[:] = []
            continue
        seen.add(identity)
        subfolders.sort()
        for name in names:
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
    files = sorted(found, key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, in any subfolder)")
    return files


def folder_classes(folder: Path, files: list[Path]) -> tuple[tuple[str, ...] | None, Tensor | None]:
    """Class names and each file's label when every file lies in a first-level subfolder of
    ``folder``: the class is that subfolder, numbered in sorted order of the names, as
    torchvision's ImageFolder numbers them. (None, None) otherwise."""
    firsts = [path.relative_to(folder).parts for path in files]
    if any(len(parts) < 2 for parts in firsts):
        return None, None
    names = tuple(sorted({parts[0] for parts in firsts}))
    index = {name: i for i, name in enumerate(names)}
    return names, torch.tensor([index[parts[0]] for parts in firsts], dtype=torch.int64)


class ImageFolder(Source):
    """The PNG and JPEG images under a folder, read with Pillow, as (C, H, W) tensors scaled
    from [0, 255] to [-1, 1]. With ``resolution`` each image's shorter side is resized to it
    (bicubic) and the centre square cropped; without it every image must have the same size.
    ``channels`` is 1 (grey) or 3 (RGB); by default that of the first image. Every file's
    header is read here, so a file that is not an image or has a different size is found
    before training starts. When every image lies in a first-level subfolder, the subfolders
    are its classes (``class_names``, ``labels``; see ``folder_classes``)."""

    def __init__(self, folder: str | Path, resolution: int | None = None, channels: int | None = None) -> None:
        image = require("PIL.Image", "reading a folder of images").open
        self.folder = Path(folder)
        self.files = image_files(self.folder)
        if resolution is not None and (
            isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1
        ):
            raise DataError(f"resolution must be a positive integer (pixels); got {resolution!r}")
        if channels not in (None, 1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB); got {channels!r}")
        first_size = None
        modes: dict[str, int] = {}
        for path in self.files:
            try:
                with image(path) as img:
                    size, mode = img.size, img.mode
            except Exception as exc:  # PIL.UnidentifiedImageError, OSError: not an image
                raise DataError(f"{path} is not a readable image: {exc}") from None
            modes[mode] = modes.get(mode, 0) + 1
            if mode in WIDE_MODES:  # Pillow's conversion to 8 bits would clip them, silently
                raise DataError(
                    f"{path} has {WIDE_MODES[mode]} pixels (Pillow mode {mode}); the images must have 8 bits per "
                    "channel: convert them first"
                )
            if first_size is None:
                first_size = size
                if channels is None:
                    channels = 1 if mode in ("1", "L", "LA") else 3
            elif resolution is None and size != first_size:
                raise DataError(
                    f"{path} is {size[0]}x{size[1]} pixels but {self.files[0]} is {first_size[0]}x{first_size[1]}; "
                    "images of different sizes need a resolution to resize them to ([data] resolution = N)"
                )
        self.resolution, self.channels, self.modes = resolution, channels, modes
        self.class_names, self.labels = folder_classes(self.folder, self.files)
        width, height = (resolution, resolution) if resolution is not None else first_size
        self.event_shape = (channels, height, width)
        target = "L" if channels == 1 else "RGB"
        converted = sum(count for mode, count in modes.items() if mode != target)
        if converted:
            found = ", ".join(f"{mode} {count}" for mode, count in sorted(modes.items(), key=lambda m: -m[1]))
            warnings.warn(
                f"{self.folder}: {len(self.files)} image{'s' if len(self.files) > 1 else ''} in Pillow modes {found}; "
                f"the {converted} not in {target} "
                f"are converted to {target} ({channels} channel{'s' if channels > 1 else ''}: set [data] channels "
                "to choose)",
                DataNotice,
                stacklevel=2,
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Tensor:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                if self.resolution is not None:
                    img = resize_and_crop(img, self.resolution)
                pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # a truncated or corrupt file
            raise DataError(f"{path} could not be decoded: {exc}") from None
        if pixels.shape[:2] != self.event_shape[1:]:
            raise DataError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the folder's images are "
                f"{self.event_shape[2]}x{self.event_shape[1]} (set [data] resolution to resize them)"
            )
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1.0

    def describe(self, index: int) -> str:
        return str(self.files[index])


def resize_and_crop(img, resolution: int):
    """``img`` with its shorter side resized to ``resolution`` (bicubic) and its centre square kept."""
    from PIL import Image

    width, height = img.size
    scale = resolution / min(width, height)
    new = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new != (width, height):
        img = img.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - resolution) // 2, (new[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


def step_seed(seed: int, step: int) -> int:
    """The seed of the generator that draws the batch of optimiser step ``step`` of a run seeded ``seed``."""
    return derived_seed("step", seed, step)


def step_draws(
    n: int, batch_size: int, seed: int, step: int, generator: torch.Generator, flip: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The global batch of step ``step``: ``batch_size`` indices into ``n`` items drawn with
    replacement and, with ``flip``, which of them are mirrored left to right; on the
    generator's device, which is reseeded for the step (no state carries over between steps)."""
    generator.manual_seed(step_seed(seed, step))
    indices = torch.randint(n, (batch_size,), generator=generator, device=generator.device)
    flips = torch.rand(batch_size, generator=generator, device=generator.device) < 0.5 if flip else None
    return indices, flips


def apply_flips(x: Tensor, flips: Tensor | None) -> Tensor:
    """The rows of ``x`` marked in ``flips`` mirrored along the last axis (image width)."""
    if flips is None:
        return x
    return torch.where(flips.reshape(-1, *([1] * (x.ndim - 1))), x.flip(-1), x)


class StepBatches(torch.utils.data.Dataset):
    """Item k is (k, this rank's slice of the batch of step k), read from ``source``: what a
    DataLoader's workers compute ahead of the training loop."""

    def __init__(
        self, source: Source, batch_size: int, seed: int, *, rank: int = 0, world_size: int = 1, flip: bool = False
    ) -> None:
        self.source, self.batch_size, self.seed, self.flip = source, batch_size, seed, flip
        per_rank = batch_size // world_size
        self.part = slice(rank * per_rank, (rank + 1) * per_rank)
        self._generator = torch.Generator()

    def __len__(self) -> int:
        return sys.maxsize  # any step; len() must fit in a C ssize_t

    def __getitem__(self, step: int) -> tuple[int, Tensor | str]:
        indices, flips = step_draws(len(self.source), self.batch_size, self.seed, step, self._generator, self.flip)
        try:
            rows = torch.stack([self.source[int(i)] for i in indices[self.part]])
        except DataError as exc:  # passed back as a value: a worker's exception would carry its traceback
            return step, str(exc)
        return step, apply_flips(rows, None if flips is None else flips[self.part])


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def step_batches(
    batches: StepBatches, first: int, last: int, device: torch.device, workers: int = 0
) -> Iterator[Tensor]:
    """This rank's batches of steps ``first`` to ``last - 1`` on ``device``, read ahead by
    ``workers`` DataLoader processes (0: read in this process when needed). The loader's own
    seed (its workers' base seed) comes from a generator of the run's seed, not from torch's
    global generator, which starting a loader would otherwise draw from."""
    loader = torch.utils.data.DataLoader(
        batches,
        sampler=range(first, last),
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=2 if workers else None,
        generator=torch.Generator().manual_seed(derived_seed("loader", batches.seed, batches.part.start, first)),
    )
    expected = first
    for step, rows in loader:
        if isinstance(rows, str):
            raise DataError(rows)
        if step != expected:  # the sampler is in order; a mismatch would be a bug here, never silent
            raise RuntimeError(f"the data loader gave the batch of step {step} for step {expected}")
        expected += 1
        yield rows.to(device, non_blocking=True)


class _Chunks(torch.utils.data.Dataset):
    """Item j: items j * size ... of ``source`` stacked, or the DataError's message."""

    def __init__(self, source: Source, size: int) -> None:
        self.source, self.size = source, size

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.size)

    def __getitem__(self, j: int) -> Tensor | str:
        try:
            return torch.stack(
                [self.source[i] for i in range(j * self.size, min(len(self.source), (j + 1) * self.size))]
            )
        except DataError as exc:
            return str(exc)


def load_all(source: Source, workers: int = 0, chunk: int = 256) -> Tensor:
    """Every item of ``source`` as one float32 tensor (batch, *event_shape), read by ``workers``
    DataLoader processes (which draw nothing from torch's global generator)."""
    loader = torch.utils.data.DataLoader(
        _Chunks(source, chunk),
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    parts = []
    for part in loader:
        if isinstance(part, str):
            raise DataError(part)
        parts.append(part)
    return torch.cat(parts)
