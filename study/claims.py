"""Claiming a piece of work (a sweep cell, the upload of one run by `study sync`), so that of
several processes doing the same thing at the same moment exactly one does it.

A claim on a key is taken atomically, in the store the work is recorded in:
- a file store: `<store>/.claims/<key>.<generation>.claim`, created with O_CREAT | O_EXCL;
- MongoDB: a document `{_id: key, gen, ...}` in the `claims` collection, inserted (the
  unique _id decides) or taken over with an update conditional on its generation.
Its holder touches it while it works (every identity.CLAIM_TOUCH_S) and releases it when done.
A claim that is neither released nor alive by `identity.alive` (its holder, a process of
this host, has exited, or it was not touched for identity.STALE_S) is taken over by the next
generation, which again only one process can create. Whoever gets a claim reads the store
again before working: the work may have been done while it waited.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from study import identity
from study.errors import StoreError, StudyError

_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")


@dataclass
class Holder:
    host: str
    pid: int

    @classmethod
    def me(cls) -> Holder:
        return cls(identity.this_host(), os.getpid())

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"


class Claim:
    """A claim held by this process."""

    def __init__(self, key: str, touch, release):
        self.key = key
        self._touch, self._release = touch, release
        self.released = False

    def touch(self) -> None:
        if not self.released:
            self._touch()

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _check(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"claim key {key!r} is invalid")
    return key


class FileClaims:
    """Claims as files in `<store>/.claims`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _generations(self, key: str) -> dict[int, Path]:
        out = {}
        if not self.folder.is_dir():
            return out
        for path in self.folder.glob(f"{key}.*.claim"):
            gen = path.name[len(key) + 1 : -len(".claim")]
            if gen.isdigit():
                out[int(gen)] = path
        return out

    def holder(self, key: str) -> Holder | None:
        """Who holds the claim on `key` now (None: nobody alive)."""
        gens = self._generations(_check(key))
        if not gens:
            return None
        path = gens[max(gens)]
        state = _read(path) or {}
        if state.get("released") or not _file_alive(path, state):
            return None
        return Holder(state.get("host", "?"), state.get("pid", 0))

    def acquire(self, key: str) -> Claim | None:
        """The claim on `key`, or None when another live process holds it."""
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(
                f"{self.folder} is not a folder; it holds the store's claims (remove it)"
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        gens = self._generations(_check(key))
        gen = 0
        if gens:
            last = max(gens)
            state = _read(gens[last]) or {}  # unreadable: being written, or its writer died
            if not state.get("released") and _file_alive(gens[last], state):
                return None
            gen = last + 1
        path = self.folder / f"{key}.{gen}.claim"
        me = Holder.me()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another process took this generation first
            return None
        with os.fdopen(fd, "w") as f:
            json.dump({"host": me.host, "pid": me.pid, "since": identity.utcnow().isoformat()}, f)
            f.flush()
            os.fsync(f.fileno())

        def touch():
            os.utime(path)

        def release():
            # Earlier generations go with it; a later one cannot exist while this one lives.
            for old_gen, old in self._generations(key).items():
                if old_gen <= gen:
                    old.unlink(missing_ok=True)

        return Claim(key, touch, release)


def _read(path: Path) -> dict | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {"released": True}  # released (removed) meanwhile
    try:
        state = json.loads(text)
    except ValueError:
        return None  # being written, or its writer died: judged by its age alone
    return state if isinstance(state, dict) else {}


def _file_alive(path: Path, state: dict) -> bool:
    try:
        touched = path.stat().st_mtime
    except FileNotFoundError:
        return False
    pid = state.get("pid")
    return identity.alive(touched, state.get("host"), pid if isinstance(pid, int) else None)


class MongoClaims:
    """Claims as documents of a MongoDB collection (`claims` of the run database)."""

    def __init__(self, collection):
        self.collection = collection

    def holder(self, key: str) -> Holder | None:
        doc = self.collection.find_one({"_id": _check(key)})
        if doc is None or doc.get("released") or not _doc_alive(doc):
            return None
        return Holder(doc.get("host", "?"), doc.get("pid", 0))

    def acquire(self, key: str) -> Claim | None:
        import pymongo.errors

        me = Holder.me()
        fields = {"host": me.host, "pid": me.pid, "beat": identity.utcnow(), "released": False}
        try:
            self.collection.insert_one({"_id": _check(key), "gen": 0, **fields})
            gen = 0
        except pymongo.errors.DuplicateKeyError:
            doc = self.collection.find_one({"_id": key})
            if doc is None or (not doc.get("released") and _doc_alive(doc)):
                return None
            # A document from elsewhere may lack its generation or hold another type: the filter
            # below matches it as read ({"gen": None} matches a missing field too).
            seen = doc.get("gen")
            gen = seen + 1 if isinstance(seen, int) and not isinstance(seen, bool) else 1
            # Only the process whose update still finds the generation it saw takes it over.
            taken = self.collection.update_one(
                {"_id": key, "gen": seen}, {"$set": {"gen": gen, **fields}}
            )
            if taken.modified_count != 1:
                return None
        mine = {"_id": key, "gen": gen}

        def touch():
            self.collection.update_one(mine, {"$set": {"beat": identity.utcnow()}})

        def release():
            self.collection.update_one(mine, {"$set": {"released": True}})

        return Claim(key, touch, release)


def _doc_alive(doc: dict) -> bool:
    pid = doc.get("pid")
    return identity.alive(doc.get("beat"), doc.get("host"), pid if isinstance(pid, int) else None)


# -- resuming a run: at most one process continues it ----------------------------------------

RESUME_WAIT_ENV = "STUDY_RESUME_WAIT"  # 1: wait for the holder to go (a requeued cluster job)
RESUME_POLL_S = 5.0


def resume_wait() -> bool:
    return os.environ.get(RESUME_WAIT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def claim_resume(claims, run_id: str, run_alive, *, wait: bool, where: str):
    """The claim on continuing run `run_id` (key `resume-<id>` in the store's claims), held
    (touched by a thread) until released; `run_alive()` says whether the run is at work now
    (a recent heartbeat: a process from before claims, or one whose claim went stale). While
    another process holds the claim or the run is alive, StudyError (one line), or with
    `wait`, polling until neither holds: the holder exits or goes stale (identity.alive)."""
    import threading
    import time

    key = f"resume-{run_id}"
    said = False
    while True:
        claim = claims.acquire(key)
        busy = None
        if claim is None:
            holder = claims.holder(key)
            busy = f"another process ({holder or 'elsewhere'}) is continuing it"
        elif run_alive():
            claim.release()
            busy = "it is running now (its heartbeat is recent)"
        if busy is None:
            break
        if not wait:
            raise StudyError(
                f"resume={run_id}: run {run_id} in {where} cannot be continued: {busy}; "
                f"wait for it to end, or set {RESUME_WAIT_ENV}=1 to wait"
            )
        if not said:
            print(f"study: resume={run_id}: {busy}; waiting", flush=True)
            said = True
        time.sleep(RESUME_POLL_S)
    stop = threading.Event()

    def keep_touching():
        while not stop.wait(identity.CLAIM_TOUCH_S):
            try:
                claim.touch()
            except Exception:  # a lost server: the claim goes stale, training goes on
                return

    threading.Thread(target=keep_touching, name="study-resume-claim", daemon=True).start()
    release = claim._release

    def release_and_stop():
        stop.set()
        release()

    claim._release = release_and_stop
    return claim


def claim_run_resume(store, run_id: str):
    """`claim_resume` for `study run with resume=<id>` on a study.stores Store."""

    def run_alive() -> bool:
        keep = lambda r: r.id == run_id  # noqa: E731
        return any(r.alive for r in store.read_runs(keep=keep, skipped=[]) if keep(r))

    return claim_resume(
        store.claims(), run_id, run_alive, wait=resume_wait(), where=store.describe()
    )
