"""The MongoDB server lost mid-run (a real secantusd-py, killed): training goes on, the run is
kept on disk, and `study sync` later puts it into MongoDB exactly once; plain file-store runs
sync the same way."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from conftest import RECORDS, run_study
from mongo_server import free_port, needs_server

from study.record import EPOCH_METRICS, EVALUATION_ARTIFACT
from study.stores import mongo, read_file_run, read_file_store

FAST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]

pytestmark = needs_server


@pytest.fixture
def db_name():
    return f"t{uuid.uuid4().hex[:12]}"


def _counts(server, db_name) -> dict:
    with server.client() as client:
        db = client[db_name]
        return {c: db[c].count_documents({}) for c in ("runs", "metrics", "fs.files")}


def _assert_same_run(from_mongo, from_files):
    """Two RunRecords of one run: equal in everything a reader sees."""
    for key in ("status", "experiment", "command", "config", "info", "result", "host"):
        assert getattr(from_mongo, key) == getattr(from_files, key), key
    assert from_mongo.metrics == from_files.metrics
    assert set(from_mongo.metrics) == set(EPOCH_METRICS)
    # BSON keeps milliseconds
    assert from_mongo.start_time[:23] == from_files.start_time[:23]
    assert from_mongo.stop_time[:23] == from_files.stop_time[:23]
    assert (
        from_mongo.artifacts == from_files.artifacts and EVALUATION_ARTIFACT in from_files.artifacts
    )
    for name in from_files.artifacts:
        assert from_mongo.artifact_bytes(name) == from_files.artifact_bytes(name), name


def _study(cwd, env, *args, out):
    with open(out, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "study", *map(str, args)], cwd=cwd,
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _exit_lag(proc, stop_time: str) -> float:
    """Seconds from the run's recorded stop time to the process's exit."""
    proc.wait(600)
    exited = datetime.now(UTC).replace(tzinfo=None)
    return (exited - datetime.fromisoformat(stop_time)).total_seconds()


def test_server_lost_mid_run_then_sync(server, db_name, mnist_root, tmp_path):
    updates = ("epochs=3", "image_size=64", "seed=5", "test_limit=100", "gallery=3")
    args = ("run", "with", *FAST, f"data_root={mnist_root}", *updates)

    # The same run with the server up: the time it takes, for comparison.
    (tmp_path / "alive").mkdir()
    alive_env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name + "a"}
    started = time.monotonic()
    proc = _study(tmp_path / "alive", alive_env, *args, out=tmp_path / "alive.log")
    proc.wait(600)
    alive_s = time.monotonic() - started
    assert proc.returncode == 0, (tmp_path / "alive.log").read_text()[-3000:]
    (alive,) = mongo.read_mongo_runs(server.url, db_name + "a")
    alive_lag = _exit_lag(proc, alive.stop_time)  # already exited: an upper bound

    env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    started = time.monotonic()
    proc = _study(tmp_path, env, *args, out=tmp_path / "run.log")
    checkpoint = tmp_path / "checkpoints" / "1" / "checkpoint.pt"  # MongoDB's id, as before
    deadline = time.time() + 180
    while not checkpoint.exists():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.time() < deadline, "epoch 1 did not finish in 180 s"
        time.sleep(0.02)
    server.kill()
    killed_at = time.monotonic()
    copy = tmp_path / "mongo-shadow" / db_name / "1"
    proc.wait(600)
    lost_s = time.monotonic() - started
    log = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "study: lost MongoDB" in log and "study sync" in log
    shadow = read_file_run(copy)
    assert shadow.status == "COMPLETED" and shadow.metric("test_top1")[-1][0] == 3
    lag = _exit_lag(proc, shadow.stop_time)
    leftovers = list((tmp_path / "runs" / "mongo-unsaved").glob("*.pickle"))
    assert len(leftovers) == 1  # Sacred's own pickle of the run document
    print(
        f"\nserver up: {alive_s:.1f} s (exit {alive_lag:.1f} s after stop_time); "
        f"server killed after epoch 1: {lost_s:.1f} s (exit {lag:.1f} s after stop_time, "
        f"{time.monotonic() - killed_at:.1f} s after the kill)"
    )
    # One server-selection timeout (3 s) for the final save, not Sacred's 10 tries (~40 s):
    # printed above, not asserted (a duration on a shared machine is no test).

    server.start()
    (partial,) = mongo.read_mongo_runs(server.url, db_name)
    assert partial.status == "RUNNING" and not partial.artifacts
    sync = run_study("sync", cwd=tmp_path, env=env).stdout
    assert f"mongo-shadow/{db_name}/1: completed MongoDB run 1" in sync, sync
    assert "runs/mongo-unsaved" in sync and "1 completed" in sync
    (synced,) = mongo.read_mongo_runs(server.url, db_name)
    _assert_same_run(synced, shadow)
    for name in ("train_loss", "test_top1", "test_top5"):  # the run is the uninterrupted one
        assert synced.metric(name) == alive.metric(name), name
    with server.client() as client:
        doc = client[db_name].runs.find_one({"_id": 1})
        files = {f["filename"]: f for f in client[db_name]["fs.files"].find()}
    assert {m["name"] for m in doc["info"]["metrics"]} == set(EPOCH_METRICS)
    assert files[f"artifact://runs/1/{EVALUATION_ARTIFACT}"]["contentType"] == "application/x-npz"
    assert isinstance(doc["stop_time"], datetime) and doc["meta"][mongo.UID_KEY]

    before = _counts(server, db_name)
    again = run_study("sync", cwd=tmp_path, env=env).stdout
    assert "MongoDB run 1 already holds it" in again and "1 up to date" in again, again
    assert "completed" not in again and "inserted" not in again
    assert _counts(server, db_name) == before
    assert not list((tmp_path / "runs" / "mongo-unsaved").glob("*.pickle"))  # put away
    (same,) = mongo.read_mongo_runs(server.url, db_name)
    _assert_same_run(same, shadow)


def test_a_file_store_run_syncs_into_mongo(server, db_name, mnist_root, tmp_path):
    run_study(
        "run", "with", *FAST, f"data_root={mnist_root}", "epochs=2", "test_limit=60",
        "gallery=2", "-F", tmp_path / "files", cwd=tmp_path,
    )  # fmt: skip
    (from_files,) = read_file_store(tmp_path / "files")
    assert not (tmp_path / "mongo-shadow").exists()  # only MongoDB runs get a copy
    url = f"{server.url}:{db_name}"
    out = run_study("sync", "--runs", tmp_path / "files", "--mongo", url, cwd=tmp_path).stdout
    assert f"{tmp_path / 'files' / '1'}: inserted as MongoDB run 1" in out, out
    (from_mongo,) = mongo.read_mongo_runs(server.url, db_name)
    _assert_same_run(from_mongo, from_files)
    with server.client() as client:
        doc = client[db_name].runs.find_one()
    assert doc["format"].startswith("MongoObserver") and doc["experiment"]["sources"]

    before = _counts(server, db_name)
    again = run_study("sync", "--runs", tmp_path / "files", "--mongo", url, cwd=tmp_path)
    assert "already holds it" in again.stdout and _counts(server, db_name) == before

    # A run still going (recent heartbeat) waits for a later sync.
    live = tmp_path / "files" / "2"
    live.mkdir()
    run = (tmp_path / "files" / "1" / "run.json").read_text()
    now = datetime.now(UTC).replace(tzinfo=None).isoformat()
    import json

    entry = json.loads(run)
    entry.update(status="RUNNING", heartbeat=now, start_time=now, meta={mongo.UID_KEY: "live"})
    (live / "run.json").write_text(json.dumps(entry))
    (live / "config.json").write_text("{}")
    out = run_study("sync", "--runs", tmp_path / "files", "--mongo", url, cwd=tmp_path).stdout
    assert f"{live}: still running" in out and _counts(server, db_name) == before


def test_sync_fails_fast_without_a_server(tmp_path):
    url = f"mongodb://127.0.0.1:{free_port()}:x"
    proc = run_study(
        "sync", "--mongo", url, cwd=tmp_path, env={mongo.TIMEOUT_ENV: "1"}, check=False
    )
    assert proc.returncode == 2 and "unreachable" in proc.stderr and "Traceback" not in proc.stderr


class _Payload:
    """What an attacker pickles: unpickling it runs a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_malicious_leftover_is_refused_never_run(server, db_name, tmp_path):
    import pickle

    unsaved = tmp_path / "runs" / "mongo-unsaved"
    unsaved.mkdir(parents=True)
    marker = tmp_path / "pwned"
    evil = unsaved / "sacred_mongo_fail_1_x.pickle"
    # A run document with the payload inside, as a copied store could carry it.
    evil.write_bytes(pickle.dumps({"_id": 1, "status": _Payload(f"touch {marker}")}))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(f"touch {probe}")))
    assert probe.exists()  # the payload is live: the full unpickler would run it

    env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    proc = run_study("sync", cwd=tmp_path, env=env, check=False)
    assert not marker.exists()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if f"mongo-unsaved/{evil.name}:" in x]
    assert "refused" in line and "posix.system" in line, line
    assert evil.exists()  # left where it was, for a person to look at
    assert _counts(server, db_name)["runs"] == 0


def test_a_genuine_sacred_leftover_syncs(server, db_name, tmp_path):
    """Sacred's own final_save writes the pickle (the server gone at the end of a run); the
    restricted reader loads it and completes the MongoDB run."""
    import pymongo

    target = mongo.Target(server.url, db_name)
    client = mongo.connect(target)
    observer = mongo.make_observer(target, client)
    unsaved = tmp_path / "runs" / "mongo-unsaved"
    observer.failure_dir = str(unsaved)
    ex_info = {"name": "study", "base_dir": "/", "sources": [], "dependencies": []}
    uid = uuid.uuid4().hex
    start = datetime.now(UTC).replace(tzinfo=None)
    observer.started_event(ex_info, "run", {"hostname": "h"}, start, {"seed": 1},
                           {mongo.UID_KEY: uid}, None)  # fmt: skip
    artifact = tmp_path / "evaluation.npz"
    artifact.write_bytes(b"npz bytes")
    observer.artifact_event(EVALUATION_ARTIFACT, str(artifact))
    dead = pymongo.MongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=300)
    observer.runs = dead[db_name].runs  # the server is lost from here on
    observer.heartbeat_event({"note": "x"}, "out", datetime.now(UTC).replace(tzinfo=None), None)
    observer.completed_event(datetime.now(UTC).replace(tzinfo=None), {"top1": 0.5})
    dead.close()
    client.close()
    (leftover,) = unsaved.glob("*.pickle")  # written by Sacred itself

    proc = run_study("sync", "--runs", tmp_path / "runs", "--mongo", f"{server.url}:{db_name}",
                     cwd=tmp_path)  # fmt: skip
    assert f"{leftover}: MongoDB run 1: set " in proc.stdout and "1 completed" in proc.stdout
    (run,) = mongo.read_mongo_runs(server.url, db_name)
    assert run.status == "COMPLETED" and run.result == {"top1": 0.5}
    assert run.artifact_bytes(EVALUATION_ARTIFACT) == b"npz bytes"  # its ObjectId survived
    assert not list(unsaved.glob("*.pickle"))


def test_two_syncs_at_once_insert_each_run_once(server, db_name, tmp_path):
    """Ten real runs (tests/records), two `study sync` processes at the same moment."""
    import json
    import shutil

    store = tmp_path / "runs"
    shutil.copytree(RECORDS, store)
    url = f"{server.url}:{db_name}"
    logs = [tmp_path / f"sync{i}.log" for i in range(2)]
    procs = [_study(tmp_path, {}, "sync", "--runs", store, "--mongo", url, out=log) for log in logs]
    for proc in procs:
        proc.wait(600)
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with server.client() as client:
        db = client[db_name]
        uids = [d["meta"][mongo.UID_KEY] for d in db.runs.find()]
        series = [(m["run_id"], m["name"]) for m in db.metrics.find()]
    assert len(uids) == 10 and len(set(uids)) == 10, uids
    expected = sum(len(json.loads(p.read_text())) for p in store.glob("*/metrics.json"))
    assert len(series) == len(set(series)) == expected  # no series twice either
    assert sum(out.count(": inserted as MongoDB run") for out in outs) == 10, outs
    print("\n" + "".join(outs))
