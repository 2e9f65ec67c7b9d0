"""`study sweep`: a grid of real runs on the CPU, killed midway, resumed, rerun; the report over it.

One sweep (2 models x 2 data sets x 2 seeds, tiny limits) is started, stopped with SIGTERM
after its first cells complete, and finished by running the same command again; a third run
of the command starts nothing. The other tests read that store.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_study

from study.errors import StudyError
from study.report import build_report, select_runs
from study.stores import read_file_store

GRID = ["--models", "small_cnn,resnet18", "--datasets", "mnist,cifar10", "--seeds", "2"]
TINY = ["epochs=1", "batch_size=20", "image_size=32", "train_limit=20", "test_limit=30",
        "precise_bn=0", "gallery=2"]  # fmt: skip
KILL_AFTER = 2  # completed cells before the sweep is stopped


def sweep_args(data: Path, store: Path, *extra) -> list[str]:
    return ["sweep", *GRID, *extra, "with", f"data_root={data}", *TINY, "-F", str(store)]


def study(*args, cwd: Path) -> tuple[int, str, str]:
    """`study ARGS` in this process (no interpreter start-up; cells still run as processes):
    (exit status, stdout, stderr)."""
    from study.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main([str(a) for a in args])
    finally:
        os.chdir(here)
    return rc, out.getvalue(), err.getvalue()


def completed(store: Path) -> list:
    try:
        return [r for r in read_file_store(store) if r.status == "COMPLETED"]
    except StudyError:  # the store does not exist yet
        return []
    except (OSError, ValueError):  # a file caught mid-write: look again
        return []


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    import fakedata

    root = tmp_path_factory.mktemp("sweepdata")
    fakedata.write_mnist(root, n_train=120, n_test=60, seed=0)
    fakedata.write_cifar10(root, n_train=120, n_test=60, seed=1)
    return root


@pytest.fixture(scope="module")
def swept(data, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("sweep")
    store = base / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", *sweep_args(data, store)],
        cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(completed(store)) < KILL_AFTER:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the first cells did not complete in 300 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    killed_out, _ = proc.communicate(timeout=120)
    after_kill = read_file_store(store)

    rc, second, _ = study(*sweep_args(data, store), cwd=base)
    assert rc == 0, second
    after_second = read_file_store(store)
    rc, third, _ = study(*sweep_args(data, store), cwd=base)
    assert rc == 0, third
    return {
        "base": base,
        "store": store,
        "killed_rc": proc.returncode,
        "killed_out": killed_out,
        "after_kill": after_kill,
        "second": second,
        "after_second": after_second,
        "third": third,
        "after_third": read_file_store(store),
    }


def cell_key(r):
    return (r.model, r.dataset, r.config["seed"])


def test_sweep_records_every_cell_once(swept):
    done = [r for r in swept["after_third"] if r.status == "COMPLETED"]
    assert sorted(cell_key(r) for r in done) == sorted(
        (m, d, s) for m in ("small_cnn", "resnet18") for d in ("mnist", "cifar10") for s in (0, 1)
    )
    for r in done:  # each an ordinary run, under the sweep's config, tagged with the sweep
        assert r.config["epochs"] == 1 and r.config["train_limit"] == 20
        run_json = json.loads((r.location / "run.json").read_text())
        assert re.fullmatch(r"sweep:grid-[0-9a-f]{8}", run_json["meta"]["comment"])
        assert r.evaluation() is not None
    assert "8 of 8 cells COMPLETED" in swept["second"]


def test_stopped_sweep_then_rerun_completes_only_the_rest(swept):
    assert swept["killed_rc"] == 130, swept["killed_out"]
    assert "stopped; run the same command again" in swept["killed_out"]
    before = {r.id: r for r in swept["after_kill"]}
    finished = {r.id for r in before.values() if r.status == "COMPLETED"}
    assert len(finished) >= KILL_AFTER
    # A cell running when the sweep was stopped is recorded INTERRUPTED, not left RUNNING (the
    # stop may fall between cells: test_a_sweep_stopped_mid_cell_resumes_the_same_run stops
    # one mid-cell for certain).
    stopped = [r for r in before.values() if r.status != "COMPLETED"]
    assert all(r.status == "INTERRUPTED" for r in stopped), [r.status for r in stopped]

    second = swept["second"]
    assert second.count("skip: COMPLETED") == len(finished)
    ran = re.findall(r"^\[\d\] [^:]+: (run|resume run \d+ from its checkpoint) \(log", second, re.M)
    assert len(ran) == 8 - len(finished)
    after = {r.id: r for r in swept["after_second"]}
    for run_id in finished:  # untouched
        assert after[run_id].stop_time == before[run_id].stop_time
    # An interrupted cell was resumed in its own run (checkpoint) or run afresh (none yet).
    new_ids = set(after) - set(before)
    assert len(new_ids) + sum("resume run" in x for x in ran) == 8 - len(finished)


def test_rerunning_a_finished_sweep_runs_nothing(swept):
    third = swept["third"]
    assert third.count("skip: COMPLETED") == 8
    assert "(log" not in third  # no cell started
    assert [r.id for r in swept["after_third"]] == [r.id for r in swept["after_second"]]


def test_summary_lists_status_and_log_of_each_cell(swept):
    lines = [line for line in swept["second"].splitlines() if re.match(r"^\s+\d+  ", line)]
    assert len(lines) == 8
    for line in lines:
        assert "COMPLETED" in line
    (folder,) = swept["store"].glob("sweep-grid-*")
    logs = sorted(folder.glob("*.log"))
    assert len(logs) == 8  # every cell ran once (the stopped one's log holds both attempts)
    for log in logs:
        assert str(log) in swept["second"]
    summary = json.loads((folder / "summary.json").read_text())
    assert [c["status"] for c in summary["cells"]] == ["COMPLETED"] * 8
    for log in logs:  # each cell's own output: its command, Sacred's start, its epoch
        text = log.read_text()
        assert text.startswith("=== ") and " -m study run with " in text.splitlines()[0]
        assert re.search(r'Started run with ID "\d+"', text)
        assert re.search(r"epoch 1/1: [\d.]+ s, train loss \d\.\d{4}, ", text)


LONG = [t for t in TINY if not t.startswith(("epochs=", "train_limit="))] + [
    "epochs=8", "train_limit=40",
]  # fmt: skip


def test_a_sweep_stopped_mid_cell_resumes_the_same_run(data, tmp_path):
    """Stopped after the cell's first checkpoint (of 8 epochs): the run is INTERRUPTED, and
    the same command resumes it as the same run id. Meanwhile the sweep renews its claim on
    the cell (every STUDY_CLAIM_TOUCH_S, shortened here)."""
    store = tmp_path / "runs"
    args = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={data}", *LONG, "-F", str(store)]  # fmt: skip
    env = {**os.environ, "STUDY_CLAIM_TOUCH_S": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", *args],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    touched = set()  # the claim file's modification times while the cell runs
    deadline = time.monotonic() + 300
    while not (store / "1" / "checkpoint.pt").exists():  # epoch 1 of 8 is done
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the cell's first epoch did not end in 300 s"
        for claim in (store / ".claims").glob("cell-*.claim"):
            with contextlib.suppress(FileNotFoundError):
                touched.add(claim.stat().st_mtime_ns)
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert len(touched) >= 2, "the claim was never renewed while its cell ran"
    (stopped,) = read_file_store(store)
    epochs = [step for step, _ in stopped.metric("test_top1")]
    assert stopped.status == "INTERRUPTED" and 1 <= len(epochs) < 8, (stopped.status, epochs)
    assert stopped.has_checkpoint()
    assert re.search(r"^\s+0  small_cnn\s+mnist\s+0  INTERRUPTED\s+1  ", out, re.M), out

    rc, again, _ = study(*args, cwd=tmp_path)
    assert rc == 0, again
    assert "[0] small_cnn/mnist/seed 0: resume run 1 from its checkpoint (log" in again
    (resumed,) = read_file_store(store)  # the same run, not a second one
    assert (resumed.id, resumed.status) == ("1", "COMPLETED")
    assert [step for step, _ in resumed.metric("test_top1")] == list(range(1, 9))
    assert len(resumed.resumed) == 1
    (log,) = store.glob("sweep-grid-*/000-small_cnn-mnist-seed0.log")
    assert log.read_text().count("=== ") == 2  # both attempts, one log
    assert list((store / ".claims").glob("*.claim")) == []  # released


def test_a_dead_run_without_a_checkpoint_is_recorded_interrupted_when_its_cell_is_taken_over(
    data, tmp_path
):
    """A sweep and its cell killed at once (as a scheduler kills a job) before the cell's first
    checkpoint: `study runs` shows the run DEAD; the next sweep runs the cell again and records
    the dead run INTERRUPTED, saying why, instead of leaving it RUNNING for ever."""
    store = tmp_path / "runs"
    # An epoch of a few seconds (the fake data's 600 images, 64 px): time to kill it mid-way.
    slow = [t for t in LONG if not t.startswith(("train_limit=", "image_size="))]
    args = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={data}", *slow, "image_size=64", "-F", str(store)]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "study", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not read_file_store(store, skipped=[]) if store.exists() else True:  # run 1 started
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (dead,) = read_file_store(store)
    assert dead.status == "RUNNING" and not dead.has_checkpoint()
    from study.identity import pid_alive
    from study.stores.records import PROCESS_KEY

    deadline = time.monotonic() + 30
    while pid_alive(dead.meta[PROCESS_KEY]["pid"]):  # the cell's process finishes dying
        assert time.monotonic() < deadline
        time.sleep(0.01)
    listed = run_study("runs", "--runs", store, cwd=tmp_path).stdout
    assert re.search(r"^\s+1  small_cnn\s+mnist\s+DEAD ", listed, re.M), listed
    assert "DEAD: RUNNING in its record, but its heartbeat stopped" in listed

    rc, out, _ = study(*args, cwd=tmp_path)
    assert rc == 0, out
    assert "[0] small_cnn/mnist/seed 0: run 1 had died; recorded INTERRUPTED" in out
    old, new = read_file_store(store)
    assert (old.id, old.status, new.id, new.status) == ("1", "INTERRUPTED", "2", "COMPLETED")
    (why,) = json.loads((store / "1" / "run.json").read_text())["fail_trace"]
    since = dead.heartbeat or f"its start ({dead.start_time})"
    assert why.startswith(f"no heartbeat since {since}: its process died; a sweep")
    listed = run_study("runs", "--runs", store, cwd=tmp_path).stdout
    assert "DEAD" not in listed


def test_dry_run_and_print_commands_run_nothing(swept, data, tmp_path):
    store = tmp_path / "runs"  # a copy: this test adds a run, which no other test may see
    shutil.copytree(swept["store"], store)
    ids = [r.id for r in read_file_store(store)]
    dry = study(*sweep_args(data, store, "--dry-run", "--seeds", "3"), cwd=tmp_path)[1]
    assert dry.count("skip: COMPLETED") == 8 and "4 of 12 cells would run" in dry
    assert re.search(r"\[2\] small_cnn/mnist/seed 2\s+run$", dry, re.M)

    rc, out, err = study(*sweep_args(data, store, "--print-commands", "--seeds", "3"), cwd=tmp_path)
    lines = out.splitlines()
    pending = re.findall(r"\[(\d+)\] \S+.*run$", dry, re.M)
    # One `study sweep ... --cell N` line per cell still to run, N the sweep's own 0-based index.
    assert [re.search(r" --cell (\d+) ", ln).group(1) for ln in lines] == pending
    assert all(ln.startswith("python -m study sweep --models ") for ln in lines)
    assert all(f"-F {store}" in ln and " --id grid-" in ln and "--print-commands" not in ln
               for ln in lines)  # fmt: skip
    assert rc == 0 and err.count("COMPLETED") == 8  # the skipped cells, on stderr
    assert [r.id for r in read_file_store(store)] == ids

    # A printed line goes through the sweep's claims: run twice, its cell trains once.
    one = shlex.split(lines[0])[3:]  # after `python -m study`
    for _ in range(2):
        run_study(*one, cwd=tmp_path)
    assert len(read_file_store(store)) == len(ids) + 1
    dry = study(*sweep_args(data, store, "--dry-run", "--seeds", "3"), cwd=tmp_path)[1]
    assert "3 of 12 cells would run" in dry


def test_a_failing_cell_does_not_stop_the_others(data, tmp_path):
    store = tmp_path / "runs"
    rc, out, _ = study(
        "sweep", "--models", "small_cnn", "--datasets", "fashion_mnist,mnist", "with",
        f"data_root={data}", "download=False", *TINY, "-F", store, cwd=tmp_path,
    )  # fmt: skip
    assert rc == 1
    assert re.search(r"small_cnn\s+fashion_mnist\s+0\s+FAILED \(exit 2\)", out)
    assert re.search(r"small_cnn\s+mnist\s+0\s+COMPLETED", out)
    log = next(store.glob("sweep-*/000-small_cnn-fashion_mnist-seed0.log")).read_text()
    assert f"study: error: fashion_mnist: files not found under {data}" in log
    assert [r.dataset for r in read_file_store(store)] == ["mnist"]


def test_cell_n_runs_only_that_cell(data, tmp_path):
    store = tmp_path / "runs"
    rc, out, _ = study(*sweep_args(data, store, "--cell", "3", "--dry-run"), cwd=tmp_path)
    assert rc == 0
    assert re.findall(r"^\s+\[(\d)\] (\S+)", out, re.M) == [("3", "resnet18/mnist/seed")]
    assert "1 of 1 cells would run" in out
    rc, out, _ = study(*sweep_args(data, store, "--cell", "3", "--print-commands"), cwd=tmp_path)
    (command,) = out.splitlines()
    assert " --cell 3 " in command
    for bad in ("8", "-1"):
        rc, _, err = study(*sweep_args(data, store, "--cell", bad), cwd=tmp_path)
        assert rc == 2
        assert f"--cell {bad} is out of range; the grid has cells 0-7" in err
    assert not store.exists()


def test_bad_grid_config_stops_before_any_cell(data, tmp_path):
    for extra, message in (
        (["lr=abc"], "lr='abc' is invalid"),
        (["seed=3"], "seed is set by the grid"),
        (["papr"], 'Named config not found: "papr"'),
    ):
        proc = run_study(
            "sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={data}", *extra, "-F", tmp_path / "runs", cwd=tmp_path, check=False,
        ) if extra == ["lr=abc"] else None  # fmt: skip
        if proc is not None:  # once as a user runs it: one line, no traceback
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr
            assert "Traceback" not in proc.stderr
        rc, _, err = study(
            "sweep", "--models", "small_cnn", "--datasets", "mnist", "with",
            f"data_root={data}", *extra, "-F", tmp_path / "runs", cwd=tmp_path,
        )  # fmt: skip
        assert rc == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_the_seed_study_grid(tmp_path):
    out = study("sweep", "seed-study", "--dry-run", "-F", tmp_path / "runs", cwd=tmp_path)[1]
    cells = re.findall(r"^\s+\[\d\] (.+?)\s+run$", out, re.M)
    assert len(cells) == 9 and "9 of 9 cells would run" in out
    assert "vgg16/mnist/seed 0" in cells and "inception_v3/tiny_imagenet/seed 0" in cells
    printed = study("sweep", "seed-study", "--print-commands", cwd=tmp_path)[1].splitlines()
    assert [ln.split(" --cell ")[1].split()[0] for ln in printed] == [str(i) for i in range(9)]
    assert all(ln.startswith("python -m study sweep seed-study --cell ") for ln in printed)
    torchrun = f"{sys.executable} -m torch.distributed.run --nproc-per-node=2"
    printed = study("sweep", "seed-study", "--print-commands", "--launcher", torchrun,
                    cwd=tmp_path)[1]  # fmt: skip
    # The launcher travels with the line: that sweep process starts its cell with it.
    assert f"--launcher {shlex.quote(torchrun)} --cell 0 " in printed.splitlines()[0]


def test_the_launcher_starts_each_cell_or_is_refused_in_one_line(data, tmp_path):
    store = tmp_path / "runs"
    rc, _, err = study(*sweep_args(data, store, "--launcher", "no-such-torchrun -x"), cwd=tmp_path)
    assert rc == 2 and err.strip() == (
        "study: error: --launcher 'no-such-torchrun -x': no-such-torchrun is not a program on "
        "PATH; e.g. --launcher 'torchrun --nproc-per-node=4'"
    )
    assert not store.exists()
    # Two processes through torchrun (gloo on the CPU) record the cell as one run.
    torchrun = f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node=2"
    rc, out, _ = study(
        "sweep", "--models", "small_cnn", "--datasets", "mnist", "--launcher", torchrun,
        "with", f"data_root={data}", *TINY, "-F", store, cwd=tmp_path,
    )  # fmt: skip
    assert rc == 0, out
    (run,) = read_file_store(store)
    assert run.status == "COMPLETED" and run.info["training"]["processes"] == 2


def _record(run_id, status, *, heartbeat_age=None, checkpoint=False, folder=None, **config):
    """A run of the cell below, as a store reads it: its heartbeat `heartbeat_age` s old."""
    from datetime import timedelta

    from study import identity
    from study.stores import RunRecord

    beat = None
    if heartbeat_age is not None:
        beat = (identity.utcnow() - timedelta(seconds=heartbeat_age)).isoformat()
    location = None
    if checkpoint:
        location = folder / run_id
        location.mkdir(parents=True)
        # A checkpoint as the engine writes one: it verifies by its digest and loads weights-only.
        from test_stores import write_checkpoint

        write_checkpoint(location / "checkpoint.pt")
    return RunRecord(
        id=run_id, store="memory", status=status, experiment="study", command="run",
        config={**CELL_CONFIG, **config}, info={}, result=None, metrics={}, host={},
        start_time=beat, stop_time=None, heartbeat=beat, location=location,
    )  # fmt: skip


CELL_CONFIG = {"model": "small_cnn", "dataset": "mnist", "seed": 0, "lr": 0.1, "epochs": 3}


def _planned(records):
    from study.sweep import Cell, describe, plan

    cell = Cell(0, "small_cnn", "mnist", 0, dict(CELL_CONFIG))
    plan(cell, records)
    return cell.action, cell.run_id, describe(cell)


def test_a_live_heartbeat_is_left_alone_and_a_stale_one_resumed(tmp_path):
    from study import identity

    live = _record("3", "RUNNING", heartbeat_age=10, checkpoint=True, folder=tmp_path)
    assert _planned([live]) == (
        "running", "3", f"skip: run 3 is RUNNING (heartbeat within {identity.STALE_S:.0f} s)"
    )  # fmt: skip
    # Just inside STALE_S still alive; just past it, the run's process is taken for gone.
    edge = _record("4", "RUNNING", heartbeat_age=identity.STALE_S - 3, checkpoint=True,
                   folder=tmp_path)  # fmt: skip
    assert _planned([edge])[:2] == ("running", "4")
    stale = _record("5", "RUNNING", heartbeat_age=identity.STALE_S + 3, checkpoint=True,
                    folder=tmp_path)  # fmt: skip
    assert _planned([stale]) == ("resume", "5", "resume run 5 from its checkpoint")
    # A live run elsewhere beats a resumable one; a COMPLETED one beats both.
    assert _planned([stale, live])[:2] == ("running", "3")
    done = _record("7", "COMPLETED", heartbeat_age=500)
    assert _planned([stale, live, done]) == ("done", "7", "skip: COMPLETED as run 7")


def test_a_cell_resumes_its_latest_checkpoint_and_matches_what_was_trained(tmp_path):
    two = _record("2", "INTERRUPTED", heartbeat_age=900, checkpoint=True, folder=tmp_path)
    ten = _record("10", "FAILED", heartbeat_age=900, checkpoint=True, folder=tmp_path)
    assert _planned([ten, two])[:2] == ("resume", "10")  # numeric order: 10 is the latest
    bare = _record("11", "INTERRUPTED", heartbeat_age=900)  # no checkpoint: nothing to resume
    assert _planned([bare]) == ("run", None, "run")
    # Another place (data_root) is the same cell; another learning rate is not.
    moved = _record("12", "COMPLETED", heartbeat_age=900, data_root="/elsewhere")
    assert _planned([moved])[:2] == ("done", "12")
    other = _record("13", "COMPLETED", heartbeat_age=900, lr=0.2)
    assert _planned([other])[:2] == ("run", None)


def _status(text):
    """A status as a store parses it: a new string, not the interned literal."""
    return "".join(list(text))


def test_plan_takes_the_first_completed_and_the_latest_live_run(tmp_path):
    done = [_record(i, _status("COMPLETED"), heartbeat_age=900) for i in ("2", "10")]
    assert _planned(done[::-1]) == ("done", "2", "skip: COMPLETED as run 2")
    live = [_record(i, _status("RUNNING"), heartbeat_age=5) for i in ("3", "10")]
    assert _planned(live[::-1])[:2] == ("running", "10")
    # A status that is not Sacred's is not done (it sorts before COMPLETED).
    assert _planned([_record("4", "ABORTED", heartbeat_age=900)]) == ("run", None, "run")


def test_plan_lists_the_cells_dead_runs_only(tmp_path):
    from study.sweep import Cell, plan

    records = [
        _record("1", _status("RUNNING"), heartbeat_age=900),  # its process gone
        _record("2", _status("INTERRUPTED"), heartbeat_age=900),
        _record("3", _status("FAILED"), heartbeat_age=900),
        _record("4", _status("QUEUED"), heartbeat_age=900),
        _record("5", _status("TIMED_OUT"), heartbeat_age=900),
        _record("6", _status("RUNNING"), heartbeat_age=900, lr=0.2),  # another cell's
    ]
    cell = Cell(0, "small_cnn", "mnist", 0, dict(CELL_CONFIG))
    plan(cell, records)
    assert [r.id for r in cell.dead] == ["1"] and cell.action == "run"


def test_plan_matches_what_was_trained_whatever_the_key_order():
    # Another learning rate, below or above this cell's, is another cell; the key order of a
    # stored config is not.
    for lr in (0.05, 0.2):
        assert _planned([_record("5", "COMPLETED", heartbeat_age=900, lr=lr)])[:2] == ("run", None)
    import dataclasses

    stored = _record("6", "COMPLETED", heartbeat_age=900)
    reordered = dataclasses.replace(stored, config=dict(reversed(list(stored.config.items()))))
    assert list(reordered.config) != list(CELL_CONFIG)
    assert _planned([reordered])[:2] == ("done", "6")


def test_plan_names_the_sweep_holding_a_cell_and_its_claim_key():
    from study.sweep import Cell, cell_key, describe

    cell = Cell(0, "small_cnn", "mnist", 0, dict(CELL_CONFIG), action="claimed")
    assert describe(cell) == "skip: another sweep (elsewhere) is running it"
    cell.holder = "node7 pid 42"
    assert describe(cell) == "skip: another sweep (node7 pid 42) is running it"
    # The claim's name is kept by every version that may share a store: pinned, not recomputed.
    assert cell_key(cell) == "cell-798b29de099d991e1f368ae2e326f21cb0bbee22"


def test_a_mongo_password_is_never_printed():
    from study.sweep import make_store

    store = make_store(None, "mongodb://ann:s3cret@db.example.org:27017:exp")
    # Cells get the URL in $STUDY_MONGO_URL, never on a command line; printed commands too.
    assert store.args == [] and store.printable_args == [] and "s3cret" not in store.where
    assert store.env == {"STUDY_MONGO_URL": "mongodb://ann:s3cret@db.example.org:27017:exp"}
    plain = make_store(None, "mongodb://db.example.org:27017:exp")
    assert plain.printable_args == plain.args


def test_the_sweep_chooses_its_store_as_study_run_does(monkeypatch, tmp_path):
    from study.errors import StudyError
    from study.sweep import make_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STUDY_MONGO_URL", raising=False)
    files = make_store(None, None)  # ./runs, absolute: cells and other sweeps may run elsewhere
    assert files.folder == tmp_path / "runs" and files.args == ["-F", str(tmp_path / "runs")]
    monkeypatch.setenv("STUDY_MONGO_URL", "mongodb://ann:s3cret@db.example.org:27017:exp")
    from_env = make_store(None, None)  # the cells inherit the variable: nothing to pass
    assert from_env.folder is None and from_env.args == [] and from_env.env == {}
    assert from_env.where == "mongodb://ann:***@db.example.org:27017/exp"
    assert make_store("here", None).folder == tmp_path / "here"  # -F wins over the variable
    with pytest.raises(StudyError, match="^give -F DIR or -m URL, not both$"):
        make_store("here", "mongodb://db.example.org")


def test_report_over_the_sweep_shows_intervals_and_tests(swept, tmp_path):
    records = select_runs(read_file_store(swept["store"]))
    html = build_report(records, tmp_path / "sweep.html", "html").read_text()
    # 2 models x 2 data sets x top-1/top-5, n = 2 each: t intervals for the mean
    assert html.count('<span class="ci t">[') == 8
    assert "t distribution with n − 1 degrees of freedom" in html
    # Runs of 20 images are flagged by the health rule (study.health): no cell is ranked, so
    # no pair is tested, and the report says why.
    assert html.count("<tr data-test=") == 0
    assert "flagged as not a working classifier" in html
    assert "McNemar" in html and "Expected calibration error" in html
    assert html.count('<img class="reliability"') == 2
    assert html.count("ECE ") >= 8  # every run in the appendix
    assert "5. Conclusions" in html


def test_two_sweeps_of_one_grid_started_together_run_each_cell_once(data, tmp_path):
    store = tmp_path / "runs"
    args = ["sweep", "--models", "small_cnn", "--datasets", "mnist", "--seeds", "3", "with",
            f"data_root={data}", *TINY, "-F", str(store)]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "study", *args],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = read_file_store(store)
    assert sorted(r.config["seed"] for r in runs) == [0, 1, 2]  # one run per cell, no more
    assert all(r.status == "COMPLETED" for r in runs)
    started = [len(re.findall(r"^\[\d\] [^:]+: run \(log", out, re.M)) for out in outs]
    assert sum(started) == 3, outs
    assert all("3 of 3 cells COMPLETED" in out for out in outs), outs


def test_a_sweeps_true_and_false_are_booleans_as_in_study_run():
    # `study run with amp=false` reads False; the sweep resolves each cell's config the same
    # way (it refused 'false' as "expected auto, true or false").
    from study.sweep import resolve

    config = resolve(("fast", "amp=false", "compile=False"), "small_cnn", "mnist", 0)
    assert config["amp"] is False and config["compile"] is False
    assert resolve(("fast", "amp=TRUE"), "small_cnn", "mnist", 0)["amp"] is True
    with pytest.raises(StudyError, match="amp='maybe' is invalid; expected auto, true or false"):
        resolve(("amp=maybe",), "small_cnn", "mnist", 0)
