"""Runs recorded in MongoDB (a real wire-compatible server, secantusd-py), read back as
RunRecords; choosing the store, masking credentials, failing fast, fallback, parallel ids."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from datetime import datetime

import bson
import numpy as np
import pytest
from conftest import run_study
from mongo_server import MongoServer, free_port, needs_server
from PIL import Image

from study.errors import StoreError
from study.record import EPOCH_METRICS, EVALUATION_ARTIFACT
from study.stores import mongo, read_file_store

FAST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]
USER, PASSWORD = "trainer", "s3cret-Pa55"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MongoServer(tmp_path_factory.mktemp("mongo") / "data").start()
    with srv.client() as client:  # a user, so URLs with credentials authenticate for real
        client.admin.command("createUser", USER, pwd=PASSWORD, roles=["root"])
    yield srv
    srv.stop()


@pytest.fixture
def db_name():
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def secret_url(server):
    return server.url.replace("mongodb://", f"mongodb://{USER}:{PASSWORD}@")


def _no_mongo_env(monkeypatch):
    for name in (mongo.URL_ENV, mongo.DB_ENV, mongo.FALLBACK_ENV, mongo.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)


# -- no server needed ------------------------------------------------------------------------


def test_passwords_are_masked():
    assert mongo.mask_url("mongodb://u:pw@h:1/db?x=1") == "mongodb://u:***@h:1/db?x=1"
    assert mongo.mask_url("mongodb://u:p@ss@h") == "mongodb://u:***@h"
    assert mongo.mask_url("mongodb+srv://u:pw@h/") == "mongodb+srv://u:***@h/"
    assert mongo.mask_url("mongodb://h:27017") == "mongodb://h:27017"
    assert mongo.mask_url("mongodb://user@h") == "mongodb://user@h"
    target = mongo.parse_target("mongodb://u:pw@h:1/?authSource=admin:runsdb")
    assert target.masked == "mongodb://u:***@h:1/runsdb?authSource=admin"
    assert "pw" not in repr(target)
    # Split where pymongo splits: a '#' in a password is the password's, not a fragment.
    assert mongo.mask_url("mongodb://dave:Zq#x@h/study") == "mongodb://dave:***@h/study"
    target = mongo.parse_target("mongodb://dave:Zq#x@h:1/runsdb")
    assert (target.url, target.db) == ("mongodb://dave:Zq#x@h:1/", "runsdb")
    assert target.masked == "mongodb://dave:***@h:1/runsdb"
    assert mongo.parse_target("mongodb://dave:Zq#x@h:1:exp").masked == "mongodb://dave:***@h:1/exp"
    # Unescaped '/' or '?' in a password (pymongo refuses the URL): masked up to the '@'.
    assert mongo.mask_url("mongodb://dave:Zq/x@h:1/db") == "mongodb://***@h:1/db"


@pytest.mark.parametrize(
    "spec, url, db",
    [
        ("mongodb://h:27017", "mongodb://h:27017", "study"),
        ("mongodb://h:27017:exp", "mongodb://h:27017", "exp"),
        ("mongodb://h:exp", "mongodb://h", "exp"),
        ("mongodb://u:p@h:27017/exp", "mongodb://u:p@h:27017/", "exp"),
        ("h:27017:exp", "mongodb://h:27017", "exp"),
        ("h:27017", "mongodb://h:27017", "study"),
        ("exp", "mongodb://localhost:27017", "exp"),
    ],
)
def test_mongo_targets(monkeypatch, spec, url, db):
    _no_mongo_env(monkeypatch)
    assert mongo.parse_target(spec) == mongo.Target(url, db)


def test_database_from_the_environment(monkeypatch):
    _no_mongo_env(monkeypatch)
    monkeypatch.setenv(mongo.DB_ENV, "fromenv")
    assert mongo.parse_target("mongodb://h").db == "fromenv"
    assert mongo.parse_target("mongodb://h:explicit").db == "explicit"
    monkeypatch.setenv(mongo.URL_ENV, "mongodb://h:1")
    assert mongo.target_from_env() == mongo.Target("mongodb://h:1", "fromenv")
    with pytest.raises(StoreError, match="not a MongoDB target"):
        mongo.parse_target("no such thing!")


# -- against the real server -----------------------------------------------------------------


def _mongo_run(tmp_path, data_root, url_db, *updates, env=None, check=True):
    return run_study(
        "run", "with", *FAST, f"data_root={data_root}", *updates, "-m", url_db,
        cwd=tmp_path, env=env, check=check,
    )  # fmt: skip


@needs_server
def test_a_mongo_run_uses_the_standard_schema(server, secret_url, db_name, mnist_root, tmp_path):
    proc = _mongo_run(
        tmp_path, mnist_root, f"{secret_url}:{db_name}", "epochs=2", "gallery=3",
        "test_limit=100",
    )  # fmt: skip
    assert PASSWORD not in proc.stdout + proc.stderr
    assert f"mongodb://{USER}:***@" in proc.stderr
    assert not (tmp_path / "runs").exists()  # MongoDB instead of the default file store

    with server.client() as client:
        db = client[db_name]
        (doc,) = list(db.runs.find())
        raw = bson.encode(doc) + b"".join(bson.encode(m) for m in db.metrics.find())
        assert PASSWORD.encode() not in raw  # not in options, config, host, captured output
        assert doc["status"] == "COMPLETED" and doc["format"].startswith("MongoObserver")
        assert isinstance(doc["start_time"], datetime) and doc["config"]["epochs"] == 2
        assert doc["experiment"]["name"] == "study"

        # Metrics: one document per name in `metrics`, referenced from info.metrics.
        refs = {m["name"]: m["id"] for m in doc["info"]["metrics"]}
        assert set(refs) == set(EPOCH_METRICS)
        for name, ref in refs.items():
            metric = db.metrics.find_one({"_id": bson.ObjectId(ref)})
            assert metric["run_id"] == doc["_id"] and metric["name"] == name
            assert metric["steps"] == [1, 2] and len(metric["timestamps"]) == 2

        # Artifacts: GridFS files named artifact://runs/<id>/<name>, with content types.
        names = [a["name"] for a in doc["artifacts"]]
        assert names[0] == EVALUATION_ARTIFACT and len(names) == 1 + len(
            doc["info"]["misclassified"]
        )
        for artifact in doc["artifacts"]:
            f = db["fs.files"].find_one({"_id": artifact["file_id"]})
            assert f["filename"] == f"artifact://runs/{doc['_id']}/{artifact['name']}"
            expected = "application/x-npz" if artifact["name"].endswith(".npz") else "image/png"
            assert f["contentType"] == expected
            assert db["fs.chunks"].count_documents({"files_id": artifact["file_id"]}) >= 1

        rec = mongo.read_mongo_run(secret_url, doc["_id"], db=db_name)
        assert PASSWORD not in rec.store and rec.store.endswith(f"/{db_name}")
        assert rec.id == str(doc["_id"]) and rec.status == "COMPLETED"
        for name, ref in refs.items():
            metric = db.metrics.find_one({"_id": bson.ObjectId(ref)})
            assert rec.metric(name) == list(zip(metric["steps"], metric["values"], strict=True))
        assert "metrics" not in rec.info  # the references are the store's, not the run's
        assert rec.result == doc["result"] and rec.config == doc["config"]
        assert rec.start_time == doc["start_time"].isoformat()

        ev = rec.evaluation()
        assert ev["confusion"].sum() == 100
        assert np.isclose(np.trace(ev["confusion"]) / 100, rec.result["top1"])
        for g in rec.info["misclassified"]:
            assert Image.open(io.BytesIO(rec.artifact_bytes(g["artifact"]))).size == (28, 28)
        with pytest.raises(StoreError, match="no artifact"):
            rec.artifact_bytes("nope.png")
    # The checkpoint of a MongoDB run: ./checkpoints/<id>/checkpoint.pt
    assert rec.info["checkpoint"] == str(tmp_path / "checkpoints" / rec.id / "checkpoint.pt")


@needs_server
def test_file_store_and_mongo_give_the_same_record(server, db_name, mnist_root, tmp_path):
    updates = ("epochs=2", "seed=4", "test_limit=60", "gallery=2")
    run_study(
        "run", "with", *FAST, f"data_root={mnist_root}", *updates, "-F", tmp_path / "files",
        cwd=tmp_path,
    )  # fmt: skip
    (from_files,) = read_file_store(tmp_path / "files")
    env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    run_study("run", "with", *FAST, f"data_root={mnist_root}", *updates, cwd=tmp_path, env=env)
    assert not (tmp_path / "runs").exists()
    (from_mongo,) = mongo.read_mongo_runs(server.url, db_name)

    assert from_mongo.config == from_files.config
    assert {k: [s for s, _ in v] for k, v in from_mongo.metrics.items()} == {
        k: [s for s, _ in v] for k, v in from_files.metrics.items()
    }
    for name in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5"):
        assert from_mongo.metric(name) == from_files.metric(name)  # CPU, same seed
    assert from_mongo.result == from_files.result
    assert set(from_mongo.info) == set(from_files.info)
    for key in ("dataset", "model", "per_class_accuracy", "misclassified"):
        assert from_mongo.info[key] == from_files.info[key], key
    assert from_mongo.artifacts == from_files.artifacts
    for name in from_files.artifacts:
        if name.endswith(".png"):
            assert from_mongo.artifact_bytes(name) == from_files.artifact_bytes(name)
    a, b = from_files.evaluation(), from_mongo.evaluation()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (from_mongo.status, from_mongo.experiment, from_mongo.command) == (
        from_files.status, from_files.experiment, from_files.command,
    )  # fmt: skip
    assert set(from_mongo.host) == set(from_files.host)

    listing = run_study("runs", "--mongo", server.url, "--db", db_name, cwd=tmp_path).stdout
    top1 = f"{100 * from_mongo.result['top1']:.2f}%"
    assert f"1 run(s) in {server.url}/{db_name}" in listing
    (row,) = [line for line in listing.splitlines() if line.split()[:2] == ["1", "small_cnn"]]
    assert "small_cnn" in row and "mnist" in row and "COMPLETED" in row and top1 in row
    env_listing = run_study("runs", "--db", db_name, cwd=tmp_path, env=env)
    assert env_listing.stdout == listing and "pkg_resources" not in env_listing.stderr
    listing = run_study("runs", "--runs", tmp_path / "files", cwd=tmp_path).stdout
    assert "small_cnn" in listing and top1 in listing and "COMPLETED" in listing

    # The same run makes the same report from either store (Table 1, the per-dataset part).
    run_study("report", "--mongo", server.url, "--db", db_name, "--out", "m.html", cwd=tmp_path)
    run_study("report", "--runs", tmp_path / "files", "--out", "f.html", cwd=tmp_path)
    from_m, from_f = (_section(tmp_path / name, "table1") for name in ("m.html", "f.html"))
    assert top1.rstrip("%")[:4] in from_m or f"{from_mongo.result['top1']:.4f}" in from_m
    assert from_m == from_f


def _section(html_file, css_class):
    """The first <table class=css_class> of a report page, as text."""
    html = html_file.read_text()
    start = html.index(f'<table class="{css_class}"')
    return html[start : html.index("</table>", start)]


@needs_server
def test_server_down_at_start_fails_fast_or_falls_back(server, mnist_root, tmp_path):
    url = f"mongodb://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens there
    env = {mongo.URL_ENV: url, mongo.FALLBACK_ENV: ""}
    started = time.monotonic()
    proc = run_study("run", "with", *FAST, f"data_root={mnist_root}", "epochs=1",
                     cwd=tmp_path, env=env, check=False)  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("study: error:")]
    assert "unreachable" in line and f"{USER}:***@" in line and mongo.FALLBACK_ENV in line
    assert PASSWORD not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
    # It waited study's server selection (3 s), not pymongo's 30 s: said, not timed (the time
    # a start-up takes on a loaded machine is no test).
    assert "(no answer within 3 s: " in line
    print(f"server down: study exited after {elapsed:.1f} s")

    env[mongo.FALLBACK_ENV] = "1"
    proc = run_study("run", "with", *FAST, f"data_root={mnist_root}", "epochs=1",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert f"recording to the file store {tmp_path / 'runs'}" in proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.status == "COMPLETED"
    assert PASSWORD not in "".join(p.read_text() for p in (tmp_path / "runs" / "1").glob("*.json"))


@needs_server
def test_commands_that_record_nothing_never_connect(server, db_name, tmp_path):
    env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    proc = run_study("print_config", "with", "model=small_cnn", "dataset=mnist",
                     cwd=tmp_path, env=env)  # fmt: skip
    assert "recording to" not in proc.stderr  # commands that record nothing never connect
    with server.client() as client:
        assert client[db_name].runs.count_documents({}) == 0


@needs_server
def test_parallel_starts_get_distinct_ids(server, db_name, mnist_root, tmp_path):
    env = {mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    cmd = [sys.executable, "-m", "study", "run", "with", *FAST, f"data_root={mnist_root}",
           "epochs=1", "train_limit=100", "test_limit=50", "gallery=0"]  # fmt: skip
    import os

    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(3)
    ]
    for p in procs:
        out = p.communicate(timeout=300)[0].decode()
        assert p.returncode == 0, out
    records = mongo.read_mongo_runs(server.url, db_name)
    assert sorted(r.id for r in records) == ["1", "2", "3"]
    assert all(r.status == "COMPLETED" for r in records)


@needs_server
def test_many_observers_starting_at_once_get_distinct_ids(server, db_name):
    """Sacred's MongoObserver retries the next id on a duplicate _id: 8 threads, one moment."""
    target = mongo.Target(server.url, db_name)
    client = mongo.connect(target)
    barrier = threading.Barrier(8)
    ids, errors = [], []

    def start():
        observer = mongo.make_observer(target, client)
        ex_info = {"name": "study", "base_dir": "/", "sources": [], "dependencies": []}
        barrier.wait()
        try:
            ids.append(observer.started_event(ex_info, "run", {}, datetime.now(), {}, {}, None))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(ids) == list(range(1, 9))
    client.close()


@needs_server
def test_a_200_class_confusion_matrix_stays_in_gridfs(server, db_name, tmp_path):
    import fakedata

    root = tmp_path / "data"
    fakedata.write_tiny_imagenet(root, n_classes=200, per_class=2, n_val=400)
    sacred_form = f"127.0.0.1:{server.port}:{db_name}"  # Sacred's own -m host:port:db
    _mongo_run(
        tmp_path, root, sacred_form, "dataset=tiny_imagenet", "image_size=16",
        "epochs=1", "gallery=4",
    )  # fmt: skip
    with server.client() as client:
        (doc,) = list(client[db_name].runs.find())
    size = len(bson.encode(doc))
    print(f"200-class run document: {size} bytes of BSON")
    assert size < 64 * 1024, size  # class names and per-class accuracy; nothing per-sample
    (rec,) = mongo.read_mongo_runs(server.url, db_name)
    ev = rec.evaluation()
    assert ev["confusion"].shape == (200, 200) and ev["confusion"].sum() == 400
    assert len(rec.info["per_class_accuracy"]) == 200


@needs_server
def test_a_killed_mongo_run_resumes_as_the_same_run(server, db_name, mnist_root, tmp_path):
    import os

    updates = ("epochs=3", "image_size=64", "seed=5")
    straight_db = db_name + "s"
    (tmp_path / "straight").mkdir()
    _mongo_run(tmp_path / "straight", mnist_root, f"{server.url}:{straight_db}", *updates)
    (straight,) = mongo.read_mongo_runs(server.url, straight_db)

    env = {**os.environ, mongo.URL_ENV: server.url, mongo.DB_ENV: db_name}
    cmd = [sys.executable, "-m", "study", "run", "with", *FAST, f"data_root={mnist_root}",
           *updates]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / "1" / "checkpoint.pt"
    deadline = time.time() + 120
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "epoch 1 did not finish in 120 s"
        time.sleep(0.02)
    proc.kill()  # mid-epoch 2
    proc.wait()
    (dead,) = mongo.read_mongo_runs(server.url, db_name)
    assert dead.status == "RUNNING" and dead.stop_time is None

    out = run_study("run", "with", "resume=1", cwd=tmp_path, env=env).stdout
    assert "resuming run 1 after epoch 1" in out
    (resumed,) = mongo.read_mongo_runs(server.url, db_name)  # the same run, not a second one
    assert resumed.id == "1" and resumed.status == "COMPLETED"
    assert resumed.start_time == dead.start_time and resumed.stop_time
    assert resumed.result == straight.result
    for name in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5"):
        assert resumed.metric(name) == straight.metric(name), name
    with server.client() as client:
        doc = client[db_name].runs.find_one({"_id": 1})
    assert {m["name"] for m in doc["info"]["metrics"]} == set(EPOCH_METRICS)
    assert len(doc["resumed"]) == 1

    refused = run_study("run", "with", "resume=1", cwd=tmp_path, env=env, check=False)
    assert refused.returncode == 2 and "already COMPLETED" in refused.stderr
    missing = run_study("run", "with", "resume=7", cwd=tmp_path, env=env, check=False)
    assert missing.returncode == 2 and "no run 7" in missing.stderr


# -- a server that requires authentication ---------------------------------------------------

HASH_USER, HASH_PASSWORD = "dave", "Zq#Kx7p"  # an unescaped '#', which pymongo accepts


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    srv = MongoServer(tmp_path_factory.mktemp("mongo-auth") / "data").start()
    with srv.client() as client:  # provisioned without auth, then restarted with --auth
        client.admin.command("createUser", HASH_USER, pwd=HASH_PASSWORD, roles=["root"])
    srv.stop()
    srv.args = ("--auth",)
    srv.start()
    yield srv
    srv.stop()


def _no_secret(text: str) -> bool:
    return not any(s in text for s in ("Kx7p", "Zq#", "Zq%23", f"{HASH_USER}:Zq"))


@needs_server
def test_a_hash_password_never_shows_nor_is_stored(auth_server, db_name, mnist_root, tmp_path):
    from pymongo import uri_parser

    url = auth_server.url.replace("mongodb://", f"mongodb://{HASH_USER}:{HASH_PASSWORD}@")
    assert uri_parser.parse_uri(url)["password"] == HASH_PASSWORD  # what pymongo sends
    masked = f"mongodb://{HASH_USER}:***@127.0.0.1:{auth_server.port}/{db_name}"
    run = _mongo_run(tmp_path, mnist_root, f"{url}:{db_name}", "epochs=1", "train_limit=100",
                     "test_limit=50", "gallery=1")  # fmt: skip
    assert _no_secret(run.stdout + run.stderr) and masked in run.stderr
    env = {mongo.URL_ENV: url, mongo.DB_ENV: db_name}
    listing = run_study("runs", cwd=tmp_path, env=env)
    assert f"1 run(s) in {masked}" in listing.stdout and _no_secret(listing.stdout + listing.stderr)
    sync = run_study("sync", cwd=tmp_path, env=env)
    assert masked in sync.stdout and _no_secret(sync.stdout + sync.stderr)
    with auth_server.client(username=HASH_USER, password=HASH_PASSWORD) as client:
        db = client[db_name]
        stored = b"".join(bson.encode(d) for c in ("runs", "metrics") for d in db[c].find())
    assert stored and _no_secret(stored.decode("latin-1"))
    copy = tmp_path / "mongo-shadow" / db_name / "1"
    files = "".join(p.read_text(errors="replace") for p in copy.iterdir() if p.is_file())
    assert '"status": "COMPLETED"' in files and _no_secret(files)
    assert json.loads((copy / "run.json").read_text())["mongo"]["url"] == masked


@needs_server
def test_authentication_failures_are_one_line(auth_server, db_name, mnist_root, tmp_path):
    plain = f"{auth_server.url}:{db_name}"  # no credentials: ping passes, the rest does not
    wrong = plain.replace("mongodb://", f"mongodb://{HASH_USER}:Zq#wrong9@")
    for url, expected in ((plain, "requires authentication"), (wrong, "refused the credentials")):
        run = ("run", "with", *FAST, f"data_root={mnist_root}", "epochs=1", "-m", url)
        for args in (("runs", "--mongo", url), run):
            proc = run_study(*args, cwd=tmp_path, check=False)
            assert proc.returncode == 2, proc.stderr
            (line,) = proc.stderr.strip().splitlines()
            assert line.startswith("study: error: MongoDB at mongodb://") and expected in line
            assert "wrong9" not in proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mongo-shadow").exists()


@needs_server
def test_two_sweeps_into_mongodb_run_each_cell_once_and_never_show_the_password(
    auth_server, db_name, mnist_root, tmp_path
):
    """Two sweep processes of one grid, recording into a MongoDB that requires authentication,
    the password on their command line: each cell runs once, and the password is in no output,
    summary, log, claim or run document; nor in what report, export and reproduce print and
    write about those runs."""
    url = auth_server.url.replace("mongodb://", f"mongodb://{HASH_USER}:{HASH_PASSWORD}@")
    args = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "--seeds", "2", "with",
            f"data_root={mnist_root}", "epochs=1", "batch_size=50", "image_size=32",
            "train_limit=100", "test_limit=50", "precise_bn=0", "gallery=1",
            "-m", f"{url}:{db_name}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in (mongo.URL_ENV, mongo.DB_ENV)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "study", *args],
            cwd=tmp_path,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    masked = mongo.mask_url(f"{url}/{db_name}")
    assert all(f"recording to {masked}" in out for out in outs), outs
    assert all("2 of 2 cells COMPLETED" in out for out in outs), outs
    started = [len(re.findall(r"^\[\d\] [^:]+: run \(log", out, re.M)) for out in outs]
    assert sum(started) == 2, outs  # each cell started by one of the two

    runs = mongo.read_mongo_runs(url, db_name)
    assert sorted((r.config["seed"], r.status) for r in runs) == [
        (0, "COMPLETED"),
        (1, "COMPLETED"),
    ]
    (folder,) = (tmp_path / "sweeps").glob("sweep-grid-*")
    written = [p.read_text() for p in sorted(folder.iterdir())]  # two cell logs, the summary
    assert len(written) == 3
    summary = json.loads((folder / "summary.json").read_text())
    assert (
        summary["store"] == masked and [c["status"] for c in summary["cells"]] == ["COMPLETED"] * 2
    )

    # What the other commands print and write about these runs holds no password either.
    spec = f"{url}:{db_name}"
    report = run_study("report", "--mongo", spec, "--format", "html", "--out", "r.html",
                       cwd=tmp_path, env=env)  # fmt: skip
    html = (tmp_path / "r.html").read_text()
    assert "study report: 2 runs -> r.html" in report.stdout and masked in html
    export = run_study("export", "e.tar.gz", "--mongo", spec, cwd=tmp_path, env=env)
    assert f"2 run(s) from {masked}" in export.stdout
    with tarfile.open(tmp_path / "e.tar.gz") as tar:
        archived = [tar.extractfile(m).read().decode("latin-1") for m in tar if m.isfile()]
    again = run_study("reproduce", runs[0].id, "--mongo", spec, cwd=tmp_path, env=env)
    assert re.search(r"^verdict: identical \(run 3 reproducing run \d\)", again.stdout, re.M)
    printed = [p.stdout + p.stderr for p in (report, export, again)]

    with auth_server.client(username=HASH_USER, password=HASH_PASSWORD) as client:
        db = client[db_name]
        stored = b"".join(bson.encode(d) for c in db.list_collection_names() for d in db[c].find())
        assert db.claims.count_documents({}) == 2  # one claim per cell, in the run database
    for text in (*outs, *written, *printed, html, *archived, stored.decode("latin-1")):
        assert _no_secret(text)


@needs_server
def test_a_killed_mongo_sweep_cell_is_resumed_by_the_next_sweep(
    server, db_name, mnist_root, tmp_path
):
    """Issue 23: a sweep recording into MongoDB killed mid-cell (sweep and cell process at
    once, as a scheduler kills a job); once its run's heartbeat is stale, the next sweep, from
    another working folder, resumes that run from its checkpoint as the same run id."""
    import signal

    store = ["-m", f"{server.url}:{db_name}"]
    grid = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={mnist_root}", "batch_size=50", "lr=0.003", "epochs=6", "image_size=32",
            "train_limit=600", "test_limit=50", "gallery=0", *store]  # fmt: skip
    env = {**os.environ, "STUDY_STALE_S": "3", "STUDY_CLAIM_TOUCH_S": "0.5"}
    first = tmp_path / "first"
    first.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "study", *grid], cwd=first, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    checkpoint = first / "checkpoints" / "1" / "checkpoint.pt"  # no checkpoint_dir: ./checkpoints
    deadline = time.time() + 180
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() < deadline, "epoch 1 did not finish in 180 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its cell, mid-run
    proc.wait()
    (dead,) = mongo.read_mongo_runs(server.url, db_name)
    assert dead.status == "RUNNING" and dead.has_checkpoint()  # named before Sacred's beat
    time.sleep(4)  # past STUDY_STALE_S: the dead run's heartbeat and the claim are stale

    second = tmp_path / "second"
    second.mkdir()
    out = run_study(*grid, cwd=second, env=env).stdout
    assert "[0] small_cnn/mnist/seed 0: resume run 1 from its checkpoint" in out, out
    (resumed,) = mongo.read_mongo_runs(server.url, db_name)
    assert (resumed.id, resumed.status) == ("1", "COMPLETED")
    assert [step for step, _ in resumed.metric("test_top1")] == list(range(1, 7))


@needs_server
def test_a_dead_mongo_run_is_recorded_interrupted_when_a_sweep_takes_its_cell(
    server, db_name, mnist_root, tmp_path
):
    """Killed before its first checkpoint, a MongoDB run has nothing to resume: the next sweep
    runs the cell again and records the dead run INTERRUPTED (one conditional update)."""
    import signal

    grid = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={mnist_root}", "batch_size=50", "lr=0.003", "epochs=1", "image_size=64",
            "train_limit=2000", "test_limit=50", "gallery=0",
            "-m", f"{server.url}:{db_name}"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "study", *grid], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 120
    while not mongo.read_mongo_runs(server.url, db_name, skipped=[]):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (dead,) = mongo.read_mongo_runs(server.url, db_name)
    assert dead.status == "RUNNING" and not dead.has_checkpoint()
    from study.identity import pid_alive
    from study.stores.records import PROCESS_KEY

    while pid_alive(dead.meta[PROCESS_KEY]["pid"]):  # the cell's process finishes dying
        assert time.time() < deadline + 30
        time.sleep(0.01)

    out = run_study(*grid, cwd=tmp_path).stdout
    assert "[0] small_cnn/mnist/seed 0: run 1 had died; recorded INTERRUPTED" in out, out
    old, new = mongo.read_mongo_runs(server.url, db_name)
    assert (old.id, old.status, new.id, new.status) == ("1", "INTERRUPTED", "2", "COMPLETED")
    with server.client() as client:
        (why,) = client[db_name].runs.find_one({"_id": 1})["fail_trace"]
    assert why.startswith("no heartbeat since ") and "a sweep took its cell over" in why
