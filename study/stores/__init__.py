"""Where runs are kept: the one home of study's run stores.

- `choice`: `choose_store`, which picks the store a command names (command line, then
  $STUDY_MONGO_URL, then ./runs) and returns a `Store` (`describe`, `read_runs`, `claims`,
  `observers_for_run`); `run`, `sweep`, `sync`, `runs` and `report` all go through it.
- `files`: the file store (Sacred's FileStorageObserver, atomic and resumable) and its reader.
- `mongo`: MongoDB (target, credentials masked, fast connect, observer, reader).
- `shadow`: the file copy of every MongoDB run, from which `study sync` completes it.
- `records`: `RunRecord`, the only view of a run outside this package; the one check of the
  names a record gives (artifacts, gallery images) and of its checkpoint.
- `schema`: the typed, bounded reading of every record (file, archive, MongoDB document):
  nothing a store holds reaches a RunRecord without passing it.

choice imports files, mongo and shadow; shadow imports files and mongo; files and mongo import
records and schema; records imports schema; schema imports none of them: no import cycle
(tests/test_stores.py checks).
"""

from study.stores.choice import FileRunStore, MongoRunStore, Store, choose_store
from study.stores.files import (
    DEFAULT_FILE_STORE,
    FileStore,
    read_details,
    read_file_run,
    read_file_store,
)
from study.stores.records import (
    PROCESS_KEY,
    UID_KEY,
    RunBeingCreated,
    RunRecord,
    Skipped,
    check_run_id,
    dedupe_metrics,
    print_skipped,
)

__all__ = [
    "DEFAULT_FILE_STORE",
    "PROCESS_KEY",
    "UID_KEY",
    "FileRunStore",
    "FileStore",
    "MongoRunStore",
    "RunBeingCreated",
    "RunRecord",
    "Skipped",
    "Store",
    "check_run_id",
    "choose_store",
    "dedupe_metrics",
    "print_skipped",
    "read_details",
    "read_file_run",
    "read_file_store",
    "read_runs",
]


def read_runs(
    folder: str | None = None,
    mongo_url: str | None = None,
    db: str | None = None,
    *,
    keep=None,
    skipped: Skipped | None = None,
) -> tuple[str, list[RunRecord]]:
    """(where, runs) from the store `--runs DIR` / `--mongo URL --db NAME` name (see
    choose_store). `where` never shows a password. Runs that cannot be read are left out with
    a line in `skipped` (printed when no list is given)."""
    store = choose_store(folder, mongo_url, db)
    return store.describe(), store.read_runs(keep=keep, skipped=skipped)
