"""Hostile data files (issue 11): every archive member and gzip stream is read with a cap the
format fixes, and each problem is one line naming the file. Memory bombs are decoded in a fresh
process whose peak memory (VmHWM) is measured: it must stay far below what the bomb expands to."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import run_study
from fakedata import (
    MIB,
    add_tar_member,
    cifar_files,
    gzip_bomb,
    png_bomb_bytes,
    tiny_files,
    write_cifar10,
    write_mnist,
    write_zip,
)

from study.errors import DataError
from study.plugins import datasets

SPECS = {spec.name: spec for spec in datasets.study_datasets()}
BOMB = 2048 * MIB  # each bomb expands to 2 GiB
PEAK_LIMIT_MB = 250  # a fresh interpreter with numpy and PIL is about 60 MB

CHILD = """
import json, resource, sys
from study.data import prepare
from study.errors import DataError
from study.plugins import datasets
spec = {s.name: s for s in datasets.study_datasets()}[sys.argv[1]]
try:
    prepare(spec, sys.argv[2], download=False, cache_dir=sys.argv[3])
    error = None
except DataError as exc:
    error = str(exc)
try:  # this process's own peak: ru_maxrss would carry over the forking parent's (Linux)
    status = open("/proc/self/status").read()
    peak = int(status.split("VmHWM:")[1].split()[0]) / 1024
except (OSError, IndexError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"error": error, "peak_mb": peak}))
"""


def prepare_in_child(name: str, root: Path, tmp_path: Path) -> str:
    """Prepares the data set in a fresh process; returns its one-line error, after checking
    its peak memory, that nothing was printed to stderr and that no cache was left."""
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(root), str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    print(f"{name}: peak {result['peak_mb']:.0f} MB: {result['error']}")
    assert result["error"] is not None, "the bomb was accepted"
    assert "\n" not in result["error"]
    assert result["peak_mb"] < PEAK_LIMIT_MB, result
    assert not cache.exists() or not any(cache.iterdir())  # no cache, not even a temp folder
    return result["error"]


def decode_error(name: str, root: Path) -> str:
    spec = SPECS[name]
    with pytest.raises(DataError) as err:
        spec.decode(spec.find(root), 0)
    message = str(err.value)
    assert "\n" not in message and "object at 0x" not in message
    return message


def tiny_zip(root: Path, replace: dict) -> Path:
    """tiny-imagenet-200.zip from the fake files, with members replaced (name -> content as
    write_zip takes it)."""
    files = tiny_files(n_classes=3, per_class=2, n_val=3, seed=0)
    members = [(f"tiny-imagenet-200/{n}", replace.get(n, data)) for n, data in files.items()]
    root.mkdir(parents=True, exist_ok=True)
    return write_zip(root / "tiny-imagenet-200.zip", members)


def first_train_image() -> str:
    files = tiny_files(n_classes=3, per_class=2, n_val=3, seed=0)
    return next(n for n in files if n.startswith("train/") and n.endswith(".JPEG"))


# ---------------------------------------------------------------------------------------------
# Decompression bombs


def test_zip_member_declaring_2gib_is_refused_before_reading(tmp_path):
    member = first_train_image()
    archive = tiny_zip(tmp_path / "root", {member: (b"\xff\xd8", BOMB, None)})
    assert archive.stat().st_size < 4 * MIB
    error = prepare_in_child("tiny_imagenet", tmp_path / "root", tmp_path)
    assert error == (
        f"{archive}[tiny-imagenet-200/{member}]: declares 2,147,483,650 bytes uncompressed; "
        "a Tiny-ImageNet image (64x64) is at most 1,048,576 bytes"
    )


def test_zip_member_whose_header_understates_its_size_is_read_no_further(tmp_path):
    member = first_train_image()
    archive = tiny_zip(tmp_path / "root", {member: (b"\xff\xd8", BOMB, 3000)})
    error = prepare_in_child("tiny_imagenet", tmp_path / "root", tmp_path)
    assert error.startswith(f"{archive}[tiny-imagenet-200/{member}]: unreadable (Bad CRC-32")


def test_tar_member_of_2gib_is_refused_before_reading(tmp_path):
    files = cifar_files(10, 2, n_batches=1, seed=0, str_keys=False)
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.size, info.mode, info.mtime = BOMB, 0o644, 0
    rest = io.BytesIO()
    with tarfile.open(fileobj=rest, mode="w") as tar:
        for name in ("batches.meta", "test_batch"):
            add_tar_member(tar, f"cifar-10-batches-py/{name}", files[name])
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "cifar-10-python.tar.gz"
    archive.write_bytes(gzip_bomb(info.tobuf(tarfile.USTAR_FORMAT), BOMB, rest.getvalue()))
    assert archive.stat().st_size < 4 * MIB
    error = prepare_in_child("cifar10", root, tmp_path)
    assert error == (
        f"{archive}[cifar-10-batches-py/data_batch_1]: is 2,147,483,648 bytes; "
        "a CIFAR-10 batch is at most 67,108,864 bytes"
    )


def test_gzip_idx_of_2gib_is_read_only_as_far_as_its_header_says(tmp_path):
    raw = write_mnist(tmp_path / "root", n_train=100, n_test=10)
    path = raw / "train-images-idx3-ubyte.gz"
    header = struct.pack(">IIII", 0x803, 100, 28, 28)
    path.write_bytes(gzip_bomb(header, BOMB))
    assert path.stat().st_size < 4 * MIB
    error = prepare_in_child("mnist", tmp_path / "root", tmp_path)
    assert error == (
        f"{path}: holds more than the 78,400 bytes of data its header (100 x 28 x 28) says; "
        "expected nothing after them"
    )


def test_huge_png_in_tiny_imagenet_is_refused_from_its_header(tmp_path):
    member = first_train_image()  # named .JPEG, as every Tiny-ImageNet image is
    archive = tiny_zip(tmp_path / "root", {member: png_bomb_bytes(13000, 13000)})
    error = prepare_in_child("tiny_imagenet", tmp_path / "root", tmp_path)
    assert error == (
        f"{archive}[tiny-imagenet-200/{member}]: is a 13000x13000 PNG image; "
        "Tiny-ImageNet images are 64x64"
    )


# ---------------------------------------------------------------------------------------------
# Headers that lie, and messages in words


def test_idx_dimensions_that_overflow_are_one_line_through_the_cli(tmp_path):
    raw = write_mnist(tmp_path / "root", n_train=100, n_test=10, compressed=False)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 0x803, 2**31, 2**31, 4) + bytes(64))
    cache = tmp_path / "cache"
    proc = run_study(
        "run", "with", "model=small_cnn", "dataset=mnist", f"data_root={tmp_path / 'root'}",
        "download=False", "-F", tmp_path / "runs",
        cwd=tmp_path, check=False, env={"STUDY_CACHE_DIR": str(cache)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [
        f"study: error: {path}: its header gives dimensions 2147483648 x 2147483648 x 4 "
        "(18,446,744,073,709,551,616 bytes); expected N x 28 x 28 with N at most 240,000"
    ], proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    assert not cache.exists() or not any(cache.iterdir())


def test_cifar_batch_that_cannot_be_unpickled_says_why(tmp_path):
    # A bytes object of 1 TiB announced in 11 bytes: the old reader said "not a CIFAR-10 batch ()"
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    (folder / "data_batch_1").write_bytes(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx")
    assert decode_error("cifar10", tmp_path) == (
        f"{folder / 'data_batch_1'}: not a CIFAR-10 batch (expected 1099511627776 bytes in a "
        "bytes8, but only 2 remain); expected a pickled dict of data and labels"
    )


def test_cifar_pickle_memo_bomb_is_refused_before_loading(tmp_path):
    # LONG_BINPUT to slot 2**28 made the C unpickler allocate (and zero) 2 GiB of memo.
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    evil = b"\x80\x02}r" + struct.pack("<I", 1 << 28) + b"."
    (folder / "test_batch").write_bytes(evil)
    assert decode_error("cifar10", tmp_path) == (
        f"{folder / 'test_batch'}: not a CIFAR-10 batch (it stores to memo slot 268,435,456 "
        "after only 2 operations); expected a pickled dict of data and labels"
    )


class ArrayWithFalseShape:
    """Pickles as numpy pickles an array, but with a shape its bytes do not fill."""

    def __reduce__(self):
        import numpy as np

        reconstruct, args, _ = np.zeros(1, np.uint8).__reduce__()
        state = (1, (2**31, 2**31), np.dtype("u1"), False, bytes(6144))
        return reconstruct, args, state


def test_cifar_array_shape_that_disagrees_with_its_bytes_is_one_line(tmp_path):
    # The old reader let numpy say "cannot reshape array of size 6144 into shape ..."
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    batch = {b"data": ArrayWithFalseShape(), b"labels": [0, 1]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    assert decode_error("cifar10", tmp_path) == (
        f"{folder / 'test_batch'}: not a CIFAR-10 batch (an array of shape (2147483648, "
        "2147483648) and type u1 holds 6,144 bytes; that shape needs "
        "4,611,686,018,427,387,904); expected a pickled dict of data and labels"
    )


def test_image_that_is_no_image_is_named_in_words(tmp_path):
    member = first_train_image()
    archive = tiny_zip(tmp_path / "root", {member: b"this is not an image at all"})
    error = decode_error("tiny_imagenet", tmp_path / "root")
    assert error == (
        f"{archive}[tiny-imagenet-200/{member}]: is not a JPEG or PNG image "
        "(its first bytes match no image format)"
    )
    assert "BytesIO" not in error


def test_cifar_training_batch_beyond_five_is_refused(tmp_path):
    folder = write_cifar10(tmp_path, n_train=10, n_test=2, extracted=True, n_batches=1)
    (folder / "data_batch_6").write_bytes((folder / "data_batch_1").read_bytes())
    assert decode_error("cifar10", tmp_path) == (
        f"{folder / 'data_batch_6'}: is training batch 6; CIFAR-10 has data_batch_1 to _5"
    )


def test_tiny_val_image_names_are_plain_names_shown_escaped(tmp_path):
    files = tiny_files(n_classes=3, per_class=2, n_val=3, seed=0)
    annotations = files["val/val_annotations.txt"].decode()
    evil = annotations.replace("val_0.JPEG", "../x\x1b[2Jforged.JPEG", 1)  # clears a terminal
    root = tmp_path / "root"
    tiny_zip(root, {"val/val_annotations.txt": evil.encode()})
    error = decode_error("tiny_imagenet", root)
    assert error == (
        f"{root / 'tiny-imagenet-200.zip'}[tiny-imagenet-200/val/val_annotations.txt]: "
        "names image '../x\\x1b[2Jforged.JPEG'; expected a file name in val/images"
    )
