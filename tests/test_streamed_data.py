"""Issue 16, item 5: image folders and memory-mapped arrays, read batch by batch by DataLoader
workers; the batch of each step a function of (seed, step), so streaming, holding, workers
and resuming all train the same weights; bad data named by file."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdeplug
from sdeplug.app.cli import main
from sdeplug.app.datasets import check_data_options, load_dataset
from sdeplug.data import (
    ArraySource,
    ImageFolder,
    StepBatches,
    Subset,
    apply_flips,
    load_all,
    step_batches,
    step_draws,
)
from sdeplug.errors import DataError, DataNotice, OptionError
from sdeplug.trainer import Trainer, TrainSettings

pytestmark = pytest.mark.xdist_group("streamed_data")

SIZE = 16  # the digits, upscaled from 8x8


def digit_pixels(count: int) -> np.ndarray:
    """The first ``count`` digits as 8-bit grey images, upscaled to SIZE x SIZE (nearest)."""
    from sklearn.datasets import load_digits

    images = np.round(load_digits().images[:count] / 16 * 255).astype(np.uint8)
    return images.repeat(SIZE // 8, axis=1).repeat(SIZE // 8, axis=2)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """120 digits as PNG files in three subfolders (an image folder as users have them)."""
    folder = tmp_path_factory.mktemp("digits")
    for i, pixels in enumerate(digit_pixels(120)):
        (folder / f"class{i % 3}").mkdir(exist_ok=True)
        Image.fromarray(pixels, "L").save(folder / f"class{i % 3}" / f"{i:04d}.png")
    return folder


def train(
    data, steps: int = 4, flip: bool = True, workers: int = 0, labels=None, classes=None, **settings
) -> torch.Tensor:
    """The parameters after ``steps`` steps of a small U-Net from a fixed initialisation (class-
    conditional, with ``classes``, on ``labels``)."""
    torch.manual_seed(0)
    shape = data.event_shape if hasattr(data, "event_shape") else tuple(data.shape[1:])
    network = sdeplug.create("score_model", "unet", event_shape=shape, channels=8, num_classes=classes)
    options = dict(steps=steps, batch_size=12, progress=False, checkpoint_every=None, **settings)
    trainer = Trainer(
        network, sdeplug.create("sde", "vp"), data, TrainSettings(**options), flip=flip, workers=workers, labels=labels
    )
    trainer.fit()
    return torch.cat([p.detach().flatten() for p in network.parameters()])


# Reading ---------------------------------------------------------------------------


def test_an_image_folder_reads_every_image_in_path_order_scaled_to_minus_one_one(digit_folder):
    source = ImageFolder(digit_folder)
    assert len(source) == 120 and source.event_shape == (1, SIZE, SIZE)
    order = sorted(range(120), key=lambda i: (f"class{i % 3}", i))  # sorted relative paths
    expected = torch.from_numpy(digit_pixels(120)[order].astype(np.float32))[:, None] / 127.5 - 1
    assert torch.equal(load_all(source), expected)
    assert torch.equal(load_all(source, workers=2), expected)
    assert source.describe(0).endswith("class0/0000.png")


def test_rgb_images_are_centre_cropped_and_resized_to_the_resolution(tmp_path):
    # 12 x 6: left third red, middle green, right blue; the centre 6 x 6 square is columns 3..8
    pixels = np.zeros((6, 12, 3), np.uint8)
    pixels[:, :4, 0], pixels[:, 4:8, 1], pixels[:, 8:, 2] = 255, 255, 255
    Image.fromarray(pixels, "RGB").save(tmp_path / "a.png")
    item = ImageFolder(tmp_path, resolution=6)[0]
    assert item.shape == (3, 6, 6)
    assert torch.equal(item, torch.from_numpy(pixels[:, 3:9].transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1)
    # 24 x 12 to 6: resized to 12 x 6 (bicubic), then the same centre square; flat regions stay flat
    Image.fromarray(pixels.repeat(2, 0).repeat(2, 1), "RGB").save(tmp_path / "a.png")
    item = ImageFolder(tmp_path, resolution=6)[0]
    assert item.shape == (3, 6, 6)
    assert torch.equal(item[:, :, 2:4], torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 6, 2))
    # grey images read as RGB repeat the grey level; RGB read as grey uses Pillow's luma
    with pytest.warns(DataNotice, match="1 image in Pillow modes RGB 1; the 1 not in L are converted to L"):
        assert ImageFolder(tmp_path, channels=1)[0].shape == (1, 12, 24)


def test_a_memory_mapped_array_reads_rows_as_stored_and_names_a_non_finite_row(tmp_path):
    data = np.random.default_rng(0).normal(size=(10, 2, 3)).astype(np.float64)
    np.save(tmp_path / "x.npy", data)
    source = ArraySource(tmp_path / "x.npy")
    assert isinstance(source.array, np.memmap) and source.event_shape == (2, 3)
    assert torch.equal(source[4], torch.from_numpy(data[4]).float())
    data[7, 1, 2] = np.nan
    np.save(tmp_path / "x.npy", data)
    with pytest.raises(DataError, match=r"x\.npy: row 7 has NaN or inf values"):
        ArraySource(tmp_path / "x.npy")[7]


def test_an_array_source_pickles_as_its_path_and_reads_any_layout(tmp_path):
    import pickle

    data = np.arange(2000 * 12, dtype=">f8").reshape(2000, 3, 4)  # big-endian float64
    np.save(tmp_path / "c.npy", data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))  # rows not contiguous: read via the map
    for name in ("c.npy", "f.npy"):
        source = ArraySource(tmp_path / name)
        copy = pickle.loads(pickle.dumps(source))
        assert len(pickle.dumps(source)) < 1000  # what spawned DataLoader workers receive: no data
        for i in (0, 1234, 1999, -1):
            assert torch.equal(copy[i], torch.from_numpy(data[i].astype(np.float32)))
        with pytest.raises(IndexError, match="row 2000 of"):
            source[2000]


def test_an_uncompressed_npz_is_memory_mapped_and_a_compressed_one_is_refused_with_advice(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(10, 6)
    np.savez(tmp_path / "a.npz", images=data, labels=np.arange(10))
    source = ArraySource(tmp_path / "a.npz", key="images")
    assert isinstance(source.array, np.memmap) and torch.equal(load_all(source), torch.from_numpy(data))
    with pytest.raises(DataError, match=r"holds the arrays \['images', 'labels'\]; name the one"):
        ArraySource(tmp_path / "a.npz")
    with pytest.raises(DataError, match="has no array 'x'"):
        ArraySource(tmp_path / "a.npz", key="x")
    np.savez_compressed(tmp_path / "c.npz", data)
    with pytest.raises(DataError, match="compressed .*cannot be memory-mapped; save it with numpy.savez"):
        ArraySource(tmp_path / "c.npz")
    # the file data set reads it whole instead, when it may be held
    held = load_dataset("file", path=str(tmp_path / "c.npz"))
    assert isinstance(held.train, torch.Tensor) and len(held.train) + len(held.test) == 10
    with pytest.raises(DataError, match="compressed"):
        load_dataset("file", path=str(tmp_path / "c.npz"), in_memory=False)


# The batch of a step --------------------------------------------------------------


def test_the_batch_of_a_step_depends_on_the_seed_and_step_only():
    g1, g2 = torch.Generator(), torch.Generator()
    a = step_draws(100, 32, 5, 7, g1, flip=True)
    step_draws(100, 32, 5, 3, g2, flip=True)  # another step drawn first changes nothing
    b = step_draws(100, 32, 5, 7, g2, flip=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = step_draws(100, 32, 5, 8, g1, flip=True)
    assert not torch.equal(a[0], c[0])
    assert 0 < int(a[1].sum()) < 32  # some flipped, some not


def test_each_rank_reads_its_slice_of_the_global_batch_with_its_flips(digit_folder):
    source = ImageFolder(digit_folder)
    indices, flips = step_draws(len(source), 12, 3, 9, torch.Generator(), flip=True)
    whole = apply_flips(torch.stack([source[int(i)] for i in indices]), flips)
    assert bool(flips.any()) and torch.equal(whole[flips][0], whole[flips][0].flip(-1).flip(-1))
    assert torch.equal(whole[flips], torch.stack([source[int(i)] for i in indices[flips]]).flip(-1))
    parts = [StepBatches(source, 12, 3, rank=r, world_size=3, flip=True)[9] for r in range(3)]
    assert len(StepBatches(source, 12, 3)) >= 2**62  # any step, and len() works
    assert all(step == 9 for step, _ in parts)
    assert torch.equal(torch.cat([rows for _, rows in parts]), whole)
    streamed = list(step_batches(StepBatches(source, 12, 3, flip=True), 8, 11, torch.device("cpu"), workers=2))
    assert len(streamed) == 3 and torch.equal(streamed[1], whole)


# Training -------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_holding_and_workers_train_the_same_weights(digit_folder):
    source = ImageFolder(digit_folder)
    held = train(load_all(source))
    assert torch.equal(train(source), held)
    assert torch.equal(train(source, workers=2), held)
    assert not torch.equal(train(source, flip=False), held)  # the flips are applied


def test_a_class_conditional_network_streams_its_data_with_the_labels_beside_them(digit_folder):
    """The labels (the folder's classes) stay in memory and follow the items each streamed step
    reads: streamed, with workers and held, the same weights; other labels, other weights."""
    source = ImageFolder(digit_folder)
    labels = source.labels
    held = train(load_all(source), labels=labels, classes=3)
    assert torch.equal(train(source, labels=labels, classes=3), held)
    assert torch.equal(train(source, workers=2, labels=labels, classes=3), held)
    assert not torch.equal(train(source, labels=(labels + 1) % 3, classes=3), held)


def test_an_interrupted_streamed_run_resumes_to_the_same_weights(digit_folder, tmp_path):
    source = ImageFolder(digit_folder)

    def trainer(steps):
        torch.manual_seed(0)
        network = sdeplug.create("score_model", "unet", event_shape=source.event_shape, channels=8)
        settings = TrainSettings(steps=6, batch_size=12, progress=False, checkpoint_every=None)
        t = Trainer(network, sdeplug.create("sde", "vp"), source, settings, flip=True, workers=1)
        t.checkpoint_path = tmp_path / "c.safetensors"
        return t

    straight = trainer(6).fit()
    first = trainer(6).fit(until=3)
    first.save()
    resumed = trainer(6).load().fit()
    for a, b in zip(straight.network.parameters(), resumed.network.parameters()):
        assert torch.equal(a, b)


def test_a_bad_row_met_while_streaming_stops_training_naming_file_and_row(tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 1, 8, 8))
    data[4, 0, 3, 3] = np.inf
    np.save(tmp_path / "bad.npy", data)
    with pytest.raises(DataError, match=r"bad\.npy: row 4 has NaN or inf"):
        train(ArraySource(tmp_path / "bad.npy"), workers=1)


def test_flip_needs_images():
    network = sdeplug.create("score_model", "mlp", event_shape=(2,))
    with pytest.raises(ValueError, match=r"flip = true mirrors images \(C, H, W\)"):
        Trainer(network, sdeplug.create("sde", "vp"), torch.randn(20, 2), flip=True)


# Bad data and options -------------------------------------------------------------


def test_bad_image_folders_are_refused_naming_the_file(tmp_path, digit_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        ImageFolder(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("L", (16, 16)).save(mixed / "a.png")
    Image.new("RGB", (12, 10)).save(mixed / "b.jpg")
    with pytest.raises(DataError, match=r"b\.jpg is 12x10 pixels but .*a\.png is 16x16; .*resolution"):
        ImageFolder(mixed)
    with pytest.warns(DataNotice, match="2 images in Pillow modes L 1, RGB 1; the 1 not in L are converted to L"):
        assert load_all(ImageFolder(mixed, resolution=8)).shape == (2, 1, 8, 8)
    (mixed / "c.png").write_text("not an image")
    with pytest.raises(DataError, match=r"c\.png is not a readable image"):
        ImageFolder(mixed, resolution=8)
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(wide / "a.png")  # 16-bit grey
    with pytest.raises(DataError, match=r"a\.png has 16-bit pixels .*8 bits per channel"):
        ImageFolder(wide)  # converting to 8 bits would clip 40000 to 255 without a word
    cut = tmp_path / "cut"
    cut.mkdir()
    whole = (digit_folder / "class0" / "0000.png").read_bytes()
    (cut / "a.png").write_bytes(whole[: len(whole) // 2])  # header intact, pixels cut off
    source = ImageFolder(cut)
    with pytest.raises(DataError, match=r"a\.png could not be decoded"):
        load_all(source, workers=1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"flip": "yes"}, "flip must be true or false; got 'yes'"),
        ({"in_memory": 1}, 'in_memory must be "auto", true or false; got 1'),
        ({"workers": -1}, "workers must be an integer >= 0"),
        ({"resolution": 0}, "resolution must be an integer >= 1"),
        ({"resolution": True}, "resolution must be an integer >= 1"),
        ({"channels": 2}, "channels must be 1 (grey) or 3 (RGB)"),
        ({"colour": 3}, "colour"),
    ],
)
def test_bad_image_options_are_one_clear_error(options, message):
    with pytest.raises(OptionError) as info:
        check_data_options("images", {"path": "x", **options})
    assert message in str(info.value)


def test_a_big_array_file_is_streamed_and_a_small_one_held(tmp_path, monkeypatch):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 3)))
    held = load_dataset("file", path=str(tmp_path / "x.npy"))
    assert isinstance(held.train, torch.Tensor)
    monkeypatch.setattr("sdeplug.app.datasets.HOLD_LIMIT_BYTES", 100)
    streamed = load_dataset("file", path=str(tmp_path / "x.npy"))
    assert isinstance(streamed.train, Subset) and isinstance(streamed.train.source.array, np.memmap)
    assert torch.equal(load_all(streamed.train).double(), held.train.float().double())
    assert torch.equal(load_all(streamed.test).double(), held.test.float().double())
    with pytest.raises(DataError, match=r"only a \.npy or \.npz file can be streamed"):
        torch.save(torch.zeros(3, 2), tmp_path / "x.pt")
        load_dataset("file", path=str(tmp_path / "x.pt"), in_memory=False)


# End to end -----------------------------------------------------------------------

CONFIG = """
[sde]
name = "vp"
[data]
name = "images"
path = "{folder}"
flip = true
in_memory = {in_memory}
workers = 1
[model]
name = "unet"
channels = 8
[train]
steps = 30
batch_size = 16
checkpoint_every = 10
progress = false
[sampler]
kind = "pc"
steps = 10
[sample]
num = 6
progress = false
[likelihood]
divergence = "hutchinson"
[likelihood.solver]
name = "euler"
steps = 4
[output]
dir = "{out}"
plot = false
"""


@pytest.mark.slow
def test_a_folder_of_images_trains_samples_and_evaluates_from_the_command_line(digit_folder, tmp_path, capsys):
    streamed, held = tmp_path / "streamed.toml", tmp_path / "held.toml"
    streamed.write_text(CONFIG.format(folder=digit_folder, out=tmp_path / "s", in_memory="false"))
    held.write_text(CONFIG.format(folder=digit_folder, out=tmp_path / "h", in_memory="true"))
    for config in (streamed, held):
        assert main(["train", str(config)]) == 0
        assert main(["sample", str(config)]) == 0
    samples = np.load(tmp_path / "s" / "samples.npy")
    assert samples.shape == (6, 1, SIZE, SIZE) and np.isfinite(samples).all()
    # reading ahead in a worker and holding in memory train the same model
    assert np.array_equal(samples, np.load(tmp_path / "h" / "samples.npy"))
    assert main(["likelihood", str(streamed), "--num", "4"]) == 0
    capsys.readouterr()


@pytest.mark.slow
def test_a_class_conditional_model_trains_from_a_streamed_folder_as_from_a_held_one(digit_folder, tmp_path, capsys):
    from safetensors.torch import load_file

    weights = []
    for in_memory in ("false", "true"):
        config = tmp_path / f"{in_memory}.toml"
        text = CONFIG.format(folder=digit_folder, out=tmp_path / in_memory, in_memory=in_memory)
        config.write_text(
            text.replace("channels = 8\n", "channels = 8\nnum_classes = 3\n").replace("steps = 30", "steps = 6")
        )
        assert main(["train", str(config)]) == 0
        weights.append(load_file(tmp_path / in_memory / "checkpoint.safetensors"))
    assert weights[0].keys() == weights[1].keys() and any("class" in key for key in weights[0])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    capsys.readouterr()


def test_a_corrupt_image_is_one_line_from_the_command_line(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(digit_pixels(1)[0], "L").save(folder / "a.png")
    (folder / "b.png").write_bytes((folder / "a.png").read_bytes()[:40])
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(folder=folder, out=tmp_path / "out", in_memory="true"))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.png" in err and ("decoded" in err or "not a readable image" in err), err


def test_zip_members_other_than_arrays_are_ignored(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.ones((3, 2)))
    with zipfile.ZipFile(tmp_path / "a.npz", "a") as archive:
        archive.writestr("README.txt", "notes")
    assert ArraySource(tmp_path / "a.npz").event_shape == (2,)
