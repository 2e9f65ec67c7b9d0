"""Every use of Sacred's private API, in one place.

study needs a few things Sacred 0.8.7 has no public name for: the gap between creating a run and
starting it (to add its store and check inputs before anything is recorded), the command and
help checks of its command line, a run's id, a config resolved without running, and the parser
of `-m`'s `host:port:db` form. tests/test_sacred_api.py pins the version and checks each, so a
Sacred upgrade breaks one test, not four modules. (The observer subclasses,
study.stores.files.FileStore and study.stores.mongo.StudyMongoObserver, extend Sacred's observers
and use their attributes as subclasses do.)
"""

from __future__ import annotations

SACRED_VERSION = "0.8.7"  # pyproject.toml pins sacred==0.8.7


def create_run(ex, command: str, updates: dict, named_configs: list, args: dict):
    """The run `ex.run(...)` would start, not started: what Experiment.run does first."""
    return ex._create_run(command, updates, named_configs, {}, {}, args)


def resolve_run(ex, updates: dict, named_configs: list):
    """The default command's run with this config, created (config hooks applied), not run."""
    from sacred.initialize import create_run as sacred_create_run

    return sacred_create_run(ex, ex.default_command, updates, named_configs=named_configs)


def command_error(ex, command: str) -> str | None:
    """Sacred's complaint about a command name (None: the experiment has it)."""
    return ex._check_command(command)


def handle_help(ex, args: dict, usage) -> bool:
    """Print Sacred's help when the command line asks for it; whether it did."""
    return ex._handle_help(args, usage)


def run_id(run):
    """The id its observers gave a run (None: unobserved, or not started yet)."""
    return run._id


def parse_mongo_spec(spec: str) -> dict | None:
    """Sacred's `-m [host:port:]db[.collection][!priority]` form as its keyword arguments
    (url, db_name, collection, overwrite, priority); None when `spec` is not in that form."""
    import re

    from sacred.observers.mongo import get_pattern, parse_mongo_db_arg

    return parse_mongo_db_arg(spec) if re.match(get_pattern(), spec) else None
