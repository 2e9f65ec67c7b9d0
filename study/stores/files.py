"""The file store: recording (Sacred's FileStorageObserver with two changes: JSON is written
atomically, and a run given `resume=<id>` continues in its own folder) and reading a run folder
back, as a `RunRecord` or, for copying it elsewhere (`study sync`), as the files Sacred wrote.
Only this module knows the folder's layout (run.json, config.json, info.json, metrics.json,
cout.txt, artifacts)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from sacred.observers import FileStorageObserver

from study.atomic import remove_stale_temps, write_atomic
from study.errors import StoreError
from study.identity import run_order
from study.stores import schema
from study.stores.records import (
    RunBeingCreated,
    RunRecord,
    Skipped,
    dedupe_metrics,
    inside,
    keep_names,
    print_skipped,
)

DEFAULT_FILE_STORE = "runs"


class FileStore(FileStorageObserver):
    """Sacred's file store, with atomic JSON writes and resumable runs."""

    # Sacred's heartbeat thread and the main thread both save run.json: one at a time, so a
    # snapshot is never flattened while the other thread changes it, nor written out of order.
    _save_lock = threading.Lock()

    def save_json(self, obj, filename):
        # A run killed mid-write must not leave a truncated run.json or metrics.json.
        from sacred.serializer import flatten

        with self._save_lock:
            text = json.dumps(flatten(obj), sort_keys=True, indent=2)
            write_atomic(os.path.join(self.dir, filename), text)

    resume_id: str | None = None

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        remove_stale_temps(self.basedir)  # what killed writers left in this store
        resume = config.get("resume") if isinstance(config, dict) else None
        if resume is None:
            return super().started_event(
                ex_info, command, host_info, start_time, config, meta_info, _id
            )
        # Continue the interrupted run in its own folder: same id, metrics appended.
        previous = read_json(Path(self.basedir) / str(resume) / "run.json")
        self.resume_id = str(resume)
        run_id = super().started_event(
            ex_info, command, host_info, start_time, config, meta_info, self.resume_id
        )
        self.run_entry["start_time"] = previous.get("start_time", self.run_entry["start_time"])
        self.run_entry["artifacts"] = previous.get("artifacts", [])
        self.run_entry["resumed"] = previous.get("resumed", []) + [start_time.isoformat()]
        self.save_json(self.run_entry, "run.json")
        return run_id

    def _make_run_dir(self, _id):
        if self.resume_id is None:
            return super()._make_run_dir(_id)
        self.dir = os.path.join(self.basedir, self.resume_id)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self.save_file(filename, name)
        if name not in self.run_entry["artifacts"]:  # a resumed run rewrites its artifacts
            self.run_entry["artifacts"].append(name)
        self.save_json(self.run_entry, "run.json")


def read_json(path: Path) -> dict:
    """A run's JSON file, bounded (schema.loads); StoreError names the file."""
    return schema.read_json_file(path)


def _object(path: Path) -> dict:
    path = Path(path)
    if path.is_symlink() and inside(path.parent, path.name) is None:  # a name is not a path
        raise StoreError(f"{path}: a link leading outside the run's folder; not read")
    value = read_json(path)
    if not isinstance(value, dict):
        raise StoreError(f"{path}: holds a JSON {type(value).__name__}; expected an object")
    return value


def read_file_run(folder: Path, deep: bool = True) -> RunRecord:
    """One file-store run; `deep=False` reads run.json and config.json only (info and
    metrics: `read_details`). StoreError names the file and field at fault; RunBeingCreated
    when Sacred has not yet written the run's config."""
    folder = Path(folder)
    path = folder / "run.json"
    if not path.exists():
        raise RunBeingCreated(f"{folder}: no run.json yet")
    record = run_state(folder, _object(path))
    if not (folder / "config.json").exists() and record.status in ("RUNNING", "QUEUED"):
        raise RunBeingCreated(f"{folder}: no config.json yet")
    config = folder / "config.json"
    record.config = schema.parse(schema.CONFIG, _object(config), str(config))
    return read_details(record) if deep else record


def run_state(folder: Path, run: dict) -> RunRecord:
    """The run folder's record from its run.json (`run`) alone, config left empty: its status,
    times, heartbeat and meta, typed, for deciding about a run before reading the rest.
    StoreError names run.json and the field when a value does not parse."""
    folder = Path(folder)
    run = schema.parse(schema.RUN, run, str(folder / "run.json"))
    return RunRecord(
        id=folder.name,
        store=str(folder.parent),
        status=run.get("status") or "UNKNOWN",
        experiment=(run.get("experiment") or {}).get("name") or "",
        command=run.get("command") or "",
        config={},
        info={},
        result=run.get("result"),
        metrics={},
        host=run.get("host") or {},
        start_time=run.get("start_time"),
        stop_time=run.get("stop_time"),
        artifacts=list(run.get("artifacts") or []),
        heartbeat=run.get("heartbeat"),
        meta=dict(run.get("meta") or {}),
        resumed=[t for t in run.get("resumed") or [] if t is not None],
        location=folder,
    )


def read_details(record: RunRecord) -> RunRecord:
    """A file-store record's info and metrics, read in and typed; the names it gives checked
    (records.keep_names)."""
    folder = record.location
    info, metrics = folder / "info.json", folder / "metrics.json"
    record.info = schema.parse(schema.INFO, _object(info), str(info)) if info.exists() else {}
    try:
        record.metrics = dedupe_metrics(_object(metrics)) if metrics.exists() else {}
    except ValueError as exc:
        raise StoreError(f"{metrics}: {exc}") from None
    return keep_names(record)


def read_file_store(root: Path, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
    """Every run in a file store, in id order. A run still being created is left out; a
    malformed one is left out with one line in `skipped` (printed when no list is given).
    `keep(record)`, given run.json and config.json only, leaves out runs before the rest of
    them is read."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: no such run store (a folder written by `study run`)")
    folders = run_folders(root)
    notes: Skipped = [] if skipped is None else skipped
    records = []
    for folder in folders:
        try:
            record = read_file_run(folder, deep=False)
            if keep is not None and not keep(record):
                continue
            records.append(read_details(record))
            notes.extend(record.notes)
        except RunBeingCreated:
            continue
        except StoreError as exc:
            notes.append(f"skipped a malformed run: {exc}")
    if skipped is None:
        print_skipped(notes)
    return records


def run_folders(root: Path) -> list[Path]:
    """The run folders of a file store (those with a run.json), in run order."""
    folders = [
        p
        for p in Path(root).iterdir()
        if p.is_dir() and not p.is_symlink() and (p / "run.json").exists()
    ]
    return sorted(folders, key=lambda p: run_order(p.name))


def read_run_json(folder: Path) -> dict:
    """A run's run.json as Sacred wrote it (for copying the run to another store)."""
    return _object(Path(folder) / "run.json")


def read_run_files(folder: Path, run: dict | None = None) -> dict:
    """Everything a file-store run holds, as Sacred wrote it, for copying it to another store
    (`study sync`): {run, config, info, metrics, captured_out}, after the typed reading has
    passed it (StoreError otherwise), with `artifacts`, the names that may be read, and
    `notes`, a line per name left out. `run` when already read."""
    folder = Path(folder)
    record = read_file_run(folder)  # a malformed run is refused here, naming the field

    def optional(name, default):
        return _object(folder / name) if (folder / name).exists() else default

    cout = inside(folder, "cout.txt")  # None: a link leading out of the folder, not read
    return {
        "run": run if run is not None else read_run_json(folder),
        "config": _object(folder / "config.json"),
        "info": optional("info.json", {}),
        "metrics": optional("metrics.json", {}),
        "captured_out": cout.read_text(errors="replace") if cout and cout.is_file() else "",
        "artifacts": record.artifacts,
        "notes": record.notes,
    }


def artifact_path(folder: Path, name: str) -> Path | None:
    """Where a file-store run keeps its artifact `name`; None when the name is not a plain
    name inside the run's folder (a record's name is not a path)."""
    return inside(folder, name)


def source_path(root: Path, stored) -> Path | None:
    """Where a file store keeps a source file Sacred recorded (`_sources/...`); None when
    `stored` leads anywhere else."""
    if not isinstance(stored, str) or not stored.startswith("_sources/"):
        return None
    return inside(Path(root) / "_sources", stored[len("_sources/") :])


def resumable_config(root: Path, run_id: str) -> dict:
    """The stored config of an interrupted run in this file store, to run it again with
    `resume=<id>`; StoreError when there is no such run or it already COMPLETED."""
    root = Path(root)
    folder = root / str(run_id)
    if not (folder / "run.json").exists():
        raise StoreError(f"resume={run_id}: no run {run_id} in {root}; see the folders there")
    record = read_file_run(folder, deep=False)
    if record.status == "COMPLETED":
        raise StoreError(f"resume={run_id}: run {run_id} in {root} already COMPLETED")
    config = dict(record.config)
    config.pop("resume", None)
    return config


def mark_dead(root: Path, record: RunRecord, why: str) -> bool:
    """Record a dead run (RUNNING, its heartbeat stale) as INTERRUPTED, with `why`: only if its
    run.json still holds that heartbeat (a run that came back to life is left alone)."""
    path = Path(root) / record.id / "run.json"
    try:
        raw = _object(path)
    except StoreError:
        return False
    if raw.get("status") != "RUNNING" or raw.get("heartbeat") != record.heartbeat:
        return False
    from study.identity import utcnow

    raw.update(status="INTERRUPTED", stop_time=utcnow().isoformat(), fail_trace=[why])
    write_atomic(path, json.dumps(raw, indent=2, sort_keys=True))
    return True


def stored_uid(root: Path, run_id: str | None) -> str | None:
    """The study_uid of run `run_id` in this file store (a resumed run keeps its name)."""
    run_json = Path(root) / str(run_id) / "run.json" if run_id is not None else None
    if run_json is None or not run_json.exists():
        return None
    return run_state(run_json.parent, _object(run_json)).uid
