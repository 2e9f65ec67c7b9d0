"""study.data: downloading, the uint8 cache, and stratified subsets."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fakedata import write_cifar10, write_mnist, write_tiny_imagenet

from study import data
from study.data import prepare, stratified_subset
from study.errors import CorruptData, DataError
from study.plugins import datasets
from study.specs import Download, Split

SPECS = {spec.name: spec for spec in datasets.study_datasets()}
REAL = os.environ.get("STUDY_TEST_DATA")


def counting(spec):
    """The spec, with a decode that counts its calls in spec.extra["calls"]."""
    calls = []

    def decode(files, workers=0):
        calls.append(list(files))
        return spec.decode(files, workers)

    return dataclasses.replace(spec, decode=decode, extra={"calls": calls})


def folders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# ---------------------------------------------------------------------------------------------
# prepare and the cache


def test_prepare_builds_a_memory_mapped_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("STUDY_CACHE_DIR", raising=False)  # the cache goes beside the data
    write_mnist(tmp_path, n_train=40, n_test=10)
    p = prepare(SPECS["mnist"], tmp_path, download=False)
    assert p.train.images.shape == (40, 28, 28, 1) and p.test.labels.shape == (10,)
    assert isinstance(p.train.images, np.memmap) and p.train.labels.dtype == np.int64
    assert p.class_names == [str(i) for i in range(10)] and p.num_classes == 10
    assert (p.image_size, p.channels) == (28, 1)
    assert p.cache_path.parent == tmp_path / ".study-cache"
    assert p.cache_path.name == f"mnist-{p.fingerprint}"
    assert sorted(f.name for f in p.sources) == sorted(
        f.name for f in (tmp_path / "MNIST" / "raw").iterdir()
    )
    pixels = np.asarray(p.train.images, dtype=np.float64) / 255
    assert p.mean == pytest.approx([pixels.mean()])
    assert p.std == pytest.approx([pixels.std()])


def test_channel_stats_are_per_channel(tmp_path):
    write_cifar10(tmp_path, n_train=30, n_test=5)
    p = prepare(SPECS["cifar10"], tmp_path, download=False)
    pixels = np.asarray(p.train.images, dtype=np.float64) / 255
    assert p.mean == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist())
    assert p.std == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist())


def test_cache_is_reused(tmp_path):
    write_cifar10(tmp_path, n_train=20, n_test=5)
    spec = counting(SPECS["cifar10"])
    first = prepare(spec, tmp_path)
    second = prepare(spec, tmp_path)
    assert len(spec.extra["calls"]) == 1
    assert second.cache_path == first.cache_path and second.fingerprint == first.fingerprint
    assert (second.train.images == first.train.images).all()
    assert second.mean == first.mean and second.class_names == first.class_names


def test_changed_source_rebuilds(tmp_path):
    raw = write_mnist(tmp_path, n_train=20, n_test=5)
    spec = counting(SPECS["mnist"])
    first = prepare(spec, tmp_path)
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = prepare(spec, tmp_path)
    assert len(spec.extra["calls"]) == 2 and second.fingerprint != first.fingerprint
    write_mnist(tmp_path, n_train=30, n_test=5)  # new contents, new sizes
    third = prepare(spec, tmp_path)
    assert len(spec.extra["calls"]) == 3 and len(third.train.labels) == 30


def test_extracted_folder_changes_rebuild(tmp_path):
    folder = write_tiny_imagenet(tmp_path, zipped=False)
    spec = counting(SPECS["tiny_imagenet"])
    first = prepare(spec, tmp_path)
    # A file deep inside a source folder counts too.
    image = next((folder / "train").rglob("*.JPEG"))
    os.utime(image, ns=(0, 10**9))
    second = prepare(spec, tmp_path)
    assert second.fingerprint != first.fingerprint and len(spec.extra["calls"]) == 2
    assert second.class_names == ["thing 0", "thing 1", "thing 2"]


def test_cache_dir_argument(tmp_path):
    write_mnist(tmp_path / "data", n_train=20, n_test=5)
    p = prepare(SPECS["mnist"], tmp_path / "data", cache_dir=tmp_path / "cache")
    assert p.cache_path.parent == tmp_path / "cache"
    assert not (tmp_path / "data" / ".study-cache").exists()


@pytest.fixture
def read_only_root(tmp_path):
    """A data root laid out read-only, as CI lays out the real data (also for root, who
    could write there anyway: study respects the permission bits)."""
    root = tmp_path / "data"
    write_mnist(root, n_train=20, n_test=5)
    root.chmod(0o555)
    assert not data.is_writable(root / data.CACHE_FOLDER)
    yield root
    root.chmod(0o755)


def test_study_cache_dir_wins_over_a_writable_root(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "chosen"))
    write_mnist(tmp_path / "data", n_train=20, n_test=5)
    p = prepare(SPECS["mnist"], tmp_path / "data", download=False)
    assert p.cache_path.parent == tmp_path / "chosen"
    assert not (tmp_path / "data" / data.CACHE_FOLDER).exists()


def test_read_only_root_uses_study_cache_dir(read_only_root, tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "elsewhere"))
    p = prepare(SPECS["mnist"], read_only_root, download=False)
    assert p.cache_path.parent == tmp_path / "elsewhere"
    assert len(p.train.labels) == 20
    assert not (read_only_root / data.CACHE_FOLDER).exists()


def test_read_only_root_falls_back_to_xdg_and_home(read_only_root, tmp_path, monkeypatch):
    monkeypatch.delenv("STUDY_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir(read_only_root) == tmp_path / "xdg" / "study"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_cache_dir(read_only_root) == tmp_path / "home" / ".cache" / "study"


def test_is_writable_tries_for_real(tmp_path):
    assert data.is_writable(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    assert not data.is_writable(tmp_path / "file" / "sub")  # a file is in the way


def test_failed_decode_leaves_no_cache(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5)

    def broken(files, workers=0):
        raise CorruptData(files[0], "broken on purpose")

    with pytest.raises(CorruptData, match="broken on purpose"):
        prepare(dataclasses.replace(SPECS["mnist"], decode=broken), tmp_path)
    assert folders(tmp_path / ".study-cache") == []


def test_bad_decoder_output_is_refused_and_leaves_no_cache(tmp_path):
    write_mnist(tmp_path, n_train=20, n_test=5)
    good = SPECS["mnist"].decode

    def floats(files, workers=0):
        d = good(files, workers)
        return dataclasses.replace(d, train=Split(d.train.images / 255.0, d.train.labels))

    with pytest.raises(DataError, match=r"mnist \(train split\): decoded images are float64"):
        prepare(dataclasses.replace(SPECS["mnist"], decode=floats), tmp_path)
    assert folders(tmp_path / ".study-cache") == []


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
    write_mnist(tmp_path, n_train=20, n_test=5)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data, "channel_stats", no_space)
    with pytest.raises(DataError, match="cannot write the mnist cache"):
        prepare(SPECS["mnist"], tmp_path)
    assert folders(tmp_path / ".study-cache") == []


def test_a_killed_builds_folder_is_removed_at_the_next_build(tmp_path):
    import subprocess
    import sys

    from study.atomic import _host

    write_mnist(tmp_path / "data", n_train=20, n_test=5)
    cache = tmp_path / "cache"
    cache.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is a process that no longer exists
    killed = cache / f".mnist-0123~{_host()}~{proc.pid}~x1y2.tmp"
    live = cache / f".cifar10-4567~{_host()}~{os.getpid()}~z3w4.tmp"  # a build going on
    for folder in (killed, live):
        folder.mkdir()
        (folder / "train_images.npy").write_bytes(b"\0" * 1000)
        os.utime(folder, (time.time() - 30, time.time() - 30))
    p = prepare(SPECS["mnist"], tmp_path / "data", cache_dir=cache)
    assert folders(cache) == sorted([p.cache_path.name, live.name])


# ---------------------------------------------------------------------------------------------
# Missing files and downloads


def test_missing_without_download_says_where_to_put_what(tmp_path):
    with pytest.raises(DataError) as err:
        prepare(SPECS["cifar10"], tmp_path, download=False)
    message = str(err.value)
    assert "\n" not in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "downloads are off" in message
    assert folders(tmp_path) == []


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """(folder, base URL): a real HTTP server on 127.0.0.1 serving the folder."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def with_downloads(spec, *downloads):
    return dataclasses.replace(spec, downloads=list(downloads))


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
def test_download_then_decode(tmp_path, http_root, monkeypatch, capsys, terminal):
    """A download shows its progress: tqdm's bar on a terminal, a line before and after in a
    log (no carriage-return debris there)."""
    import study

    monkeypatch.delenv("STUDY_CACHE_DIR", raising=False)  # the cache goes beside the data
    monkeypatch.setattr(study, "STDERR_IS_TERMINAL", terminal)
    served, url = http_root
    archive = write_cifar10(served, n_train=20, n_test=5)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = with_downloads(
        SPECS["cifar10"], Download(f"{url}/cifar-10-python.tar.gz", "cifar-10-python.tar.gz", md5)
    )
    root = tmp_path / "data"
    p = prepare(spec, root)
    assert (root / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    assert len(p.train.labels) == 20
    assert sorted(os.listdir(root)) == [".study-cache", "cifar-10-python.tar.gz"]
    err = capsys.readouterr().err
    megabytes = f"{archive.stat().st_size / 1e6:.1f} MB"
    if terminal:
        assert "downloading cifar-10-python.tar.gz: 100%" in err and "\r" in err
    else:
        first, second = err.splitlines()
        assert first == f"downloading {url}/cifar-10-python.tar.gz ({megabytes})"
        assert second.startswith(f"downloaded cifar-10-python.tar.gz: {megabytes} in ")
        assert "\r" not in err


def test_download_md5_mismatch_leaves_nothing(tmp_path, http_root):
    served, url = http_root
    write_cifar10(served, n_train=20, n_test=5)
    bad_url = f"{url}/cifar-10-python.tar.gz"
    spec = with_downloads(SPECS["cifar10"], Download(bad_url, "cifar-10-python.tar.gz", "0" * 32))
    root = tmp_path / "data"
    with pytest.raises(DataError, match=f"{bad_url}: downloaded md5 [0-9a-f]+; expected 0+"):
        prepare(spec, root)
    assert folders(root) == []


def test_download_tries_mirrors_in_order(tmp_path, http_root):
    served, url = http_root
    raw = write_mnist(served, n_train=20, n_test=5)
    downloads = []
    for f in sorted(raw.iterdir()):
        md5 = hashlib.md5(f.read_bytes()).hexdigest()
        downloads += [
            Download(f"{url}/nowhere/{f.name}", f"MNIST/raw/{f.name}", md5),  # 404
            Download(f"{url}/MNIST/raw/{f.name}", f"MNIST/raw/{f.name}", md5),
        ]
    p = prepare(with_downloads(SPECS["mnist"], *downloads), tmp_path / "data")
    assert len(p.train.labels) == 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_download_error_is_one_clear_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz"
    spec = with_downloads(SPECS["cifar10"], Download(url, "cifar-10-python.tar.gz", None))
    root = tmp_path / "data"
    with pytest.raises(DataError) as err:
        prepare(spec, root)
    message = str(err.value)
    assert "\n" not in message and url in message
    assert "cifar-10-python.tar.gz" in message and str(root) in message
    assert [n for n in folders(root) if n != ".study-cache"] == []


def test_download_into_unwritable_folder_names_it(tmp_path, http_root):
    served, url = http_root
    (tmp_path / "file").write_text("in the way")
    root = tmp_path / "file" / "data"
    spec = with_downloads(SPECS["cifar10"], Download(f"{url}/x.tar.gz", "x.tar.gz", None))
    with pytest.raises(DataError, match=f"{root}: cannot write a download there"):
        prepare(spec, root)


def test_files_put_by_hand_are_not_checksummed(tmp_path, http_root):
    write_cifar10(tmp_path, n_train=20, n_test=5)
    spec = with_downloads(
        SPECS["cifar10"],
        Download("http://127.0.0.1:9/never", "cifar-10-python.tar.gz", "0" * 32),
    )
    assert len(prepare(spec, tmp_path).train.labels) == 20


# ---------------------------------------------------------------------------------------------
# stratified_subset


def test_stratified_subset_keeps_proportions():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    np.random.default_rng(1).shuffle(labels)
    idx = stratified_subset(labels, 100, seed=0)
    assert len(idx) == 100 and (np.diff(idx) > 0).all()
    assert np.bincount(labels[idx]).tolist() == [50, 30, 20]


def test_stratified_subset_largest_remainder():
    labels = np.repeat([0, 1, 2], [5, 3, 2])  # exact shares of 4: 2.0, 1.2, 0.8
    assert np.bincount(labels[stratified_subset(labels, 4, seed=0)]).tolist() == [2, 1, 1]
    labels = np.repeat([0, 1, 2], 3)  # a tie: the lower labels get the extra sample
    assert np.bincount(labels[stratified_subset(labels, 2, 0)], minlength=3).tolist() == [1, 1, 0]


def test_stratified_subset_is_seeded():
    labels = np.arange(1000) % 10
    a, b = stratified_subset(labels, 50, seed=3), stratified_subset(labels, 50, seed=3)
    assert (a == b).all()
    assert not (a == stratified_subset(labels, 50, seed=4)).all()


def test_stratified_subset_all_when_no_limit():
    labels = np.arange(7) % 3
    assert stratified_subset(labels, None, 0).tolist() == list(range(7))
    assert stratified_subset(labels, 7, 0).tolist() == list(range(7))
    assert stratified_subset(labels, 100, 0).tolist() == list(range(7))
    assert stratified_subset(labels, 0, 0).tolist() == []


# ---------------------------------------------------------------------------------------------
# The real data sets: full preparation, then a fast second load


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real-cache")


@pytest.mark.realdata
@pytest.mark.skipif(not REAL, reason="set STUDY_TEST_DATA to the real data root")
@pytest.mark.parametrize(
    "name, train, test, shape",
    [
        ("mnist", 60000, 10000, (28, 28, 1)),
        ("cifar10", 10000, 10000, (32, 32, 3)),
        ("tiny_imagenet", 20000, 10000, (64, 64, 3)),
    ],
)
def test_real_prepare_and_reload(real_cache, name, train, test, shape):
    spec = SPECS[name]
    start = time.perf_counter()
    first = prepare(spec, REAL, download=False, workers=2, cache_dir=real_cache)
    built = time.perf_counter() - start
    cached = {p: p.stat().st_mtime_ns for p in Path(first.cache_path).rglob("*") if p.is_file()}
    start = time.perf_counter()
    second = prepare(spec, REAL, download=False, workers=2, cache_dir=real_cache)
    reloaded = time.perf_counter() - start
    print(f"\n{name}: first prepare {built:.2f} s, second {reloaded:.3f} s")
    assert second.cache_path == first.cache_path
    assert second.train.images.shape == (train, *shape) and len(second.test.labels) == test
    assert second.class_names == list(spec.class_names)
    assert all(0 < m < 1 for m in second.mean) and all(0 < s < 1 for s in second.std)
    # Read back from the cache, not rebuilt (the time it takes is printed, not asserted).
    assert cached and {p: p.stat().st_mtime_ns for p in cached} == cached
