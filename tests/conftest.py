"""Shared fixtures: small data sets in their real formats, the real data root, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


# Ten real runs as `study` recorded them on 2026-11-27 (the seed's protocol on a 2-core CPU; the
# sample store until issue 20's new sample replaces report/sample-runs), kept unchanged: records
# of an older schema for the tests that damage, export, sync or report a store, independent of
# whichever sample is committed.
RECORDS = Path(__file__).resolve().parent / "records"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Data set caches of unit tests go to a per-session temp folder, never to ~/.cache."""
    if "STUDY_CACHE_DIR" not in os.environ:
        monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root holding a small MNIST in the real IDX .gz format."""
    import fakedata

    root = tmp_path_factory.mktemp("data")
    fakedata.write_mnist(root, n_train=600, n_test=200, seed=0)
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real data sets (../shared/data), found through STUDY_TEST_DATA."""
    path = os.environ.get("STUDY_TEST_DATA")
    if not path:
        pytest.skip("STUDY_TEST_DATA is not set (point it at the real data root)")
    return Path(path)


def fake_distribution(root: Path, dist: str, module: str, source: str) -> Path:
    """An installed distribution in folder `root` (put it on sys.path or PYTHONPATH): a module
    plus a .dist-info with its entry point in study's group, as pip would leave it."""
    import textwrap

    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[study.plugins]\n{module} = {module}\n")
    return root


def run_study(*args, cwd, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    """`python -m study ARGS` in a fresh process, as a user would run it."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "study", *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"study {' '.join(map(str, args))} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real MongoDB-wire server (tests/mongo_server.py) for one test module."""
    from mongo_server import MongoServer

    srv = MongoServer(tmp_path_factory.mktemp("mongo") / "data").start()
    yield srv
    srv.stop()
