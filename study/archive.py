"""`study export OUT.tar.gz`: a study as one file, and reading such a file back safely.

An export holds, under one top folder:
- runs/<id>/: each selected run in the file store's layout (run.json, config.json, info.json,
  metrics.json, its artifacts; its checkpoint only when asked), whichever store it came from;
- report.pdf and report.html, built from those runs;
- environment.txt: every installed distribution and its version (`pip freeze`-style), with
  the Python version and platform;
- fingerprints.json: each run's data content fingerprints (what its data_root held);
- REPRODUCE.md: the commands that rebuild the report and reproduce each run.

`study report --runs OUT.tar.gz`, `study runs --runs ...` and `study reproduce --runs ...` read
an archive directly: it is unpacked into a private temporary folder (removed at exit) after
every member is checked: regular files and folders only, no absolute path or `..`, each and
all of them within a size bound. Nothing in it is executed or unpickled.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
from importlib.metadata import distributions
from pathlib import Path, PurePosixPath

from study.errors import StoreError, StudyError

TOP = "study-export"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# Bounds on what an archive may unpack to (bytes, members): a study's runs without
# checkpoints are megabytes; these leave room for checkpoints and stop a bomb.
MAX_BYTES_ENV = "STUDY_ARCHIVE_MAX_BYTES"
DEFAULT_MAX_BYTES = 16 << 30
MAX_MEMBERS = 200_000
RUN_FILES = ("run.json", "config.json", "info.json", "metrics.json", "cout.txt")


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
# Writing an archive


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="study export",
        description="Write the selected runs, their report, the environment and the data "
        "fingerprints into one .tar.gz file.",
    )
    parser.add_argument("out", metavar="OUT.tar.gz", help="the archive to write")
    parser.add_argument("--runs", metavar="DIR", help="a file store folder (default ./runs)")
    parser.add_argument("--mongo", metavar="URL", help="a MongoDB URL (default $STUDY_MONGO_URL)")
    parser.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    parser.add_argument("--model", action="append", help="only runs of this model (repeatable)")
    parser.add_argument("--dataset", action="append", help="only runs on this data set")
    parser.add_argument("--id", action="append", dest="ids", help="only this run (repeatable)")
    parser.add_argument(
        "--checkpoints", action="store_true", help="include each run's checkpoint file"
    )
    args = parser.parse_args(argv)
    if not is_archive(args.out):
        raise StudyError(f"{args.out}: expected a name ending in .tar.gz or .tgz")
    from study.stores import read_runs

    def wanted(record) -> bool:
        return (
            (not args.model or record.model in args.model)
            and (not args.dataset or record.dataset in args.dataset)
            and (not args.ids or record.id in args.ids)
            and record.status == "COMPLETED"
        )

    where, records = read_runs(args.runs, args.mongo, args.db, keep=wanted)
    records = [r for r in records if wanted(r)]
    if not records:
        raise StudyError(f"no COMPLETED run in {where} matches; `study runs` lists them")
    export(records, Path(args.out), where=where, checkpoints=args.checkpoints)
    print(f"wrote {args.out}: {len(records)} run(s) from {where}, the report, the environment")
    return 0


def export(records, out: Path, *, where: str, checkpoints: bool = False) -> Path:
    """Write the archive atomically: a failure leaves no partial file at `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp) / TOP
        runs = top / "runs"
        for record in records:
            write_run(record, runs / record.id, checkpoints=checkpoints)
        # The report is built from the exported copies, as a reader of the archive sees them.
        from study.stores import read_file_store

        copies = read_file_store(runs)
        from study.report import build_report

        build_report(copies, top / "report.pdf", "pdf")
        build_report(copies, top / "report.html", "html")
        (top / "environment.txt").write_text(environment())
        fingerprints = {r.id: (r.info.get("dataset") or {}).get("content") or {} for r in records}
        (top / "fingerprints.json").write_text(json.dumps(fingerprints, indent=1, sort_keys=True))
        (top / "REPRODUCE.md").write_text(reproduce_text(records, out.name, where))
        _pack(top, out)
    return out


def _pack(top: Path, out: Path) -> None:
    """tar.gz `top` into `out` through a temporary file beside it, moved in one step."""
    from study.atomic import TEMP_SUFFIX, temp_prefix

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=temp_prefix(out), suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            tar.add(top, arcname=TOP, filter=_plain)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members that say nothing about who wrote them: no owner names or ids."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


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
    for name in record.artifacts:
        (folder / name).write_bytes(record.artifact_bytes(name))
    checkpoint = record.info.get("checkpoint")
    if checkpoints and checkpoint and Path(checkpoint).is_file():
        shutil.copyfile(checkpoint, folder / Path(checkpoint).name)


def environment() -> str:
    lines = [
        f"# python {platform.python_version()} on {platform.platform()}",
        f"# written by `study export` ({' '.join(sys.argv[1:2])})",
    ]
    pinned = {f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]}
    return "\n".join([*lines, *sorted(pinned, key=str.lower)]) + "\n"


def reproduce_text(records, archive: str, where: str) -> str:
    from study.identity import run_order

    versions = sorted({(r.info.get("provenance") or {}).get("study") or "?" for r in records})
    commits = sorted(
        {((r.info.get("provenance") or {}).get("git") or {}).get("commit") or "" for r in records}
        - {""}
    )
    lines = [
        "# Reproducing this study",
        "",
        f"These {len(records)} run(s) were exported from `{where}`. They were made with study "
        f"{', '.join(versions)}"
        + (f" at git commit {', '.join(commits)}" if commits else "")
        + "; `environment.txt` lists every library and version of the exporting machine, and "
        "each run's `info.json` (`provenance`) those of the machine it ran on.",
        "",
        "Rebuild the report from the archive:",
        "",
        "```",
        f"study report --runs {archive} --out report.pdf",
        "```",
        "",
        "Re-run a run and compare (identical / equivalent / different); the new run goes to "
        "`--into` (default `./runs`). The data must hold the same bytes as the original's "
        "(`fingerprints.json`); point `data_root` at your copy:",
        "",
        "```",
    ]
    for r in sorted(records, key=lambda r: run_order(r.id)):
        lines.append(
            f"study reproduce {r.id} --runs {archive} with data_root=DATA_ROOT"
            f"    # {r.model} on {r.dataset}, seed {r.config.get('seed')}"
        )
    lines += [
        "```",
        "",
        "Add `--epochs N` to re-run and compare only the first N epochs of a long run.",
        "",
    ]
    return "\n".join(lines)
