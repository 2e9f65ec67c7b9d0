"""Where runs are kept, and reading a run back from a store into one `RunRecord`.

The report and every other reader see RunRecords only, never a store's layout, so a new store is
one more reader here. The file store is Sacred's FileStorageObserver with two changes: JSON is
written atomically, and a run given `resume=<id>` continues in its own folder.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sacred.observers import FileStorageObserver

from study.atomic import remove_stale_temps, write_atomic
from study.errors import ConfigError, StoreError
from study.identity import run_order

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


_RUN_ID = re.compile(r"^[0-9]{1,18}$")


def check_run_id(value, where: str) -> str:
    """A run id given on the command line (`resume=`), as the id of a run in `where`: digits
    only (what Sacred names runs in both stores), so it never names a path out of the store."""
    text = (
        str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    )
    if not _RUN_ID.match(text):
        raise ConfigError(
            f"resume={value!r} is invalid; expected the id of a run in {where} "
            f"(a number, as `study runs` lists it)"
        )
    return text


class RunBeingCreated(StoreError):
    """A run folder Sacred is still filling (run.json written, config.json not yet)."""


# One line per run a reader could not read; `study runs` and `study report` print them.
Skipped = list[str]


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
    heartbeat: str | None = None  # Sacred's last heartbeat (ISO, UTC): see identity.run_alive
    meta: dict = field(default_factory=dict)  # Sacred's meta: comment (`-c`), study_uid, ...
    location: Path | None = None  # the run's folder, for a file store
    # Reads an artifact by name, for stores without a folder (MongoDB: GridFS).
    fetch: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)
    _evaluation: dict | None = field(default=None, init=False, repr=False, compare=False)

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
        """The per-sample evaluation (labels, topk, topk_prob, test_indices, confusion);
        StoreError naming the run when the file is unreadable or its arrays disagree."""
        from study.record import EVALUATION_ARTIFACT

        if EVALUATION_ARTIFACT not in self.artifacts:
            return None
        if self._evaluation is None:
            import io

            where = f"run {self.id} in {self.store}: {EVALUATION_ARTIFACT}"
            try:
                with np.load(io.BytesIO(self.artifact_bytes(EVALUATION_ARTIFACT))) as npz:
                    arrays = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError) as exc:  # np.load's errors on a bad file
                raise StoreError(f"{where} is unreadable ({exc})") from None
            problem = _evaluation_problem(arrays)
            if problem:
                raise StoreError(f"{where} is inconsistent: {problem}")
            self._evaluation = arrays
        return self._evaluation


EVALUATION_ARRAYS = ("labels", "topk", "topk_prob", "test_indices", "confusion")


def _evaluation_problem(a: dict[str, np.ndarray]) -> str | None:
    """What is wrong with an evaluation's arrays (None: they fit together as
    study.record.write_results writes them)."""
    missing = [k for k in EVALUATION_ARRAYS if k not in a]
    if missing:
        return f"no {', '.join(missing)} (expected {', '.join(EVALUATION_ARRAYS)})"
    labels, topk, prob, idx, conf = (a[k] for k in EVALUATION_ARRAYS)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        return f"labels are {labels.dtype} {labels.shape}; expected integers (N,)"
    n = len(labels)
    if topk.ndim != 2 or topk.shape[0] != n or not np.issubdtype(topk.dtype, np.integer):
        return f"topk is {topk.dtype} {topk.shape}; expected integers ({n}, K)"
    if prob.shape != topk.shape:
        return f"topk_prob is {prob.shape}; expected {topk.shape} like topk"
    if idx.shape != (n,):
        return f"test_indices is {idx.shape}; expected ({n},)"
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.sum() != n:
        return f"confusion is {conf.shape} summing to {conf.sum()}; expected (C, C) summing to {n}"
    classes = conf.shape[0]
    if n and (
        labels.min() < 0 or labels.max() >= classes or topk.min() < 0 or topk.max() >= classes
    ):
        return f"labels or topk outside 0..{classes - 1}"
    return None


def dedupe_metrics(raw: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Sacred's {name: {steps, values}} -> {name: [(step, value)]} sorted by step.

    A resumed run may log an epoch twice (killed after logging it, before its checkpoint);
    the later value is the one the final model descends from, so it wins. ValueError names a
    malformed series.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"metrics are a {type(raw).__name__}; expected an object of series")
    out = {}
    for name, series in raw.items():
        try:
            steps, values = series["steps"], series["values"]
            if not isinstance(steps, list) or not isinstance(values, list):
                raise TypeError("steps and values are not lists")
            by_step = dict(zip(steps, values, strict=False))
            out[name] = sorted((_step(s), _number(v)) for s, v in by_step.items())
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"metric {name!r} is malformed ({exc}); expected steps: [int], values: [number]"
            ) from None
    return out


def _step(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise TypeError(f"step {value!r} is not an integer")
    return int(value)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"value {value!r} is not a number")
    return float(value)


def _object(path: Path) -> dict:
    value = read_json(path)
    if not isinstance(value, dict):
        raise StoreError(f"{path}: holds a JSON {type(value).__name__}; expected an object")
    return value


def _typed(run: dict, key: str, types, default, path: Path):
    value = run.get(key, default)
    if value is not None and not isinstance(value, types):
        raise StoreError(f"{path}: {key} is {value!r}; expected {types.__name__}")
    return value if value is not None else default


def read_file_run(folder: Path, deep: bool = True) -> RunRecord:
    """One file-store run; `deep=False` reads run.json and config.json only (info and
    metrics: `read_details`). StoreError names the file at fault; RunBeingCreated when Sacred
    has not yet written the run's config."""
    folder = Path(folder)
    path = folder / "run.json"
    if not path.exists():
        raise RunBeingCreated(f"{folder}: no run.json yet")
    run = _object(path)
    status = _typed(run, "status", str, "UNKNOWN", path)
    if not (folder / "config.json").exists() and status in ("RUNNING", "QUEUED"):
        raise RunBeingCreated(f"{folder}: no config.json yet")
    experiment = _typed(run, "experiment", dict, {}, path)
    artifacts = _typed(run, "artifacts", list, [], path)
    if not all(isinstance(a, str) for a in artifacts):
        raise StoreError(f"{path}: artifacts are {artifacts!r}; expected a list of names")
    record = RunRecord(
        id=folder.name,
        store=str(folder.parent),
        status=status,
        experiment=str(experiment.get("name") or ""),
        command=_typed(run, "command", str, "", path),
        config=_object(folder / "config.json"),
        info={},
        result=run.get("result"),
        metrics={},
        host=_typed(run, "host", dict, {}, path),
        start_time=_typed(run, "start_time", str, None, path),
        stop_time=_typed(run, "stop_time", str, None, path),
        artifacts=list(artifacts),
        heartbeat=_typed(run, "heartbeat", str, None, path),
        meta=dict(_typed(run, "meta", dict, {}, path)),
        location=folder,
    )
    return read_details(record) if deep else record


def read_details(record: RunRecord) -> RunRecord:
    """A file-store record's info and metrics, read in."""
    folder = record.location
    info, metrics = folder / "info.json", folder / "metrics.json"
    record.info = _object(info) if info.exists() else {}
    try:
        record.metrics = dedupe_metrics(_object(metrics)) if metrics.exists() else {}
    except ValueError as exc:
        raise StoreError(f"{metrics}: {exc}") from None
    return record


def read_file_store(root: Path, keep=None, skipped: Skipped | None = None) -> list[RunRecord]:
    """Every run in a file store, in id order. A run still being created is left out; a
    malformed one is left out with one line in `skipped` (printed when no list is given).
    `keep(record)`, given run.json and config.json only, leaves out runs before the rest of
    them is read."""
    root = Path(root)
    if not root.is_dir():
        raise StoreError(f"{root}: no such run store (a folder written by `study run`)")
    folders = [p for p in root.iterdir() if p.is_dir() and (p / "run.json").exists()]
    folders.sort(key=lambda p: run_order(p.name))
    notes: Skipped = [] if skipped is None else skipped
    records = []
    for folder in folders:
        try:
            record = read_file_run(folder, deep=False)
            if keep is not None and not keep(record):
                continue
            records.append(read_details(record))
        except RunBeingCreated:
            continue
        except StoreError as exc:
            notes.append(f"skipped a malformed run: {exc}")
    if skipped is None:
        print_skipped(notes)
    return records


def print_skipped(notes: Skipped) -> None:
    for note in notes:
        print(f"study: {note}", file=sys.stderr)


def read_runs(
    folder: str | Path | None = None,
    mongo_url: str | None = None,
    db: str | None = None,
    *,
    keep=None,
    skipped: Skipped | None = None,
) -> tuple[str, list[RunRecord]]:
    """(where, runs) from the store a command names: a folder, a MongoDB URL, or by default
    $STUDY_MONGO_URL when set, else ./runs. `where` never shows a password. Runs that cannot
    be read are left out with a line in `skipped` (printed when no list is given)."""
    from study import mongo

    if folder and mongo_url:
        raise StoreError("give --runs DIR or --mongo URL, not both")
    target = mongo.parse_target(mongo_url, db) if mongo_url else None
    if target is None and folder is None:
        target = mongo.target_from_env(db)
    if target is None and db is not None:
        raise StoreError("--db needs --mongo URL (or $STUDY_MONGO_URL)")
    if target is not None:
        return target.masked, mongo.read_mongo_runs(target, skipped=skipped)
    where = str(folder or DEFAULT_FILE_STORE)
    from study.archive import is_archive, open_archive

    if is_archive(where):  # a `study export` file: read from a checked, private unpacked copy
        records = read_file_store(open_archive(where), keep=keep, skipped=skipped)
        for record in records:
            record.store = where
        return where, records
    return where, read_file_store(Path(where), keep=keep, skipped=skipped)
