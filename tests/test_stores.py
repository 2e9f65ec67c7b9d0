"""The file store under concurrency and with files nobody trusts: atomic writes from many
threads, leftovers of killed writers, readers that skip what they cannot read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from conftest import run_study

from study.atomic import _host, write_atomic
from study.stores import FileStore, read_file_store

FAST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]


def test_two_threads_hammering_save_json_lose_nothing(tmp_path):
    """Sacred's heartbeat thread and the main thread save run.json at once."""
    store = FileStore(str(tmp_path))
    store.dir = str(tmp_path / "1")
    os.mkdir(store.dir)
    errors: list[Exception] = []
    barrier = threading.Barrier(2)

    def hammer(writer):
        barrier.wait()
        for n in range(300):
            try:
                store.save_json({"writer": writer, "n": n, "pad": "x" * 4000}, "run.json")
            except Exception as exc:  # the old pid-named temp: FileNotFoundError
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [], f"{len(errors)} of 600 writes failed: {errors[0]!r}"
    final = json.loads((tmp_path / "1" / "run.json").read_text())
    assert final["n"] == 299 and final["pad"] == "x" * 4000
    assert os.listdir(tmp_path / "1") == ["run.json"]  # no temporary file left


def test_write_atomic_gives_a_plain_files_mode(tmp_path):
    write_atomic(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["a.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temps_are_gone_after_the_next_run(mnist_root, tmp_path):
    store = tmp_path / "runs"
    killed = store / "3"  # a run whose process was killed mid-write
    killed.mkdir(parents=True)
    (killed / "run.json").write_text(json.dumps({"status": "RUNNING"}))
    (killed / "config.json").write_text("{}")
    dead, host, now = _dead_pid(), _host(), time.time()
    stale = [
        killed / f".run.json~{host}~{dead}~a1b2.tmp",  # its writer has exited
        killed / f"metrics.json.{dead}.tmp",  # the old pid-only name, an hour old
        killed / f".checkpoint.pt.{dead}.tmp",  # the same, from the checkpoint writer
        store / f".summary.json~elsewhere~{dead}~c3d4.tmp",  # another host's, an hour old
    ]
    kept = [
        killed / f".run.json~{host}~{os.getpid()}~e5f6.tmp",  # a live writer (this test)
        killed / f".info.json~elsewhere~{dead}~g7h8.tmp",  # another host's, recent: may live
        killed / f"config.json.{dead}.tmp",  # pid-only and recent: may be another host's
    ]
    for path in stale + kept:
        path.write_text("{half")
        os.utime(path, (now - 10, now - 10))
    for path in stale[1:]:
        os.utime(path, (now - 3600, now - 3600))

    run_study("run", "with", *FAST, f"data_root={mnist_root}", "epochs=1", "train_limit=50",
              "test_limit=20", "gallery=0", "-F", store, cwd=tmp_path)  # fmt: skip
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert [r.id for r in read_file_store(store) if r.status == "COMPLETED"] == ["4"]
