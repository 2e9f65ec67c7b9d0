"""`study export OUT.tar.gz`: a study as one file.

The archive holds, under one top folder (study.stores.archive reads it back, safely):
- runs/<id>/: each selected run in the file store's layout (run.json, config.json, info.json,
  metrics.json, its artifacts; its checkpoint only when asked), whichever store it came from;
- report.pdf and report.html, built from those runs;
- environment.txt: every installed distribution and its version (`pip freeze`-style), with
  the Python version and platform;
- fingerprints.json: each run's data content fingerprints (what its data_root held);
- REPRODUCE.md: the commands that rebuild the report and reproduce each run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tarfile
import tempfile
from importlib.metadata import distributions
from pathlib import Path

from study.errors import StudyError
from study.stores.archive import TOP, is_archive, write_run


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
    # Comma lists, as `study report` takes them; --model/--dataset/--id (repeatable) are the
    # older spellings, kept as aliases.
    for name, what in (("models", "models"), ("datasets", "data sets"), ("ids", "run ids")):
        parser.add_argument(f"--{name}", action="append", default=[], help=f"only these {what}")
        parser.add_argument(f"--{name[:-1]}", action="append", dest=name, help=argparse.SUPPRESS)
    parser.add_argument(
        "--checkpoints", action="store_true", help="include each run's checkpoint file"
    )
    args = parser.parse_args(argv)
    if not is_archive(args.out):
        raise StudyError(f"{args.out}: expected a name ending in .tar.gz or .tgz")
    from study.stores import choose_store

    def names(given: list[str]) -> set[str]:
        return {n.strip() for item in given for n in item.split(",") if n.strip()}

    models, datasets, ids = names(args.models), names(args.datasets), names(args.ids)

    def wanted(record) -> bool:
        return (
            (not models or record.model in models)
            and (not datasets or record.dataset in datasets)
            and (not ids or record.id in ids)
            and record.status == "COMPLETED"
        )

    store = choose_store(args.runs, args.mongo, args.db)
    where = store.describe()
    records = [r for r in store.read_runs(keep=wanted) if wanted(r)]
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
