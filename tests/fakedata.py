"""Small, deterministic data sets in the exact official file formats, for tests.

Every image carries a learnable class signal (a class colour and a class-placed bright square),
so a tiny model reaches high accuracy in a few steps. Same arguments -> same bytes.
"""

from __future__ import annotations

import colorsys
import gzip
import io
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
ZIP_DATE = (2015, 1, 1, 0, 0, 0)  # fixed member dates keep archives byte-identical


def balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """n labels, every class as often as possible, in a seeded order."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def class_colour(label: int, num_classes: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.9, 0.9)
    return np.array([r, g, b]) * 255


def class_images(labels, num_classes: int, size: int, channels: int, rng) -> np.ndarray:
    """uint8 (N, size, size, channels): dim noise, plus a class-coloured square whose place
    on a 4x4 grid is set by the class."""
    n = len(labels)
    images = rng.integers(0, 40, size=(n, size, size, channels)).astype(np.float64)
    cell = size // 4
    for i, label in enumerate(labels):
        row, col = divmod(int(label) % 16, 4)
        colour = class_colour(int(label), num_classes)[:channels] if channels == 3 else 255
        images[i, row * cell : (row + 1) * cell, col * cell : (col + 1) * cell] = colour
    return images.clip(0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x08 type, ndim, big-endian dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(
    root,
    n_train: int = 100,
    n_test: int = 30,
    seed: int = 0,
    folder: str = "MNIST",
    compressed: bool = True,
) -> Path:
    """The four IDX files under root/<folder>/raw (folder="FashionMNIST" for Fashion-MNIST),
    gzipped (as downloaded) or not. Returns the raw folder."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = balanced_labels(n, 10, rng)
        images = class_images(labels, 10, 28, 1, rng)[..., 0]
        for kind, array in (("images", images), ("labels", labels)):
            data = idx_bytes(array)
            name = MNIST_FILES[f"{split}_{kind}"]
            if compressed:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (raw / name).write_bytes(data)
    return raw


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def cifar_batch(images: np.ndarray, labels, label: str, str_keys: bool = False) -> bytes:
    """A batch pickle as in the official files: {data: uint8 (N, 3072) planar RGB, labels,
    batch_label, filenames}, protocol 2. Official (Python 2) files have bytes keys."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    batch = {
        "batch_label": label,
        "labels": [int(x) for x in labels],
        "data": data,
        "filenames": [f"image_{i:05d}.png" for i in range(len(images))],
    }
    return pickle.dumps(encode_keys(batch, str_keys), protocol=2)


def encode_keys(d: dict, str_keys: bool) -> dict:
    if str_keys:
        return d
    return {k.encode(): (v.encode() if isinstance(v, str) else v) for k, v in d.items()}


def cifar_meta(str_keys: bool = False) -> bytes:
    names = CIFAR_CLASSES if str_keys else [n.encode() for n in CIFAR_CLASSES]
    meta = {"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}
    return pickle.dumps(encode_keys(meta, str_keys), protocol=2)


def cifar_files(n_train: int, n_test: int, n_batches: int, seed: int, str_keys: bool):
    """{file name in cifar-10-batches-py: bytes}; train split spread over n_batches files."""
    rng = np.random.default_rng(seed)
    files = {"batches.meta": cifar_meta(str_keys)}
    labels = balanced_labels(n_train, 10, rng)
    images = class_images(labels, 10, 32, 3, rng)
    parts = np.array_split(np.arange(n_train), n_batches)
    for b, part in enumerate(parts, start=1):
        label = f"training batch {b} of {n_batches}"
        files[f"data_batch_{b}"] = cifar_batch(images[part], labels[part], label, str_keys)
    labels = balanced_labels(n_test, 10, rng)
    images = class_images(labels, 10, 32, 3, rng)
    files["test_batch"] = cifar_batch(images, labels, "testing batch 1 of 1", str_keys)
    files["readme.html"] = b"<html>fake CIFAR-10 for tests</html>\n"
    return files


def write_cifar10(
    root,
    n_train: int = 100,
    n_test: int = 30,
    extracted: bool = False,
    seed: int = 0,
    n_batches: int = 5,
    str_keys: bool = False,
) -> Path:
    """cifar-10-python.tar.gz holding cifar-10-batches-py/, or (extracted=True) that folder.
    Returns the archive or the folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    files = cifar_files(n_train, n_test, n_batches, seed, str_keys)
    if extracted:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(exist_ok=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
        return folder
    archive = root / "cifar-10-python.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add_tar_member(tar, "cifar-10-batches-py/", None)
        for name, data in files.items():
            add_tar_member(tar, f"cifar-10-batches-py/{name}", data)
    archive.write_bytes(gzip.compress(buffer.getvalue(), mtime=0))
    return archive


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes | None) -> None:
    info = tarfile.TarInfo(name.rstrip("/"))
    info.mtime = 0
    if data is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet-200


def tiny_wnids(n_classes: int) -> list[str]:
    return [f"n{1000000 + 1111 * k:08d}" for k in range(n_classes)]


def jpeg_bytes(image: np.ndarray, grey: bool = False) -> bytes:
    img = Image.fromarray(image)
    if grey:
        img = img.convert("L")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=95)
    return out.getvalue()


def tiny_files(n_classes: int, per_class: int, n_val: int, seed: int) -> dict[str, bytes]:
    """{path inside tiny-imagenet-200/: bytes}, in the official layout."""
    rng = np.random.default_rng(seed)
    wnids = tiny_wnids(n_classes)
    files: dict[str, bytes] = {"wnids.txt": "".join(f"{w}\n" for w in wnids).encode()}
    # words.txt covers all of WordNet; names are "first, second" as in the real file.
    words = ["n00000001\tentity"] + [f"{w}\tthing {k}, alias {k}" for k, w in enumerate(wnids)]
    files["words.txt"] = ("\n".join(words + ["n09999999\tunused, spare"]) + "\n").encode()

    train_labels = np.repeat(np.arange(n_classes), per_class)
    images = class_images(train_labels, n_classes, 64, 3, rng)
    for k, wnid in enumerate(wnids):
        boxes = []
        for j in range(per_class):
            name = f"{wnid}_{j}.JPEG"
            # The first image of the second class is greyscale, as some real ones are.
            grey = k == 1 and j == 0
            files[f"train/{wnid}/images/{name}"] = jpeg_bytes(images[k * per_class + j], grey)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        files[f"train/{wnid}/{wnid}_boxes.txt"] = "".join(boxes).encode()

    val_labels = balanced_labels(n_val, n_classes, rng)
    images = class_images(val_labels, n_classes, 64, 3, rng)
    lines = []
    for i, label in enumerate(val_labels):
        files[f"val/images/val_{i}.JPEG"] = jpeg_bytes(images[i])
        lines.append(f"val_{i}.JPEG\t{wnids[label]}\t0\t0\t63\t63\n")
    files["val/val_annotations.txt"] = "".join(lines).encode()
    # The official test split is unlabelled; readers must ignore it.
    files["test/images/test_0.JPEG"] = jpeg_bytes(images[0])
    return files


def write_tiny_imagenet(
    root,
    n_classes: int = 3,
    per_class: int = 4,
    n_val: int | None = None,
    zipped: bool = True,
    seed: int = 0,
) -> Path:
    """tiny-imagenet-200.zip (or, zipped=False, the tiny-imagenet-200/ folder) with real JPEGs.
    n_val defaults to 2 per class. Returns the archive or the folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n_val = 2 * n_classes if n_val is None else n_val
    files = tiny_files(n_classes, per_class, n_val, seed)
    if not zipped:
        folder = root / "tiny-imagenet-200"
        for name, data in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        return folder
    archive = root / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(f"tiny-imagenet-200/{name}", ZIP_DATE), data)
    return archive


# ---------------------------------------------------------------------------------------------
# Decompression bombs: small files that expand to gigabytes of zeros. The zeros are deflated one
# MiB at a time once and the block repeated (each block is self-contained after a full flush), so
# a 2 GiB member costs about 2 MB of disk and well under a second to write.

MIB = 1 << 20


def deflated(prefix: bytes, zeros: int, suffix: bytes = b"") -> tuple[bytes, int, int]:
    """(raw deflate stream, crc32, length) of prefix + zeros x b'\\0' + suffix."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [head.compress(prefix), head.flush(zlib.Z_FULL_FLUSH)]
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = block.compress(bytes(MIB)) + block.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(zeros, MIB)
    parts.append(block * whole)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts += [tail.compress(bytes(rest) + suffix), tail.flush()]
    crc, zero = zlib.crc32(prefix), bytes(MIB)
    for _ in range(whole):
        crc = zlib.crc32(zero, crc)
    crc = zlib.crc32(bytes(rest) + suffix, crc)
    return b"".join(parts), crc, len(prefix) + zeros + len(suffix)


def gzip_bomb(prefix: bytes, zeros: int, suffix: bytes = b"") -> bytes:
    """A gzip file of prefix + zeros + suffix."""
    stream, crc, size = deflated(prefix, zeros, suffix)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + stream + struct.pack("<II", crc, size & 0xFFFFFFFF)


def write_zip(path, members) -> Path:
    """A zip of (name, bytes) or (name, (prefix, zeros, declared size or None)) members, all
    deflated; a declared size other than the true one makes a member whose header lies."""
    path = Path(path)
    central, offset = [], 0
    with open(path, "wb") as out:
        for name, content in members:
            if isinstance(content, bytes):
                stream, crc, size = deflated(content, 0)
            else:
                prefix, zeros, declared = content
                stream, crc, size = deflated(prefix, zeros)
                size = size if declared is None else declared
            name_bytes = name.encode()
            common = struct.pack(
                "<HHHHHIIIHH", 20, 0, 8, 0, 0x4A21, crc, len(stream), size, len(name_bytes), 0
            )
            out.write(b"PK\x03\x04" + common + name_bytes)
            out.write(stream)
            central.append(
                b"PK\x01\x02"
                + struct.pack("<H", 20)
                + common
                + struct.pack("<HHHII", 0, 0, 0, 0, offset)
                + name_bytes
            )
            offset += 30 + len(name_bytes) + len(stream)
        directory = b"".join(central)
        out.write(directory)
        out.write(
            b"PK\x05\x06"
            + struct.pack("<HHHHIIH", 0, 0, len(central), len(central), len(directory), offset, 0)
        )
    return path


def png_bomb_bytes(width: int, height: int) -> bytes:
    """A valid all-black RGB PNG of width x height: tiny on disk, width*height*3 bytes decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    raw = (width * 3 + 1) * height  # a filter byte, then the row
    stream, _, _ = deflated(b"", raw)
    adler = ((raw % 65521) << 16) | 1  # the Adler-32 of raw zero bytes
    idat = b"\x78\xda" + stream + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
