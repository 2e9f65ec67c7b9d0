"""Tiny-ImageNet-200: JPEG files, read from the .zip in place or from the extracted folder.

Every size is fixed by the data set: 200 classes of at most 500 training images, at most 10,000
validation images, each 64 x 64 RGB (a few KB). A member is refused by its declared size before
it is read (and the read is capped, should the declaration lie), and an image by the dimensions
in its header before a pixel of it is decoded.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from study.errors import CorruptData, MissingData
from study.plugins.bounded import MIB, one_line, printable, read_file, read_member, reason
from study.specs import Decoded, Split

if TYPE_CHECKING:  # numpy is imported where data is decoded, so `study list` stays fast
    import numpy as np

TINY_ARCHIVE = "tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"
TINY_SIZE = 64
MAX_CLASSES = 200
MAX_TRAIN_PER_CLASS = 500
MAX_VAL = 10_000
# A 64 x 64 JPEG is 1-4 KB; even with large metadata one over 1 MiB is no Tiny-ImageNet image.
IMAGE_CAP = 1 * MIB
IMAGE_WHAT = "a Tiny-ImageNet image (64x64) is at most 1,048,576 bytes"
# words.txt, the largest index file, covers all of WordNet in 2.7 MB.
TEXT_CAP = 16 * MIB
TEXT_WHAT = "Tiny-ImageNet's index files are at most 16,777,216 bytes"
IMAGE_FORMATS = ("JPEG", "PNG")


def tiny_classes() -> list[tuple[str, str]]:
    """(wnid, readable name) of the 200 classes, shipped with the plugin."""
    text = (Path(__file__).parent / "tiny_imagenet_classes.txt").read_text(encoding="utf-8")
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line.strip()]


def find_tiny(root: Path) -> list[Path]:
    root = Path(root)
    archive = root / TINY_ARCHIVE
    if archive.is_file():
        return [archive]
    folder = root / TINY_FOLDER
    index = [folder / "wnids.txt", folder / "words.txt", folder / "val" / "val_annotations.txt"]
    images = [folder / "train", folder / "val" / "images"]
    if all(p.is_file() for p in index) and all(p.is_dir() for p in images):
        # The folders stand for every file under them (the core fingerprints them whole).
        return index + images
    raise MissingData(
        "tiny_imagenet",
        root,
        [TINY_ARCHIVE, f"{TINY_FOLDER}/ (wnids.txt, words.txt, train/, val/)"],
    )


class TinySource:
    """Reads named files of the Tiny-ImageNet tree from either the zip or the folder, each
    with a cap on its size."""

    def __init__(self, files: list[Path]):
        first = Path(files[0])
        self.is_zip = first.suffix == ".zip"
        self.path = first if self.is_zip else first.parent  # the folder holding wnids.txt
        self.prefix = ""
        self.zip = None
        if self.is_zip:
            try:
                self.zip = zipfile.ZipFile(first)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:
                raise CorruptData(
                    first, f"unreadable ({reason(exc)}); expected a complete .zip"
                ) from exc
            index = [n for n in self.zip.namelist() if n.endswith("wnids.txt")]
            if not index:
                raise CorruptData(first, f"holds no wnids.txt; expected {TINY_FOLDER}/wnids.txt")
            self.prefix = min(index, key=len).removesuffix("wnids.txt")

    def where(self, name: str) -> str:
        if self.is_zip:
            return f"{self.path}[{printable(self.prefix + name)}]"
        return printable(str(self.path / name))

    def names(self) -> list[str]:
        """Every file, relative to the tree's top folder."""
        if self.is_zip:
            n = len(self.prefix)
            return [m[n:] for m in self.zip.namelist() if m.startswith(self.prefix)]
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str, cap: int = IMAGE_CAP, what: str = IMAGE_WHAT) -> bytes:
        if not self.is_zip:
            return read_file(self.path / name, cap, what)
        try:
            info = self.zip.getinfo(self.prefix + name)
        except KeyError as exc:
            raise CorruptData(
                self.path, f"holds no {printable(name)}; expected the official layout"
            ) from exc
        try:
            return read_member(self.zip, info, cap, self.where(name), what)
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError, NotImplementedError) as exc:
            raise CorruptData(self.where(name), f"unreadable ({reason(exc)})") from exc

    def text(self, name: str) -> list[str]:
        return self.read(name, TEXT_CAP, TEXT_WHAT).decode("utf-8", errors="replace").splitlines()

    def close(self):
        if self.zip is not None:
            self.zip.close()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def decode_image(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """(64 x 64 x 3 uint8 pixels, None), or (None, what is wrong): the size is checked from the
    image's header, before any pixel is decoded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        return None, "is not a JPEG or PNG image (its first bytes match no image format)"
    except Exception as exc:  # PIL raises many types for a bad header
        return None, f"is not a readable JPEG or PNG image ({reason(exc)})"
    with img:
        if img.size != (TINY_SIZE, TINY_SIZE):
            width, height = img.size
            return None, (
                f"is a {width}x{height} {img.format} image; "
                f"Tiny-ImageNet images are {TINY_SIZE}x{TINY_SIZE}"
            )
        try:
            return np.asarray(img.convert("RGB")), None  # some JPEGs are greyscale
        except Exception as exc:  # PIL raises many types for bad data
            return None, f"is a damaged {img.format} image ({reason(exc)})"


def decode_jpegs(files: list[str], names: list[str]):
    """(images, None), or (None, (where, problem)) for the first bad image.

    Runs in worker processes, so it returns its error instead of raising one.
    """
    import numpy as np

    source = TinySource([Path(f) for f in files])
    out = np.empty((len(names), TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    try:
        for i, name in enumerate(names):
            try:
                pixels, problem = decode_image(source.read(name))
            except CorruptData as exc:
                return None, (exc.path, str(exc).removeprefix(f"{exc.path}: "))
            if problem is not None:
                return None, (source.where(name), one_line(problem))
            out[i] = pixels
    finally:
        source.close()
    return out, None


def decode_all_jpegs(files: list[Path], names: list[str], workers: int) -> np.ndarray:
    import numpy as np

    paths = [str(f) for f in files]
    if workers > 1 and len(names) > 1:
        from concurrent.futures import ProcessPoolExecutor

        chunks = [c.tolist() for c in np.array_split(np.array(names), workers * 2) if len(c)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(decode_jpegs, [paths] * len(chunks), chunks))
    else:
        results = [decode_jpegs(paths, names)]
    for _, error in results:
        if error is not None:
            raise CorruptData(*error)
    return np.concatenate([images for images, _ in results])


def decode_tiny(files: list[Path], workers: int = 0) -> Decoded:
    import numpy as np

    source = TinySource(files)
    try:
        wnids = [w.strip() for w in source.text("wnids.txt") if w.strip()]
        if len(wnids) > MAX_CLASSES:
            raise CorruptData(
                source.where("wnids.txt"),
                f"lists {len(wnids):,} classes; Tiny-ImageNet-200 has {MAX_CLASSES}",
            )
        words = dict(line.split("\t", 1) for line in source.text("words.txt") if "\t" in line)
        class_names = [words.get(w, w).split(",")[0].strip() for w in wnids]
        index = {w: i for i, w in enumerate(wnids)}

        by_class = {wnid: [] for wnid in wnids}
        for name in source.names():
            parts = name.split("/")  # train/<wnid>/images/<file>.JPEG
            if len(parts) == 4 and parts[0] == "train" and parts[2] == "images":
                if parts[1] in by_class and parts[3].lower().endswith((".jpeg", ".jpg")):
                    by_class[parts[1]].append(name)
        train_names, train_labels = [], []
        for wnid, names in by_class.items():
            if len(names) > MAX_TRAIN_PER_CLASS:
                raise CorruptData(
                    source.where(f"train/{wnid}/images"),
                    f"holds {len(names):,} images; Tiny-ImageNet has {MAX_TRAIN_PER_CLASS} "
                    "per class",
                )
            train_names += sorted(names, key=_natural_key)
            train_labels += [index[wnid]] * len(names)

        val_names, val_labels = [], []
        annotations = "val/val_annotations.txt"
        for line in source.text(annotations):
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise CorruptData(
                    source.where(annotations),
                    f"names class {printable(fields[1])}, which is not in wnids.txt",
                )
            if "/" in fields[0] or "\\" in fields[0] or fields[0] in ("", ".", ".."):
                raise CorruptData(
                    source.where(annotations),
                    f"names image '{printable(fields[0])}'; expected a file name in val/images",
                )
            if len(val_names) == MAX_VAL:
                raise CorruptData(
                    source.where(annotations),
                    f"lists more than {MAX_VAL:,} images; Tiny-ImageNet has {MAX_VAL:,}",
                )
            val_names.append(f"val/images/{fields[0]}")
            val_labels.append(index[fields[1]])
    finally:
        source.close()

    images = decode_all_jpegs(files, train_names + val_names, workers)  # one pool for both
    n = len(train_names)
    train = Split(images[:n], np.array(train_labels, np.int64))
    test = Split(images[n:], np.array(val_labels, np.int64))
    return Decoded(train, test, class_names)
