"""Data preparation: a data set's files under data_root -> a uint8 cache of both splits.

Plugins only find and decode files (``DatasetSpec.find`` / ``.decode``). The core downloads
missing files, decodes once, and keeps the result as ``.npy`` files that later runs memory-map.
Greyscale conversion, resizing and normalisation happen later, on the device.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

import study
from study.atomic import TEMP_SUFFIX, remove_stale_temps, temp_prefix
from study.errors import DataError, MissingData
from study.specs import DatasetSpec, Download, Split

CACHE_VERSION = 1  # bump when the cache layout or what decoding produces changes
CACHE_FOLDER = ".study-cache"
# A cache build can take long; another host's build folder is taken for dead after a day.
CACHE_BUILD_MAX_S = 24 * 3600.0
ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass
class Prepared:
    """Both splits of a data set, ready for a run (arrays memory-mapped from the cache)."""

    name: str
    train: Split
    test: Split
    class_names: list[str]
    mean: list[float]  # per channel, of the train split, in 0..1
    std: list[float]
    sources: list[Path]
    fingerprint: str  # the cache key: changes with the files' paths, sizes and times
    cache_path: Path
    # What the data is, wherever it lies: {source relative to data_root: sha256 of its bytes}
    # (a folder: of every file under it). A rerun elsewhere compares these (`study reproduce`).
    content: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[3])


def prepare(
    spec: DatasetSpec,
    data_root: str | os.PathLike,
    *,
    download: bool = True,
    workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Prepared:
    """Find (or download) a data set's files and return both splits from the cache."""
    root = Path(data_root).expanduser()
    files = locate(spec, root, download=download)
    # What the cache holds follows the spec's shape too (a described spec's size may change).
    shape = f"|{spec.image_size}x{spec.channels}|{spec.num_classes}"
    key = fingerprint(files, decoder_fingerprint(spec) + shape)
    cache_root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir(root)
    folder = cache_root / f"{spec.name}-{key}"
    if not (folder / "meta.json").is_file():
        build_cache(spec, files, folder, workers, root)
    return load_cache(spec.name, folder, files, key, root)


# ---------------------------------------------------------------------------------------------
# Finding and downloading


def locate(spec: DatasetSpec, root: Path, *, download: bool = True) -> list[Path]:
    """spec.find(root), downloading the official files first when they are missing."""
    try:
        return list(spec.find(root))
    except MissingData as missing:
        if not download or not spec.downloads:
            raise DataError(f"{missing}; {how_to_get(spec, root)}") from missing
    fetch(spec, root)
    return list(spec.find(root))


def how_to_get(spec: DatasetSpec, root: Path) -> str:
    if not spec.downloads:
        return f"{spec.name} has no official download: put its files under {root}"
    first_mirror: dict[str, str] = {}
    for d in spec.downloads:
        first_mirror.setdefault(d.filename, d.url)
    urls = " ".join(first_mirror.values())
    return f"downloads are off: fetch {urls} and put them under {root} as {expected_files(spec)}"


def expected_files(spec: DatasetSpec) -> str:
    return ", ".join(dict.fromkeys(d.filename for d in spec.downloads))


def fetch(spec: DatasetSpec, root: Path) -> None:
    """Download each missing file. Downloads sharing a filename are mirrors, tried in order."""
    mirrors: dict[str, list[Download]] = {}
    for d in spec.downloads:
        mirrors.setdefault(d.filename, []).append(d)
    for filename, choices in mirrors.items():
        if (root / filename).exists():  # a file put there by hand is used as it is
            continue
        problems = []
        for d in choices:
            try:
                download_file(d, root)
                break
            except DataError as exc:
                problems.append(str(exc))
        else:
            raise DataError(
                f"{spec.name}: could not download {filename} ({'; '.join(problems)}); "
                f"put {expected_files(spec)} under {root} by hand"
            )


def download_file(d: Download, root: Path) -> Path:
    """Download d.url to root/d.filename via a temp file, checking its md5; atomic."""
    target = root / d.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise DataError(f"{target.parent}: cannot write a download there ({exc.strerror})") from exc
    md5 = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(d.url, timeout=60) as response:
            size = response.headers.get("Content-Length")
            total = int(size) if size and size.isdigit() else None
            on_terminal = study.STDERR_IS_TERMINAL
            if not on_terminal:  # a log gets a line where a terminal gets a bar
                how_big = f" ({total / 1e6:.1f} MB)" if total is not None else ""
                print(f"downloading {d.url}{how_big}", file=sys.stderr, flush=True)
            start, received = time.perf_counter(), 0
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=f"downloading {d.filename}",
                disable=not on_terminal,
            ) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
                    received += len(chunk)
            if not on_terminal:
                seconds = time.perf_counter() - start
                print(
                    f"downloaded {d.filename}: {received / 1e6:.1f} MB in {seconds:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
        if d.md5 and md5.hexdigest() != d.md5:
            raise DataError(f"{d.url}: downloaded md5 {md5.hexdigest()}; expected {d.md5}")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; data files are shared
        os.replace(tmp, target)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{d.url}: {getattr(exc, 'reason', exc)}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


# ---------------------------------------------------------------------------------------------
# The cache


def decoder_fingerprint(spec: DatasetSpec) -> str:
    """The code that decodes `spec`: the source of every module in the package (or the lone
    module) that defines its `decode`, so a plugin author's change to the decoder rebuilds
    the cache instead of reusing arrays the old code made."""
    import sys

    from study.registry import source_digest

    module = sys.modules.get(getattr(spec.decode, "__module__", "") or "")
    return source_digest(module) if module is not None else ""


def fingerprint(files: Sequence[Path], code: str = "") -> str:
    """A key that changes when any source file is replaced, resized or touched, or when the
    decoding code (`code`, from decoder_fingerprint) changes.

    A folder among the sources stands for every file under it.
    """
    h = hashlib.sha256(f"study-cache-v{CACHE_VERSION}\n{code}".encode())
    for path in files:
        path = Path(path).resolve()
        entries = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for entry in entries:
            st = entry.stat()
            h.update(f"\n{entry}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def content_fingerprints(files: Sequence[Path], root: Path) -> dict[str, str]:
    """{source: "sha256:<hex>"} of what the files hold, named relative to `root` (the
    data_root), so two copies of a data set anywhere compare equal byte for byte. A folder
    among the sources hashes every file under it with its path inside the folder."""
    root = Path(root).resolve()
    out = {}
    for path in files:
        path = Path(path).resolve()
        h = hashlib.sha256()
        if path.is_dir():
            for entry in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(entry.relative_to(path).as_posix().encode() + b"\0")
                h.update(_file_digest(entry) + b"\0")
        else:
            h.update(_file_digest(path))
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        out[name] = f"sha256:{h.hexdigest()}"
    return out


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def is_writable(folder: Path) -> bool:
    """Whether study may create files in folder. A folder whose permission bits forbid writing
    counts as read-only even for root (who could write anyway), as CI lays out the real data."""
    probe = folder if folder.exists() else folder.parent
    try:
        if not probe.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            return False
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def default_cache_dir(data_root: Path) -> Path:
    """$STUDY_CACHE_DIR when set; else <data_root>/.study-cache when writable; else
    $XDG_CACHE_HOME/study or ~/.cache/study (a read-only data_root, as on CI, must work)."""
    if os.environ.get("STUDY_CACHE_DIR"):
        return Path(os.environ["STUDY_CACHE_DIR"]).expanduser()
    beside = Path(data_root) / CACHE_FOLDER
    if is_writable(beside):
        return beside
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "study"
    return Path.home() / ".cache" / "study"


def build_cache(
    spec: DatasetSpec, files: list[Path], folder: Path, workers: int, root: Path
) -> None:
    """Decode once and write the cache folder atomically: a failed build leaves nothing."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        # What a killed build left beside the cache (a decoded data set: tens of MB).
        remove_stale_temps(folder.parent, depth=0, max_age=CACHE_BUILD_MAX_S)
        tmp = Path(
            tempfile.mkdtemp(prefix=temp_prefix(folder), suffix=TEMP_SUFFIX, dir=folder.parent)
        )
    except OSError as exc:
        raise DataError(
            f"{folder.parent}: cannot write the {spec.name} cache there ({exc.strerror}); "
            "pass a writable cache_dir or set STUDY_CACHE_DIR"
        ) from exc
    try:
        decoded = spec.decode(list(files), workers)
        train, test = checked(spec, decoded.train, "train"), checked(spec, decoded.test, "test")
        names = list(decoded.class_names)
        if not names or len(names) > spec.num_classes:
            raise DataError(
                f"{spec.name}: decode gave {len(names)} class names; expected 1 to the spec's "
                f"num_classes={spec.num_classes} (files may hold a subset of the classes)"
            )
        try:
            write_cache(tmp, spec.name, train, test, names, files, root)
            publish(tmp, folder)
        except OSError as exc:
            raise DataError(f"{folder}: cannot write the {spec.name} cache ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_cache(
    tmp: Path, name: str, train: Split, test: Split, class_names, files, root: Path
) -> None:
    arrays = (train.images, train.labels, test.images, test.labels)
    for array_name, array in zip(ARRAYS, arrays, strict=True):
        np.save(tmp / f"{array_name}.npy", array)
    mean, std = channel_stats(train.images)
    if len(train.labels) and min(std) == 0:
        raise DataError(
            f"{name} (train split): every image has the same value in channel "
            f"{std.index(0)}, so it cannot be normalised (its standard deviation is 0)"
        )
    meta = {
        "dataset": name,
        "cache_version": CACHE_VERSION,
        "class_names": class_names,
        "mean": mean,
        "std": std,
        "train_size": len(train.labels),
        "test_size": len(test.labels),
        "sources": [str(Path(f).resolve()) for f in files],
        "content": content_fingerprints(files, root),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache beside shared data is shared too


def publish(tmp: Path, folder: Path) -> None:
    """Move the finished cache into place in one step."""
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "meta.json").is_file():  # else another process built it first
            raise


def checked(spec: DatasetSpec, split: Split, which: str) -> Split:
    """A plugin's split, checked against its spec: uint8 (N, H, W, C) and int64 labels."""
    images, labels = np.asarray(split.images), np.asarray(split.labels)
    where = f"{spec.name} ({which} split)"
    size = spec.image_size
    if images.dtype != np.uint8 or images.shape[1:] != (size, size, spec.channels):
        raise DataError(
            f"{where}: decoded images are {images.dtype} {images.shape}; the spec declares "
            f"uint8 (N, {size}, {size}, {spec.channels})"
        )
    if not len(images):
        raise DataError(f"{where}: no images; every split needs at least one")
    if labels.shape != (len(images),):
        raise DataError(f"{where}: {labels.size} labels for {len(images)} images; expected equal")
    if labels.dtype.kind not in "iu":  # 2.7 as a label would silently become class 2
        raise DataError(
            f"{where}: labels are {labels.dtype}; expected integers 0..{spec.num_classes - 1}"
        )
    if labels.min() < 0 or labels.max() >= spec.num_classes:
        raise DataError(f"{where}: labels outside 0..{spec.num_classes - 1}")
    return Split(np.ascontiguousarray(images), labels.astype(np.int64))


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in 0..1, exact, from 256-bin histograms (no float copy)."""
    channels = images.shape[3]
    counts = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096]
        for c in range(channels):
            counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    total = np.maximum(counts.sum(axis=1), 1)
    mean = counts @ values / total
    var = counts @ values**2 / total - mean**2
    return [float(m) for m in mean], [float(s) for s in np.sqrt(np.maximum(var, 0.0))]


def load_cache(name: str, folder: Path, files: list[Path], key: str, root: Path) -> Prepared:
    meta = json.loads((folder / "meta.json").read_text())
    content = meta.get("content")
    if not isinstance(content, dict):  # a cache written before study recorded content
        content = content_fingerprints(files, root)
    arrays = {a: np.load(folder / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
    return Prepared(
        name=name,
        train=Split(arrays["train_images"], arrays["train_labels"]),
        test=Split(arrays["test_images"], arrays["test_labels"]),
        class_names=list(meta["class_names"]),
        mean=list(meta["mean"]),
        std=list(meta["std"]),
        sources=[Path(f) for f in files],
        fingerprint=key,
        cache_path=folder,
        content=content,
    )


# ---------------------------------------------------------------------------------------------
# Subsets


def stratified_subset(labels, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of `limit` samples that keeps the class proportions.

    Per-class counts are rounded by largest remainder (ties go to the lower class label).
    limit None or >= len(labels): every index.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit < 0:
        raise ValueError(f"limit {limit}: expected a count >= 0 or None")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * limit / n
    take = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - take), kind="stable")
    take[by_remainder[: limit - int(take.sum())]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == c))[:k]
        for c, k in zip(classes, take, strict=True)
        if k
    ]
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)
