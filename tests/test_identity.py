"""study.identity: the rules every part of study shares, held once (what a run trained, run
order, times, liveness), and each user of a rule agreeing with it."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

from study import identity

BASE = {"model": "small_cnn", "dataset": "mnist", "seed": 0, "lr": 0.1, "epochs": 2}


def test_place_keys_say_where_a_run_ran_not_what_it_trained():
    from study import experiment, report, sweep

    for key in identity.PLACE_KEYS:
        moved = {**BASE, key: "elsewhere"}
        assert sweep.identity(moved) == sweep.identity(BASE), key  # the same sweep cell
        assert key in report.REPEAT_KEYS, key  # pooled as repeats by the report
        assert key in experiment.RESUMABLE_KEYS, key  # may change on resume
        assert key not in experiment.training_config(moved), key
    assert sweep.identity({**BASE, "lr": 0.2}) != sweep.identity(BASE)
    assert "lr" in experiment.training_config(BASE)


def test_a_setting_added_since_reads_as_what_older_runs_trained_with():
    """`dropout` came after runs were recorded without it, all of which trained with
    torchvision's 0.5: an older `paper` run is the same sweep cell as today's (0.5), an older
    `fast` one is not (today's `fast` has none), and a reproduction or resume trains it with 0.5."""
    from study import settings, sweep
    from study.reproduce import reproducible_config

    assert settings.BEFORE_RECORDED["dropout"] == 0.5
    assert identity.trained(BASE)["dropout"] == 0.5
    assert identity.trained({**BASE, "dropout": 0.0})["dropout"] == 0.0
    assert sweep.identity({**BASE, "dropout": 0.5}) == sweep.identity(BASE)
    assert sweep.identity({**BASE, "dropout": 0.0}) != sweep.identity(BASE)
    assert reproducible_config(BASE)["dropout"] == 0.5
    assert reproducible_config({**BASE, "dropout": 0.0})["dropout"] == 0.0
    assert all(settings.BY_NAME[k].before == v for k, v in settings.BEFORE_RECORDED.items())


def test_one_run_order_everywhere(tmp_path):
    from study.report import _id_key
    from study.stores import RunRecord, read_file_store
    from study.sweep import _run_order

    ids = ["10", "a", "2", "1", "b2"]
    expected = ["1", "2", "10", "a", "b2"]
    assert sorted(ids, key=identity.run_order) == expected

    def record(run_id):
        return RunRecord(run_id, "s", "COMPLETED", "study", "run", {}, {}, None, {}, {}, None,
                         None)  # fmt: skip

    assert [r.id for r in sorted(map(record, ids), key=_run_order)] == expected
    assert [r.id for r in sorted(map(record, ids), key=_id_key)] == expected
    for run_id in ids:
        (tmp_path / run_id).mkdir()
        (tmp_path / run_id / "run.json").write_text('{"status": "COMPLETED"}')
        (tmp_path / run_id / "config.json").write_text("{}")
    assert [r.id for r in read_file_store(tmp_path)] == expected


def test_times_and_the_one_liveness_rule():
    now = identity.utcnow()
    assert identity.parse_time(now.isoformat()) == now
    assert identity.parse_time("2026-01-02T03:04:05+01:00").isoformat() == "2026-01-02T02:04:05"
    assert identity.parse_time("not a time") is None and identity.parse_time(None) is None
    assert identity.alive(now.isoformat()) and identity.alive(now)
    stale = now - timedelta(seconds=identity.STALE_S + 1)
    assert not identity.alive(stale) and not identity.alive(None)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    here = identity.this_host()
    assert not identity.alive(now, here, proc.pid)  # a process of this host that has exited
    assert identity.alive(now, here, os.getpid())
    assert identity.alive(now, "another-host", proc.pid)  # elsewhere: by its age alone
    assert identity.run_alive("RUNNING", None, now.isoformat())  # no heartbeat yet: its start
    assert not identity.run_alive("COMPLETED", now.isoformat(), now.isoformat())


def test_liveness_either_side_of_stale_s():
    now = identity.utcnow()
    assert identity.alive(now - timedelta(seconds=identity.STALE_S - 2))
    assert not identity.alive(now - timedelta(seconds=identity.STALE_S + 2))
    here = identity.this_host()
    assert not identity.alive(now - timedelta(seconds=identity.STALE_S + 2), here, os.getpid())
    assert identity.run_alive("QUEUED", None, now) and not identity.run_alive("FAILED", now, now)


def test_the_intervals_are_shortened_through_the_environment():
    # What tests of claim renewal and stale heartbeats set; a default run reads neither.
    code = "from study import identity, sweep; print(identity.STALE_S, sweep.CLAIM_TOUCH_S)"
    env = {**os.environ, "STUDY_STALE_S": "1.5", "STUDY_CLAIM_TOUCH_S": "0.25"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["1.5", "0.25"], out.stderr
    for name in ("STUDY_STALE_S", "STUDY_CLAIM_TOUCH_S"):
        env.pop(name)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["120.0", "30.0"], out.stderr
