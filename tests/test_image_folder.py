"""`image_folder`: a folder of your own images (train/<class>/*, test/<class>/*), described
from its files, decoded from real PNG and JPEG files of any size, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_study
from fakedata import png_bomb_bytes
from PIL import Image

from study.data import prepare
from study.errors import CorruptData, DataError, MissingData
from study.experiment import dataset_spec
from study.stores import read_file_store

COLOURS = {"owls": (40, 40, 200), "cats": (200, 40, 40), "dogs": (40, 200, 40)}


def write_folder(root: Path, per_class=(6, 3), grey=False, sizes=((50, 30), (31, 77))) -> Path:
    """Real files: each class one flat colour, odd sizes, PNG and JPEG alternating."""
    for split, n in zip(("train", "test"), per_class, strict=True):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = sizes[i % len(sizes)]
                img = Image.new("RGB", (w, h), colour)
                img = img.convert("L") if grey else img
                img.save(root / split / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _spec(root, **config):
    return dataset_spec({"dataset": "image_folder", "data_root": str(root), **config})


def test_a_folder_describes_itself_and_decodes_to_the_cached_size(tmp_path):
    root = write_folder(tmp_path / "imgs")
    spec = _spec(root, folder_image_size=16)
    assert spec.class_names == ("cats", "dogs", "owls")  # the folders, sorted
    assert (spec.num_classes, spec.channels, spec.image_size) == (3, 3, 16)
    assert (spec.train_size, spec.test_size) == (18, 9)
    data = prepare(spec, root, cache_dir=tmp_path / "cache")
    assert data.train.images.shape == (18, 16, 16, 3) and data.test.images.shape == (9, 16, 16, 3)
    assert np.bincount(data.train.labels).tolist() == [6, 6, 6]
    for label, name in enumerate(spec.class_names):  # every pixel keeps its class's colour
        pixels = data.train.images[data.train.labels == label].reshape(-1, 3).astype(int)
        assert np.abs(pixels - COLOURS[name]).max() <= 3  # JPEG rounding
    # Another size is another cache, not the first one reused.
    again = prepare(_spec(root, folder_image_size=24), root, cache_dir=tmp_path / "cache")
    assert again.train.images.shape[1:] == (24, 24, 3)


def test_greyscale_images_stay_one_channel(tmp_path):
    root = write_folder(tmp_path / "grey", grey=True)
    spec = _spec(root)
    assert (spec.channels, spec.image_size) == (1, 64)
    data = prepare(spec, root, cache_dir=tmp_path / "cache")
    assert data.test.images.shape == (9, 64, 64, 1)


def test_a_run_on_your_own_images_records_their_classes(tmp_path):
    root = write_folder(tmp_path / "imgs", per_class=(10, 4))
    run_study(
        "run", "with", "fast", "model=small_cnn", "dataset=image_folder", f"data_root={root}",
        "folder_image_size=32", "epochs=2", "batch_size=10", "-F", tmp_path / "runs",
        cwd=tmp_path,
    )  # fmt: skip
    (run,) = read_file_store(tmp_path / "runs")
    assert run.status == "COMPLETED" and run.result["top1"] == 1.0  # flat colours: easy
    assert run.info["dataset"]["class_names"] == ["cats", "dogs", "owls"]
    assert run.info["dataset"]["image_size"] == 32 and run.config["folder_image_size"] == 32


def _broken(root: Path, how: str) -> None:
    if how == "one-split-class":
        (root / "train" / "emus").mkdir()
        Image.new("RGB", (8, 8)).save(root / "train" / "emus" / "0.png")
    elif how == "empty-test":
        for folder in (root / "test").iterdir():
            for f in folder.iterdir():
                f.unlink()
    elif how == "not-an-image":
        (root / "train" / "cats" / "9.png").write_text("not an image")
    elif how == "bomb":
        (root / "train" / "cats" / "9.png").write_bytes(png_bomb_bytes(9_000, 9_000))
    elif how == "no-test":
        for folder in (root / "test").iterdir():
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
        (root / "test").rmdir()


@pytest.mark.parametrize(
    ("how", "error", "message"),
    [
        ("one-split-class", DataError, "image_folder: class folder(s) emus in {root}/train only"),
        ("empty-test", DataError, "image_folder: no images in {root}/test; expected test/"),
        ("not-an-image", CorruptData, "{root}/train/cats/9.png: is not a PNG or JPEG image"),
        ("bomb", CorruptData, "{root}/train/cats/9.png: is 9000x9000 pixels; image_folder"),
        ("no-test", MissingData, "image_folder: files not found under {root}; expected one of"),
    ],
    ids=["one-split-class", "empty-test", "not-an-image", "bomb", "no-test"],
)
def test_a_broken_folder_is_one_line_naming_the_problem(tmp_path, how, error, message):
    root = write_folder(tmp_path / "imgs")
    _broken(root, how)
    with pytest.raises(error) as err:
        prepare(_spec(root), root, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(message.format(root=root)), str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() or not list(
        (tmp_path / "cache").glob("image_folder-*")
    )
