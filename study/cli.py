"""The `study` command line.

`study run with model=... dataset=...` and every other Sacred command (print_config,
print_named_configs, ...) go to the Sacred experiment; `study list` is study's own.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from study.errors import StudyError

OWN_COMMANDS = ("list",)
# Sacred options that choose an observer: with any of these, no default file store is added.
OBSERVER_FLAGS = (
    "-m", "--mongo_db", "-u", "--unobserved", "-s", "--sql", "-t", "--tiny_db",
    "-S", "--s3", "-G", "--gcs", "-q", "--queue",
)  # fmt: skip

USAGE = """usage: study run with model=NAME dataset=NAME [KEY=VALUE ...] [-F DIR]
       study print_config with model=NAME dataset=NAME [KEY=VALUE ...]
       study list

Runs are recorded in ./runs unless -F DIR (or a Sacred observer flag such as -m) is given.
`study run --help` lists Sacred's options; `study print_config with ...` shows every config key.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(USAGE)
            return 0 if argv else 2
        if argv[0] in OWN_COMMANDS:
            return _own_command(argv)
        return run_experiment(argv)
    except StudyError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2


def _own_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="study")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every registered model and data set, with its plugin")
    args = parser.parse_args(argv)
    if args.command == "list":
        print_registry()
    return 0


def print_registry() -> None:
    from study.registry import registry

    reg = registry()
    print("models:")
    for name, provided in reg.models.items():
        spec = provided.spec
        sizes = ", ".join(f"{p} {s or 'native'}" for p, s in spec.input_size.items())
        print(f"  {name:<16} {provided.plugin:<28} {spec.description} [{sizes}]")
    print("datasets:")
    for name, provided in reg.datasets.items():
        spec = provided.spec
        shape = f"{spec.num_classes} classes, {spec.image_size}x{spec.image_size}x{spec.channels}"
        print(f"  {name:<16} {provided.plugin:<28} {spec.description} [{shape}]")


def take_option(argv: list[str], short: str, long: str) -> tuple[list[str], str | None]:
    """Remove `short VALUE`, `long VALUE` or `long=VALUE` from argv; return (argv, VALUE)."""
    out, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg in (short, long):
            if i + 1 >= len(argv):
                raise StudyError(f"{arg} needs a value, e.g. {arg} runs")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
        else:
            out.append(arg)
        i += 1
    return out, value


def run_experiment(argv: list[str]) -> int:
    """Sacred's run_commandline, with study's store choice, preflight and one-line errors."""
    from docopt import docopt
    from sacred.arg_parser import get_config_updates

    from study.experiment import ex, preflight
    from study.stores import DEFAULT_FILE_STORE, FileStore, read_json

    argv, file_store = take_option(argv, "-F", "--file_storage")
    observed_elsewhere = any(a.split("=")[0] in OBSERVER_FLAGS for a in argv)
    if file_store is None and not observed_elsewhere:
        file_store = DEFAULT_FILE_STORE

    short_usage, usage, internal_usage = ex.get_usage()
    args = docopt(internal_usage, argv, default_help=False)
    command = args.get("COMMAND") or ex.default_command
    updates, named_configs = get_config_updates(args["UPDATE"])
    err = ex._check_command(command)
    if not args["help"] and err:
        raise StudyError(f"{err.strip()}; commands: run, {', '.join(ex.commands)}, list")
    if ex._handle_help(args, usage):
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        if updates.get("resume") is not None:
            if file_store is None:
                raise StudyError("resume needs the file store that holds the run (-F DIR)")
            stored = _resumable_config(Path(file_store), updates["resume"], read_json)
            # The stored config, then whatever this command line changes (checked later).
            saved = Path(tmp) / "config.json"
            saved.write_text(__import__("json").dumps(stored))
            named_configs = [str(saved), *named_configs]
        # Sacred's private _create_run is what Experiment.run does before calling the run;
        # study needs the gap in between to add its store and check inputs before recording.
        run = ex._create_run(command, updates, named_configs, {}, {}, args)
    if file_store is not None and not run.unobserved:
        run.observers.append(FileStore(file_store))
    if run.main_function.__name__ == "run" and command == ex.default_command:
        preflight(run.config)
    _terminate_as_interrupt()
    try:
        run()
    except StudyError:
        raise
    except KeyboardInterrupt:
        print("study: interrupted; the run is recorded as INTERRUPTED", file=sys.stderr)
        return 130
    except Exception:
        if args.get("--debug"):
            raise
        from sacred.utils import format_filtered_stacktrace

        print(format_filtered_stacktrace(), file=sys.stderr)
        return 1
    return 0


def _resumable_config(store: Path, run_id, read_json) -> dict:
    folder = store / str(run_id)
    if not (folder / "run.json").exists():
        raise StudyError(f"resume={run_id}: no run {run_id} in {store}; see the folders there")
    status = read_json(folder / "run.json").get("status")
    if status == "COMPLETED":
        raise StudyError(f"resume={run_id}: run {run_id} in {store} already COMPLETED")
    config = read_json(folder / "config.json")
    config.pop("resume", None)
    return config


def _terminate_as_interrupt() -> None:
    """SIGTERM (a scheduler stopping the job) ends the run like Ctrl-C: recorded INTERRUPTED."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())
