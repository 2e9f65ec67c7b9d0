"""The file copy of a MongoDB run (`mongo-shadow/<db>/<id>/`, a file store), written beside
every MongoDB run so that `study sync` can complete the MongoDB run when the server was lost."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sacred.observers import RunObserver

from study.errors import StoreError
from study.stores.files import FileStore
from study.stores.mongo import DEFAULT_SHADOW, SHADOW_ENV, Target


def shadow_dir(target: Target) -> Path | None:
    """Where the file copies of `target`'s runs go: $STUDY_MONGO_SHADOW (default mongo-shadow)
    / the database; None when the variable says off."""
    value = os.environ.get(SHADOW_ENV, "").strip()
    if value.lower() in ("0", "off", "no", "false", "none"):
        return None
    return Path(value or DEFAULT_SHADOW) / target.db


class _ShadowFileStore(FileStore):
    """The copy's folder is named after the MongoDB id; content types are kept for GridFS."""

    def _make_run_dir(self, _id):
        if self.resume_id is not None or _id is None:
            return super()._make_run_dir(_id)
        os.makedirs(self.basedir, exist_ok=True)
        name, n = str(_id), 1
        while True:  # a folder left by an earlier database of the same name: a new name
            try:
                self.dir = os.path.join(self.basedir, name)
                os.mkdir(self.dir)
                return
            except FileExistsError:
                n += 1
                name = f"{_id}.{n}"

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        if content_type:
            self.run_entry.setdefault("content_types", {})[name] = content_type
        super().artifact_event(name, filename, metadata, content_type)


class ShadowStore(RunObserver):
    """A file-store copy of a MongoDB run (run.json, config, info, metrics, artifacts), from
    which `study sync` completes the MongoDB run when the server was lost. Not a
    FileStorageObserver, so the checkpoint stays in ./checkpoints/<id>; a failure here never
    stops the run."""

    priority = 10  # after the MongoObserver, which names the run

    def __init__(self, folder: Path, target: Target):
        self.store = _ShadowFileStore(str(folder))
        self.target = target
        self.active = False

    @property
    def dir(self) -> str | None:
        return self.store.dir if self.active else None

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        resume = config.get("resume") if isinstance(config, dict) else None
        copy = Path(self.store.basedir) / str(resume) / "run.json"
        if resume is not None and not copy.exists():
            return _id  # no copy of the interrupted run: MongoDB only, as before
        try:
            self.store.started_event(
                ex_info, command, host_info, start_time, config, meta_info, _id
            )
            self.store.run_entry["mongo"] = {"url": self.target.masked, "id": _id}
            self.store.save_json(self.store.run_entry, "run.json")
            self.active = True
        except (OSError, StoreError) as exc:
            print(f"study: no file copy of this run ({exc})", file=sys.stderr, flush=True)
        return _id

    def _forward(self, method, *args, **kwargs):
        if self.active:
            getattr(self.store, method)(*args, **kwargs)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._forward("heartbeat_event", info, captured_out, beat_time, result)

    def completed_event(self, stop_time, result):
        self._forward("completed_event", stop_time, result)

    def interrupted_event(self, interrupt_time, status):
        self._forward("interrupted_event", interrupt_time, status)

    def failed_event(self, fail_time, fail_trace):
        self._forward("failed_event", fail_time, fail_trace)

    def resource_event(self, filename):
        self._forward("resource_event", filename)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._forward("artifact_event", name, filename, metadata, content_type)

    def log_metrics(self, metrics_by_name, info):
        self._forward("log_metrics", metrics_by_name, info)


def shadow_for(target: Target) -> ShadowStore | None:
    folder = shadow_dir(target)
    return ShadowStore(folder, target) if folder is not None else None
