"""The data behind a run: image folders found as torchvision finds them (symbolic links
followed) with the conversions said, and data that changed under a checkpoint noticed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from sdeplug.app.fingerprint import data_fingerprint, same_data
from sdeplug.data import ImageFolder
from sdeplug.errors import DataNotice
from sdeplug_cli import main

Image = pytest.importorskip("PIL.Image")


def write_images(folder, count: int, mode: str = "RGB", size: int = 4) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").convert(mode).save(folder / f"{mode}-{i}.{'jpg' if mode == 'CMYK' else 'png'}")


def test_a_symlinked_subfolder_is_read_as_torchvision_reads_it(tmp_path):
    write_images(tmp_path / "data" / "cats", 3)
    write_images(tmp_path / "elsewhere" / "dogs", 2)
    (tmp_path / "data" / "dogs").symlink_to(tmp_path / "elsewhere" / "dogs", target_is_directory=True)
    (tmp_path / "data" / "cats" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a loop
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all RGB: nothing to say
        source = ImageFolder(tmp_path / "data")
    assert [p.relative_to(tmp_path / "data").as_posix() for p in source.files] == [
        "cats/RGB-0.png",
        "cats/RGB-1.png",
        "cats/RGB-2.png",
        "dogs/RGB-0.png",
        "dogs/RGB-1.png",
    ]


def test_images_of_other_modes_are_converted_with_a_notice_naming_them(tmp_path):
    for mode, count in (("RGB", 3), ("L", 2), ("RGBA", 1), ("P", 1), ("CMYK", 1)):
        write_images(tmp_path / mode, count, mode)
    with pytest.warns(DataNotice) as notices:
        source = ImageFolder(tmp_path, channels=3)
    assert len(notices) == 1
    message = str(notices[0].message)
    assert "8 images in Pillow modes RGB 3, L 2" in message and "the 5 not in RGB are converted to RGB" in message
    assert source.event_shape == (3, 4, 4) and all(source[i].shape == (3, 4, 4) for i in range(len(source)))


def test_the_fingerprint_sees_a_changed_file_of_the_same_shape_but_not_a_copy(tmp_path):
    data = np.random.default_rng(0).normal(size=(500, 2))
    np.save(tmp_path / "a.npy", data)
    first = data_fingerprint("file", {"path": str(tmp_path / "a.npy")})
    np.save(tmp_path / "b.npy", data)  # a copy: another time, the same content
    assert same_data(first, data_fingerprint("file", {"path": str(tmp_path / "b.npy")}))
    np.save(tmp_path / "a.npy", data[::-1].copy())
    assert not same_data(first, data_fingerprint("file", {"path": str(tmp_path / "a.npy")}))
    assert data_fingerprint("moons", {}) is None  # built-in sets are made from their options


def test_resuming_on_data_that_changed_warns_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "points.npy", np.random.default_rng(0).normal(size=(200, 2)))
    config = tmp_path / "run.toml"
    text = (
        f'[sde]\nname = "vp"\n[data]\nname = "file"\npath = "{tmp_path / "points.npy"}"\n'
        '[model]\nname = "mlp"\nwidth = 16\ndepth = 1\n'
        "[train]\nsteps = {steps}\nbatch_size = 16\n"
        f'[output]\ndir = "{tmp_path / "run"}"\nplot = false\n'
    )
    config.write_text(text.format(steps=2))
    assert main(["train", str(config), "--no-progress"]) == 0
    config.write_text(text.format(steps=4))
    assert main(["train", str(config), "--no-progress"]) == 0  # the same data: nothing to say
    assert capsys.readouterr().err == ""
    np.save(tmp_path / "points.npy", np.random.default_rng(1).normal(size=(200, 2)))
    config.write_text(text.format(steps=6))
    assert main(["train", str(config), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdeplug: warning: the data of [data] 'file'"), err
    assert "changed since" in err[0] and "the same size, other contents" in err[0]
