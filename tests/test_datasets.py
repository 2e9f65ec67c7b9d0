"""The built-in data set plugin: finding and decoding each official file format."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fakedata import (
    CIFAR_CLASSES,
    add_tar_member,
    cifar_files,
    idx_bytes,
    tiny_wnids,
    write_cifar10,
    write_mnist,
    write_tiny_imagenet,
)

from study import registry
from study.errors import CorruptData, MissingData
from study.plugins import datasets

SPECS = {spec.name: spec for spec in datasets.study_datasets()}
REAL = os.environ.get("STUDY_TEST_DATA")


def realdata(test):
    """Marked realdata; skipped unless STUDY_TEST_DATA points at the real data root."""
    skip = pytest.mark.skipif(not REAL, reason="set STUDY_TEST_DATA to the real data root")
    return pytest.mark.realdata(skip(test))


def decode(name: str, root: Path, workers: int = 0):
    spec = SPECS[name]
    return spec.decode(spec.find(root), workers)


def test_plugin_registers_the_built_in_datasets():
    pm = registry.plugin_manager(load_entry_points=False)
    pm.register(datasets, name="archstudy:study-datasets")
    found = registry.Registry(pm).datasets
    assert set(found) == {"mnist", "fashion_mnist", "cifar10", "tiny_imagenet", "image_folder"}
    assert found["image_folder"].spec.describe is not None  # its classes come from its files
    tiny = found["tiny_imagenet"].spec
    assert len(tiny.class_names) == tiny.num_classes == 200
    assert tiny.class_names[0] == "Egyptian cat"
    assert [(s.image_size, s.channels) for s in SPECS.values()] == [
        (28, 1),
        (28, 1),
        (32, 3),
        (64, 3),
        (64, 3),  # image_folder's default cached size, until described
    ]


def test_downloads_are_the_official_ones():
    mnist = SPECS["mnist"].downloads
    assert (
        mnist[0].url == "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz"
    )
    assert mnist[0].filename == "MNIST/raw/train-images-idx3-ubyte.gz"
    assert mnist[0].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert SPECS["cifar10"].downloads[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert SPECS["tiny_imagenet"].downloads[0].md5 == "90528d7ca1a48142e341f4ef8d21d0de"


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


@pytest.mark.parametrize("compressed", [True, False])
def test_mnist_decodes(tmp_path, compressed):
    write_mnist(tmp_path, n_train=50, n_test=20, compressed=compressed)
    d = decode("mnist", tmp_path)
    assert d.train.images.shape == (50, 28, 28, 1) and d.test.images.shape == (20, 28, 28, 1)
    assert d.train.images.dtype == np.uint8 and d.train.labels.dtype == np.int64
    assert sorted(np.bincount(d.train.labels)) == [5] * 10
    assert d.class_names == [str(i) for i in range(10)]


def test_fashion_mnist_reads_its_own_folder(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=10, folder="FashionMNIST")
    d = decode("fashion_mnist", tmp_path)
    assert len(d.train.labels) == 20 and d.class_names[0] == "T-shirt/top"
    with pytest.raises(MissingData):
        SPECS["mnist"].find(tmp_path)


def test_fakedata_is_deterministic_and_learnable(tmp_path):
    a, b = write_mnist(tmp_path / "a", seed=3), write_mnist(tmp_path / "b", seed=3)
    for f in a.iterdir():
        assert f.read_bytes() == (b / f.name).read_bytes()
    d = decode("mnist", tmp_path / "a")
    # The class square is the brightest region: a nearest-mean classifier gets it all right.
    x = d.train.images.reshape(len(d.train.labels), -1).astype(float)
    means = np.stack([x[d.train.labels == c].mean(0) for c in range(10)])
    assert (np.argmin(((x[:, None] - means) ** 2).sum(-1), 1) == d.train.labels).all()


def test_mnist_missing_lists_expected_files(tmp_path):
    with pytest.raises(MissingData) as err:
        SPECS["mnist"].find(tmp_path)
    assert "MNIST/raw/train-images-idx3-ubyte.gz" in str(err.value)
    assert "MNIST/raw/t10k-labels-idx1-ubyte.gz" in err.value.expected


def test_mnist_truncated_gzip_is_corrupt(tmp_path):
    raw = write_mnist(tmp_path)
    path = raw / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CorruptData, match="train-images-idx3-ubyte.gz") as err:
        decode("mnist", tmp_path)
    assert err.value.path == path


def test_mnist_short_data_is_corrupt(tmp_path):
    raw = write_mnist(tmp_path, compressed=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptData, match="t10k-images-idx3-ubyte: holds"):
        decode("mnist", tmp_path)


def test_mnist_bad_magic_is_corrupt(tmp_path):
    raw = write_mnist(tmp_path, compressed=False)
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x08\x09" + path.read_bytes()[4:])
    with pytest.raises(CorruptData, match="magic number"):
        decode("mnist", tmp_path)


def test_mnist_label_count_must_match(tmp_path):
    raw = write_mnist(tmp_path, n_train=20, compressed=False)
    (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(CorruptData, match="19 labels for 20 images"):
        decode("mnist", tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("extracted", [False, True])
def test_cifar10_decodes(tmp_path, extracted):
    write_cifar10(tmp_path, n_train=37, n_test=11, extracted=extracted, n_batches=3)
    d = decode("cifar10", tmp_path)
    assert d.train.images.shape == (37, 32, 32, 3) and d.test.images.shape == (11, 32, 32, 3)
    assert d.train.images.dtype == np.uint8 and d.test.labels.dtype == np.int64
    assert d.class_names == CIFAR_CLASSES


def test_cifar10_pixels_are_in_hwc_order(tmp_path):
    files = cifar_files(10, 2, n_batches=1, seed=0, str_keys=False)
    batch = pickle.loads(files["data_batch_1"], encoding="bytes")
    write_cifar10(tmp_path, n_train=10, n_test=2, n_batches=1)
    d = decode("cifar10", tmp_path)
    planar = batch[b"data"].reshape(-1, 3, 32, 32)
    assert (d.train.images == planar.transpose(0, 2, 3, 1)).all()
    assert d.train.labels.tolist() == batch[b"labels"]


def test_cifar10_reads_python3_pickles_with_str_keys(tmp_path):
    # The shared real data was written by Python 3: str keys, str label names.
    write_cifar10(tmp_path, n_train=20, n_test=5, str_keys=True)
    d = decode("cifar10", tmp_path)
    assert len(d.train.labels) == 20 and d.class_names[-1] == "truck"


def test_cifar10_missing(tmp_path):
    with pytest.raises(MissingData, match="cifar-10-python.tar.gz"):
        SPECS["cifar10"].find(tmp_path)


def test_cifar10_truncated_archive_is_corrupt(tmp_path):
    archive = write_cifar10(tmp_path, n_train=50, n_test=10)
    archive.write_bytes(archive.read_bytes()[:-2000])
    with pytest.raises(CorruptData, match="cifar-10-python.tar.gz"):
        decode("cifar10", tmp_path)


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("extracted", [False, True])
def test_cifar10_malicious_pickle_is_refused(tmp_path, extracted):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": Exploit(marker), b"labels": []}, protocol=2)
    files = cifar_files(10, 2, n_batches=1, seed=0, str_keys=False)
    files["data_batch_1"] = evil
    root = tmp_path / "root"
    if extracted:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    else:
        root.mkdir()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for name, data in files.items():
                add_tar_member(tar, f"cifar-10-batches-py/{name}", data)
        (root / "cifar-10-python.tar.gz").write_bytes(gzip.compress(buffer.getvalue()))
    with pytest.raises(
        CorruptData, match=r"data_batch_1.*refused to load global (posix|os)\.system"
    ):
        decode("cifar10", root)
    assert not marker.exists()


def test_cifar10_object_arrays_are_refused(tmp_path):
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    data = np.array([None, None, None], dtype=object)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0]}, protocol=2))
    with pytest.raises(CorruptData, match="test_batch.*refused"):
        decode("cifar10", tmp_path)


def test_cifar10_wrong_label_count_is_corrupt(tmp_path):
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptData, match="test_batch: holds 1 labels for 2 images"):
        decode("cifar10", tmp_path)


def test_cifar10_non_integer_labels_are_corrupt(tmp_path):
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(CorruptData, match="test_batch: its labels are not a list of integers"):
        decode("cifar10", tmp_path)


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet-200


@pytest.mark.parametrize("zipped", [True, False])
def test_tiny_imagenet_decodes(tmp_path, zipped):
    write_tiny_imagenet(tmp_path, n_classes=3, per_class=4, n_val=7, zipped=zipped)
    d = decode("tiny_imagenet", tmp_path)
    assert d.train.images.shape == (12, 64, 64, 3) and d.test.images.shape == (7, 64, 64, 3)
    assert d.train.images.dtype == np.uint8 and d.train.labels.dtype == np.int64
    assert d.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert d.class_names == ["thing 0", "thing 1", "thing 2"]
    # The greyscale JPEG (first of class 1) comes out as three equal channels.
    grey = d.train.images[4].astype(int)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_tiny_imagenet_val_labels_follow_annotations(tmp_path):
    archive = write_tiny_imagenet(tmp_path, n_classes=4, per_class=2, n_val=8)
    with zipfile.ZipFile(archive) as zf:
        lines = zf.read("tiny-imagenet-200/val/val_annotations.txt").decode().splitlines()
    wnids = tiny_wnids(4)
    expected = [wnids.index(line.split("\t")[1]) for line in lines]
    assert decode("tiny_imagenet", tmp_path).test.labels.tolist() == expected


def test_tiny_imagenet_workers_match_serial(tmp_path):
    write_tiny_imagenet(tmp_path, n_classes=3, per_class=5)
    serial, parallel = decode("tiny_imagenet", tmp_path), decode("tiny_imagenet", tmp_path, 2)
    assert (serial.train.images == parallel.train.images).all()
    assert (serial.test.images == parallel.test.images).all()


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(MissingData, match="tiny-imagenet-200.zip"):
        SPECS["tiny_imagenet"].find(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_tiny_imagenet_corrupt_jpeg_names_member(tmp_path, workers):
    archive = write_tiny_imagenet(tmp_path / "good")
    bad = tmp_path / "bad" / "tiny-imagenet-200.zip"
    bad.parent.mkdir()
    member = (
        "tiny-imagenet-200/train/" + tiny_wnids(3)[2] + "/images/" + tiny_wnids(3)[2] + "_1.JPEG"
    )
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data[:100] if info.filename == member else data)
    with pytest.raises(CorruptData, match=member) as err:
        decode("tiny_imagenet", bad.parent, workers)
    assert "tiny-imagenet-200.zip" in str(err.value)


def test_tiny_imagenet_corrupt_jpeg_in_folder(tmp_path):
    folder = write_tiny_imagenet(tmp_path, zipped=False)
    (folder / "val" / "images" / "val_2.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptData, match="val_2.JPEG"):
        decode("tiny_imagenet", tmp_path)


def test_tiny_imagenet_unknown_val_class_is_corrupt(tmp_path):
    folder = write_tiny_imagenet(tmp_path, zipped=False)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99999999\t0\t0\t63\t63\n")
    with pytest.raises(CorruptData, match="val_annotations.txt: names class n99999999"):
        decode("tiny_imagenet", tmp_path)


# ---------------------------------------------------------------------------------------------
# The real data sets (STUDY_TEST_DATA=/path/to/data)


@realdata
def test_real_mnist():
    d = decode("mnist", Path(REAL))
    assert d.train.images.shape == (60000, 28, 28, 1) and d.test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(d.train.labels).min() > 5000


@realdata
def test_real_cifar10():
    d = decode("cifar10", Path(REAL))
    assert d.train.images.shape == (10000, 32, 32, 3) and d.test.images.shape == (10000, 32, 32, 3)
    assert d.class_names == CIFAR_CLASSES
    assert np.bincount(d.test.labels).tolist() == [1000] * 10


@realdata
def test_real_tiny_imagenet():
    d = decode("tiny_imagenet", Path(REAL), workers=2)
    assert d.train.images.shape == (20000, 64, 64, 3) and d.test.images.shape == (10000, 64, 64, 3)
    assert np.bincount(d.train.labels).tolist() == [100] * 200
    with zipfile.ZipFile(Path(REAL) / "tiny-imagenet-200.zip") as zf:
        wnids = zf.read("tiny-imagenet-200/wnids.txt").decode().split()
        words = dict(
            line.split("\t", 1)
            for line in zf.read("tiny-imagenet-200/words.txt").decode().splitlines()
        )
    assert d.class_names == [words[w].split(",")[0].strip() for w in wnids]
    assert d.class_names == list(SPECS["tiny_imagenet"].class_names)
