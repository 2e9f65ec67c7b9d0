"""The IDX format of MNIST and Fashion-MNIST: four files, gzipped or not.

Each file is streamed: its header is read and checked first (magic number, then dimensions, in
Python integers, so no product can overflow), and then exactly the number of bytes the header
implies, plus one to tell trailing data. Nothing is read whole before its size is known.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from study.errors import CorruptData, MissingData
from study.plugins.bounded import MIB, one_line, size_words
from study.specs import Decoded, Split

if TYPE_CHECKING:  # numpy is imported where data is decoded, so `study list` stays fast
    import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
IMAGE_SHAPE = (28, 28)
# MNIST and Fashion-MNIST files hold 60,000 or 10,000 items; a file claiming more than four
# times the largest is refused from its header (at 28 x 28 that caps a file at 188 MB).
MAX_ITEMS = 240_000


def find_idx(dataset: str, folder: str, root: Path) -> list[Path]:
    """The four IDX files in root/<folder>/raw, each as .gz or uncompressed."""
    raw = Path(root) / folder / "raw"
    found, missing = [], []
    for name in IDX_NAMES:
        candidates = [raw / f"{name}.gz", raw / name]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{folder}/raw/{name}.gz")
        else:
            found.append(path)
    if missing:
        raise MissingData(dataset, root, missing)
    return found


def shape_words(dims) -> str:
    return " x ".join(str(d) for d in dims)


def read_idx(
    path: Path, magic: int, item_shape: tuple[int, ...], max_items: int = MAX_ITEMS
) -> np.ndarray:
    """An IDX array of unsigned bytes, (N, *item_shape), checked against its header before its
    data is read; a .gz file is decompressed as a stream, never past what the header implies."""
    path = Path(path)
    compressed = path.suffix == ".gz"
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as f:
            return _read_idx(f, path, magic, item_shape, max_items, compressed)
    except (EOFError, OSError, zlib.error) as exc:
        kind = "gzip file" if compressed else "file"
        raise CorruptData(
            path, f"unreadable ({one_line(exc)}); expected a complete {kind}"
        ) from exc


def _read_idx(f, path: Path, magic, item_shape, max_items, compressed) -> np.ndarray:
    import numpy as np

    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    header = f.read(header_size)
    if len(header) < header_size:
        raise CorruptData(
            path, f"only {len(header)} bytes; an IDX file has a {header_size}-byte header"
        )
    found = struct.unpack(">I", header[:4])[0]
    if found != magic:
        raise CorruptData(path, f"magic number {found:#010x}; expected {magic:#010x}")
    dims = struct.unpack(f">{ndim}I", header[4:])
    size = math.prod(dims)  # a Python int: (2**31, 2**31, 4) is 2**64, not 0
    if tuple(dims[1:]) != tuple(item_shape) or dims[0] > max_items:
        expected = shape_words(("N", *item_shape))
        raise CorruptData(
            path,
            f"its header gives dimensions {shape_words(dims)} ({size_words(size)}); "
            f"expected {expected} with N at most {max_items:,}",
        )
    if not compressed:  # the file's size tells before anything is read
        held = path.stat().st_size - header_size
        if held != size:
            raise CorruptData(
                path,
                f"holds {size_words(held)} of data; its header ({shape_words(dims)}) says {size:,}",
            )
    data = bytearray(size)
    got = 0
    while got < size:
        chunk = f.read(min(MIB, size - got))
        if not chunk:
            raise CorruptData(
                path,
                f"holds only {size_words(got)} of data; its header ({shape_words(dims)}) "
                f"says {size:,}",
            )
        data[got : got + len(chunk)] = chunk
        got += len(chunk)
    if f.read(1):
        raise CorruptData(
            path,
            f"holds more than the {size_words(size)} of data its header "
            f"({shape_words(dims)}) says; expected nothing after them",
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> Split:
    import numpy as np

    images = read_idx(images_path, IMAGES_MAGIC, IMAGE_SHAPE)
    labels = read_idx(labels_path, LABELS_MAGIC, ())
    if len(labels) != len(images):
        raise CorruptData(
            labels_path, f"holds {len(labels)} labels for {len(images)} images; expected equal"
        )
    if labels.size and labels.max() > 9:
        raise CorruptData(labels_path, f"holds label {labels.max()}; expected 0..9")
    return Split(images[..., None], labels.astype(np.int64))


def decode_idx(files: list[Path], class_names: list[str]) -> Decoded:
    by_name = {Path(f).name.removesuffix(".gz"): Path(f) for f in files}
    train = read_idx_pair(by_name[IDX_NAMES[0]], by_name[IDX_NAMES[1]])
    test = read_idx_pair(by_name[IDX_NAMES[2]], by_name[IDX_NAMES[3]])
    return Decoded(train, test, list(class_names))
