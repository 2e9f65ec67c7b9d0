"""Sacred's private API as study uses it (study/sacred_api.py), pinned to the Sacred version
study depends on: an upgrade that changes any of it fails here first."""

from __future__ import annotations

import sacred
from sacred.arg_parser import get_config_updates

from study import sacred_api
from study.experiment import ex


def test_the_pinned_sacred_version():
    assert sacred.__version__ == sacred_api.SACRED_VERSION


def test_each_private_use_still_works():
    from docopt import docopt

    assert sacred_api.command_error(ex, "run") is None
    assert "nope" in (sacred_api.command_error(ex, "nope") or "")
    short_usage, usage, internal_usage = ex.get_usage()
    args = docopt(internal_usage, ["run", "with", "model=small_cnn", "dataset=mnist"])
    assert sacred_api.handle_help(ex, args, usage) is False
    updates, named = get_config_updates(args["UPDATE"])
    run = sacred_api.create_run(ex, "run", updates, named, args)
    assert run.config["model"] == "small_cnn" and run.config["epochs"] == 6  # hook applied
    assert sacred_api.run_id(run) is None  # not started: no observer has named it
    resolved = sacred_api.resolve_run(ex, {"model": "small_cnn", "dataset": "mnist"}, ["fast"])
    assert resolved.config["protocol"] == "fast"
    spec = sacred_api.parse_mongo_spec("db.example.org:27017:exp")
    assert spec["url"] == "db.example.org:27017" and spec["db_name"] == "exp"
    assert sacred_api.parse_mongo_spec("no such thing!") is None
