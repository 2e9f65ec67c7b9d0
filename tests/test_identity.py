"""study.identity: the rules every part of study shares, held once (what a run trained, run
order, times, liveness), and each user of a rule agreeing with it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

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


NOON = datetime(2026, 12, 7, 12, 0, 0)  # a fixed clock, so a bound can be met exactly


@pytest.fixture
def noon(monkeypatch):
    monkeypatch.setattr(identity, "utcnow", lambda: NOON)
    return NOON


def test_age_is_the_seconds_since_a_sign_of_life(noon):
    assert identity.age_s("2026-12-07T11:59:30") == 30.0
    assert identity.age_s(noon + timedelta(seconds=5)) == -5.0  # a clock ahead of ours
    assert identity.age_s(None) is None and identity.age_s("not a time") is None


def test_liveness_and_a_future_sign_at_their_exact_bounds(noon):
    stale = timedelta(seconds=identity.STALE_S)
    assert not identity.alive(noon - stale)  # exactly STALE_S old: gone
    assert identity.alive(noon - stale + timedelta(microseconds=1))
    # A sign up to 300 s ahead of our clock counts (skew); beyond, none (a hostile store).
    ahead = noon + timedelta(seconds=300)
    assert identity.sign_of_life(ahead) == ahead and identity.alive(ahead)
    for late in (timedelta(seconds=300, microseconds=1), timedelta(days=1)):
        assert identity.sign_of_life(noon + late) is None and not identity.alive(noon + late)
    assert identity.run_alive("RUNNING", noon + timedelta(days=1), noon)  # its start then


def test_a_time_no_clock_gives_is_no_time():
    for value in (True, False, float("nan"), float("inf"), 1e300, 1e18, -1e18, "9" * 10_000):
        assert identity.parse_time(value) is None, value
    assert identity.parse_time(0) == datetime(1970, 1, 1)
    assert identity.parse_time(1.5) == datetime(1970, 1, 1, 0, 0, 1, 500000)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def _wait_for_state(pid: int, states: str) -> str:
    for _ in range(1000):
        if (state := _state(pid)) in states:
            return state
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached state {states}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_which_processes_of_this_host_are_alive():
    assert identity.this_host() == socket.gethostname()
    assert identity.pid_alive(os.getpid())
    assert not identity.pid_alive(2**70) and not identity.pid_alive(-(2**70))  # no such pid
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert identity.pid_alive(child.pid)
        time.sleep(0.2)
        assert child.poll() is None  # asking sent it no signal that ends it (signal 0)
        child.kill()
        _wait_for_state(child.pid, "Z")  # killed, not yet collected: signals still find it
        assert not identity.pid_alive(child.pid)
        assert not identity.alive(identity.utcnow(), identity.this_host(), child.pid)
        # Another host's process ids say nothing here, whatever that host's name sorts after.
        elsewhere = identity.this_host() + "-elsewhere"
        assert identity.alive(identity.utcnow(), elsewhere, child.pid)
    finally:
        child.kill()
        child.wait()
    assert not identity.pid_alive(child.pid)  # collected: no such process
    assert not identity._zombie(child.pid)  # no /proc entry: the signal's answer stands


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_a_stopped_process_is_alive():
    """Stopped under a debugger (state t, which sorts after a zombie's Z) or by a signal (T)."""
    code = ("import ctypes, os, signal, time; ctypes.CDLL(None).ptrace(0, 0, None, None); "
            "os.kill(os.getpid(), signal.SIGSTOP); time.sleep(60)")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        _wait_for_state(child.pid, "tT")
        assert identity.pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()


def test_someone_elses_process_exists(monkeypatch):
    # Tests run as root here, where no process refuses signal 0: the refusal is made up.
    def refused(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(identity.os, "kill", refused)
    assert identity.pid_alive(1)
