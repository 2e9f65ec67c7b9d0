"""A `study export` archive as a read-only run store, and the file-store layout it holds.

Reading unpacks the archive into a private temporary folder (removed at exit) after checking
every member: regular files and folders only, nothing outside the top folder (no absolute path,
no `..`), each and all of them within a size bound. Nothing in it is executed or unpickled.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from study.errors import StoreError, StudyError

TOP = "study-export"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# Bounds on what an archive may unpack to (bytes, members): a study's runs without
# checkpoints are megabytes; these leave room for checkpoints and stop a bomb.
MAX_BYTES_ENV = "STUDY_ARCHIVE_MAX_BYTES"
DEFAULT_MAX_BYTES = 16 << 30
MAX_MEMBERS = 200_000


def is_archive(path) -> bool:
    return str(path).endswith(ARCHIVE_SUFFIXES)


def max_bytes() -> int:
    value = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    if not value.isdigit():
        raise StudyError(f"{MAX_BYTES_ENV}={value!r} is invalid; expected a number of bytes")
    return int(value)


# ---------------------------------------------------------------------------------------------
# Reading an archive


def open_archive(path) -> Path:
    """The file store inside an export archive, unpacked into a private temporary folder after
    checking every member; StoreError (one line) names a member that is refused."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such archive (a file written by `study export`)")
    limit = max_bytes()
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = _checked_members(tar, path, limit)
            folder = Path(tempfile.mkdtemp(prefix="study-archive-"))
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            # The "data" filter refuses links, devices, absolute and escaping paths once more.
            tar.extractall(folder, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise StoreError(f"{path}: not a readable study export ({exc})") from None
    runs = folder / TOP / "runs"
    if not runs.is_dir():
        raise StoreError(f"{path}: no {TOP}/runs folder; not a `study export` archive")
    return runs


def _checked_members(tar: tarfile.TarFile, path: Path, limit: int) -> list[tarfile.TarInfo]:
    members, total = [], 0
    for member in tar:  # headers only: each member's data is skipped, not unpacked
        name = PurePosixPath(member.name)
        where = f"{path}: member {member.name!r}"
        if name.is_absolute() or ".." in name.parts or not name.parts or name.parts[0] != TOP:
            raise StoreError(f"{where} lies outside {TOP}/; refusing the archive")
        if not (member.isfile() or member.isdir()):
            raise StoreError(f"{where} is a link or special file; refusing the archive")
        total += member.size
        if member.size > limit or total > limit:
            raise StoreError(
                f"{where} makes the archive unpack to over {limit:,} bytes; refusing it "
                f"(raise {MAX_BYTES_ENV} if it is yours)"
            )
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise StoreError(f"{path}: over {MAX_MEMBERS:,} members; refusing the archive")
    return members


# ---------------------------------------------------------------------------------------------
# The file store's layout, from any store's record


def write_run(record, folder: Path, *, checkpoints: bool) -> None:
    """One run in the file store's layout, from any store's RunRecord."""
    folder.mkdir(parents=True)
    run = {
        "status": record.status,
        "experiment": {"name": record.experiment},
        "command": record.command,
        "host": record.host,
        "start_time": record.start_time,
        "stop_time": record.stop_time,
        "heartbeat": record.heartbeat,
        "result": record.result,
        "meta": record.meta,
        "artifacts": list(record.artifacts),
    }
    metrics = {
        name: {"steps": [s for s, _ in series], "values": [v for _, v in series]}
        for name, series in record.metrics.items()
    }
    for name, value in (
        ("run.json", run), ("config.json", record.config), ("info.json", record.info),
        ("metrics.json", metrics),
    ):  # fmt: skip
        (folder / name).write_text(json.dumps(value, indent=2, sort_keys=True))
    for name in record.artifacts:  # plain names inside the run (records.keep_names)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(record.artifact_bytes(name))
    # Only a file that is a checkpoint (its digest matches, it loads weights-only), with its
    # digest so that it verifies where the archive is read.
    checkpoint = record.checkpoint_file() if checkpoints else None
    if checkpoint is not None:
        shutil.copyfile(checkpoint, folder / "checkpoint.pt")
        digest = checkpoint.with_name(checkpoint.name + ".sha256")
        shutil.copyfile(digest, folder / "checkpoint.pt.sha256")
