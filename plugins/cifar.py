"""CIFAR-10's pickled batches, read from the .tar.gz in place or from the extracted folder.

The format fixes every size: five training batches and one test batch of 10,000 images of
32 x 32 x 3 bytes each, and a small metadata batch. A member or file larger than a batch can be
is refused from the tar header (or the file's size) before a byte of it is read, and each one is
unpickled without running code from it (study.plugins.safepickle).
"""

from __future__ import annotations

import re
import tarfile
import zlib
from pathlib import Path

from study.errors import CorruptData, MissingData
from study.plugins.bounded import MIB, printable, read_capped, read_file, reason, size_words
from study.plugins.safepickle import unpickle_dict
from study.specs import Decoded, Split

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCH = re.compile(r"data_batch_(\d+)$")
TRAIN_BATCHES = 5
# A batch holds 10,000 x 3,072 pixel bytes; pickled by Python 3 they become latin-1 text of up to
# two bytes each, plus labels and file names: 62 MB at most. batches.meta is a few hundred bytes.
BATCH_CAP = 64 * MIB
META_CAP = 1 * MIB
# A batch of 10,000 images is about 30,000 pickle operations (a label and a file name each).
MAX_PICKLE_OPS = 100_000
BATCH_WHAT = f"a CIFAR-10 batch is at most {size_words(BATCH_CAP)}"
META_WHAT = f"CIFAR-10's batches.meta is at most {size_words(META_CAP)}"


def find_cifar10(root: Path) -> list[Path]:
    root = Path(root)
    archive = root / CIFAR_ARCHIVE
    if archive.is_file():
        return [archive]
    folder = root / CIFAR_FOLDER
    batches = sorted(
        (p for p in folder.glob("data_batch_*") if CIFAR_BATCH.search(p.name)),
        key=lambda p: int(CIFAR_BATCH.search(p.name).group(1)),
    )
    meta, test = folder / "batches.meta", folder / "test_batch"
    if batches and meta.is_file() and test.is_file():
        return [meta, *batches, test]
    raise MissingData(
        "cifar10",
        root,
        [CIFAR_ARCHIVE, f"{CIFAR_FOLDER}/ (batches.meta, data_batch_1..5, test_batch)"],
    )


def wanted(name: str) -> bool:
    return name in ("batches.meta", "test_batch") or bool(CIFAR_BATCH.match(name))


def cap_for(name: str) -> tuple[int, str]:
    return (META_CAP, META_WHAT) if name == "batches.meta" else (BATCH_CAP, BATCH_WHAT)


def check_batch_number(name: str, where) -> None:
    m = CIFAR_BATCH.match(name)
    if m and not 1 <= int(m.group(1)) <= TRAIN_BATCHES:
        raise CorruptData(
            where, f"is training batch {m.group(1)}; CIFAR-10 has data_batch_1 to _{TRAIN_BATCHES}"
        )


def iter_cifar_members(files: list[Path]):
    """(member name, where, bytes) for each batch file, from the archive or the folder, in
    order, each refused by its size before it is read; the caller unpickles one before the
    next is read, so at most one raw batch is held at a time."""
    files = [Path(f) for f in files]
    if len(files) == 1 and files[0].name.endswith((".tar.gz", ".tgz", ".tar")):
        yield from iter_archive(files[0])
        return
    for f in files:
        check_batch_number(f.name, f)
        cap, what = cap_for(f.name)
        yield f.name, str(f), read_file(f, cap, what)


def iter_archive(archive: Path):
    seen = set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:  # one header at a time: members are streamed, never listed first
                name = Path(info.name).name
                if not (info.isfile() and wanted(name)):
                    continue
                where = f"{archive}[{printable(info.name)}]"
                check_batch_number(name, where)
                cap, what = cap_for(name)
                if info.size > cap:
                    raise CorruptData(where, f"is {size_words(info.size)}; {what}")
                with tar.extractfile(info) as member:
                    data = read_capped(member, cap, where, what)
                seen.add(name)
                yield name, where, data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CorruptData(
            archive, f"unreadable ({reason(exc)}); expected a complete .tar.gz"
        ) from exc
    for needed in ("batches.meta", "test_batch", "data_batch_"):
        if not any(name.startswith(needed) for name in seen):
            raise CorruptData(archive, f"holds no {needed}; expected {CIFAR_FOLDER}/{needed}")


def unpickle_batch(data: bytes, where: str) -> dict:
    """A CIFAR batch dict with str keys, unpickled without running any code from the file."""
    try:
        return unpickle_dict(data, MAX_PICKLE_OPS)
    except Exception as exc:  # anything wrong in an untrusted pickle is corruption
        raise CorruptData(
            where,
            f"not a CIFAR-10 batch ({reason(exc)}); expected a pickled dict of data and labels",
        ) from exc


def cifar_split(batches: list[tuple[str, dict]], num_classes: int) -> Split:
    import numpy as np

    images, labels = [], []
    for where, batch in batches:
        data, batch_labels = batch.get("data"), batch.get("labels")
        if not (
            isinstance(data, np.ndarray)
            and data.dtype == np.uint8
            and data.ndim == 2
            and data.shape[1] == 3072
        ):
            raise CorruptData(where, "its data is not a uint8 (N, 3072) array; expected CIFAR-10")
        try:
            batch_labels = np.asarray(batch_labels, dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CorruptData(where, "its labels are not a list of integers") from exc
        if batch_labels.shape != (len(data),):
            raise CorruptData(
                where, f"holds {batch_labels.size} labels for {len(data)} images; expected equal"
            )
        if batch_labels.size and (batch_labels.min() < 0 or batch_labels.max() >= num_classes):
            raise CorruptData(where, f"holds labels outside 0..{num_classes - 1}")
        # Rows are planar: 1024 red, 1024 green, 1024 blue, each row-major 32x32.
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))


def decode_cifar10(files: list[Path], workers: int = 0) -> Decoded:
    batches = {}  # member name -> (where, unpickled dict)
    for name, where, data in iter_cifar_members(files):
        batches[name] = (where, unpickle_batch(data, where))
    where, meta = batches["batches.meta"]
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise CorruptData(where, "its label_names is not a list of 10 names; CIFAR-10 has 10")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    numbered = sorted((int(m.group(1)), name) for name in batches if (m := CIFAR_BATCH.match(name)))
    train = [batches[name] for _, name in numbered]
    test = [batches["test_batch"]]
    return Decoded(cifar_split(train, 10), cifar_split(test, 10), names)
