"""The `study` command line.

`study run with model=... dataset=...` and every other Sacred command (print_config,
print_named_configs, ...) go to the Sacred experiment; `study list` is study's own.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from study import settings
from study.errors import StudyError

OWN_COMMANDS = ("list", "runs", "sync")
# Commands with their own argument parser, in their own module.
DELEGATED_COMMANDS = {
    "report": "study.report",
    "sweep": "study.sweep",
    "reproduce": "study.reproduce",
    "export": "study.export",
}
# Sacred options that choose an observer: with any of these, no default file store is added.
OBSERVER_FLAGS = (
    "-m", "--mongo_db", "--mongo", "-u", "--unobserved", "-s", "--sql", "-t", "--tiny_db",
    "-S", "--s3", "-G", "--gcs", "-q", "--queue",
)  # fmt: skip

USAGE = """usage: study run with model=NAME dataset=NAME [KEY=VALUE ...] [FILE.yaml ...] [-F DIR]
       study print_config with model=NAME dataset=NAME [KEY=VALUE ...]
       study list
       study runs [--runs DIR | --mongo URL [--db NAME]] [--long] [--format table|json|csv]
       study report [--runs DIR | --mongo URL [--db NAME]] [--out PATH] [--format pdf|html]
       study sync [--runs DIR ...] [--mongo URL [--db NAME]]
       study reproduce ID [--runs DIR|ARCHIVE | --mongo URL [--db NAME]] [--epochs N] [with ...]
       study export OUT.tar.gz [--runs DIR | --mongo URL [--db NAME]] [--model M] [--dataset D]
       study sweep --models A,B --datasets X,Y --seeds N [with KEY=VALUE ...] [--dry-run]
       torchrun --nproc-per-node=N -m study run with ...

Runs are recorded in ./runs unless -F DIR, -m URL[:DB] (MongoDB; or $STUDY_MONGO_URL) or
another Sacred observer flag is given. Settings come from `with KEY=VALUE`, named configs
(`fast`, `paper`) and config files (`with my.yaml`, `.yml` or `.json`: a mapping of settings).
`study help run` (or `study run --help`) lists every setting with its default and meaning;
`study print_config with ...` shows them resolved for a model and data set.
`study --version` prints the version.
"""
# `with FILE`: settings files study reads (never a pickle, which Sacred would unpickle).
CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if wants_settings_help(argv):
            from study.settings import help_text

            print(help_text())
            return 0
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0 if argv else 2
        if argv[0] == "--version":
            from study import __version__

            print(f"study {__version__}")
            return 0
        if argv[0] in OWN_COMMANDS or argv[0] in DELEGATED_COMMANDS:
            return _reading_command(argv)
        _check_command(argv[0])
        return run_experiment(argv)
    except StudyError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `study help run | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def wants_settings_help(argv: list[str]) -> bool:
    """`study help run`, `study run --help`, `study print_config -h`, and a bare `study
    print_config` (no model, no data set: the defaults): every setting, its default and meaning
    (Sacred would print its usage, named `dummy`, or a traceback)."""
    if argv[:2] in (["help", "run"], ["help", "print_config"]) or argv == ["print_config"]:
        return True
    return bool(argv) and argv[0] in ("run", "print_config") and bool({"-h", "--help"} & set(argv))


def _reading_command(argv: list[str]) -> int:
    """runs, report, export, sync, sweep, reproduce, list: a full disk, a lost server,
    Ctrl-C or SIGTERM is one line and a non-zero exit. Their outputs are written atomically
    and their staging folders are removed as the interruption unwinds, so nothing is left
    half-written."""
    _terminate_as_interrupt()
    try:
        if argv[0] in OWN_COMMANDS:
            return _own_command(argv)
        return importlib.import_module(DELEGATED_COMMANDS[argv[0]]).main(argv[1:])
    except KeyboardInterrupt:
        print(f"study: {argv[0]} interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `study list timm | head`: main() ends it quietly
        raise
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"study: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if not type(exc).__module__.startswith(("pymongo", "gridfs")):
            raise
        from study.stores.mongo import _one_line  # pymongo's errors: imported only if used

        print(f"study: error: MongoDB failed: {_one_line(exc)}", file=sys.stderr)
        return 1


def _check_command(first: str) -> None:
    """An unknown command is one line naming it (Sacred would print its own usage, named
    `dummy`, and a warning)."""
    from study.experiment import ex

    if first == "with" or first.startswith("-"):
        return  # Sacred's default command (run) or an option before the command
    commands = sorted({"run", *ex.commands, *OWN_COMMANDS, *DELEGATED_COMMANDS})
    if first not in commands:
        close = difflib.get_close_matches(first, commands, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise StudyError(f"unknown command {first!r}{hint}; commands: {', '.join(commands)}")


def parse_booleans(updates: dict) -> dict:
    """Sacred parses Python literals: `compile=false` would arrive as the string 'false'."""
    return {
        k: {"true": True, "false": False}.get(v.lower(), v)
        if k in settings.BOOLEAN_KEYS and isinstance(v, str)
        else v
        for k, v in updates.items()
    }


def _named_configs_over_files(updates: dict, named_configs: list[str]) -> tuple[dict, list]:
    """Sacred reads `with NAME` as a config file whenever a path NAME exists, so a file named
    `fast` in the working folder would replace the `fast` protocol. study's named configs set
    constants only, so such a one is applied as updates instead, under the command line's own."""
    from study.experiment import ex

    kept, values = [], {}
    for name in named_configs:
        if name in ex.named_configs and os.path.exists(name):
            values.update(dict(ex.named_configs[name]()))
        else:
            kept.append(name)
    return {**values, **updates}, kept


def _config_files_as_updates(updates: dict, named_configs: list[str]) -> tuple[dict, list]:
    """`with my.yaml` / `with my.json`: read here, as data only (yaml.safe_load; Sacred would
    also unpickle a `.pickle`), and applied under the command line's own KEY=VALUE updates."""
    from study.experiment import ex

    values, kept = {}, []
    for name in named_configs:
        if name in ex.named_configs:
            kept.append(name)
            continue
        suffix = Path(name).suffix.lower()
        if suffix in (".pickle", ".pkl"):
            raise StudyError(
                f"config file {name}: a pickle is never read (unpickling runs code); "
                f"write the settings as {', '.join(CONFIG_FILE_SUFFIXES)}"
            )
        if suffix not in CONFIG_FILE_SUFFIXES:
            raise StudyError(
                f"with {name!r}: neither a named config ({', '.join(sorted(ex.named_configs))}) "
                f"nor a config file ({', '.join(CONFIG_FILE_SUFFIXES)})"
            )
        try:
            text = Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise StudyError(f"config file {name}: {why or exc}") from None
        values.update(_parse_config_file(name, suffix, text))
    return {**values, **updates}, kept


def _parse_config_file(name: str, suffix: str, text: str) -> dict:
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StudyError(f"config file {name} is not valid JSON: {exc}") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}" if where else ""
            raise StudyError(f"config file {name} is not valid YAML{at}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise StudyError(
            f"config file {name} must hold a mapping of settings to values (e.g. `epochs: 3`)"
        )
    return data


def check_setting_names(updates: dict) -> None:
    """A misspelt setting is one line naming the nearest real ones (Sacred raises a
    ConfigAddedError traceback, and only once the run's config is built)."""
    from study.settings import BY_NAME

    known = sorted(BY_NAME)
    for key in updates:
        name = key.split(".")[0]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise StudyError(
                f"unknown setting {key!r}; {hint}every setting: README, Configuration, or "
                "`study print_config with model=... dataset=...`"
            )


def _own_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="study")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="every registered model and data set, with its plugin")
    listing.add_argument(
        "family", nargs="?", help="a model family's prefix (e.g. timm): every model it provides"
    )
    runs = sub.add_parser("runs", help="the runs in a store (default ./runs, or $STUDY_MONGO_URL)")
    runs.add_argument("--runs", metavar="DIR", help="a file store folder")
    runs.add_argument("--mongo", metavar="URL", help="a MongoDB URL (mongodb://host:port[:DB])")
    runs.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    runs.add_argument(
        "--long", action="store_true", help="also each run's provenance: code, versions, data"
    )
    runs.add_argument(
        "--format",
        choices=RUN_FORMATS,
        default="table",
        help="table (for eyes), json (a list of objects) or csv: one row per run, for pandas",
    )
    sync = sub.add_parser("sync", help="upload file-store runs (and MongoDB copies) into MongoDB")
    sync.add_argument("--runs", metavar="DIR", action="append", help="a file store (repeatable)")
    sync.add_argument("--mongo", metavar="URL", help="a MongoDB URL (default $STUDY_MONGO_URL)")
    sync.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    args = parser.parse_args(argv)
    if args.command == "sync":
        return sync_runs(args.runs, args.mongo, args.db)
    if args.command == "list":
        print_registry(args.family)
    if args.command == "runs":
        if args.format == "table":
            print_runs(args.runs, args.mongo, args.db, long=args.long)
        else:
            print_run_rows(args.runs, args.mongo, args.db, args.format)
    return 0


RUN_FORMATS = ("table", "json", "csv")
# `study runs --format json|csv`: one row per run, these columns in this order.
RUN_COLUMNS = ("id", "model", "dataset", "seed", "protocol", "status", "top1", "top5", "health",
               "epochs", "train_seconds", "start_time", "stop_time")  # fmt: skip


def run_row(record) -> dict:
    """One run as plain values for pandas. The store's schema has checked each value's type and
    range (a malformed record is skipped with one line), so they pass through as they are."""
    result = record.result if isinstance(record.result, dict) else {}
    seconds = [v for _, v in record.metric("train_seconds")]
    return {
        "id": record.id,
        "model": record.model,
        "dataset": record.dataset,
        "seed": record.config.get("seed"),
        "protocol": record.config.get("protocol"),
        "status": record.status,
        "top1": record.top1,
        "top5": result.get("top5"),
        "health": health_word(record),
        "epochs": len(record.metric("test_top1")) or None,
        "train_seconds": round(sum(seconds), 3) if seconds else None,
        "start_time": record.start_time,
        "stop_time": record.stop_time,
    }


def print_run_rows(folder: str | None, mongo_url: str | None, db: str | None, fmt: str) -> None:
    import csv

    from study.stores import choose_store

    rows = [run_row(r) for r in choose_store(folder, mongo_url, db).read_runs()]
    if fmt == "json":
        print(json.dumps(rows, indent=1))
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=RUN_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)


def print_runs(folder: str | None, mongo_url: str | None, db: str | None, long=False) -> None:
    from study.stores import choose_store

    store = choose_store(folder, mongo_url, db)
    records = store.read_runs()
    print(f"{len(records)} run(s) in {store.describe()}")
    print(
        f"{'id':>5}  {'model':<16} {'dataset':<14} {'status':<12} {'top-1':>7}  "
        f"{'start':<19}  health"
    )
    dead = False
    for r in records:
        top1 = f"{100 * r.top1:6.2f}%" if r.top1 is not None else f"{'-':>7}"
        start = (r.start_time or "-").replace("T", " ")[:19]
        name = f"{r.model or '-':<16} {r.dataset or '-':<14}"
        status = r.status
        if status == "RUNNING" and not r.alive:
            status, dead = "DEAD", True
        print(f"{r.id:>5}  {name} {status:<12} {top1}  {start:<19}  {health_word(r)}")
        if long:
            for line in provenance_lines(r):
                print(f"{'':>7}{line}")
    if dead:
        print(
            "DEAD: RUNNING in its record, but its heartbeat stopped (or its process is gone); "
            "`study run with resume=ID` continues it from its checkpoint, a sweep takes its cell "
            "over"
        )


def health_word(record) -> str:
    """The health rule's flags as the run recorded them (study.health): `ok`, `STUCK`,
    `COLLAPSED`, `STOPPED (...)`; `-` for a run recorded before the rule, or still running."""
    verdict = record.info.get("health")
    if not isinstance(verdict, dict):
        return "-"
    flags = verdict.get("flags")
    if flags is None:  # running: the last epoch's verdict so far
        epochs = verdict.get("epochs") or [{}]
        flags = epochs[-1].get("flags", [])
    word = ", ".join(str(f).upper() for f in flags) if flags else "ok"
    return word + (" (stopped by health_stop)" if verdict.get("stopped") else "")


def provenance_lines(record) -> list[str]:
    """What `study runs --long` shows of a run's record: the code, libraries, settings and
    data it ran with, and which run it reproduces."""
    prov = record.info.get("provenance") or {}
    data = record.info.get("dataset") or {}
    training = record.info.get("training") or {}
    lines = []
    reproduces = record.meta.get("reproduces")
    if isinstance(reproduces, dict):
        lines.append(f"reproduces: run {reproduces.get('id')} of {reproduces.get('store')}")
    if not prov:
        return [*lines, "provenance: none recorded (a run made before study recorded it)"]
    git = prov.get("git") or {}
    code = f"study {prov.get('study')}"
    if git:
        code += f" at {(git.get('commit') or '')[:12]} ({git.get('branch')})"
        code += (
            f", uncommitted changes {(git.get('diff_sha256') or '')[:12]}"
            if git.get("dirty")
            else ""
        )
    lines.append(f"code: {code}")
    code = prov.get("plugin_code") or {}
    plugins = ", ".join(
        f"{p} {v}" + (f" (code {code[p]})" if code.get(p) else "")
        for p, v in (prov.get("plugins") or {}).items()
    )
    lines.append(f"plugins: {plugins or '-'}")
    versions = ", ".join(f"{k} {v}" for k, v in (prov.get("versions") or {}).items() if v)
    lines.append(f"versions: {versions}")
    settings = ", ".join(f"{k}={v}" for k, v in (prov.get("determinism") or {}).items())
    lines.append(f"determinism: {settings}")
    device = training.get("device_name") or "-"
    lines.append(f"device: {device} x {training.get('processes', 1)}")
    root = data.get("data_root") or {}
    if root:
        lines.append(f"data_root: {root.get('typed')} (resolved {root.get('resolved')})")
    for name, digest in (data.get("content") or {}).items():
        lines.append(f"data: {name} {digest[:19]}")
    lines.append(f"command: {' '.join(prov.get('command') or [])}")
    return lines


def sync_runs(folders: list[str] | None, mongo_url: str | None, db: str | None) -> int:
    from study.sync import main as sync_main

    argv = [a for f in folders or [] for a in ("--runs", f)]
    argv += ["--mongo", mongo_url] if mongo_url else []
    argv += ["--db", db] if db else []
    return sync_main(argv)


def print_registry(family: str | None = None) -> None:
    from study.registry import registry

    reg = registry()
    if family is not None:  # every model of one family (this may import a large library)
        if family not in reg.families:
            known = ", ".join(reg.families) or "none installed"
            raise StudyError(f"no model family {family!r}; families: {known}")
        names = reg.families[family][0].names()
        print(f"{len(names)} models in {family} (model={family}:NAME):")
        for name in names:
            print(f"  {family}:{name}")
        return
    print("models:")
    for name, provided in reg.models.items():
        spec = provided.spec
        sizes = ", ".join(f"{p} {s or 'native'}" for p, s in spec.input_size.items())
        print(f"  {name:<16} {provided.plugin:<28} {spec.description} [{sizes}]")
    for prefix, (fam, plugin) in reg.families.items():
        name = f"{prefix}:NAME"
        print(f"  {name:<16} {plugin:<28} {fam.description} (`study list {prefix}` lists them)")
    print("datasets:")
    for name, provided in reg.datasets.items():
        spec = provided.spec
        shape = f"{spec.num_classes} classes, {spec.image_size}x{spec.image_size}x{spec.channels}"
        if spec.describe is not None:  # its classes and sizes come from a data_root's files
            shape = "described from its files"
        print(f"  {name:<16} {provided.plugin:<28} {spec.description} [{shape}]")


def take_option(argv: list[str], short: str, *longs: str) -> tuple[list[str], str | None]:
    """Remove `short VALUE`, `long VALUE` or `long=VALUE` (any of `longs`) from argv; return
    (argv, VALUE)."""
    out, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == short or arg in longs:
            if i + 1 >= len(argv):
                raise StudyError(f"{arg} needs a value, e.g. {arg} runs")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(tuple(f"{long}=" for long in longs)):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, value


def run_experiment(
    argv: list[str], *, base_config: dict | None = None, meta: dict | None = None, started=None
) -> int:
    """Sacred's run_commandline, with study's store choice, preflight and one-line errors.

    `base_config` (a stored run's config) goes under the command line's `with` updates, `meta`
    into the run's Sacred meta; `started`, a dict, receives the new run's `id`."""
    from docopt import docopt
    from sacred.arg_parser import get_config_updates

    from study import distributed, identity, sacred_api
    from study.experiment import ex, preflight
    from study.stores import DEFAULT_FILE_STORE, PROCESS_KEY, UID_KEY, check_run_id, choose_store

    # --runs and --mongo as every other command spells them; -F and -m as Sacred does.
    argv, file_store = take_option(argv, "-F", "--file_storage", "--runs")
    argv, mongo_spec = take_option(argv, "-m", "--mongo_db", "--mongo")
    observed_elsewhere = any(a.split("=")[0] in OBSERVER_FLAGS for a in argv)
    # -m URL[:DB] and -F DIR record to both; $STUDY_MONGO_URL only when no store is named;
    # ./runs unless another Sacred observer (-u, -s, ...) is given.
    store = choose_store(
        file_store,
        mongo_spec,
        options=("-F DIR", "-m URL"),
        both=True,
        environment=not observed_elsewhere,
        default=None if observed_elsewhere else DEFAULT_FILE_STORE,
    )

    short_usage, usage, internal_usage = ex.get_usage()
    args = docopt(internal_usage, argv, default_help=False)
    command = args.get("COMMAND") or ex.default_command
    updates, named_configs = get_config_updates(args["UPDATE"])
    updates, named_configs = _config_files_as_updates(updates, named_configs)
    updates, named_configs = _named_configs_over_files(updates, named_configs)
    updates = parse_booleans(updates)
    check_setting_names(updates)
    err = sacred_api.command_error(ex, command)
    if not args["help"] and err:
        raise StudyError(f"{err.strip()}; commands: run, {', '.join(ex.commands)}, list")
    if sacred_api.handle_help(ex, args, usage):
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if base_config is not None:  # under the command line, like a config file
            base = Path(tmp) / "base.json"
            base.write_text(json.dumps(base_config))
            named_configs = [str(base), *named_configs]
        resume = updates.get("resume")
        if resume is not None:
            # A run id of the chosen store only: `resume=../other/7` must not reach outside it.
            check_run_id(resume, file_store or (store.describe() if store else "the store"))
            if store is None:
                raise StudyError("resume needs the store that holds the run (-F DIR or -m URL)")
            from study.identity import as_trained

            stored = as_trained(store.resumable_config(resume))
            # The stored config, then whatever this command line changes (checked later).
            saved = Path(tmp) / "config.json"
            saved.write_text(json.dumps(stored))
            named_configs = [str(saved), *named_configs]
        # What Experiment.run does before calling the run; study needs the gap in between to
        # add its store and check inputs before recording.
        run = sacred_api.create_run(ex, command, updates, named_configs, args)
    main_rank = distributed.from_environment().is_main
    if not main_rank:  # torchrun: rank 0 alone records the run and talks; the others are quiet
        run.unobserved = True
        run.run_logger.setLevel("ERROR")
    if not run.unobserved:
        # One name for the run in every store (`study sync` matches it); a resumed run keeps it.
        resume = updates.get("resume")
        uid = store.previous_uid(resume) if store is not None else None
        run.meta_info[UID_KEY] = uid or uuid.uuid4().hex
        # Which process records it: a killed run is known dead at once (its resume claimed).
        run.meta_info[PROCESS_KEY] = {"host": identity.this_host(), "pid": os.getpid()}
        run.meta_info.update(meta or {})
    if store is not None and not run.unobserved:
        run.observers.extend(store.observers_for_run(updates.get("resume")))
    if run.main_function.__name__ == "run" and command == ex.default_command and main_rank:
        preflight(run.config)
    _terminate_as_interrupt()
    # At most one process continues a run (study.claims): taken before training, held through it.
    resume_claim = None
    if updates.get("resume") is not None and store is not None and main_rank:
        from study.claims import claim_run_resume

        resume_claim = claim_run_resume(store, check_run_id(updates["resume"], str(store)))
    try:
        run()
        if started is not None:
            started["id"] = sacred_api.run_id(run)
    except StudyError:
        raise
    except KeyboardInterrupt as exc:
        from study.engine import Preempted

        kept = (
            f" ({exc}; its checkpoint holds that step: resume=ID continues from it)"
            if isinstance(exc, Preempted)
            else ""
        )
        print(f"study: interrupted; the run is recorded as INTERRUPTED{kept}", file=sys.stderr)
        return 130
    except Exception:
        if args.get("--debug"):
            raise
        from sacred.utils import format_filtered_stacktrace

        print(format_filtered_stacktrace(), file=sys.stderr)
        return 1
    finally:
        if resume_claim is not None:
            resume_claim.release()
    return 0


# A scheduler's signals that a job is about to be stopped: SLURM's SIGTERM, submitit's SIGUSR2
# (its preemption warning), SIGUSR1 (what `sbatch --signal` sends by default).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def _terminate_as_interrupt() -> None:
    """A stop signal (a scheduler preempting the job) ends the run like Ctrl-C, recorded
    INTERRUPTED; while it trains, after the step in progress, with a checkpoint of that step
    (study.engine.PREEMPT), so that resuming loses nothing."""
    from study import engine

    def handler(signum, frame):
        if not engine.TRAINING.is_set():
            raise KeyboardInterrupt
        engine.PREEMPT.set()

    import threading

    if threading.current_thread() is threading.main_thread():  # signals: the main thread's
        for stop in STOP_SIGNALS:
            signal.signal(stop, handler)


if __name__ == "__main__":
    sys.exit(main())
