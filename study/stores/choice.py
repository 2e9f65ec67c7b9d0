"""Which store a command records to or reads from: `choose_store`, the one place that decides it
for `study run`, `sweep`, `sync`, `runs` and `report`.

First to last: a MongoDB URL or a folder named on the command line (`-m URL` / `--mongo URL`,
`-F DIR` / `--runs DIR`); else `$STUDY_MONGO_URL` (database: `--db`, `$STUDY_MONGO_DB`,
`study`); else the default folder `./runs`. The answer is a small `Store`: what to print
(`describe`), its runs as RunRecords (`read_runs`), where cells and uploads are claimed
(`claims`), and for `study run` the observers that record a run (`observers_for_run`, which
falls back to the file store when `$STUDY_MONGO_FALLBACK` says so).

A new kind of store is one more `Store` subclass and one more branch in `_named_store` (a
folder given on the command line) or `choose_store`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from study.errors import StoreError
from study.stores import files, mongo
from study.stores.records import RunRecord, Skipped


class Store:
    """A run store as a command sees it."""

    kind = ""

    def describe(self) -> str:
        """Where the store is, safe to print (never a password)."""
        raise NotImplementedError

    def read_runs(self, *, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
        """Every run, in id order; unreadable ones are left out with a line in `skipped`
        (printed when no list is given). `keep(record)` may leave runs out early."""
        raise NotImplementedError

    def claims(self):
        """Where exactly-once claims (study.claims) on this store's work are kept."""
        raise StoreError(f"{self.describe()} keeps no claims")

    def resumable_config(self, run_id: str) -> dict:
        """The stored config of the interrupted run `run_id` (`study run with resume=<id>`)."""
        raise StoreError(f"resume={run_id}: {self.describe()} cannot be recorded to")

    def previous_uid(self, run_id: str | None) -> str | None:
        """The study_uid the run `run_id` already has here (a resumed run keeps its name)."""
        return None

    def observers_for_run(self, resume: str | None = None) -> list:
        """Sacred observers that record one run (`study run`) to this store."""
        raise StoreError(f"{self.describe()} cannot be recorded to")

    def mark_dead(self, record: RunRecord, why: str) -> bool:
        """Record the dead run `record` (RUNNING, no heartbeat for STALE_S) as INTERRUPTED, with
        `why`, if its heartbeat is still the one read: whether it did. A sweep calls it, under
        the cell's claim, when it takes the cell over with a new run."""
        return False

    def __str__(self) -> str:
        return self.describe()


class FileRunStore(Store):
    """A file store: one folder per run (see study.stores.files)."""

    kind = "files"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._claims = None

    def describe(self) -> str:
        return str(self.folder)

    def read_runs(self, *, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
        return files.read_file_store(self.folder, keep=keep, skipped=skipped)

    def claims(self):
        from study.claims import FileClaims

        if self._claims is None:
            self._claims = FileClaims(self.folder / ".claims")
        return self._claims

    def resumable_config(self, run_id: str) -> dict:
        return files.resumable_config(self.folder, run_id)

    def previous_uid(self, run_id: str | None) -> str | None:
        return files.stored_uid(self.folder, run_id)

    def observers_for_run(self, resume: str | None = None) -> list:
        return [files.FileStore(str(self.folder))]

    def mark_dead(self, record: RunRecord, why: str) -> bool:
        return files.mark_dead(self.folder, record, why)

    def __repr__(self) -> str:
        return f"FileRunStore({self.describe()!r})"


class MongoRunStore(Store):
    """A MongoDB database (see study.stores.mongo), with a file copy of each run it records
    (study.stores.shadow) and, for `study run -m URL -F DIR`, a file store recorded alongside."""

    kind = "mongo"

    def __init__(self, target: mongo.Target, spec: str, from_env: bool = False, also=None):
        self.target = target
        self.spec = spec  # as given: it may hold a password, so it is never printed
        self.from_env = from_env  # named by $STUDY_MONGO_URL, not on the command line
        self.also = Path(also) if also is not None else None
        self._client = None
        self._claims = None
        self._resuming = False

    def describe(self) -> str:
        return self.target.masked

    def connect(self):
        """A connected MongoClient (one per Store), or a one-line StoreError."""
        if self._client is None:
            self._client = mongo.connect(self.target)
        return self._client

    def read_runs(self, *, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
        # `keep` is for reading less of a file store; a MongoDB store is read in one query.
        return mongo.read_mongo_runs(self.target, skipped=skipped)

    def claims(self):
        from study.claims import MongoClaims

        if self._claims is None:
            self._claims = MongoClaims(self.connect()[self.target.db].claims)
        return self._claims

    def resumable_config(self, run_id: str) -> dict:
        if self.also is not None:  # -m URL -F DIR: the run to resume is the folder's
            return files.resumable_config(self.also, run_id)
        # No fallback to the file store: the run to resume is in MongoDB.
        config = mongo.resumable_config(self.target, self.connect(), run_id)
        self._resuming = True
        return config

    def previous_uid(self, run_id: str | None) -> str | None:
        # A MongoDB run keeps its own (StudyMongoObserver); a folder recorded alongside, its.
        return files.stored_uid(self.also, run_id) if self.also is not None else None

    def observers_for_run(self, resume: str | None = None) -> list:
        """The MongoObserver (reopening run `resume` when its config came from MongoDB) and
        the run's file copy, and the file store recorded alongside; with no server and
        $STUDY_MONGO_FALLBACK on, the file store alone (./runs unless -F DIR)."""
        from study.stores.shadow import shadow_for

        folder = self.also
        if self._resuming:
            observer = mongo.make_observer(self.target, self.connect(), resume)
        else:
            try:
                client = self.connect()
            except StoreError as exc:
                if not mongo.fallback_enabled():
                    raise StoreError(
                        f"{exc}; start the server, check the URL, or set {mongo.FALLBACK_ENV}=1 "
                        f"to record to the file store instead"
                    ) from None
                folder = folder or Path(files.DEFAULT_FILE_STORE)
                print(
                    f"study: {exc}; {mongo.FALLBACK_ENV} is set: recording to the file store "
                    f"{folder.resolve()} instead",
                    file=sys.stderr,
                    flush=True,
                )
                return [files.FileStore(str(folder))]
            print(f"study: recording to {self.target.masked}", file=sys.stderr, flush=True)
            observer = mongo.make_observer(self.target, client)
        shadow = shadow_for(self.target)
        observers = [o for o in (observer, shadow) if o is not None]
        return observers + ([files.FileStore(str(folder))] if folder is not None else [])

    def mark_dead(self, record: RunRecord, why: str) -> bool:
        return mongo.mark_dead(self.connect()[self.target.db], record, why)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return f"MongoRunStore({self.describe()!r})"


def choose_store(
    folder: str | Path | None = None,
    mongo_url: str | None = None,
    db: str | None = None,
    *,
    options: tuple[str, str] = ("--runs DIR", "--mongo URL"),
    both: bool = False,
    environment: bool = True,
    default: str | Path | None = files.DEFAULT_FILE_STORE,
) -> Store | None:
    """The store a command names (see the module's docstring for the order).

    folder, mongo_url, db: the command's options (`options` names them in errors). `both`:
    a folder and a URL together record to both (`study run -m URL -F DIR`); otherwise that is
    an error. `environment`: whether $STUDY_MONGO_URL may choose (not when `study run` is given
    another Sacred observer). `default`: the folder when nothing is named (None: no store, the
    caller says what is missing). StoreError, one line, for what cannot be a store.
    """
    if folder is not None and not str(folder).strip():
        flag = options[0].split()[0]
        raise StoreError(f"{flag} needs a folder, e.g. {flag} runs")
    if folder is not None and mongo_url is not None and not both:
        raise StoreError(f"give {options[0]} or {options[1]}, not both")
    if mongo_url is not None:
        target = mongo.parse_target(mongo_url, db)
        return MongoRunStore(target, mongo_url, also=folder)
    if folder is None and environment:
        spec = os.environ.get(mongo.URL_ENV, "").strip()
        if spec:
            return MongoRunStore(mongo.parse_target(spec, db), spec, from_env=True)
    if db is not None:
        raise StoreError(f"--db needs {options[1]} (or ${mongo.URL_ENV})")
    if folder is not None:
        return _named_store(folder)
    return FileRunStore(default) if default is not None else None


def _named_store(path: str | Path) -> Store:
    """The store a path on the command line names: a file store's folder, or a `study export`
    archive (read-only)."""
    from study.stores.archive import is_archive

    return ArchiveRunStore(path) if is_archive(path) else FileRunStore(path)


class ArchiveRunStore(Store):
    """A `study export` archive: its runs, read from a checked, private unpacked copy
    (study.stores.archive); nothing is ever recorded to it."""

    kind = "archive"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._folder: Path | None = None

    def describe(self) -> str:
        return str(self.path)

    def read_runs(self, *, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
        from study.stores.archive import open_archive

        if self._folder is None:
            self._folder = open_archive(self.path)
        records = files.read_file_store(self._folder, keep=keep, skipped=skipped)
        for record in records:
            record.store = self.describe()  # the archive, not the temporary copy
        return records

    def __repr__(self) -> str:
        return f"ArchiveRunStore({self.describe()!r})"
