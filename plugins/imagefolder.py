"""`image_folder`: your own images, in the layout torchvision's ImageFolder reads, one folder
per class in each split:

    <data_root>/train/<class>/*.png|jpg|jpeg
    <data_root>/test/<class>/*.png|jpg|jpeg

The classes are the folder names (sorted); the data set describes itself from these files
(DatasetSpec.describe) when a run names its data_root. Images may have any size: each is resized
(its shorter side to `folder_image_size`, 64 px unless set) and centre-cropped to a square once,
into the cache. Greyscale images stay one channel when every class's first image is greyscale;
otherwise every image is stored as RGB. Every file is untrusted: its size is capped before it is
read and its dimensions are checked from its header before a pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.errors import CorruptData, DataError, MissingData
from study.plugins.bounded import MIB, one_line, printable, read_file, reason
from study.specs import DatasetSpec, Decoded, Split

if TYPE_CHECKING:
    import numpy as np

SPLITS = ("train", "test")
SUFFIXES = (".png", ".jpg", ".jpeg")
FORMATS = ("PNG", "JPEG")
IMAGE_CAP = 64 * MIB  # one image file; a photo of a few tens of megapixels
IMAGE_WHAT = f"an image file of image_folder is at most {IMAGE_CAP:,} bytes"
MAX_PIXELS = 80_000_000  # width x height from the header (under PIL's own bomb warning)
MAX_CLASSES = 100_000
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
DEFAULT_SIZE = 64


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def scan(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split: [(image file, label)]}), or one line saying what is wrong."""
    root = Path(root)
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise MissingData("image_folder", root, [f"{s}/<class>/*.png|jpg" for s in missing])
    per_split = {}
    for split in SPLITS:
        folders = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
        if len(folders) > MAX_CLASSES:
            raise DataError(
                f"{root / split}: {len(folders):,} class folders; at most {MAX_CLASSES:,}"
            )
        per_split[split] = folders
    train, test = set(per_split["train"]), set(per_split["test"])
    if train != test:
        only = sorted(train - test) or sorted(test - train)
        where = "train" if train - test else "test"
        shown = ", ".join(printable(c) for c in only[:5]) + (", ..." if len(only) > 5 else "")
        raise DataError(
            f"image_folder: class folder(s) {shown} in {root / where} only; every class needs "
            "images in both train/ and test/"
        )
    classes = per_split["train"]
    if not classes:
        raise DataError(
            f"image_folder: no class folders in {root / 'train'}; expected train/<class>/"
        )
    files = {}
    for split in SPLITS:
        files[split] = [
            (path, label)
            for label, name in enumerate(classes)
            for path in sorted(
                (p for p in (root / split / name).iterdir() if p.suffix.lower() in SUFFIXES),
                key=lambda p: _natural_key(p.name),
            )
        ]
        if not files[split]:
            raise DataError(
                f"image_folder: no images in {root / split}; expected {split}/<class>/*.png|jpg"
            )
    return classes, files


def _open(path: Path):
    """A PIL image with its header read (no pixels yet), or CorruptData naming the file."""
    from PIL import Image, UnidentifiedImageError

    data = read_file(path, IMAGE_CAP, IMAGE_WHAT)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise CorruptData(
            path, "is not a PNG or JPEG image (its first bytes match neither)"
        ) from None
    except Exception as exc:  # PIL raises many types for a bad header
        raise CorruptData(path, f"is not a readable PNG or JPEG image ({reason(exc)})") from None
    width, height = img.size
    if width * height > MAX_PIXELS or not width or not height:
        raise CorruptData(
            path, f"is {width}x{height} pixels; image_folder reads at most {MAX_PIXELS:,} pixels"
        )
    return img


def is_grey(path: Path) -> bool:
    with _open(path) as img:
        return img.mode in GREY_MODES


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """The image, its shorter side resized to `size` and centre-cropped: (size, size, C) uint8."""
    import numpy as np
    from PIL import Image

    with _open(path) as img:
        try:
            img = img.convert("L" if channels == 1 else "RGB")
            width, height = img.size
            scale = size / min(width, height)
            w, h = max(size, round(width * scale)), max(size, round(height * scale))
            img = img.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
            left, top = (w - size) // 2, (h - size) // 2
            img = img.crop((left, top, left + size, top + size))
            pixels = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # PIL raises many types for damaged pixel data
            raise CorruptData(path, f"is a damaged image ({reason(exc)})") from None
    return pixels.reshape(size, size, channels)


def find_folder(root: Path) -> list[Path]:
    scan(root)  # the layout, or one line
    return [Path(root) / s for s in SPLITS]  # folders stand for every file under them


def describe(root: Path, config: dict[str, Any]) -> DatasetSpec:
    """The spec of the images under `root`: their classes, channels, counts and cached size."""
    size = config.get("folder_image_size") or DEFAULT_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024:
        raise DataError(f"folder_image_size={size!r} is invalid; expected pixels, 8..1024")
    classes, files = scan(root)
    firsts = {}
    for split in SPLITS:
        for path, label in files[split]:
            firsts.setdefault((split, label), path)
    channels = 1 if all(is_grey(p) for p in firsts.values()) else 3

    def decode(found: list[Path], workers: int = 0) -> Decoded:
        import numpy as np

        _, now = scan(root)
        splits = []
        for split in SPLITS:
            images = np.empty((len(now[split]), size, size, channels), dtype=np.uint8)
            for i, (path, _) in enumerate(now[split]):
                images[i] = decode_image(path, size, channels)
            labels = np.array([label for _, label in now[split]], dtype=np.int64)
            splits.append(Split(images, labels))
        return Decoded(splits[0], splits[1], list(classes))

    return dataclasses.replace(
        image_folder_spec(),
        num_classes=len(classes),
        class_names=tuple(classes),
        image_size=size,
        channels=channels,
        train_size=len(files["train"]),
        test_size=len(files["test"]),
        decode=decode,
        description=f"your images under {one_line(str(root))}: {len(classes)} classes",
    )


def _undescribed(files: list[Path], workers: int = 0) -> Decoded:
    raise DataError("image_folder is described from its files first (DatasetSpec.describe)")


def image_folder_spec() -> DatasetSpec:
    return DatasetSpec(
        name="image_folder",
        num_classes=0,  # until described from a data_root's folders
        class_names=(),
        image_size=DEFAULT_SIZE,
        channels=3,
        train_size=0,
        test_size=0,
        find=find_folder,
        decode=_undescribed,
        description="your images: <data_root>/train/<class>/* and test/<class>/* (PNG, JPEG)",
        display_name="Image folder",
        describe=describe,
    )
