"""Built-in data sets: MNIST, Fashion-MNIST, CIFAR-10 and Tiny-ImageNet-200.

Each is read from its official distribution format, laid out under ``data_root`` as torchvision
lays out its downloads. A plugin only finds and decodes files; the core (``study.data``)
downloads, caches and computes statistics.
"""

from __future__ import annotations

import gzip
import io
import pickle
import re
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from study import hookimpl
from study.errors import CorruptData, MissingData
from study.specs import DatasetSpec, Decoded, Download, Split

if TYPE_CHECKING:  # numpy is imported where data is decoded, so `study list` stays fast
    import numpy as np

# ---------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: four IDX files, gzipped or not.

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801

MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


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


def read_raw(path: Path) -> bytes:
    """The bytes of a file, gunzipped when it ends in .gz."""
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if path.suffix == ".gz" else data
    except (EOFError, OSError, zlib.error) as exc:
        raise CorruptData(path, f"unreadable ({exc}); expected a complete gzip file") from exc


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes, checked against its header."""
    import numpy as np

    data = read_raw(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptData(path, f"only {len(data)} bytes; an IDX file has a {header}-byte header")
    found = struct.unpack(">I", data[:4])[0]
    if found != magic:
        raise CorruptData(path, f"magic number {found:#010x}; expected {magic:#010x}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims))
    if len(data) - header != size:
        raise CorruptData(
            path, f"holds {len(data) - header} data bytes; its header {dims} says {size}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path) -> Split:
    import numpy as np

    images = read_idx(images_path, IMAGES_MAGIC, 3)
    labels = read_idx(labels_path, LABELS_MAGIC, 1)
    if len(labels) != len(images):
        raise CorruptData(
            labels_path, f"holds {len(labels)} labels for {len(images)} images; expected equal"
        )
    if labels.size and labels.max() > 9:
        raise CorruptData(labels_path, f"holds label {labels.max()}; expected 0..9")
    return Split(images[..., None].copy(), labels.astype(np.int64))


def decode_idx(files: list[Path], class_names: list[str]) -> Decoded:
    by_name = {Path(f).name.removesuffix(".gz"): Path(f) for f in files}
    train = read_idx_pair(by_name[IDX_NAMES[0]], by_name[IDX_NAMES[1]])
    test = read_idx_pair(by_name[IDX_NAMES[2]], by_name[IDX_NAMES[3]])
    return Decoded(train, test, list(class_names))


def idx_downloads(folder: str, mirrors: tuple[str, ...], md5s: dict[str, str]) -> list[Download]:
    # Downloads sharing a filename are mirrors of one another: the core tries them in order.
    return [
        Download(mirror + name, f"{folder}/raw/{name}", md5)
        for name, md5 in md5s.items()
        for mirror in mirrors
    ]


def mnist_spec() -> DatasetSpec:
    names = [str(d) for d in range(10)]
    return DatasetSpec(
        name="mnist",
        num_classes=10,
        class_names=names,
        image_size=28,
        channels=1,
        train_size=60000,
        test_size=10000,
        find=lambda root: find_idx("mnist", "MNIST", root),
        decode=lambda files, workers=0: decode_idx(files, names),
        downloads=idx_downloads("MNIST", MNIST_MIRRORS, MNIST_MD5),
        description="MNIST handwritten digits, 28x28 grey (LeCun et al. 1998)",
        extra={"mirror_invariant": False},  # a mirrored digit is no digit: never flip MNIST
    )


def fashion_mnist_spec() -> DatasetSpec:
    return DatasetSpec(
        name="fashion_mnist",
        num_classes=10,
        class_names=FASHION_CLASSES,
        image_size=28,
        channels=1,
        train_size=60000,
        test_size=10000,
        find=lambda root: find_idx("fashion_mnist", "FashionMNIST", root),
        decode=lambda files, workers=0: decode_idx(files, list(FASHION_CLASSES)),
        downloads=idx_downloads("FashionMNIST", FASHION_MIRRORS, FASHION_MD5),
        description="Fashion-MNIST Zalando article images, 28x28 grey (Xiao et al. 2017)",
    )


# ---------------------------------------------------------------------------------------------
# CIFAR-10: pickled batches, read from the .tar.gz in place or from the extracted folder.

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCH = re.compile(r"data_batch_(\d+)$")


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


class _ArrayStub:
    """Stands in for numpy's ndarray while unpickling; becomes an array only once checked."""

    def __init__(self):
        self.state = None

    def __setstate__(self, state):
        self.state = state


class _DtypeStub:
    def __init__(self, name):
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.order = "|"

    def __setstate__(self, state):
        order = state[1] if isinstance(state, tuple) and len(state) > 1 else "|"
        self.order = order.decode() if isinstance(order, bytes) else str(order)


SAFE_DTYPES = {"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"}


def _reconstruct(subtype, shape, dtype):
    return _ArrayStub()


def _dtype(name, align=False, copy=False):
    stub = _DtypeStub(name)
    if stub.name not in SAFE_DTYPES:
        raise pickle.UnpicklingError(f"refused array dtype {stub.name!r}")
    return stub


def _latin1(text, encoding="latin1"):
    # Python 3's protocol-2 pickles store bytes as latin-1 text plus a call to _codecs.encode.
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("refused _codecs.encode other than str -> latin1 bytes")
    return text.encode("latin1")


# The only globals a CIFAR batch needs: numpy's array rebuilding, replaced by inert stand-ins.
SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayStub,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1,
}


class SafeUnpickler(pickle.Unpickler):
    """Loads plain data and numpy integer arrays only; any other global is refused."""

    def find_class(self, module, name):
        stub = SAFE_GLOBALS.get((module, name))
        if stub is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return stub


def _to_array(value):
    """A plain value, or the numpy array an _ArrayStub describes."""
    import numpy as np

    if not isinstance(value, _ArrayStub):
        return value
    state = value.state
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DtypeStub)):
        raise ValueError("malformed array")
    _, shape, dtype, fortran, raw = state
    if not isinstance(raw, bytes):
        raise ValueError("array data is not raw bytes")
    order = dtype.order if dtype.order in "<>" else "|"
    array = np.frombuffer(raw, dtype=np.dtype(order + dtype.name))
    return array.reshape(tuple(shape), order="F" if fortran else "C")


def unpickle_batch(data: bytes, where: str) -> dict:
    """A CIFAR batch dict with str keys, unpickled without running any code from the file."""
    try:
        obj = SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
        if not isinstance(obj, dict):
            raise ValueError(f"holds a {type(obj).__name__}")
        return {(k.decode() if isinstance(k, bytes) else k): _to_array(v) for k, v in obj.items()}
    except Exception as exc:  # anything wrong in an untrusted pickle is corruption
        raise CorruptData(
            where, f"not a CIFAR-10 batch ({exc}); expected a pickled dict of data and labels"
        ) from exc


def read_cifar_members(files: list[Path]) -> dict[str, tuple[str, bytes]]:
    """{member name: (where, bytes)} for the batch files, from the archive or the folder."""
    files = [Path(f) for f in files]
    if len(files) == 1 and files[0].name.endswith((".tar.gz", ".tgz", ".tar")):
        archive, members = files[0], {}
        try:
            with tarfile.open(archive, "r:*") as tar:
                for info in tar:
                    name = Path(info.name).name
                    if info.isfile() and (
                        name in ("batches.meta", "test_batch") or CIFAR_BATCH.match(name)
                    ):
                        members[name] = (f"{archive}[{info.name}]", tar.extractfile(info).read())
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise CorruptData(archive, f"unreadable ({exc}); expected a complete .tar.gz") from exc
        for needed in ("batches.meta", "test_batch", "data_batch_"):
            if not any(name.startswith(needed) for name in members):
                raise CorruptData(archive, f"holds no {needed}; expected {CIFAR_FOLDER}/{needed}")
        return members
    return {f.name: (str(f), f.read_bytes()) for f in files}


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
        except (TypeError, ValueError) as exc:
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
    members = read_cifar_members(files)
    where, meta = members["batches.meta"]
    meta = unpickle_batch(meta, where)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise CorruptData(where, "its label_names is not a list of 10 names; CIFAR-10 has 10")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    numbered = sorted((int(m.group(1)), name) for name in members if (m := CIFAR_BATCH.match(name)))
    train = [load_member(members[name]) for _, name in numbered]
    test = [load_member(members["test_batch"])]
    return Decoded(cifar_split(train, 10), cifar_split(test, 10), names)


def load_member(member: tuple[str, bytes]) -> tuple[str, dict]:
    where, data = member
    return where, unpickle_batch(data, where)


def cifar10_spec() -> DatasetSpec:
    return DatasetSpec(
        name="cifar10",
        num_classes=10,
        class_names=(
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
        ),
        image_size=32,
        channels=3,
        train_size=50000,
        test_size=10000,
        find=find_cifar10,
        decode=decode_cifar10,
        downloads=[
            Download(
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                CIFAR_ARCHIVE,
                "c58f30108f718f92721af3b95e74349a",
            )
        ],
        description="CIFAR-10 tiny natural images, 32x32 RGB (Krizhevsky 2009)",
    )


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet-200: JPEG files, read from the .zip in place or from the extracted folder.

TINY_ARCHIVE = "tiny-imagenet-200.zip"
TINY_FOLDER = "tiny-imagenet-200"
TINY_SIZE = 64


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
    """Reads named files of the Tiny-ImageNet tree from either the zip or the folder."""

    def __init__(self, files: list[Path]):
        first = Path(files[0])
        self.is_zip = first.suffix == ".zip"
        self.path = first if self.is_zip else first.parent  # the folder holding wnids.txt
        self.prefix = ""
        self.zip = None
        if self.is_zip:
            try:
                self.zip = zipfile.ZipFile(first)
            except (zipfile.BadZipFile, OSError) as exc:
                raise CorruptData(first, f"unreadable ({exc}); expected a complete .zip") from exc
            index = [n for n in self.zip.namelist() if n.endswith("wnids.txt")]
            if not index:
                raise CorruptData(first, f"holds no wnids.txt; expected {TINY_FOLDER}/wnids.txt")
            self.prefix = min(index, key=len).removesuffix("wnids.txt")

    def where(self, name: str) -> str:
        return f"{self.path}[{self.prefix}{name}]" if self.is_zip else str(self.path / name)

    def names(self) -> list[str]:
        """Every file, relative to the tree's top folder."""
        if self.is_zip:
            n = len(self.prefix)
            return [m[n:] for m in self.zip.namelist() if m.startswith(self.prefix)]
        return [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        try:
            if self.is_zip:
                return self.zip.read(self.prefix + name)
            return (self.path / name).read_bytes()
        except KeyError as exc:
            raise CorruptData(self.path, f"holds no {name}; expected the official layout") from exc
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
            raise CorruptData(self.where(name), f"unreadable ({exc})") from exc

    def text(self, name: str) -> list[str]:
        return self.read(name).decode("utf-8", errors="replace").splitlines()

    def close(self):
        if self.zip is not None:
            self.zip.close()


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def decode_jpegs(files: list[str], names: list[str]):
    """(images, None), or (None, (where, problem)) for the first bad JPEG.

    Runs in worker processes, so it returns its error instead of raising one.
    """
    import numpy as np
    from PIL import Image

    source = TinySource([Path(f) for f in files])
    out = np.empty((len(names), TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    try:
        for i, name in enumerate(names):
            try:
                with Image.open(io.BytesIO(source.read(name))) as img:
                    img = img.convert("RGB")  # some Tiny-ImageNet JPEGs are greyscale
                    if img.size != (TINY_SIZE, TINY_SIZE):
                        return None, (
                            source.where(name),
                            f"is {img.size[0]}x{img.size[1]}; "
                            f"Tiny-ImageNet images are {TINY_SIZE}x{TINY_SIZE}",
                        )
                    out[i] = np.asarray(img)
            except CorruptData as exc:
                return None, (exc.path, str(exc).removeprefix(f"{exc.path}: "))
            except Exception as exc:  # PIL raises many types for bad data
                return None, (source.where(name), f"not a readable JPEG ({exc})")
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
            train_names += sorted(names, key=_natural_key)
            train_labels += [index[wnid]] * len(names)

        val_names, val_labels = [], []
        for line in source.text("val/val_annotations.txt"):
            fields = line.split("\t")
            if len(fields) < 2:
                continue
            if fields[1] not in index:
                raise CorruptData(
                    source.where("val/val_annotations.txt"),
                    f"names class {fields[1]}, which is not in wnids.txt",
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


def tiny_imagenet_spec() -> DatasetSpec:
    classes = tiny_classes()
    return DatasetSpec(
        name="tiny_imagenet",
        num_classes=200,
        class_names=[name for _, name in classes],
        image_size=TINY_SIZE,
        channels=3,
        train_size=100000,
        test_size=10000,
        find=find_tiny,
        decode=decode_tiny,
        downloads=[
            Download(
                "http://cs231n.stanford.edu/tiny-imagenet-200.zip",
                TINY_ARCHIVE,
                "90528d7ca1a48142e341f4ef8d21d0de",
            )
        ],
        description="Tiny-ImageNet-200, 200 ImageNet classes at 64x64 RGB; test split = val",
        extra={"wnids": [wnid for wnid, _ in classes]},
    )


@hookimpl
def study_datasets():
    return [mnist_spec(), fashion_mnist_spec(), cifar10_spec(), tiny_imagenet_spec()]
