"""Claims (study.claims): of several real processes claiming the same work at the same moment,
exactly one gets it; a claim whose holder is gone is taken over, a live one never is."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import timedelta

import pytest
from conftest import RECORDS
from mongo_server import needs_server

from study import claims as claims_module
from study import identity
from study.claims import FileClaims, Holder, MongoClaims, claim_resume, claim_run_resume
from study.errors import StudyError
from study.stores.choice import FileRunStore

RACERS = 8
# Each racer says it is ready, waits for the start file, claims once and says whether it won,
# then holds what it got until the release file appears: the test creates it only once every
# racer has tried, so no racer can find a winner already gone (and take the claim over).
RACE = """
import sys, time
from pathlib import Path
ready, start, release = (Path(p) for p in sys.argv[1:4])
{make}
ready.touch()
while not start.exists():
    time.sleep(0.001)
claim = claims.acquire("cell-0123abcd")
print("won" if claim is not None else "lost", flush=True)
while not release.exists():
    time.sleep(0.01)
"""


def _race(tmp_path, make: str) -> list[str]:
    start, release = tmp_path / "go", tmp_path / "release"
    ready = [tmp_path / f"ready-{i}" for i in range(RACERS)]
    script = RACE.format(make=make)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(ready[i]), str(start), str(release)],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(RACERS)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):  # every racer is up and waiting
            assert all(p.poll() is None for p in procs), "a racer exited before the start"
            assert time.monotonic() < deadline, "the racers did not start in 120 s"
            time.sleep(0.01)
        start.touch()
        results = [p.stdout.readline().strip() for p in procs]  # every racer has tried
    finally:
        release.touch()
    for p in procs:
        p.communicate(timeout=60)
    return results


@contextlib.contextmanager
def _mongo_claims(server):
    """A fresh claims collection on the test server, and MongoClaims over it."""
    with server.client() as client:
        collection = client[f"t{uuid.uuid4().hex[:12]}"].claims
        yield collection, MongoClaims(collection)


def _silent_since():
    """A last sign of life older than STALE_S: its holder is taken for gone."""
    return identity.utcnow() - timedelta(seconds=identity.STALE_S + 5)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_of_many_processes_gets_a_file_claim(tmp_path):
    folder = tmp_path / ".claims"
    make = f"from study.claims import FileClaims\nclaims = FileClaims({str(folder)!r})"
    results = _race(tmp_path, make)
    assert sorted(results) == ["lost"] * (RACERS - 1) + ["won"]


def test_a_file_claim_whose_holder_is_gone_is_taken_over(tmp_path):
    claims = FileClaims(tmp_path)
    key = "cell-1"
    dead = tmp_path / f"{key}.0.claim"  # its holder, a process of this host, has exited
    dead.write_text(json.dumps({"host": identity.this_host(), "pid": _dead_pid()}))
    claim = claims.acquire(key)
    assert claim is not None and (tmp_path / f"{key}.1.claim").exists()
    assert claims.acquire(key) is None  # live: this process holds it
    assert claims.holder(key).pid == os.getpid()
    claim.release()
    assert list(tmp_path.glob(f"{key}.*")) == [] and claims.holder(key) is None
    assert claims.acquire(key) is not None  # released: free again

    # Another host's claim is judged by its age alone: alive while touched.
    other = tmp_path / "cell-2.0.claim"
    other.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert claims.acquire("cell-2") is None
    old = time.time() - identity.STALE_S - 5
    os.utime(other, (old, old))
    assert claims.acquire("cell-2") is not None
    # A claim file its writer never finished (killed between create and write): by age too.
    (tmp_path / "cell-3.0.claim").write_text("")
    assert claims.acquire("cell-3") is None


def test_touching_a_file_claim_renews_it(tmp_path):
    claims = FileClaims(tmp_path)
    claim = claims.acquire("cell-r")
    path = tmp_path / "cell-r.0.claim"
    old = time.time() - identity.STALE_S - 5
    os.utime(path, (old, old))  # not touched for longer than STALE_S: taken for gone
    assert claims.holder("cell-r") is None
    claim.touch()
    assert claims.holder("cell-r").pid == os.getpid()
    assert claims.acquire("cell-r") is None  # renewed: nobody takes it over
    claim.release()
    claim.touch()  # a released claim stays released
    assert list(tmp_path.glob("cell-r.*")) == [] and claims.holder("cell-r") is None


@needs_server
def test_one_of_many_processes_gets_a_mongo_claim(server, tmp_path):
    db = f"t{uuid.uuid4().hex[:12]}"
    make = (
        "import pymongo\nfrom study.claims import MongoClaims\n"
        f"claims = MongoClaims(pymongo.MongoClient({server.url!r})[{db!r}].claims)"
    )
    results = _race(tmp_path, make)
    assert sorted(results) == ["lost"] * (RACERS - 1) + ["won"]


@needs_server
def test_a_mongo_claim_whose_holder_is_gone_is_taken_over(server):
    with _mongo_claims(server) as (collection, claims):
        gone = _silent_since()
        collection.insert_one({"_id": "sync-a", "gen": 0, "host": "elsewhere", "pid": 1,
                               "beat": gone, "released": False})  # fmt: skip
        collection.insert_one({"_id": "sync-b", "gen": 0, "host": identity.this_host(),
                               "pid": _dead_pid(), "beat": identity.utcnow(),
                               "released": False})  # fmt: skip
        for key in ("sync-a", "sync-b"):
            claim = claims.acquire(key)
            assert claim is not None and collection.find_one({"_id": key})["gen"] == 1
            assert claims.acquire(key) is None  # now held, alive
            claim.release()
            assert claims.holder(key) is None and claims.acquire(key) is not None


@needs_server
def test_touching_a_mongo_claim_renews_it(server):
    with _mongo_claims(server) as (collection, claims):
        claim = claims.acquire("sync-r")
        gone = _silent_since()
        collection.update_one({"_id": "sync-r"}, {"$set": {"beat": gone}})
        assert claims.holder("sync-r") is None  # alive by its pid, but silent too long
        claim.touch()
        assert claims.holder("sync-r").pid == os.getpid()
        assert claims.acquire("sync-r") is None
        claim.release()
        assert claims.holder("sync-r") is None


# -- pinned in-process: generations, the exclusive create, resuming (mutation survivors) -------


@pytest.mark.parametrize("key", ["c", "ab", "cell", "cell-0123abcd", "resume-7"])
def test_a_file_claim_passes_through_three_generations(tmp_path, key):
    # Keys of odd and even length: the generation is read from the name after `<key>.`
    claims = FileClaims(tmp_path)
    for gen in range(3):
        path = tmp_path / f"{key}.{gen}.claim"
        if gen:  # the last holder died without releasing: taken over by the next generation
            (tmp_path / f"{key}.{gen - 1}.claim").write_text(
                json.dumps({"host": identity.this_host(), "pid": _dead_pid()})
            )
        claim = claims.acquire(key)
        assert claim is not None and path.exists()
        assert claims.holder(key) == Holder(identity.this_host(), os.getpid())
        assert claims.acquire(key) is None
        if gen < 2:
            path.unlink()  # so the next round writes a dead holder in its place
    claim.release()
    assert list(tmp_path.glob(f"{key}.*")) == []


def test_a_generation_taken_between_listing_and_creating_is_lost(tmp_path, monkeypatch):
    """The exclusive create decides: a process that listed no claim, then finds the file made
    by another (the race every sweep cell runs), gets nothing."""
    claims = FileClaims(tmp_path)
    taken = tmp_path / "cell-x.0.claim"
    taken.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "now"}))
    monkeypatch.setattr(FileClaims, "_generations", lambda self, key: {})  # listed: none yet
    assert claims.acquire("cell-x") is None
    assert json.loads(taken.read_text())["host"] == "elsewhere"  # not overwritten


def test_a_claim_file_is_made_in_a_new_folder_with_a_plain_mode(tmp_path):
    old = os.umask(0o022)
    try:
        claims = FileClaims(tmp_path / "new" / "store" / ".claims")
        claim = claims.acquire("cell-m")
    finally:
        os.umask(old)
    path = tmp_path / "new" / "store" / ".claims" / "cell-m.0.claim"
    assert claim is not None and path.stat().st_mode & 0o777 == 0o644
    path.unlink()  # gone already (removed by hand): releasing is still quiet
    claim.release()


def test_claim_files_read_while_they_vanish_and_without_a_pid(tmp_path):
    assert claims_module._read(tmp_path / "gone.0.claim") == {"released": True}
    assert claims_module._file_alive(tmp_path / "gone.0.claim", {}) is False
    (tmp_path / "cell-p.0.claim").write_text(json.dumps({"host": "elsewhere"}))
    assert FileClaims(tmp_path).holder("cell-p") == Holder("elsewhere", 0)


@needs_server
def test_a_mongo_claim_passes_through_generations_and_a_racer_between_read_and_update(server):
    with _mongo_claims(server) as (collection, claims):
        gone = _silent_since()
        for gen in range(3):
            claim = claims.acquire("sync-g")
            assert claim is not None and collection.find_one({"_id": "sync-g"})["gen"] == gen
            assert claims.acquire("sync-g") is None
            collection.update_one({"_id": "sync-g"}, {"$set": {"beat": gone}})  # falls silent
        # A racer takes the stale claim over between this process's read and its update.
        collection.update_one({"_id": "sync-g"}, {"$set": {"beat": gone, "pid": 1}})

        class Racing:  # the real collection; its find_one lets another process in afterwards
            def __getattr__(self, name):
                return getattr(collection, name)

            def find_one(self, query):
                doc = collection.find_one(query)
                collection.update_one({"_id": "sync-g"}, {"$inc": {"gen": 1}})
                return doc

        assert MongoClaims(Racing()).acquire("sync-g") is None
        assert collection.find_one({"_id": "sync-g"})["gen"] == 3  # the racer's, untouched
        # A foreign document without a generation (or with a non-integer one) is taken over.
        collection.insert_one({"_id": "sync-h", "host": "elsewhere", "beat": gone})
        collection.insert_one({"_id": "sync-i", "gen": True, "host": "elsewhere", "beat": gone})
        collection.insert_one({"_id": "sync-j", "pid": 7, "beat": identity.utcnow()})
        for key in ("sync-h", "sync-i"):
            assert claims.acquire(key) is not None
            assert collection.find_one({"_id": key})["gen"] == 1
        assert claims.holder("sync-j") == Holder("?", 7)
        collection.update_one({"_id": "sync-j"}, {"$unset": {"pid": ""}})
        assert claims.holder("sync-j") == Holder("?", 0)


def _hold_elsewhere(tmp_path, key):
    """The claim on `key`, held by another live process: this one's parent (our pid's
    holder file, written as another process of this host would)."""
    (tmp_path / f"{key}.0.claim").write_text(
        json.dumps({"host": identity.this_host(), "pid": os.getppid()})
    )


def test_resume_claims_a_free_run_and_keeps_touching_it(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(identity, "CLAIM_TOUCH_S", 0.05)
    claims = FileClaims(tmp_path)
    claim = claim_resume(claims, "7", lambda: False, wait=False, where="runs")
    path = tmp_path / "resume-7.0.claim"
    old = time.time() - identity.STALE_S - 5
    os.utime(path, (old, old))
    deadline = time.monotonic() + 30
    while claims.holder("resume-7") is None:  # the thread touches it back to life
        assert time.monotonic() < deadline, "the claim was not touched"
        time.sleep(0.02)
    (thread,) = [t for t in threading.enumerate() if t.name == "study-resume-claim"]
    assert thread.daemon  # a finished run's process exits without waiting for it
    hooked = []
    monkeypatch.setattr(threading, "excepthook", hooked.append)
    path.unlink()  # the store lost: touching fails, the thread ends quietly
    thread.join(timeout=30)
    assert not thread.is_alive() and hooked == []
    claim.release()


def test_resume_of_a_run_held_or_running_is_refused_in_one_line(tmp_path):
    claims = FileClaims(tmp_path)
    _hold_elsewhere(tmp_path, "resume-7")
    holder = Holder(identity.this_host(), os.getppid())
    with pytest.raises(StudyError) as held:
        claim_resume(claims, "7", lambda: False, wait=False, where="runs")
    assert str(held.value) == (
        f"resume=7: run 7 in runs cannot be continued: another process ({holder}) is "
        f"continuing it; wait for it to end, or set STUDY_RESUME_WAIT=1 to wait"
    )
    with pytest.raises(StudyError, match=r"run 8 in runs cannot be continued: it is running now"):
        claim_resume(claims, "8", lambda: True, wait=False, where="runs")
    assert claims.holder("resume-8") is None  # the claim it took is given back


def test_resume_waits_for_the_holder_saying_so_once(tmp_path, monkeypatch, capsys):
    import threading

    monkeypatch.setattr(claims_module, "RESUME_POLL_S", 0.05)
    claims = FileClaims(tmp_path)
    _hold_elsewhere(tmp_path, "resume-7")
    polls = []

    def run_alive():
        polls.append(1)
        return len(polls) < 4  # its heartbeat is recent for the first three looks

    threading.Timer(0.3, (tmp_path / "resume-7.0.claim").unlink).start()  # the holder ends
    claim = claim_resume(claims, "7", run_alive, wait=True, where="runs")
    assert claims.holder("resume-7") == Holder(identity.this_host(), os.getpid())
    assert len(polls) == 4
    out = capsys.readouterr().out
    assert out.count("study: resume=7: ") == 1 and out.endswith("; waiting\n")
    claim.release()


def test_resume_looks_at_its_own_run_only(tmp_path):
    store = tmp_path / "runs"
    store.mkdir()
    # Ids of two digits: Python shares one object per one-character string, so `is` would pass.
    for sample, run_id in (("1", "11"), ("2", "12"), ("3", "13")):
        shutil.copytree(RECORDS / sample, store / run_id)
    run = json.loads((store / "12" / "run.json").read_text())
    run.update(status="RUNNING", stop_time=None, heartbeat=identity.utcnow().isoformat())
    run.setdefault("meta", {})["process"] = {"host": identity.this_host(), "pid": os.getpid()}
    (store / "12" / "run.json").write_text(json.dumps(run))
    files = FileRunStore(store)
    for free in ("11", "13"):  # run 12, alive, is not theirs
        claim_run_resume(files, "".join(free)).release()
    with pytest.raises(StudyError, match="run 12 in .* cannot be continued: it is running now"):
        claim_run_resume(files, "".join(["1", "2"]))  # built, as a command line's id is
