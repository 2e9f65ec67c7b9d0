"""The file store under concurrency and with files nobody trusts: atomic writes from many
threads, leftovers of killed writers, readers that skip what they cannot read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
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


SAMPLE_RUNS = Path(__file__).resolve().parent.parent / "report" / "sample-runs"


@pytest.fixture
def broken_store(tmp_path) -> Path:
    """The nine real sample runs, three of them damaged and one still being created."""
    import numpy as np

    store = tmp_path / "runs"
    shutil.copytree(SAMPLE_RUNS, store)
    (store / "2" / "run.json").write_text('{"status": "COMPLETED", "resu')  # bad JSON
    metrics = json.loads((store / "5" / "metrics.json").read_text())
    metrics["test_top1"]["values"][0] = "high"  # a wrong value type
    (store / "5" / "metrics.json").write_text(json.dumps(metrics))
    with np.load(store / "8" / "evaluation.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["topk"] = arrays["topk"][:-7]  # fewer rows than labels
    np.savez_compressed(store / "8" / "evaluation.npz", **arrays)
    (store / "10").mkdir()  # Sacred has written run.json, not yet config.json
    run = json.loads((store / "1" / "run.json").read_text())
    run.update(status="RUNNING", stop_time=None, result=None)
    (store / "10" / "run.json").write_text(json.dumps(run))
    return store


def test_a_malformed_run_is_skipped_with_one_line_while_the_rest_report(broken_store, tmp_path):
    listing = run_study("runs", "--runs", broken_store, cwd=tmp_path)
    ids = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert ids == ["1", "3", "4", "6", "7", "8", "9"]  # 8's evaluation is read by reports only
    notes = listing.stderr.strip().splitlines()
    assert len(notes) == 2 and "Traceback" not in listing.stderr, listing.stderr
    assert f"{broken_store / '2' / 'run.json'}: unreadable run file" in notes[0]
    assert f"{broken_store / '5' / 'metrics.json'}: metric 'test_top1'" in notes[1]
    assert "'high' is not a number" in notes[1]

    report = run_study("report", "--runs", broken_store, "--out", "r.html", cwd=tmp_path)
    assert "study report: 6 runs -> r.html (3 skipped)" in report.stdout, report.stdout
    notes = report.stderr.strip().splitlines()
    assert len(notes) == 3, report.stderr
    assert f"run 8 in {broken_store}: evaluation.npz is inconsistent: topk" in notes[2]
    html = (tmp_path / "r.html").read_text()
    assert "Skipped runs" in html and "evaluation.npz is inconsistent" in html
    assert html.count('<div class="run">') == 6

    # A run the filters leave out is not read beyond run.json and config.json.
    only = run_study("report", "--runs", broken_store, "--datasets", "mnist", "--out", "m.html",
                     cwd=tmp_path)  # fmt: skip
    assert "metrics.json" not in only.stderr and "evaluation.npz" not in only.stderr
    assert "study report: 2 runs -> m.html (1 skipped)" in only.stdout  # run 2's run.json


def test_a_reader_looping_while_runs_start_never_fails(mnist_root, tmp_path):
    store = tmp_path / "runs"
    command = [sys.executable, "-m", "study", "run", "with", *FAST, f"data_root={mnist_root}",
               "epochs=1", "train_limit=50", "test_limit=20", "gallery=0",
               "-F", str(store)]  # fmt: skip
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    outs = [open(log, "w") for log in logs]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=out) for out in outs]
    reads, seen, notes = 0, set(), []
    while any(p.poll() is None for p in procs):
        if store.is_dir():
            runs = read_file_store(store, skipped=notes)  # never raises, never notes
            seen.update((r.id, r.status) for r in runs)
            reads += 1
    for p in procs:
        assert p.wait() == 0, "\n".join(log.read_text()[-2000:] for log in logs)
    for out in outs:
        out.close()
    assert notes == []
    assert reads > 50 and any(status == "RUNNING" for _, status in seen), (reads, seen)
    final = read_file_store(store, skipped=notes)
    assert sorted(r.id for r in final) == ["1", "2", "3"] and notes == []
    assert all(r.status == "COMPLETED" and r.metrics and r.config for r in final)


def test_resume_takes_a_run_id_of_the_chosen_store_only(tmp_path):
    other = tmp_path / "other" / "7"  # an interrupted run of another store
    other.mkdir(parents=True)
    (other / "run.json").write_text(json.dumps({"status": "INTERRUPTED"}))
    (other / "config.json").write_text(json.dumps({"model": "small_cnn", "dataset": "mnist"}))
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    for value in ("../other/7", "7/../../other/7", "abc"):
        proc = run_study("run", "with", f"resume={value}", "-F", tmp_path / "runs",
                         cwd=tmp_path, check=False)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"resume={value!r} is invalid; expected the id of a run in" in line, line
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert not (tmp_path / "runs").exists()
