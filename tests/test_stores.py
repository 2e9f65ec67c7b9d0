"""The file store under concurrency and with files nobody trusts: atomic writes from many
threads, leftovers of killed writers, readers that skip what they cannot read."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import RECORDS, run_study

from study.atomic import _host, write_atomic
from study.errors import StoreError
from study.stores import FileStore, read_file_store

FAST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]


def test_two_threads_hammering_save_json_lose_nothing(tmp_path):
    """Sacred's heartbeat thread and the main thread save run.json at once."""
    store = FileStore(str(tmp_path))
    store.dir = str(tmp_path / "1")
    os.mkdir(store.dir)
    errors: list[Exception] = []
    barrier = threading.Barrier(2)

    def hammer(writer):
        barrier.wait()
        for n in range(300):
            try:
                store.save_json({"writer": writer, "n": n, "pad": "x" * 4000}, "run.json")
            except Exception as exc:  # the old pid-named temp: FileNotFoundError
                errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [], f"{len(errors)} of 600 writes failed: {errors[0]!r}"
    final = json.loads((tmp_path / "1" / "run.json").read_text())
    assert final["n"] == 299 and final["pad"] == "x" * 4000
    assert os.listdir(tmp_path / "1") == ["run.json"]  # no temporary file left


def test_write_atomic_gives_a_plain_files_mode(tmp_path):
    write_atomic(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["a.json"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temps_are_gone_after_the_next_run(mnist_root, tmp_path):
    store = tmp_path / "runs"
    killed = store / "3"  # a run whose process was killed mid-write
    killed.mkdir(parents=True)
    (killed / "run.json").write_text(json.dumps({"status": "RUNNING"}))
    (killed / "config.json").write_text("{}")
    dead, host, now = _dead_pid(), _host(), time.time()
    stale = [
        killed / f".run.json~{host}~{dead}~a1b2.tmp",  # its writer has exited
        killed / f"metrics.json.{dead}.tmp",  # the old pid-only name, an hour old
        killed / f".checkpoint.pt.{dead}.tmp",  # the same, from the checkpoint writer
        store / f".summary.json~elsewhere~{dead}~c3d4.tmp",  # another host's, an hour old
    ]
    kept = [
        killed / f".run.json~{host}~{os.getpid()}~e5f6.tmp",  # a live writer (this test)
        killed / f".info.json~elsewhere~{dead}~g7h8.tmp",  # another host's, recent: may live
        killed / f"config.json.{dead}.tmp",  # pid-only and recent: may be another host's
    ]
    for path in stale + kept:
        path.write_text("{half")
        os.utime(path, (now - 10, now - 10))
    for path in stale[1:]:
        os.utime(path, (now - 3600, now - 3600))

    run_study("run", "with", *FAST, f"data_root={mnist_root}", "epochs=1", "train_limit=50",
              "test_limit=20", "gallery=0", "-F", store, cwd=tmp_path)  # fmt: skip
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert [r.id for r in read_file_store(store) if r.status == "COMPLETED"] == ["4"]


@pytest.fixture
def broken_store(tmp_path) -> Path:
    """The ten recorded runs (tests/records), three of them damaged and one still being created."""
    import numpy as np

    store = tmp_path / "runs"
    shutil.copytree(RECORDS, store)
    (store / "2" / "run.json").write_text('{"status": "COMPLETED", "resu')  # bad JSON
    metrics = json.loads((store / "5" / "metrics.json").read_text())
    metrics["test_top1"]["values"][0] = "high"  # a wrong value type
    (store / "5" / "metrics.json").write_text(json.dumps(metrics))
    with np.load(store / "8" / "evaluation.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["topk"] = arrays["topk"][:-7]  # fewer rows than labels
    np.savez_compressed(store / "8" / "evaluation.npz", **arrays)
    (store / "11").mkdir()  # Sacred has written run.json, not yet config.json
    run = json.loads((store / "1" / "run.json").read_text())
    run.update(status="RUNNING", stop_time=None, result=None)
    (store / "11" / "run.json").write_text(json.dumps(run))
    return store


def test_a_malformed_run_is_skipped_with_one_line_while_the_rest_report(broken_store, tmp_path):
    listing = run_study("runs", "--runs", broken_store, cwd=tmp_path)
    ids = [line.split()[0] for line in listing.stdout.splitlines()[2:]]
    assert ids == ["1", "3", "4", "6", "7", "8", "9", "10"]  # 8's evaluation: reports only
    notes = listing.stderr.strip().splitlines()
    assert len(notes) == 2 and "Traceback" not in listing.stderr, listing.stderr
    assert f"{broken_store / '2' / 'run.json'}: unreadable run file" in notes[0]
    assert f"{broken_store / '5' / 'metrics.json'}: metric 'test_top1'" in notes[1]
    assert "'high' is not a number" in notes[1]

    report = run_study("report", "--runs", broken_store, "--out", "r.html", cwd=tmp_path)
    assert "study report: 7 runs -> r.html (3 skipped)" in report.stdout, report.stdout
    notes = report.stderr.strip().splitlines()
    assert len(notes) == 3, report.stderr
    assert f"run 8 in {broken_store}: evaluation.npz is inconsistent: topk" in notes[2]
    html = (tmp_path / "r.html").read_text()
    assert "Skipped runs" in html and "evaluation.npz is inconsistent" in html
    assert len(re.findall(r'<div class="run[ "]', html)) == 7

    # A run the filters leave out is not read beyond run.json and config.json.
    only = run_study("report", "--runs", broken_store, "--datasets", "tiny_imagenet", "--out",
                     "m.html", cwd=tmp_path)  # fmt: skip
    assert "metrics.json" not in only.stderr and "evaluation.npz" not in only.stderr
    assert "study report: 3 runs -> m.html (1 skipped)" in only.stdout  # run 2's run.json


@pytest.mark.parametrize("damage", ["negative", "moved", "no_topk_column"])
def test_an_evaluation_whose_confusion_disagrees_with_its_labels_is_refused(tmp_path, damage):
    import numpy as np

    store = tmp_path / "runs"
    store.mkdir()
    shutil.copytree(RECORDS / "8", store / "1")
    path = store / "1" / "evaluation.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    (rec,) = read_file_store(store)
    assert rec.evaluation()["confusion"].sum() == len(arrays["labels"])  # sound as stored
    conf = arrays["confusion"]
    if damage == "negative":  # the same sum, with a negative count
        conf[0, 0] += 5
        conf[0, 1] -= conf[0, 1] + 5
    elif damage == "moved":  # one image moved to another cell
        row = int(np.argmax(conf.sum(axis=1)))
        col = int(np.argmax(conf[row]))
        conf[row, col] -= 1
        conf[row, (col + 1) % conf.shape[1]] += 1
    else:
        arrays["topk"] = arrays["topk"][:, :0]
    np.savez_compressed(path, **arrays)
    (rec,) = read_file_store(store)
    expected = "topk is" if damage == "no_topk_column" else "confusion disagrees with labels"
    with pytest.raises(
        StoreError, match=f"run 1 in .*: evaluation.npz is inconsistent: {expected}"
    ):
        rec.evaluation()


def test_a_reader_looping_while_runs_start_never_fails(mnist_root, tmp_path):
    store = tmp_path / "runs"
    command = [sys.executable, "-m", "study", "run", "with", *FAST, f"data_root={mnist_root}",
               "epochs=1", "train_limit=50", "test_limit=20", "gallery=0",
               "-F", str(store)]  # fmt: skip
    logs = [tmp_path / f"run{i}.log" for i in range(3)]
    outs = [open(log, "w") for log in logs]
    procs = [subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=out) for out in outs]
    reads, seen, notes = 0, set(), []
    while any(p.poll() is None for p in procs):
        if store.is_dir():
            runs = read_file_store(store, skipped=notes)  # never raises, never notes
            seen.update((r.id, r.status) for r in runs)
            reads += 1
    for p in procs:
        assert p.wait() == 0, "\n".join(log.read_text()[-2000:] for log in logs)
    for out in outs:
        out.close()
    assert notes == []
    assert reads > 50 and any(status == "RUNNING" for _, status in seen), (reads, seen)
    final = read_file_store(store, skipped=notes)
    assert sorted(r.id for r in final) == ["1", "2", "3"] and notes == []
    assert all(r.status == "COMPLETED" and r.metrics and r.config for r in final)


def test_resume_takes_a_run_id_of_the_chosen_store_only(tmp_path):
    other = tmp_path / "other" / "7"  # an interrupted run of another store
    other.mkdir(parents=True)
    (other / "run.json").write_text(json.dumps({"status": "INTERRUPTED"}))
    (other / "config.json").write_text(json.dumps({"model": "small_cnn", "dataset": "mnist"}))
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    for value in ("../other/7", "7/../../other/7", "abc"):
        proc = run_study("run", "with", f"resume={value}", "-F", tmp_path / "runs",
                         cwd=tmp_path, check=False)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"resume={value!r} is invalid; expected the id of a run in" in line, line
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    assert not (tmp_path / "runs").exists()


# -- one home: the stores package, choosing a store, RunRecord's typed fields ----------------

STUDY = Path(__file__).resolve().parent.parent / "study"


def _imports(path: Path, lazy: bool) -> set[str]:
    """The study modules a source file imports (at its top level only, unless `lazy`)."""
    import ast

    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("study"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("study"):
            for alias in node.names:  # `from study.stores import files`: the submodule
                sub = f"{node.module}.{alias.name}"
                is_module = (STUDY.parent / (sub.replace(".", "/") + ".py")).exists()
                found.add(sub if is_module else node.module)
    return found


def _module_name(path: Path) -> str:
    parts = path.relative_to(STUDY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_study_modules_import_one_another_without_a_cycle():
    files = sorted(STUDY.rglob("*.py"))
    names = {_module_name(p) for p in files}

    def graph(lazy, within):
        out = {}
        for path in files:
            name = _module_name(path)
            if name.startswith(within):
                # A package's __init__ is imported before its submodules: not an edge of theirs.
                targets = {t for t in _imports(path, lazy) if t in names and t != name}
                out[name] = {t for t in targets if not name.startswith(t + ".")}
        return out

    top_level = graph(lazy=False, within="study")
    assert "study.stores.choice" in top_level and "study.mongo" not in names
    assert _cycle(top_level) is None, f"import cycle: {' -> '.join(_cycle(top_level))}"
    # Within the stores package not even a function-level import goes round.
    stores = graph(lazy=True, within="study.stores")
    assert _cycle(stores) is None, f"import cycle: {' -> '.join(_cycle(stores))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it finds one


@pytest.mark.parametrize(
    "module",
    ["study.stores.records", "study.stores.files", "study.stores.mongo", "study.stores.shadow",
     "study.stores.choice", "study.stores", "study.sync", "study.sweep", "study.cli"],
)  # fmt: skip
def test_each_store_module_imports_first_in_a_fresh_interpreter(module):
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_nothing_outside_the_stores_package_reads_a_run_folder_itself():
    stores = STUDY / "stores"
    outside = [
        p
        for root in (STUDY, STUDY.parent / "plugins")
        for p in sorted(root.rglob("*.py"))  # every package, the report's included
        if stores not in p.parents
    ]
    assert {STUDY / "cli.py", STUDY / "report" / "runs.py", STUDY / "report" / "model.py"} <= set(
        outside
    )
    offenders = [
        f"{p.relative_to(STUDY.parent)}: {needle}"
        for p in outside
        for needle in ('"run.json"', '"metrics.json"', '"info.json"', "read_json(")
        if needle in p.read_text()
    ]
    assert offenders == []


def test_the_stores_never_import_what_writes_a_run():
    """One way: study.record (the writer) and the rest of study import the stores; the stores
    import nothing of study outside their package but errors, identity, atomic writes and the
    registry's plugin lookups (no import circle between record and stores)."""
    allowed = {"study.errors", "study.identity", "study.atomic", "study.claims", "study.stores",
               "study.sacred_api"}  # fmt: skip
    for path in sorted((STUDY / "stores").glob("*.py")):
        found = re.findall(r"^\s*(?:from|import) (study(?:\.\w+)*)(?: import (\w+))?",
                           path.read_text(), re.M)  # fmt: skip
        imported = {f"study.{name}" if module == "study" else module for module, name in found}
        outside = {m for m in imported if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert outside == set(), f"{path.name} imports {sorted(outside)}"


@pytest.fixture
def no_mongo_env(monkeypatch):
    from study.stores import mongo

    for name in (mongo.URL_ENV, mongo.DB_ENV, mongo.FALLBACK_ENV, mongo.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_choose_store_takes_the_command_line_then_the_environment_then_runs(no_mongo_env):
    from study.errors import StoreError
    from study.stores import DEFAULT_FILE_STORE, choose_store

    default = choose_store()
    assert default.kind == "files" and default.folder == Path(DEFAULT_FILE_STORE)
    assert choose_store("elsewhere").describe() == "elsewhere"
    named = choose_store(None, "mongodb://ann:s3cret@db.example.org:27017", "exp")
    assert (
        named.kind == "mongo" and named.describe() == "mongodb://ann:***@db.example.org:27017/exp"
    )
    assert "s3cret" not in repr(named) and not named.from_env

    no_mongo_env.setenv("STUDY_MONGO_URL", "mongodb://bob:pw@db.example.org")
    no_mongo_env.setenv("STUDY_MONGO_DB", "lab")
    from_env = choose_store()
    assert from_env.kind == "mongo" and from_env.from_env
    assert from_env.describe() == "mongodb://bob:***@db.example.org/lab"
    assert choose_store(db="other").target.db == "other"  # --db over $STUDY_MONGO_DB
    assert choose_store("mine").kind == "files"  # a folder named wins over the environment
    assert choose_store(environment=False, default=None) is None  # `study run -u`

    with pytest.raises(StoreError, match=r"^give --runs DIR or --mongo URL, not both$"):
        choose_store("runs", "mongodb://localhost")
    with pytest.raises(StoreError, match=r"^give -F DIR or -m URL, not both$"):
        choose_store("runs", "mongodb://localhost", options=("-F DIR", "-m URL"))
    both = choose_store("runs", "mongodb://localhost", both=True)  # `study run -m URL -F DIR`
    assert both.kind == "mongo" and both.also == Path("runs")
    no_mongo_env.delenv("STUDY_MONGO_URL")
    with pytest.raises(StoreError, match=r"^--db needs --mongo URL \(or \$STUDY_MONGO_URL\)$"):
        choose_store(db="exp")
    with pytest.raises(StoreError, match=r"^--runs needs a folder, e.g. --runs runs$"):
        choose_store("  ")
    with pytest.raises(StoreError, match="no MongoDB URL given"):
        choose_store(mongo_url="")


def test_read_runs_goes_through_choose_store(no_mongo_env, tmp_path):
    from study.stores import choose_store, read_runs

    shutil.copytree(RECORDS, tmp_path / "runs")
    where, runs = read_runs(str(tmp_path / "runs"))
    assert where == str(tmp_path / "runs") and len(runs) == 10
    store = choose_store(tmp_path / "runs")
    vgg = store.read_runs(keep=lambda r: r.model == "vgg16_bn")
    assert [r.id for r in vgg] == ["1", "4", "7", "10"]
    assert store.claims().acquire("cell-x") is not None  # `<store>/.claims`
    assert (tmp_path / "runs" / ".claims").is_dir()


def test_an_unreachable_mongodb_is_one_line_or_the_file_store_when_fallback_is_on(
    no_mongo_env, tmp_path
):
    from mongo_server import free_port

    from study.errors import StoreError
    from study.stores import FileStore, choose_store

    no_mongo_env.setenv("STUDY_MONGO_TIMEOUT", "0.5")
    no_mongo_env.chdir(tmp_path)
    store = choose_store(None, f"mongodb://127.0.0.1:{free_port()}", "exp")
    with pytest.raises(StoreError, match="unreachable.*set STUDY_MONGO_FALLBACK=1") as caught:
        store.observers_for_run()
    assert "\n" not in str(caught.value)
    no_mongo_env.setenv("STUDY_MONGO_FALLBACK", "1")
    [observer] = store.observers_for_run()
    assert isinstance(observer, FileStore) and observer.basedir == "runs"
    also = choose_store("mine", f"mongodb://127.0.0.1:{free_port()}", both=True)
    [observer] = also.observers_for_run()  # -F DIR given: the fallback records there
    assert observer.basedir == "mine"


def test_run_records_have_typed_fields_for_what_callers_need(tmp_path):
    from study.stores import read_file_run

    shutil.copytree(RECORDS / "1", tmp_path / "runs" / "1")
    folder = tmp_path / "runs" / "1"
    run = json.loads((folder / "run.json").read_text())
    run["meta"].update(comment="sweep:grid-0123abcd", study_uid="u-1")
    run["resumed"] = ["2026-11-26T13:47:00"]
    (folder / "run.json").write_text(json.dumps(run))
    elsewhere = tmp_path / "checkpoints" / "1" / "checkpoint.pt"  # where `checkpoint_dir` put it
    info = json.loads((folder / "info.json").read_text())
    (folder / "info.json").write_text(json.dumps({**info, "checkpoint": str(elsewhere)}))
    record = read_file_run(folder)
    assert record.status == "COMPLETED" and 0 < record.top1 < 1
    assert record.top1 == pytest.approx(run["result"]["top1"])
    assert record.comment == "sweep:grid-0123abcd" and record.uid == "u-1"
    assert record.start_time == run["start_time"] and record.stop_time == run["stop_time"]
    assert record.heartbeat == run["heartbeat"] and record.resumed == ["2026-11-26T13:47:00"]
    assert record.config["model"] == record.model == "vgg16_bn" and not record.alive
    assert not record.has_checkpoint()
    elsewhere.parent.mkdir(parents=True)
    write_checkpoint(elsewhere)
    assert record.checkpoint_file() == elsewhere
    # A file is a checkpoint only when it is one: its digest matches and it loads as one.
    elsewhere.write_bytes(elsewhere.read_bytes() + b"x")
    assert not record.has_checkpoint()
    write_checkpoint(folder / "checkpoint.pt")  # in the run's folder
    assert record.checkpoint_file() == folder / "checkpoint.pt"

    # A value of the wrong type is no value of this run: the run is malformed, the field named.
    run.update(status="RUNNING", heartbeat=None)
    (folder / "run.json").write_text(json.dumps(run))
    assert not read_file_run(folder).alive  # RUNNING, but its start is long past: dead
    for key, value, problem in (
        ("result", {"top1": True}, "result.top1 is True; expected a number in 0..1"),
        ("meta", {"comment": ["x"]}, "meta.comment is list; expected a string"),
    ):
        (folder / "run.json").write_text(json.dumps({**run, key: value}))
        with pytest.raises(StoreError, match=re.escape(f"run.json: {problem}")):
            read_file_run(folder)
    # The CPU speed a run measured decides which runs' speeds the report compares: a number.
    (folder / "run.json").write_text(json.dumps(run))
    for value in ("fast", -1, 1e308, True):
        training = {**info["training"], "cpu_gflops": value}
        (folder / "info.json").write_text(json.dumps({**info, "training": training}))
        with pytest.raises(
            StoreError,
            match=r"info\.json: training\.cpu_gflops is .*; expected a number in 0\.\.1e\+09",
        ):
            read_file_run(folder)
    # So do the machines a resumed run trained on: objects with numbers where numbers belong.
    for value, problem in (
        ([None], r"training\.machines\[0\] is None; expected an object"),
        ([{"cpu_gflops": "fast"}], r"training\.machines\[0\]\.cpu_gflops is .*; expected a number"),
        ([{"from_step": -1}], r"training\.machines\[0\]\.from_step is -1; expected an integer"),
        ("A", r"training\.machines is .*; expected a list"),
    ):
        training = {**info["training"], "machines": value}
        (folder / "info.json").write_text(json.dumps({**info, "training": training}))
        with pytest.raises(StoreError, match=r"info\.json: " + problem):
            read_file_run(folder)


def write_checkpoint(path: Path, payload=None) -> Path:
    """A file as study's engine writes a checkpoint: torch.save'd plain data and tensors,
    with its SHA-256 in `<name>.sha256`."""
    import hashlib

    import torch

    payload = {"version": 2, "model": {"w": torch.zeros(2)}} if payload is None else payload
    torch.save(payload, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".sha256").write_text(digest + "\n")
    return path
