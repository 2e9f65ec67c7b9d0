"""`study sync`: file-store runs into MongoDB, exactly once.

What it uploads: the file copies of MongoDB runs (`mongo-shadow/<db>/`, written beside every
MongoDB run, see `study.stores.shadow`), plain file-store runs (`./runs` or `--runs DIR`), and
Sacred's pickled leftovers (`<store>/mongo-unsaved/*.pickle`, what the MongoObserver could
not save at the end of a run).

A run is matched by `meta.study_uid` (written into every store at the start of a run; derived
from host, start time and experiment for runs older than that). A run missing from MongoDB is
inserted in Sacred's MongoObserver schema (runs document, one `metrics` document per series
referenced from `info.metrics`, GridFS artifacts `artifact://runs/<id>/<name>` with content
types, sources in GridFS); a partial one (the server died mid-run) is completed from the copy:
series replaced by the copy's, missing artifacts uploaded, status, result, info and times set.
Nothing is written when MongoDB already holds the same run, so a second sync changes nothing;
a copy older than its MongoDB run (resumed elsewhere since) is left alone, with a note; a run
still running (heartbeat within identity.STALE_S) is skipped, with a note. Each run is
claimed (study.claims, in the database's `claims` collection) while it is uploaded, so two
syncs at once insert it once: the second skips it, or finds it already there.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import pickle
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

from study import identity
from study.claims import MongoClaims
from study.errors import StoreError
from study.stores import DEFAULT_FILE_STORE, choose_store, files, mongo, shadow

SYNCED_LEFTOVERS = "synced"  # leftovers move here once their run is in MongoDB
_UID_NAMESPACE = uuid.UUID("3f8c1f0e-5d2a-4c3b-9a57-6b1d2e0c7a11")
_FIELDS = ("status", "result", "stop_time", "heartbeat", "captured_out", "fail_trace", "resumed")
_CONTENT_TYPES = {".npz": "application/x-npz", ".png": "image/png", ".json": "application/json"}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="study sync", description="upload file-store runs into MongoDB, exactly once"
    )
    parser.add_argument(
        "--runs",
        metavar="DIR",
        action="append",
        help=f"a file store (repeatable; default: {mongo.DEFAULT_SHADOW}/<db> and ./runs)",
    )
    parser.add_argument("--mongo", metavar="URL", help="a MongoDB URL (default $STUDY_MONGO_URL)")
    parser.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    args = parser.parse_args(argv)
    # The store synced to; --runs names the file stores synced from, not it.
    store = choose_store(None, args.mongo, args.db, default=None)
    if store is None or store.kind != "mongo":
        raise StoreError(f"study sync needs --mongo URL (or ${mongo.URL_ENV})")
    target = store.target
    stores = [Path(d) for d in args.runs] if args.runs else default_stores(target)
    client = store.connect()
    try:
        report = sync(target, client, stores)
    finally:
        store.close()
    for line in report.lines:
        print(line)
    print(report.summary(target))
    return 1 if report.errors else 0


def default_stores(target: mongo.Target) -> list[Path]:
    copies = shadow.shadow_dir(target)
    return [p for p in (copies, Path(DEFAULT_FILE_STORE)) if p is not None]


class Report:
    def __init__(self):
        self.lines: list[str] = []
        self.counts: dict[str, int] = {}
        self.errors = 0

    def add(self, what: str, kind: str, text: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        self.errors += kind == "error"
        self.lines.append(f"{what}: {text}")

    def summary(self, target: mongo.Target) -> str:
        order = ("inserted", "completed", "up to date", "skipped", "error")
        parts = [f"{self.counts[k]} {k}" for k in order if self.counts.get(k)]
        return f"study sync to {target.masked}: {', '.join(parts) or 'nothing to sync'}"


def sync(target: mongo.Target, client, stores: list[Path]) -> Report:
    """Every run in `stores` (and their leftovers) into target's database; what was done."""
    import gridfs

    db = client[target.db]
    fs = gridfs.GridFS(db)
    claims = MongoClaims(db.claims)
    report = Report()
    in_mongo: set[str] = set()  # uids whose MongoDB run matches a file copy now
    seen: set[Path] = set()
    for store in stores:
        if store.resolve() in seen or not store.is_dir():
            continue
        seen.add(store.resolve())
        for folder in files.run_folders(store):
            notes: list[str] = []
            try:
                kind, text, uid = sync_run(db, fs, folder, target, claims, notes)
            except (StoreError, OSError, ValueError) as exc:
                report.add(str(folder), "error", str(exc))
                continue
            for note in notes:  # names the record gives that are not plain names: not uploaded
                report.lines.append(f"{folder}: {note}")
            report.add(str(folder), kind, text)
            if kind in ("inserted", "completed", "up to date"):
                in_mongo.add(uid)
    leftover_dirs = [s / "mongo-unsaved" for s in stores] + [Path(mongo.FAILURE_DIR)]
    done: set[Path] = set()
    for folder in leftover_dirs:
        if folder.resolve() in done or not folder.is_dir():
            continue
        done.add(folder.resolve())
        for path in sorted(folder.glob("*.pickle")):
            try:
                kind, text = sync_leftover(db, path, in_mongo, claims)
            except (StoreError, OSError, ValueError) as exc:
                report.add(str(path), "error", str(exc))
                continue
            report.add(str(path), kind, text)
    return report


# -- one file-store run ---------------------------------------------------------------------


def run_uid(run: dict) -> str:
    """The run's study_uid, or one derived from what never changes in its run.json."""
    uid = (run.get("meta") or {}).get(mongo.UID_KEY)
    if uid:
        return uid
    key = "|".join(
        str(x)
        for x in (
            (run.get("host") or {}).get("hostname"),
            run.get("start_time"),
            (run.get("experiment") or {}).get("name"),
            run.get("command"),
        )
    )
    return uuid.uuid5(_UID_NAMESPACE, key).hex


def _claim_key(uid: str) -> str:
    return "sync-" + hashlib.sha256(uid.encode()).hexdigest()[:40]


BUSY = "another `study sync` is uploading it now; sync again later"


def sync_run(
    db, fs, folder: Path, target: mongo.Target, claims, notes=None
) -> tuple[str, str, str]:
    """(kind, what was done, uid) for one file-store run folder; `notes` receives a line per
    name of the record left out."""
    run = files.read_run_json(folder)  # what is uploaded, as Sacred wrote it
    state = files.run_state(folder, run)  # what decides, typed (StoreError: malformed)
    uid = run_uid(run)
    if state.alive:
        age = identity.age_s(state.heartbeat or state.start_time)
        return "skipped", f"still running (heartbeat {age:.0f} s ago); sync it later", uid
    claim = claims.acquire(_claim_key(uid))
    if claim is None:
        return "skipped", BUSY, uid
    with claim:
        return _sync_run(db, fs, folder, target, run, uid, notes)


def _sync_run(db, fs, folder: Path, target, run: dict, uid: str, notes) -> tuple[str, str, str]:
    local = files.read_run_files(folder, run)
    if notes is not None:
        notes.extend(local["notes"])
    doc = db.runs.find_one({f"meta.{mongo.UID_KEY}": uid})
    if doc is None:
        doc = _insert(db, fs, folder, local, uid, target)
        changes = _reconcile(db, fs, doc, local, folder)
        what = f"inserted as MongoDB run {doc['_id']}"
        return "inserted", f"{what} ({', '.join(changes)})" if changes else what, uid
    if _last(doc) > _last(run):
        text = f"MongoDB run {doc['_id']} is further on than this copy; left as is"
        return "skipped", text, uid
    changes = _reconcile(db, fs, doc, local, folder)
    if not changes:
        return "up to date", f"MongoDB run {doc['_id']} already holds it", uid
    return "completed", f"completed MongoDB run {doc['_id']} ({', '.join(changes)})", uid


def _insert(db, fs, folder: Path, local: dict, uid: str, target: mongo.Target) -> dict:
    import pymongo.errors
    from sacred.observers import MongoObserver

    run = local["run"]
    experiment = dict(run.get("experiment") or {})
    experiment["sources"] = _upload_sources(fs, folder.parent, experiment)
    doc = {
        "experiment": experiment,
        "format": MongoObserver.VERSION,
        "command": run.get("command", ""),
        "host": run.get("host") or {},
        "start_time": _time(run.get("start_time")),
        "config": local["config"],
        "meta": {**(run.get("meta") or {}), mongo.UID_KEY: uid},
        "status": run.get("status", "UNKNOWN"),
        "resources": [],
        "artifacts": [],
        "captured_out": "",
        "info": {},
        "heartbeat": None,
    }
    recorded = run.get("mongo") or {}  # a copy of a MongoDB run: keep its id when free
    wanted = recorded.get("id") if recorded.get("url") == target.masked else None
    while True:
        if wanted is not None and db.runs.find_one({"_id": wanted}, {"_id": 1}) is None:
            doc["_id"] = wanted
        else:
            last = db.runs.find_one({}, {"_id": 1}, sort=[("_id", -1)])
            doc["_id"] = last["_id"] + 1 if last and isinstance(last["_id"], int) else 1
        try:
            db.runs.insert_one(doc)
            return doc
        except pymongo.errors.DuplicateKeyError:  # a run started meanwhile took the id
            wanted = None


def _upload_sources(fs, store: Path, experiment: dict) -> list:
    """The file store's `_sources/` copies into GridFS, as MongoObserver.save_sources does."""
    out = []
    base_dir = experiment.get("base_dir", "")
    for name, stored in experiment.get("sources") or []:
        path = files.source_path(store, stored)  # None: it names a file outside _sources/
        if path is None or not path.is_file():
            continue
        data = path.read_bytes()
        md5 = hashlib.md5(data).hexdigest()
        filename = os.path.join(base_dir, name)
        found = fs.find_one({"filename": filename, "md5": md5})
        out.append([name, found._id if found else fs.put(data, filename=filename, md5=md5)])
    return out


def _reconcile(db, fs, doc: dict, local: dict, folder: Path) -> list[str]:
    """Make MongoDB's run `doc` hold what the copy holds; the changes made, in words."""
    run_id, changes = doc["_id"], []
    refs = {}
    added = fixed = 0
    for name, series in local["metrics"].items():
        want = {
            "steps": list(series.get("steps", [])),
            "values": list(series.get("values", [])),
            "timestamps": [_time(t) for t in series.get("timestamps", [])],
        }
        have = db.metrics.find_one({"run_id": run_id, "name": name})
        if have is None:
            refs[name] = str(
                db.metrics.insert_one({"run_id": run_id, "name": name, **want}).inserted_id
            )
            added += 1
            continue
        refs[name] = str(have["_id"])
        if not _same({k: have.get(k) for k in want}, want):
            db.metrics.update_one({"_id": have["_id"]}, {"$set": want})
            fixed += 1
    for m in db.metrics.find({"run_id": run_id}, {"name": 1}):
        refs.setdefault(m["name"], str(m["_id"]))
    changes += [f"{added} metric series added"] if added else []
    changes += [f"{fixed} metric series completed"] if fixed else []

    artifacts, uploaded = _artifacts(fs, doc, local["run"], folder, local["artifacts"])
    changes += [f"{uploaded} artifact(s) uploaded"] if uploaded else []

    run = local["run"]
    want = {
        "info": {**local["info"], "metrics": [{"name": n, "id": i} for n, i in refs.items()]},
        "artifacts": artifacts,
        "captured_out": local["captured_out"],
        "status": run.get("status", "UNKNOWN"),
        "result": run.get("result"),
        "stop_time": _time(run.get("stop_time")),
        "heartbeat": _time(run.get("heartbeat")),
    }
    for key in ("fail_trace", "resumed"):
        if key in run:
            want[key] = run[key] if key != "resumed" else [_time(t) for t in run[key]]
    differ = {k: v for k, v in want.items() if not _same(doc.get(k), v)}
    if differ:
        db.runs.update_one({"_id": run_id}, {"$set": differ})
        shown = [k for k in _FIELDS if k in differ] + [k for k in ("info",) if k in differ]
        changes += [f"set {', '.join(shown)}"] if shown else []
    return changes


def _artifacts(fs, doc: dict, run: dict, folder: Path, artifacts) -> tuple[list[dict], int]:
    """The run's artifact list for MongoDB, uploading what GridFS lacks; (list, uploads)."""
    have = {a["name"]: a["file_id"] for a in doc.get("artifacts") or []}
    types = run.get("content_types") or {}
    out, uploaded = [], 0
    names = list(dict.fromkeys(artifacts))
    for name in names:
        path = files.artifact_path(folder, name)
        file_id = have.get(name)
        if file_id is not None and fs.exists(file_id):
            out.append({"name": name, "file_id": file_id})
            continue
        if path is None or not path.is_file():
            continue
        data = path.read_bytes()
        filename = f"artifact://runs/{doc['_id']}/{name}"
        # An upload that made it into GridFS before the server went: no second copy.
        found = [
            f
            for f in fs.find({"filename": filename, "length": len(data)})
            if hashlib.md5(f.read()).digest() == hashlib.md5(data).digest()
        ]
        if found:
            file_id = found[0]._id
        else:
            content_type = types.get(name) or _CONTENT_TYPES.get(Path(name).suffix.lower())
            file_id = fs.put(data, filename=filename, metadata=None, content_type=content_type)
            uploaded += 1
        out.append({"name": name, "file_id": file_id})
    out += [{"name": n, "file_id": f} for n, f in have.items() if n not in names]
    return out, uploaded


# -- Sacred's leftovers ---------------------------------------------------------------------


# The only classes in a run document that Sacred 0.8.7's MongoObserver pickles (final_save):
# config, info and result went through Sacred's flatten (plain JSON types), the times are
# datetimes, and sources and artifacts hold GridFS ObjectIds. A store is copied between
# machines and people, so a pickle holding anything else is refused, never loaded.
LEFTOVER_GLOBALS = frozenset(
    {
        ("datetime", "datetime"),
        ("datetime", "date"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("bson.objectid", "ObjectId"),
    }
)


class _LeftoverUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in LEFTOVER_GLOBALS:
            raise pickle.UnpicklingError(f"holds {module}.{name}")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("holds a persistent reference")


def read_leftover(path: Path) -> dict:
    """A run document Sacred pickled, loaded without running anything from the file."""
    try:
        with open(path, "rb") as f:
            entry = _LeftoverUnpickler(f).load()
    except OSError:
        raise
    except Exception as exc:  # anything wrong in an untrusted pickle: refused, as it is
        raise StoreError(
            f"refused, not loaded ({exc}); Sacred's leftovers hold only plain data, "
            f"datetimes and ObjectIds"
        ) from None
    if not isinstance(entry, dict) or "_id" not in entry:
        raise StoreError("not a Sacred run document (expected a dict with an _id)")
    return entry


def sync_leftover(db, path: Path, in_mongo: set[str], claims) -> tuple[str, str]:
    """A run document Sacred pickled when its final save failed."""
    try:
        entry = read_leftover(path)
    except FileNotFoundError:  # another sync put it away since this one listed the folder
        return "up to date", "put away by another `study sync`"
    uid = (entry.get("meta") or {}).get(mongo.UID_KEY)
    key = uid or f"{entry['_id']}|{entry.get('start_time')}"
    claim = claims.acquire(_claim_key(str(key)))
    if claim is None:
        return "skipped", BUSY
    with claim:
        if not path.exists():  # another sync put it away meanwhile
            return "up to date", "put away by another `study sync`"
        return _sync_leftover(db, path, entry, uid, in_mongo)


def _sync_leftover(db, path: Path, entry: dict, uid, in_mongo: set[str]) -> tuple[str, str]:
    if uid and uid in in_mongo:
        _put_away(path)
        return "up to date", "its run is in MongoDB (from its file copy)"
    doc = db.runs.find_one({f"meta.{mongo.UID_KEY}": uid}) if uid else None
    if doc is None and not uid:
        doc = db.runs.find_one({"_id": entry["_id"], "start_time": entry.get("start_time")})
    if doc is not None and _last(doc) > _last(entry):
        _put_away(path)
        return "skipped", f"MongoDB run {doc['_id']} is further on; left as is"
    fields = {k: v for k, v in entry.items() if k != "_id"}
    if doc is not None:
        refs = (doc.get("info") or {}).get("metrics")
        if refs:
            fields["info"] = {**(fields.get("info") or {}), "metrics": refs}
        differ = {k: v for k, v in fields.items() if not _same(doc.get(k), v)}
        if differ:
            db.runs.update_one({"_id": doc["_id"]}, {"$set": differ})
        _put_away(path)
        kind = "completed" if differ else "up to date"
        return kind, f"MongoDB run {doc['_id']}: set {', '.join(sorted(differ)) or 'nothing'}"
    new_id = _insert_with_id(db, fields, entry["_id"])
    _put_away(path)
    return "inserted", (
        f"inserted as MongoDB run {new_id} (metrics and artifacts logged after the server was "
        f"lost are only in a file copy)"
    )


def _insert_with_id(db, fields: dict, wanted) -> int:
    """Insert a run under id `wanted` when free, else the next free id; the id."""
    import pymongo.errors

    while True:
        if wanted is None or db.runs.find_one({"_id": wanted}, {"_id": 1}) is not None:
            last = db.runs.find_one({}, {"_id": 1}, sort=[("_id", -1)])
            wanted = last["_id"] + 1 if last and isinstance(last["_id"], int) else 1
        try:
            db.runs.insert_one({"_id": wanted, **fields})
            return wanted
        except pymongo.errors.DuplicateKeyError:  # a run started meanwhile took the id
            wanted = None


def _put_away(path: Path) -> None:
    done = path.parent / SYNCED_LEFTOVERS
    done.mkdir(exist_ok=True)
    shutil.move(str(path), done / path.name)


# -- comparing ------------------------------------------------------------------------------


def _time(value):
    """A recorded time as MongoDB keeps it: naive UTC, milliseconds."""
    return _ms(identity.parse_time(value))


def _ms(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _last(run: dict) -> datetime:
    """When a run (a MongoDB document or a run.json) last recorded anything."""
    times = [_time(run.get(k)) for k in ("stop_time", "heartbeat", "start_time")]
    times = [t for t in times if t is not None]
    return max(times) if times else datetime.min


def _same(a, b) -> bool:
    """Equal as MongoDB keeps them: datetimes to the millisecond, NaN equal to NaN,
    tuples as lists, ids as they are."""
    if isinstance(a, datetime) or isinstance(b, datetime):
        return isinstance(a, datetime) and isinstance(b, datetime) and _ms(a) == _ms(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b
