"""Claims (study.claims): of several real processes claiming the same work at the same moment,
exactly one gets it; a claim whose holder is gone is taken over, a live one never is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta

from mongo_server import needs_server

from study import identity
from study.claims import FileClaims, MongoClaims

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
    with server.client() as client:
        collection = client[f"t{uuid.uuid4().hex[:12]}"].claims
        claims = MongoClaims(collection)
        gone = identity.utcnow() - timedelta(seconds=identity.STALE_S + 5)
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
    with server.client() as client:
        collection = client[f"t{uuid.uuid4().hex[:12]}"].claims
        claims = MongoClaims(collection)
        claim = claims.acquire("sync-r")
        gone = identity.utcnow() - timedelta(seconds=identity.STALE_S + 5)
        collection.update_one({"_id": "sync-r"}, {"$set": {"beat": gone}})
        assert claims.holder("sync-r") is None  # alive by its pid, but silent too long
        claim.touch()
        assert claims.holder("sync-r").pid == os.getpid()
        assert claims.acquire("sync-r") is None
        claim.release()
        assert claims.holder("sync-r") is None
