"""A hostile store or archive (a colleague's, or an attacker's) built in the test: study only
skips runs with one line each, leaves names that are paths out, or refuses with one line. It
never reads or writes outside the store, never waits on a record's clock, never crashes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import RECORDS, fake_distribution, run_study
from mongo_server import needs_server

from study import identity
from study.claims import FileClaims, claim_resume
from study.errors import StoreError, StudyError
from study.stores import read_file_store


def _edit(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _secret(tmp_path: Path) -> tuple[Path, bytes]:
    """A file of the user's outside every store: a PNG, so a report would show it."""
    secret = tmp_path / "secret" / "holiday.png"
    secret.parent.mkdir(exist_ok=True)
    data = (RECORDS / "1" / "misclassified_00.png").read_bytes() + b"SECRET-BYTES"
    secret.write_bytes(data)
    return secret, data


@pytest.fixture
def hostile_store(tmp_path) -> Path:
    """The ten recorded runs (tests/records); six of them with a wrong type or a bomb in a
    field, one whose record names files outside its folder (absolute, `..`, a link)."""
    store = tmp_path / "runs"
    shutil.copytree(RECORDS, store)
    (store / "2" / "info.json").write_text('{"x": ' + "[" * 5000 + "]" * 5000 + "}")
    _edit(store / "3" / "run.json", lambda r: r["result"].update(top1=10**3999))
    raw = (store / "3" / "run.json").read_text()  # json.dumps writes it whole: 4,000 digits
    assert len(raw) > 4000
    _edit(store / "4" / "config.json", lambda c: c.update(model={"name": "vgg16"}))
    _edit(store / "5" / "info.json", lambda i: i.update(dataset=["mnist"]))
    _edit(store / "6" / "info.json", lambda i: i["training"].update(train_seconds="fast"))
    _edit(store / "9" / "run.json", lambda r: r.update(heartbeat={"$date": 1}))
    secret, _ = _secret(tmp_path)
    private = secret.parent / "settings.json"  # a JSON file of the user's, linked as info.json
    private.write_text(json.dumps({"token": "SECRET-TOKEN"}))
    (store / "10" / "info.json").unlink()
    (store / "10" / "info.json").symlink_to(private)
    (store / "7" / "link.png").symlink_to(secret)
    names = [str(secret), "../../secret/holiday.png", "link.png"]
    _edit(store / "7" / "run.json", lambda r: r["artifacts"].extend(names))
    _edit(
        store / "7" / "info.json",
        lambda i: i["misclassified"].extend(
            {**i["misclassified"][0], "artifact": n, "confidence": 1.0} for n in names
        ),
    )
    return store


def test_a_hostile_file_store_skips_runs_with_one_line_each(hostile_store, tmp_path):
    listing = run_study("runs", "--runs", hostile_store, cwd=tmp_path)
    ids = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert ids == ["1", "7", "8"], listing.stdout
    assert "Traceback" not in listing.stderr
    notes = listing.stderr.strip().splitlines()
    expected = [
        f"{hostile_store / '2' / 'info.json'}: unreadable run file (nested over",
        f"{hostile_store / '3' / 'run.json'}: unreadable run file (an integer of 4,000 digits",
        f"{hostile_store / '4' / 'config.json'}: model is dict; expected a string",
        f"{hostile_store / '5' / 'info.json'}: dataset is list; expected an object",
        f"{hostile_store / '6' / 'info.json'}: training.train_seconds is 'fast'; expected a",
        f"{hostile_store / '9' / 'run.json'}: heartbeat is dict; expected an ISO date",
        f"{hostile_store / '10' / 'info.json'}: a link leading outside the run's folder",
    ]
    for want in expected:
        assert sum(want in n for n in notes) == 1, "\n".join([want, *notes])
    assert sum("left out an artifact of run 7" in n for n in notes) == 3, notes
    assert sum("left out a gallery image of run 7" in n for n in notes) == 3, notes
    assert len(notes) == len(expected) + 6, notes

    report = run_study(
        "report", "--runs", hostile_store, "--out", "r.html", "--format", "html", cwd=tmp_path
    )
    assert "Traceback" not in report.stderr and "study report: 3 runs" in report.stdout
    html = (tmp_path / "r.html").read_text()
    assert "SECRET-TOKEN" not in html
    secret = base64.b64encode((tmp_path / "secret" / "holiday.png").read_bytes()).decode()
    assert secret not in html  # the file outside the store is not in the page

    sweep = run_study(
        "sweep", "--models", "vgg16_bn", "--datasets", "tiny_imagenet", "--seeds", "1",
        "--dry-run", "-F", hostile_store, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert sweep.returncode == 0 and "Traceback" not in sweep.stderr, sweep.stderr[-2000:]
    assert "training.train_seconds is 'fast'" in sweep.stderr


def test_export_of_a_hostile_store_writes_and_reads_nothing_outside_it(hostile_store, tmp_path):
    from test_stores import write_checkpoint

    secret, data = _secret(tmp_path)
    # A record naming a local file as its checkpoint, and one whose checkpoint is real.
    _edit(hostile_store / "8" / "info.json", lambda i: i.update(checkpoint=str(secret)))
    elsewhere = write_checkpoint(tmp_path / "elsewhere.pt")
    _edit(hostile_store / "1" / "info.json", lambda i: i.update(checkpoint=str(elsewhere)))
    work = tmp_path / "work"
    work.mkdir()
    out = run_study("export", "x.tgz", "--runs", hostile_store, "--checkpoints", cwd=work)
    assert "Traceback" not in out.stderr
    with tarfile.open(work / "x.tgz") as tar:
        names = tar.getnames()
        contents = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]
    assert not any(data in c for c in contents)  # neither as an artifact nor a checkpoint
    assert "study-export/runs/1/checkpoint.pt" in names
    assert "study-export/runs/1/checkpoint.pt.sha256" in names
    assert not any(b"SECRET-TOKEN" in c for c in contents)
    assert not any(n.endswith("holiday.png") or "/link.png" in n for n in names), names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["elsewhere.pt", "elsewhere.pt.sha256", "runs", "secret", "work"]
    )
    # The archive reads back: the run with the verified checkpoint has it.
    from study.stores.archive import open_archive
    from study.stores.records import is_checkpoint

    [one] = [r for r in read_file_store(open_archive(work / "x.tgz")) if r.id == "1"]
    assert is_checkpoint(one.location / "checkpoint.pt")  # it verifies where it is read


def _archive(tmp_path: Path, runs: Path) -> Path:
    """A `study export`-shaped archive holding `runs` as they are (hostile ones included)."""
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(runs, arcname="study-export/runs", filter=lambda m: None if m.issym() else m)
    return path


def test_a_hostile_archive_skips_runs_with_one_line_each(hostile_store, tmp_path):
    archive = _archive(tmp_path, hostile_store)
    listing = run_study("runs", "--runs", archive, cwd=tmp_path)
    ids = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert ids == ["1", "7", "8", "10"] and "Traceback" not in listing.stderr
    assert "info.json: unreadable run file (nested over" in listing.stderr
    assert "left out an artifact of run 7 in" in listing.stderr


# -- clocks ----------------------------------------------------------------------------------


def test_a_time_in_the_future_is_no_sign_of_life(tmp_path):
    soon = identity.utcnow() + timedelta(seconds=60)  # a clock a minute fast: still alive
    later = identity.utcnow() + timedelta(days=365)  # a hostile or broken clock
    assert identity.run_alive("RUNNING", soon.isoformat(), None)
    assert not identity.run_alive("RUNNING", later.isoformat(), None)
    assert not identity.run_alive("RUNNING", later.isoformat(), later.isoformat())
    # A claim touched "next year" by another host is stale, not held for ever.
    claims = FileClaims(tmp_path / ".claims")
    claims.folder.mkdir()
    path = claims.folder / "cell.0.claim"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    os.utime(path, (later.timestamp(), later.timestamp() + 3600 * 24 * 365))
    assert claims.holder("cell") is None
    assert claims.acquire("cell") is not None
    # A huge or absurd time is unreadable, not a crash.
    assert identity.parse_time(1e300) is None and identity.parse_time("9" * 5000) is None


def test_a_claims_file_where_the_folder_belongs_is_one_line(tmp_path):
    (tmp_path / ".claims").write_text("not a folder")
    claims = FileClaims(tmp_path / ".claims")
    assert claims.holder("cell") is None
    with pytest.raises(StoreError, match=r"\.claims is not a folder"):
        claims.acquire("cell")


# -- resume is claimed -----------------------------------------------------------------------


def test_resume_is_claimed_one_process_at_a_time(tmp_path):
    claims = FileClaims(tmp_path / ".claims")
    first = claim_resume(claims, "3", lambda: False, wait=False, where="runs")
    with pytest.raises(StudyError, match=r"resume=3: .* another process \(.* pid \d+\)"):
        claim_resume(claims, "3", lambda: False, wait=False, where="runs")
    with pytest.raises(StudyError, match=r"it is running now"):
        claim_resume(claims, "4", lambda: True, wait=False, where="runs")
    assert claims.holder("resume-4") is None  # refused: the claim it took is given back

    # Asked to wait (a requeued job), it continues once the holder is gone.
    got, started = [], time.monotonic()
    import study.claims

    study.claims.RESUME_POLL_S = 0.2
    waiter = threading.Thread(
        target=lambda: got.append(claim_resume(claims, "3", lambda: False, wait=True, where="r"))
    )
    waiter.start()
    time.sleep(1.0)
    assert not got  # still held
    first.release()
    waiter.join(10)
    assert got and time.monotonic() - started >= 1.0
    assert claims.holder("resume-3") is not None
    got[0].release()


def test_resuming_a_live_run_is_refused_with_one_line(tmp_path):
    store = tmp_path / "runs"
    shutil.copytree(RECORDS / "1", store / "1")
    now = identity.utcnow().isoformat()
    _edit(store / "1" / "run.json", lambda r: r.update(status="RUNNING", heartbeat=now))
    proc = run_study("run", "with", "resume=1", "-F", store, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"study: error: resume=1: run 1 in {store} cannot be continued: it is running now "
        "(its heartbeat is recent); wait for it to end, or set STUDY_RESUME_WAIT=1 to wait"
    ]
    assert json.loads((store / "1" / "run.json").read_text())["heartbeat"] == now
    assert not (store / "1" / "checkpoint.pt").exists()


# -- outputs and interruptions ---------------------------------------------------------------


def test_report_out_onto_a_special_file_is_refused(tmp_path):
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    proc = run_study("report", "--runs", RECORDS, "--out", fifo, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "is not a regular file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and fifo.is_fifo()


def _limited_files(limit: int):
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_during_export_is_one_line_and_leaves_nothing(tmp_path):
    staging = tmp_path / "tmp"
    staging.mkdir()
    env = {**os.environ, "TMPDIR": str(staging)}
    proc = subprocess.run(
        [sys.executable, "-m", "study", "export", "x.tar.gz", "--runs", str(RECORDS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        preexec_fn=_limited_files(2 << 20),
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0], proc.stderr[-2000:]
    assert list(staging.iterdir()) == [] and not (tmp_path / "x.tar.gz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tmp"]


def test_sigterm_during_export_leaves_no_staging_and_one_line(tmp_path):
    staging = tmp_path / "tmp"
    staging.mkdir()
    env = {**os.environ, "TMPDIR": str(staging)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "export", "x.tar.gz", "--runs", str(RECORDS)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not any(staging.glob("*/study-export/runs/10")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(staging.glob("*/study-export/runs/10")), "export never staged its runs"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert err.strip().splitlines() == ["study: export interrupted; nothing half-written was left"]
    assert list(staging.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["tmp"]


def test_reproduce_writes_no_checkpoint_where_the_original_did():
    from study.reproduce import reproducible_config

    config = json.loads((RECORDS / "1" / "config.json").read_text())
    assert config["checkpoint_dir"]  # the run's own, on the machine that made it
    base = reproducible_config({**config, "checkpoint_dir": "/home/victim/.ssh", "resume": 3})
    assert "checkpoint_dir" not in base and "resume" not in base
    assert base["model"] == config["model"] and base["seed"] == config["seed"]
    assert base["download"] is False  # never into the folder a record names


def test_reproduce_downloads_nothing_into_the_data_root_a_record_names(mnist_root, tmp_path):
    """A record whose data_root names another folder (a hostile archive's `/home/victim`):
    reproduce reads there, finds no data, and stops with one line; nothing is written there."""
    run_study(
        "run", "with", "model=small_cnn", "dataset=mnist", f"data_root={mnist_root}",
        "epochs=1", "batch_size=50", "test_limit=50", "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    victim = tmp_path / "victim"
    victim.mkdir()
    config = tmp_path / "runs" / "1" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "data_root": str(victim)}))
    proc = run_study("reproduce", "1", "--runs", tmp_path / "runs", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("study: error: ") and str(victim) in line
    assert list(victim.iterdir()) == []  # no download, not even a folder


def test_a_plugin_exiting_at_import_is_a_failed_plugin(tmp_path):
    fake_distribution(tmp_path, "exitplugin", "exit_plugin", "import sys\nsys.exit(0)\n")
    proc = run_study("list", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "plugin exitplugin:exit_plugin (exit_plugin) failed to import: SystemExit" in (
        proc.stderr
    )


def test_checkpoint_check_refuses_what_is_not_one(tmp_path):
    import torch
    from test_stores import write_checkpoint

    from study.stores.records import is_checkpoint

    good = write_checkpoint(tmp_path / "good.pt")
    assert is_checkpoint(good)
    plain = tmp_path / "notes.txt"  # any file, with a digest file that matches it
    plain.write_text("my notes")
    (tmp_path / "notes.txt.sha256").write_text(hashlib.sha256(b"my notes").hexdigest())
    assert not is_checkpoint(plain)
    evil = tmp_path / "evil.pt"  # a pickle that would run code: never loaded fully

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    torch.save({"version": 2, "model": Boom()}, evil)
    (tmp_path / "evil.pt.sha256").write_text(hashlib.sha256(evil.read_bytes()).hexdigest())
    assert not is_checkpoint(evil) and not (tmp_path / "ran").exists()
    assert not is_checkpoint(tmp_path / "absent.pt")


# -- MongoDB documents, through a real server ----------------------------------------------


@needs_server
def test_hostile_mongodb_documents_are_skipped_with_one_line_each(server, tmp_path):
    import gridfs

    db_name = f"t{os.getpid()}h"
    url = f"{server.url}:{db_name}"
    runs = tmp_path / "runs"
    shutil.copytree(RECORDS, runs)
    secret, data = _secret(tmp_path)
    (runs / "1" / "run.json").write_text(
        json.dumps({**json.loads((runs / "1" / "run.json").read_text()),
                    "experiment": {"name": "study", "sources": [["a.py", str(secret)],
                                                                ["b.py", "_sources/../../x"]]}})
    )  # fmt: skip
    (runs / "1" / "escape.png").symlink_to(secret)
    _edit(runs / "1" / "run.json", lambda r: r["artifacts"].extend(["../../secret/holiday.png",
                                                                     "escape.png"]))  # fmt: skip
    synced = run_study("sync", "--runs", runs, "--mongo", url, cwd=tmp_path)
    assert "10 inserted" in synced.stdout, synced.stdout
    assert synced.stdout.count(f"{runs / '1'}: left out an artifact of run 1") == 2
    with server.client() as client:
        db = client[db_name]
        fs = gridfs.GridFS(db)
        assert not any(data in f.read() for f in fs.find())  # nothing of the user's uploaded
        ids = {d["meta"]["study_uid"]: d["_id"] for d in db.runs.find()}
        by_id = {int(p.name): json.loads((p / "run.json").read_text())["meta"]["study_uid"]
                 for p in runs.iterdir() if p.name.isdigit()}  # fmt: skip
        doc = {n: ids[by_id[n]] for n in by_id}
        db.runs.update_one(
            {"_id": doc[2]}, {"$set": {"info.deep": json.loads("[" * 60 + "]" * 60)}}
        )
        db.runs.update_one({"_id": doc[3]}, {"$set": {"result.top1": 1e308}})
        db.runs.update_one({"_id": doc[4]}, {"$set": {"config": ["vgg16"]}})
        db.runs.update_one({"_id": doc[5]}, {"$set": {"status": {"a": 1}}})
        db.runs.update_one({"_id": doc[6]}, {"$set": {"info.training.cpus": "many"}})
        passwd = fs.put(data, filename="artifact://runs/7/x")
        db.runs.update_one(
            {"_id": doc[7]}, {"$push": {"artifacts": {"name": str(secret), "file_id": passwd}}}
        )
        evaluation = next(a for a in db.runs.find_one({"_id": doc[8]})["artifacts"]
                          if a["name"] == "evaluation.npz")  # fmt: skip
        db.fs.chunks.delete_many({"files_id": evaluation["file_id"]})  # its chunks lost
        db.metrics.update_one({"run_id": doc[10], "name": "test_top1"}, {"$set": {"values": [{}]}})

    listing = run_study("runs", "--mongo", url, cwd=tmp_path)
    assert "Traceback" not in listing.stderr
    listed = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert listed == [str(doc[n]) for n in (1, 7, 8, 9)], listing.stderr
    notes = listing.stderr.strip().splitlines()
    for n, want in (
        (2, "info.deep[0][0]"),  # nests over 24 deep
        (3, "result.top1 is 1e+308; expected a number in 0..1"),
        (4, "config is list; expected an object"),
        (5, "status is dict; expected a string"),
        (6, "info.training.cpus is 'many'; expected an integer"),
        (10, "metric 'test_top1' is malformed"),
    ):
        assert sum(f"run {doc[n]} in" in x and want in x for x in notes) == 1, (want, notes)
    assert sum(f"left out an artifact of run {doc[7]}" in x for x in notes) == 1, notes
    assert len(notes) == 7, notes

    report = run_study("report", "--mongo", url, "--out", "r.html", cwd=tmp_path)
    assert "Traceback" not in report.stderr and "study report: 3 runs" in report.stdout
    assert "artifact 'evaluation.npz' is unreadable (no chunk #0)" in report.stderr
    assert base64.b64encode(data).decode() not in (tmp_path / "r.html").read_text()


def test_a_run_whose_process_is_gone_is_not_alive(tmp_path):
    from test_stores import _dead_pid

    from study.stores import read_file_run

    store = tmp_path / "runs"
    shutil.copytree(RECORDS / "1", store / "1")
    now = identity.utcnow().isoformat()
    for pid, alive in ((os.getpid(), True), (_dead_pid(), False)):
        process = {"host": identity.this_host(), "pid": pid}
        _edit(
            store / "1" / "run.json",
            lambda r, p=process: (
                r.update(status="RUNNING", heartbeat=now) or r["meta"].update(process=p)
            ),
        )
        assert read_file_run(store / "1").alive is alive  # killed: resumable at once


@needs_server
def test_a_server_lost_during_sync_is_one_line(tmp_path):
    from mongo_server import MongoServer

    srv = MongoServer(tmp_path / "mongo" / "data").start()
    try:
        runs = tmp_path / "runs"
        shutil.copytree(RECORDS, runs)
        (runs / "1" / "big.bin").write_bytes(os.urandom(96 << 20))  # uploads for a while
        _edit(runs / "1" / "run.json", lambda r: r["artifacts"].append("big.bin"))
        env = {**os.environ, "STUDY_MONGO_TIMEOUT": "2"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", "sync", "--runs", str(runs), "--mongo",
             f"{srv.url}:lost"],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        with srv.client() as client:
            while client["lost"].fs.chunks.count_documents({}) < 4:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
        srv.kill()  # mid-upload
        out, err = proc.communicate(timeout=120)
    finally:
        srv.stop()
    assert proc.returncode == 1, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("study: error: MongoDB failed: "), err[-2000:]


def test_a_health_record_of_the_wrong_shape_skips_its_run(tmp_path):
    from study.stores import read_file_run

    store = tmp_path / "runs"
    shutil.copytree(RECORDS / "1", store / "1")
    for health, problem in (
        ({"epochs": {"flags": []}}, "health.epochs is dict; expected a list"),
        ({"epochs": [None]}, "health.epochs[0] is None; expected an object"),
        ({"flags": "stuck"}, "health.flags is 'stuck'; expected a list"),
    ):
        _edit(store / "1" / "info.json", lambda i, h=health: i.update(health=h))
        with pytest.raises(StoreError, match=re.escape(f"info.json: {problem}")):
            read_file_run(store / "1")
    good = {"epochs": [{"epoch": 1, "flags": ["stuck"], "reasons": ["loss"]}], "flags": ["stuck"]}
    _edit(store / "1" / "info.json", lambda i: i.update(health=good))
    assert read_file_run(store / "1").info["health"] == good
