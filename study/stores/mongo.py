"""MongoDB as a run store: its target, connecting (fast), recording through Sacred's
MongoObserver (standard schema: `runs`, `metrics`, GridFS `fs.files`/`fs.chunks`, so Omniboard
and Incense read the runs), and reading runs back into the same `RunRecord`s as the file store.
Choosing it (and falling back to the file store) is `study.stores.choice`'s; the file copy of
a MongoDB run is `study.stores.shadow`'s.

The target comes from `-m URL[:DB]` (or Sacred's own `[host:port:]db` form), else from
`STUDY_MONGO_URL` and `STUDY_MONGO_DB` (default `study`). A password in a URL is never printed or
stored: every URL that leaves this module goes through `mask_url`.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime

from sacred.observers import MongoObserver  # noqa: E402

from study.errors import StoreError  # noqa: E402
from study.stores import schema  # noqa: E402
from study.stores.records import (  # noqa: E402
    UID_KEY,  # noqa: F401 (mongo.UID_KEY: the key the observer and sync match runs by)
    RunRecord,
    Skipped,
    dedupe_metrics,
    keep_names,
    print_skipped,
)

URL_ENV, DB_ENV, FALLBACK_ENV, TIMEOUT_ENV, SHADOW_ENV = (
    "STUDY_MONGO_URL",
    "STUDY_MONGO_DB",
    "STUDY_MONGO_FALLBACK",
    "STUDY_MONGO_TIMEOUT",
    "STUDY_MONGO_SHADOW",
)
DEFAULT_DB = "study"
DEFAULT_TIMEOUT_S = 3.0
# Where Sacred pickles a run document it could not save at the end of a run.
FAILURE_DIR = os.path.join("runs", "mongo-unsaved")
# Where every MongoDB run also keeps a file-store copy (one folder per database), for
# `study sync` when the server was lost mid-run; STUDY_MONGO_SHADOW=off: no copy.
DEFAULT_SHADOW = "mongo-shadow"

_SCHEME = re.compile(r"^mongodb(\+srv)?://", re.IGNORECASE)
_DB_NAME = re.compile(r"^[A-Za-z_][0-9A-Za-z_\-]{0,63}$")


@dataclass(frozen=True)
class Target:
    """Where runs go: a mongodb:// URL (credentials included, never shown) and a database."""

    url: str
    db: str

    @property
    def masked(self) -> str:
        """The URL, password masked, with the database as its path: safe to print and store."""
        prefix, authority, _, options = _split_url(mask_url(self.url))
        return f"{prefix}{authority}/{self.db}{options}"

    def __repr__(self) -> str:  # never the password, not even in a traceback or a debugger
        return f"Target({self.masked!r})"


def _split_url(url: str) -> tuple[str, str, str, str]:
    """(scheme, authority, database, options) of a mongodb:// URL, split where pymongo's
    uri_parser splits it: at the first '?', then at the first '/' before it. The authority is
    `[user[:password]@]hosts`; its userinfo ends at its last '@' (a password may hold '#')."""
    scheme = _SCHEME.match(url)
    prefix = url[: scheme.end()] if scheme else ""
    head, question, options = url[len(prefix) :].partition("?")
    authority, _, database = head.partition("/")
    return prefix, authority, database, question + options


def mask_url(url: str) -> str:
    """`mongodb://user:secret@host/db` -> `mongodb://user:***@host/db` (anything else as is).

    The password is what pymongo would send: the URL is split as pymongo's uri_parser splits
    it, so a password holding '#', '/' after the '@', or '@' itself is masked whole."""
    if url is None:
        return url
    prefix, authority, _, _ = _split_url(url)
    userinfo, at, hosts = authority.rpartition("@")
    rest = url[len(prefix) :]
    if not at and "@" in rest:  # an unescaped '/' or '?' in a password: pymongo refuses it
        return f"{prefix}***@{rest.rpartition('@')[2]}"
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]  # pymongo's parse_userinfo splits at the first ':'
    return f"{prefix}{user}:***@{hosts}{url[len(prefix) + len(authority) :]}"


def parse_target(spec: str | None = None, db: str | None = None) -> Target:
    """`-m`'s value (or STUDY_MONGO_URL) -> Target.

    Accepted: `mongodb://[user:pass@]host[:port][/db][?opts]`, the same followed by `:DB`,
    and Sacred's `[host:port:]db`. The database is, first to last: the one in `spec`, `db`,
    STUDY_MONGO_DB, `study`.
    """
    spec = (spec or "").strip()
    if not spec:
        raise StoreError(f"no MongoDB URL given (-m URL[:DB] or {URL_ENV})")
    default_db = db or os.environ.get(DB_ENV) or DEFAULT_DB
    if _SCHEME.match(spec):
        url, spec_db = spec, None
        head, _, tail = spec.rpartition(":")
        if _DB_NAME.match(tail) and _SCHEME.match(head) and "/" not in tail:
            # `mongodb://host:27017:db` or `mongodb://host:db` (a port is all digits)
            if not head.endswith("//") and not tail.isdigit() and "@" not in tail:
                url, spec_db = head, tail
        prefix, authority, path, options = _split_url(url)
        if path:
            spec_db = spec_db or path
            url = f"{prefix}{authority}/{options}"
        return Target(url=url, db=_check_db(spec_db or default_db))
    # Sacred's form: [host:port:]db_name[.collection[:id]][!priority]
    from study import sacred_api

    kwargs = sacred_api.parse_mongo_spec(spec)
    if kwargs is None:
        raise StoreError(
            f"-m {mask_url(spec)!r} is not a MongoDB target; expected mongodb://host:port[:DB], "
            f"host:port[:DB] or DB"
        )
    if kwargs.get("collection") or kwargs.get("overwrite") or kwargs.get("priority"):
        raise StoreError(
            f"-m {spec}: study records in the standard collections (runs, metrics, fs); "
            f"give only [host:port:]DB"
        )
    url = "mongodb://" + (kwargs.get("url") or "localhost:27017")
    return Target(url=url, db=_check_db(kwargs.get("db_name") or default_db))


def _check_db(name: str) -> str:
    if not _DB_NAME.match(name):
        raise StoreError(f"MongoDB database name {name!r} is invalid; use letters, digits, _ or -")
    return name


def target_from_env(db: str | None = None) -> Target | None:
    url = os.environ.get(URL_ENV, "").strip()
    return parse_target(url, db) if url else None


def fallback_enabled() -> bool:
    value = os.environ.get(FALLBACK_ENV, "").strip().lower()
    return value in ("1", "true", "yes", "on")


def timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{TIMEOUT_ENV}={value!r} is invalid; expected seconds") from None
    if seconds <= 0:
        raise StoreError(f"{TIMEOUT_ENV}={value!r} is invalid; expected seconds > 0")
    return seconds


def connect(target: Target, timeout: float | None = None):
    """A MongoClient that has answered `ping`, or a one-line StoreError within `timeout` s."""
    import pymongo
    from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

    timeout = timeout_s() if timeout is None else timeout
    ms = int(timeout * 1000)
    try:
        client = pymongo.MongoClient(
            target.url,
            serverSelectionTimeoutMS=ms,
            connectTimeoutMS=ms,
            socketTimeoutMS=max(ms, 60_000),
            appname="study",
        )
    except (ConfigurationError, ValueError, TypeError) as exc:
        raise StoreError(f"MongoDB URL {target.masked} is invalid ({_one_line(exc)})") from None
    try:
        client.admin.command("ping")
        # A server that needs credentials answers ping without them, but not a command on
        # the run's database: ask one now, not mid-run.
        client[target.db].list_collection_names()
    except OperationFailure as exc:
        client.close()
        raise StoreError(_refusal(target, exc)) from None
    except PyMongoError as exc:
        client.close()
        raise StoreError(
            f"MongoDB at {target.masked} is unreachable (no answer within {timeout:g} s: "
            f"{_one_line(exc)})"
        ) from None
    return client


def _refusal(target: Target, exc) -> str:
    """One line for a server that refused us: credentials wrong or missing, or another no."""
    userinfo = _split_url(target.url)[1].rpartition("@")[0]
    if exc.code == 18:  # AuthenticationFailed
        return (
            f"MongoDB at {target.masked} refused the credentials (authentication failed); "
            f"check the user and password in the URL"
        )
    if exc.code == 13 and not userinfo:  # Unauthorized, and no user given
        return (
            f"MongoDB at {target.masked} requires authentication; give "
            f"mongodb://USER:PASSWORD@host... (in ${URL_ENV} to keep it off command lines)"
        )
    if exc.code == 13:
        user = userinfo.split(":", 1)[0]
        return f"MongoDB at {target.masked}: user {user} may not use database {target.db}"
    return f"MongoDB at {target.masked} refused: {_one_line(exc)}"


def _one_line(exc: Exception) -> str:
    text = str(exc).split(", Timeout:")[0].split(" (configured timeouts")[0]
    text = " ".join(text.split())
    text = re.sub(r"mongodb(\+srv)?://\S+", lambda m: mask_url(m.group(0)), text)
    return text[:200]


class StudyMongoObserver(MongoObserver):
    """Sacred's MongoObserver (standard schema), able to continue an interrupted run.

    With `overwrite=<id>` Sacred rewrites the run document from scratch; for `resume=<id>` this
    keeps what the interrupted run already recorded: its start time, its metric references (the
    metrics collection keeps its series, and resumed epochs are appended), and a `resumed` list.
    """

    lost = None  # the first write error once the server is gone: no more long retries

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        previous = dict(self.overwrite) if self.overwrite is not None else None
        uid = ((previous or {}).get("meta") or {}).get(UID_KEY)
        if uid and isinstance(meta_info, dict):  # a resumed run keeps its name in every store
            meta_info[UID_KEY] = uid
        run_id = super().started_event(
            ex_info, command, host_info, start_time, config, meta_info, _id
        )
        if previous is not None:
            self.run_entry["start_time"] = previous.get("start_time", start_time)
            self.run_entry["resumed"] = list(previous.get("resumed", [])) + [start_time]
            stale = [k for k in ("stop_time", "fail_trace", "result") if k in self.run_entry]
            for key in stale:
                self.run_entry.pop(key)
            self._metric_refs = {
                m["name"]: m for m in (previous.get("info") or {}).get("metrics", [])
            }
            self.save()
            if stale:  # save() only $sets: what the interrupted run ended with must go
                self.runs.update_one({"_id": run_id}, {"$unset": dict.fromkeys(stale, "")})
        return run_id

    def log_metrics(self, metrics_by_name, info):
        with self._watch():
            super().log_metrics(metrics_by_name, info)
        refs = getattr(self, "_metric_refs", None)
        if refs:  # a resumed run: its series already exist, so no upsert reported them
            have = {m["name"] for m in info.get("metrics", [])}
            for name in metrics_by_name:
                if name not in have and name in refs:
                    info.setdefault("metrics", []).append(refs[name])

    # Sacred stops calling an observer after its first error (and logs it), except for the
    # final save, which it tries 10 times (one server-selection timeout plus 1 s each): ~40 s
    # more per run once the server is gone. After a lost write, one try is enough: the file
    # copy (ShadowStore) and Sacred's pickle in FAILURE_DIR keep the run for `study sync`.

    def save(self):
        import pymongo.errors

        try:
            self.runs.update_one({"_id": self.run_entry["_id"]}, {"$set": self.run_entry})
        except pymongo.errors.AutoReconnect as exc:  # Sacred: wait for the next save
            self._lose(exc)
        except pymongo.errors.InvalidDocument:
            super().save()  # Sacred's ObserverError

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        with self._watch():
            super().artifact_event(name, filename, metadata, content_type)

    def final_save(self, attempts):
        super().final_save(1 if self.lost is not None else attempts)

    def _watch(self):
        import contextlib

        import pymongo.errors

        @contextlib.contextmanager
        def watch():
            try:
                yield
            except pymongo.errors.ConnectionFailure as exc:
                self._lose(exc)  # Sacred logs this and stops calling: one line, not pymongo's
                raise StoreError(f"MongoDB lost: {_one_line(exc)}") from None

        return watch()

    def _lose(self, exc) -> None:
        if self.lost is None:
            self.lost = exc
            print(
                f"study: lost MongoDB ({_one_line(exc)}); training goes on, the run is kept on "
                f"disk and `study sync` uploads it once the server is back",
                file=sys.stderr,
                flush=True,
            )


def make_observer(target: Target, client, overwrite=None) -> StudyMongoObserver:
    """Sacred's MongoObserver on an already connected client, writing to target.db."""
    try:
        return StudyMongoObserver(
            client=client, db_name=target.db, overwrite=overwrite, failure_dir=FAILURE_DIR
        )
    except RuntimeError:  # Sacred: no run to overwrite
        raise StoreError(f"no run {overwrite} in {target.masked}") from None


def resumable_config(target: Target, client, run_id) -> dict:
    """The stored config of an interrupted run (mirrors files.resumable_config), typed."""
    skipped: Skipped = []
    found = read_mongo_runs(target, ids=[run_id], client=client, skipped=skipped)
    if not found and skipped:
        raise StoreError(f"resume={run_id}: {skipped[0]}")
    if not found:
        raise StoreError(f"resume={run_id}: no run {run_id} in {target.masked}; see `study runs`")
    if found[0].status == "COMPLETED":
        raise StoreError(f"resume={run_id}: run {run_id} in {target.masked} already COMPLETED")
    config = dict(found[0].config)
    config.pop("resume", None)
    return config


def _run_id(run_id):
    if isinstance(run_id, str) and run_id.isdigit():
        return int(run_id)
    return run_id


# -- reading runs back -----------------------------------------------------------------------


def read_mongo_runs(
    url, db: str | None = None, ids=None, client=None, skipped: Skipped | None = None
) -> list[RunRecord]:
    """Every run (or the runs `ids`) in a MongoDB run store, in id order, as RunRecords; a
    malformed run is left out with a line in `skipped` (printed when no list is given), and
    so is a name it gives that is not a plain name (records.keep_names)."""
    target = url if isinstance(url, Target) else parse_target(url, db)
    client = client or connect(target)
    database = client[target.db]
    query = {} if ids is None else {"_id": {"$in": [_run_id(i) for i in ids]}}
    docs = list(database.runs.find(query, {"captured_out": 0}).sort("_id", 1))
    metrics_by_run: dict = {}
    run_ids = [d.get("_id") for d in docs]
    for m in database.metrics.find({"run_id": {"$in": run_ids}}):
        if isinstance(m.get("name"), str):  # another kind of document: not a series
            metrics_by_run.setdefault(m.get("run_id"), {})[m["name"]] = m
    import gridfs

    fs = gridfs.GridFS(database)
    notes: Skipped = [] if skipped is None else skipped
    records = []
    for doc in docs:
        where = f"run {str(doc.get('_id'))[:40]} in {target.masked}"
        try:
            record = _record(doc, metrics_by_run.get(doc.get("_id"), {}), fs, target, where)
            records.append(record)
            notes.extend(record.notes)
        except (StoreError, ValueError) as exc:
            notes.append(f"skipped a malformed run: {where}: {exc}")
    if skipped is None:
        print_skipped(notes)
    return records


def read_mongo_run(url, run_id, db: str | None = None, client=None) -> RunRecord:
    records = read_mongo_runs(url, db, ids=[run_id], client=client)
    if not records:
        target = url if isinstance(url, Target) else parse_target(url, db)
        raise StoreError(f"no run {run_id} in {target.masked}")
    return records[0]


def _record(doc: dict, metrics: dict, fs, target: Target, where: str) -> RunRecord:
    """A run document (and its metric documents) typed by study.stores.schema, as the file
    store's run.json, config.json and info.json are."""
    from bson import ObjectId

    run_id = doc.get("_id")
    if isinstance(run_id, bool) or not isinstance(run_id, int | str) or len(str(run_id)) > 64:
        raise StoreError(f"_id is {str(run_id)[:40]!r}; expected a run number")
    leaves = (datetime, ObjectId)  # BSON's own values in a run document
    run = schema.parse(schema.RUN, {k: v for k, v in doc.items() if k != "artifacts"}, "", leaves)
    config = schema.parse(schema.CONFIG, doc.get("config") or {}, "", root="config")
    info = dict(schema.parse(schema.INFO, doc.get("info") or {}, "", leaves, root="info"))
    refs = info.get("metrics")
    if isinstance(refs, list) and all(isinstance(r, dict) and "id" in r for r in refs):
        del info["metrics"]  # MongoObserver's references to the metrics collection
    artifacts = {}
    for i, a in enumerate(schema.list_of(schema.anything, 100_000)(doc.get("artifacts") or [], "")):
        if not isinstance(a, dict) or not isinstance(a.get("file_id"), ObjectId):
            raise StoreError(f"artifacts[{i}] is {str(a)[:40]!r}; expected {{name, file_id}}")
        artifacts.setdefault(a.get("name"), a["file_id"])
    series = {}
    for name, m in metrics.items():
        schema.check_tree(m, f"metrics.{name}", extra_leaves=leaves)
        series[name] = m

    def fetch(name: str) -> bytes:
        import gridfs.errors

        try:
            return fs.get(artifacts[name]).read()
        except (KeyError, gridfs.errors.NoFile):
            raise StoreError(f"{where} has no artifact {name!r}") from None
        except gridfs.errors.GridFSError as exc:  # chunks missing or the wrong size
            raise StoreError(f"{where}: artifact {name!r} is unreadable ({exc})") from None

    record = RunRecord(
        id=str(run_id),
        store=target.masked,
        status=run.get("status") or "UNKNOWN",
        experiment=(run.get("experiment") or {}).get("name") or "",
        command=run.get("command") or "",
        config=config,
        info=info,
        result=run.get("result"),
        metrics=dedupe_metrics(series),
        host=run.get("host") or {},
        start_time=run.get("start_time"),
        stop_time=run.get("stop_time"),
        artifacts=list(artifacts),
        heartbeat=run.get("heartbeat"),
        meta=dict(run.get("meta") or {}),
        resumed=[t for t in run.get("resumed") or [] if t is not None],
        fetch=fetch,
    )
    return keep_names(record)


def mark_dead(database, record, why: str) -> bool:
    """A dead run (RUNNING, heartbeat stale) recorded as INTERRUPTED with `why`, in one
    conditional update: only while its document still holds the heartbeat that was read."""
    from datetime import datetime

    from study.identity import utcnow

    try:
        run_id = int(record.id)
        beat = record.heartbeat  # None: it died before its first heartbeat
        heartbeat = None if beat is None else datetime.fromisoformat(str(beat)).replace(tzinfo=None)
    except ValueError:
        return False
    done = database.runs.update_one(
        {"_id": run_id, "status": "RUNNING", "heartbeat": heartbeat},
        {"$set": {"status": "INTERRUPTED", "stop_time": utcnow().replace(tzinfo=None),
                  "fail_trace": [why]}},
    )  # fmt: skip
    return done.modified_count == 1
