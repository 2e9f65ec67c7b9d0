"""Where runs are kept, and reading a run back from a store into one `RunRecord`.

The report and every other reader see RunRecords only, never a store's layout, so a new store is
one more reader here. The file store is Sacred's FileStorageObserver with two changes: JSON is
written atomically, and a run given `resume=<id>` continues in its own folder.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sacred.observers import FileStorageObserver

from study.atomic import remove_stale_temps, write_atomic
from study.errors import StoreError

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
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no such run file") from None
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable run file ({exc})") from None


@dataclass
class RunRecord:
    """One run, as any store holds it."""

    id: str
    store: str  # where it was read from: a folder or a MongoDB URL (without password)
    status: str
    experiment: str
    command: str
    config: dict
    info: dict
    result: dict | None
    metrics: dict[str, list[tuple[int, float]]]  # name -> [(epoch, value)], one per epoch
    host: dict
    start_time: str | None
    stop_time: str | None
    artifacts: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # Sacred's meta: comment (`-c`), study_uid, ...
    location: Path | None = None  # the run's folder, for a file store
    # Reads an artifact by name, for stores without a folder (MongoDB: GridFS).
    fetch: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def model(self) -> str | None:
        return self.config.get("model")

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")

    @property
    def comment(self) -> str | None:
        return self.meta.get("comment")

    def metric(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])

    def artifact_bytes(self, name: str) -> bytes:
        if name in self.artifacts and self.fetch is not None:
            return self.fetch(name)
        if name not in self.artifacts or self.location is None:
            raise StoreError(f"run {self.id} in {self.store} has no artifact {name!r}")
        return (self.location / name).read_bytes()

    def evaluation(self) -> dict[str, np.ndarray] | None:
        """The per-sample evaluation (labels, topk, topk_prob, test_indices, confusion)."""
        from study.record import EVALUATION_ARTIFACT

        if EVALUATION_ARTIFACT not in self.artifacts:
            return None
        import io

        with np.load(io.BytesIO(self.artifact_bytes(EVALUATION_ARTIFACT))) as npz:
            return {k: npz[k] for k in npz.files}


def dedupe_metrics(raw: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Sacred's {name: {steps, values}} -> {name: [(step, value)]} sorted by step.

    A resumed run may log an epoch twice (killed after logging it, before its checkpoint);
    the later value is the one the final model descends from, so it wins.
    """
    out = {}
    for name, series in raw.items():
        by_step = dict(zip(series["steps"], series["values"], strict=False))
        out[name] = sorted((int(s), float(v)) for s, v in by_step.items())
    return out


def read_file_run(folder: Path) -> RunRecord:
    folder = Path(folder)
    run = read_json(folder / "run.json")
    config = read_json(folder / "config.json")
    info = read_json(folder / "info.json") if (folder / "info.json").exists() else {}
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").exists() else {}
    return RunRecord(
        id=folder.name,
        store=str(folder.parent),
        status=run.get("status", "UNKNOWN"),
        experiment=run.get("experiment", {}).get("name", ""),
        command=run.get("command", ""),
        config=config,
        info=info,
        result=run.get("result"),
        metrics=dedupe_metrics(metrics),
        host=run.get("host", {}),
        start_time=run.get("start_time"),
        stop_time=run.get("stop_time"),
        artifacts=list(run.get("artifacts", [])),
        meta=dict(run.get("meta") or {}),
        location=folder,
    )


def read_file_store(root: Path) -> list[RunRecord]:
    """Every run in a file store, in id order."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: no such run store (a folder written by `study run`)")
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "run.json").exists()]
    folders.sort(
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )
    return [read_file_run(p) for p in folders]


def read_runs(
    folder: str | Path | None = None, mongo_url: str | None = None, db: str | None = None
) -> tuple[str, list[RunRecord]]:
    """(where, runs) from the store a command names: a folder, a MongoDB URL, or by default
    $STUDY_MONGO_URL when set, else ./runs. `where` never shows a password."""
    from study import mongo

    if folder and mongo_url:
        raise StoreError("give --runs DIR or --mongo URL, not both")
    target = mongo.parse_target(mongo_url, db) if mongo_url else None
    if target is None and folder is None:
        target = mongo.target_from_env(db)
    if target is None and db is not None:
        raise StoreError("--db needs --mongo URL (or $STUDY_MONGO_URL)")
    if target is not None:
        return target.masked, mongo.read_mongo_runs(target)
    where = str(folder or DEFAULT_FILE_STORE)
    return where, read_file_store(Path(where))
