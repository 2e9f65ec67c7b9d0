"""How a run's record is read (study.stores.records), in process and pinned word for word: run
ids, the fields callers trust, metric series, artifact names, checkpoints and the per-image
evaluation. Fast enough to judge every mutant of the module (benchmarks/mutation.py records)."""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import pytest
from test_claims import _dead_pid
from test_stores import write_checkpoint

from study import identity
from study.errors import ConfigError
from study.stores import records
from study.stores.records import RunRecord, check_run_id, dedupe_metrics, keep_names


def _record(**fields) -> RunRecord:
    base = dict(
        id="4", store="runs", status="COMPLETED", experiment="study", command="run",
        config={"model": "vgg16", "dataset": "mnist"}, info={}, result=None, metrics={},
        host={}, start_time=None, stop_time=None,
    )  # fmt: skip
    return RunRecord(**{**base, **fields})


@pytest.mark.parametrize(("given", "kept"), [(7, "7"), ("7", "7"), (" 12 ", "12"), (0, "0"),
                                             ("9" * 18, "9" * 18)])  # fmt: skip
def test_a_run_id_is_digits_only(given, kept):
    assert check_run_id(given, "runs") == kept


@pytest.mark.parametrize("given", [True, False, 1.0, -1, "-1", "../3", "3/..", "9" * 19, None,
                                   "", "1e3", "٣"])  # fmt: skip
def test_a_run_id_that_is_not_digits_is_one_line(given):
    with pytest.raises(ConfigError) as error:
        check_run_id(given, "the store ./runs")
    assert str(error.value) == (
        f"resume={given!r} is invalid; expected the id of a run in the store ./runs "
        f"(a number, as `study runs` lists it)"
    )


def test_the_fields_callers_read_take_only_their_own_type():
    rec = _record(meta={"comment": "sweep:ab12", "study_uid": "u-1"}, result={"top1": 1})
    assert (rec.model, rec.dataset, rec.comment, rec.uid, rec.top1) == (
        "vgg16",
        "mnist",
        "sweep:ab12",
        "u-1",
        1.0,
    )
    assert isinstance(rec.top1, float)
    hostile = _record(meta={"comment": 3, "study_uid": ""}, result={"top1": True})
    assert (hostile.comment, hostile.uid, hostile.top1) == (None, None, None)
    assert _record(meta={"study_uid": 5}, result={"top1": "0.9"}).uid is None
    assert _record(result={"top1": "0.9"}).top1 is None
    assert _record(result=[0.9]).top1 is None and _record(result={"top1": 0.25}).top1 == 0.25
    assert _record(config={}).model is None and _record(config={}).dataset is None
    assert _record(metrics={"test_top1": [(1, 0.5)]}).metric("test_top1") == [(1, 0.5)]
    assert _record().metric("test_top1") == []


def test_a_run_is_alive_by_its_heartbeat_and_its_process():
    now = identity.utcnow().isoformat()
    old = (identity.utcnow() - timedelta(seconds=identity.STALE_S + 5)).isoformat()
    here = identity.this_host()
    assert _record(status="RUNNING", heartbeat=now).alive
    assert not _record(status="COMPLETED", heartbeat=now).alive
    assert not _record(status="RUNNING", heartbeat=old).alive
    assert _record(status="RUNNING", heartbeat=None, start_time=now).alive  # before its first
    mine = {"process": {"host": here, "pid": os.getpid()}}
    assert _record(status="RUNNING", heartbeat=now, meta=mine).alive
    gone = {"process": {"host": here, "pid": _dead_pid()}}
    assert not _record(status="RUNNING", heartbeat=now, meta=gone).alive
    # A process field of the wrong type says nothing: judged by the heartbeat alone.
    assert _record(status="RUNNING", heartbeat=now, meta={"process": [here, 1]}).alive


def test_metrics_are_sorted_by_epoch_and_a_logged_twice_epoch_keeps_its_later_value():
    raw = {
        "test_top1": {"steps": [2, 1, 2, 3.0], "values": [0.5, 0.4, 0.6, 0.7]},
        "train_loss": {"steps": [], "values": []},
        "lr": {"steps": [0, 10_000_000], "values": [1, 2]},
    }
    got = dedupe_metrics(raw)
    assert got == {
        "test_top1": [(1, 0.4), (2, 0.6), (3, 0.7)],
        "train_loss": [],
        "lr": [(0, 1.0), (10_000_000, 2.0)],
    }
    assert all(type(s) is int and type(v) is float for s, v in got["test_top1"] + got["lr"])


@pytest.mark.parametrize(
    ("series", "why"),
    [
        ({"values": [1]}, "'steps'"),
        ({"steps": [1]}, "'values'"),
        ({"steps": 1, "values": [1]}, "steps and values are not lists"),
        ({"steps": [1], "values": "1"}, "steps and values are not lists"),
        ({"steps": [True], "values": [1]}, "step 'True' is not an integer in 0..10,000,000"),
        ({"steps": ["1"], "values": [1]}, "step '1' is not an integer in 0..10,000,000"),
        ({"steps": [1.5], "values": [1]}, "step '1.5' is not an integer in 0..10,000,000"),
        ({"steps": [-1], "values": [1]}, "step '-1' is not an integer in 0..10,000,000"),
        ({"steps": [10_000_001], "values": [1]}, "step '10000001' is not an integer in"),
        ({"steps": [float("nan")], "values": [1]}, "step 'nan' is not an integer in"),
        ({"steps": [float("inf")], "values": [1]}, "step 'inf' is not an integer in"),
        ({"steps": [1], "values": [False]}, "value 'False' is not a number"),
        ({"steps": [1], "values": ["0.5"]}, "value '0.5' is not a number"),
        ({"steps": [1], "values": [10**400]}, "int too large to convert to float"),
        ({"steps": [1], "values": ["x" * 100]}, "value '" + "x" * 40 + "' is not a number"),
        ("series", "string indices must be integers"),
        ({"steps": [1, 2], "values": [1]}, "zip() argument 2 is shorter than argument 1"),
        ({"steps": ["1" * 60], "values": [1]}, "step '" + "1" * 40 + "' is not an integer"),
    ],
)
def test_a_malformed_series_is_one_line_naming_it(series, why):
    with pytest.raises(ValueError) as error:
        dedupe_metrics({"ok": {"steps": [1], "values": [1]}, "test_top1": series})
    message = str(error.value)
    assert message.startswith("metric 'test_top1' is malformed (") and why in message
    assert message.endswith("); expected steps: [int], values: [number]")


def test_metrics_that_are_not_an_object_are_one_line():
    with pytest.raises(ValueError, match=r"^metrics are a list; expected an object of series$"):
        dedupe_metrics([1, 2])


def test_artifact_names_leading_outside_or_repeated_are_left_out_with_a_note(tmp_path):
    run = tmp_path / "4"
    run.mkdir()
    (run / "ok.png").write_bytes(b"png")
    (tmp_path / "secret").write_text("x")
    (run / "link").symlink_to(tmp_path / "secret")
    rec = _record(
        location=run,
        artifacts=["ok.png", "ok.png", "../secret", "link", "/etc/passwd", 7],
        info={"misclassified": [{"artifact": "ok.png"}, {"artifact": "link"}, "ok.png"]},
    )
    keep_names(rec)
    assert rec.artifacts == ["ok.png"]
    assert rec.info["misclassified"] == [{"artifact": "ok.png"}]
    assert rec.notes == [
        "left out an artifact of run 4 in runs: '../secret' is not a plain relative name",
        "left out an artifact of run 4 in runs: 'link' leads outside the run's folder",
        "left out an artifact of run 4 in runs: '/etc/passwd' is not a plain relative name",
        "left out an artifact of run 4 in runs: '7' is not a name",
        "left out a gallery image of run 4 in runs: 'link' is not one of its artifacts",
        "left out a gallery image of run 4 in runs: 'ok.png' is not one of its artifacts",
    ]
    long = keep_names(_record(artifacts=["x" * 100 + "/.."], info={"misclassified": ["y" * 99]}))
    assert long.notes == [
        f"left out an artifact of run 4 in runs: {'x' * 80!r} is not a plain relative name",
        f"left out a gallery image of run 4 in runs: {'y' * 80!r} is not one of its artifacts",
    ]
    # Without a folder (MongoDB's GridFS) the name's syntax alone decides.
    gridfs = keep_names(_record(artifacts=["link", "a/b.png", ".."]))
    assert gridfs.artifacts == ["link", "a/b.png"] and len(gridfs.notes) == 1
    assert keep_names(_record(info=[1])).info == [1]  # not an object: nothing to filter


def test_inside_is_a_name_below_the_folder_never_the_folder_itself(tmp_path):
    (tmp_path / "sub").mkdir()
    assert records.inside(tmp_path, "sub/a.png") == tmp_path.resolve() / "sub" / "a.png"
    assert records.inside(tmp_path, "sub/../a.png") is None
    assert records.inside(tmp_path, ".") is None
    (tmp_path / "up").symlink_to(tmp_path)
    assert records.inside(tmp_path, "up") is None  # resolves to the folder itself


def test_a_checkpoint_is_a_file_with_its_digest_that_loads_weights_only(tmp_path):
    good = write_checkpoint(tmp_path / "checkpoint.pt")
    assert records.is_checkpoint(good)
    rec = _record(location=tmp_path)
    assert rec.checkpoint_file() == good and rec.has_checkpoint()
    elsewhere = write_checkpoint(tmp_path / "elsewhere.pt")
    assert _record(info={"checkpoint": str(elsewhere)}).checkpoint_file() == elsewhere
    assert _record(info={"checkpoint": 5}).checkpoint_file() is None
    assert _record(info=[str(elsewhere)]).checkpoint_file() is None
    for version in (1, 2):
        assert records.is_checkpoint(
            write_checkpoint(tmp_path / f"v{version}.pt", {"version": version, "model": {}})
        )


@pytest.mark.parametrize("damage", ["digest", "no_digest", "version", "no_model", "list",
                                    "object", "folder"])  # fmt: skip
def test_what_is_not_a_checkpoint_is_never_taken_for_one(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    payloads = {
        "version": {"version": 3, "model": {}},
        "no_model": {"version": 2},
        "list": [2, {}],
        "object": {"version": 2, "model": {}, "o": _Pickled()},
    }
    write_checkpoint(path, payloads.get(damage))
    if damage == "digest":
        path.with_name("checkpoint.pt.sha256").write_text("0" * 64)
    elif damage == "no_digest":
        path.with_name("checkpoint.pt.sha256").unlink()
    elif damage == "folder":
        path.unlink()
        path.mkdir()
    assert not records.is_checkpoint(path)
    assert _record(location=tmp_path).checkpoint_file() is None


class _Pickled:  # an object torch.load(weights_only=True) refuses to rebuild
    pass


def _evaluation(n=6, classes=3):
    labels = np.arange(n) % classes
    topk = np.stack([labels, (labels + 1) % classes], axis=1)
    confusion = np.bincount(labels * classes + topk[:, 0], minlength=classes * classes)
    return {
        "labels": labels,
        "topk": topk,
        "topk_prob": np.full(topk.shape, 0.5, dtype=np.float32),
        "test_indices": np.arange(n),
        "confusion": confusion.reshape(classes, classes),
    }


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda a: a.pop("topk_prob"), "no topk_prob (expected labels, topk, topk_prob, "
                                       "test_indices, confusion)"),
        (lambda a: a.update(labels=a["labels"].astype(float)),
         "labels are float64 (6,); expected integers (N,)"),
        (lambda a: a.update(labels=np.int64(3)), "labels are int64 (); expected integers (N,)"),
        (lambda a: a.update(labels=a["labels"][:, None]),
         "labels are int64 (6, 1); expected integers (N,)"),
        (lambda a: a.update(topk=a["topk"][:5]),
         "topk is int64 (5, 2); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk=a["topk"][:, 0]),
         "topk is int64 (6,); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk=a["topk"].astype(float)),
         "topk is float64 (6, 2); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk_prob=a["topk_prob"][:, :1]),
         "topk_prob is (6, 1); expected (6, 2) like topk"),
        (lambda a: a.update(test_indices=a["test_indices"][:5]),
         "test_indices is (5,); expected (6,)"),
        (lambda a: a.update(confusion=a["confusion"][:2]),
         "confusion is (2, 3) summing to 4; expected (C, C) summing to 6"),
        (lambda a: a.update(confusion=a["confusion"] * 2),
         "confusion is (3, 3) summing to 12; expected (C, C) summing to 6"),
        (lambda a: a.update(labels=a["labels"] + 1), "labels or topk outside 0..2"),
        (lambda a: a.update(labels=a["labels"] - 1), "labels or topk outside 0..2"),
        (lambda a: a.update(topk=a["topk"] + 1), "labels or topk outside 0..2"),
        (lambda a: a.update(topk=a["topk"] - 3), "labels or topk outside 0..2"),
        (lambda a: a.update(labels=a["labels"] + 2), "labels or topk outside 0..2"),
        (lambda a: a.update(topk=a["topk"] + 2), "labels or topk outside 0..2"),
        (lambda a: a["topk"].__setitem__((0, 1), -1), "labels or topk outside 0..2"),
        (lambda a: a.update(topk=a["topk"][:, :, None], topk_prob=a["topk_prob"][:, :, None]),
         "topk is int64 (6, 2, 1); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk=a["topk"][[0, 1, 2, 3, 4, 5, 0]],
                            topk_prob=a["topk_prob"][[0, 1, 2, 3, 4, 5, 0]]),
         "topk is int64 (7, 2); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk=a["topk"][:, :0], topk_prob=a["topk_prob"][:, :0]),
         "topk is int64 (6, 0); expected integers (6, K), K >= 1"),
        (lambda a: a.update(topk_prob=np.zeros((6, 3))),
         "topk_prob is (6, 3); expected (6, 2) like topk"),
        (lambda a: a.update(topk_prob=np.ones((6, 2), dtype=np.int64)),
         "topk_prob is int64; expected floats in 0..1"),
        (lambda a: a["topk_prob"].__setitem__((5, 1), 1.0001),
         "topk_prob holds values outside 0..1; expected probabilities"),
        (lambda a: a["topk_prob"].__setitem__((0, 0), -0.0001),
         "topk_prob holds values outside 0..1; expected probabilities"),
        (lambda a: a["topk_prob"].__setitem__((2, 0), np.nan),
         "topk_prob holds values outside 0..1; expected probabilities"),
        (lambda a: a["topk_prob"].__setitem__((2, 1), np.inf),
         "topk_prob holds values outside 0..1; expected probabilities"),
        (lambda a: a.update(topk_prob=np.full((6, 2), 1.0, dtype=np.float16)), None),
        (lambda a: a.update(topk_prob=np.zeros((6, 2), dtype=np.float64)), None),
        (lambda a: a.update(test_indices=np.arange(7)), "test_indices is (7,); expected (6,)"),
        (lambda a: a.update(confusion=a["confusion"][:, :, None]),
         "confusion is (3, 3, 1) summing to 6; expected (C, C) summing to 6"),
        (lambda a: a.update(confusion=np.array([2, 2, 2, 0, 0, 0, 0, 0, 0])),
         "confusion is (9,) summing to 6; expected (C, C) summing to 6"),
        (lambda a: a.update(confusion=np.eye(3, 4, dtype=np.int64) * 2),
         "confusion is (3, 4) summing to 6; expected (C, C) summing to 6"),
        (lambda a: a.update(confusion=np.eye(4, 3, dtype=np.int64) * 2),
         "confusion is (4, 3) summing to 6; expected (C, C) summing to 6"),
        (lambda a: a["confusion"].__setitem__((0, 0), 1),
         "confusion is (3, 3) summing to 5; expected (C, C) summing to 6"),
    ],
)  # fmt: skip
def test_an_evaluation_whose_arrays_disagree_names_the_problem(damage, problem):
    arrays = _evaluation()
    assert records._evaluation_problem(arrays) is None
    damage(arrays)
    assert records._evaluation_problem(arrays) == problem


@pytest.mark.parametrize(("n", "classes", "k"), [(6, 3, 1), (600, 300, 5), (40, 10, 2)])
def test_evaluations_of_every_size_are_consistent(n, classes, k):
    # one column of top-k; more images and classes than Python's cached small ints (`is`)
    arrays = _evaluation(n, classes)
    arrays["topk"] = np.stack([(arrays["labels"] + j) % classes for j in range(k)], axis=1)
    arrays["topk_prob"] = np.full((n, k), 0.5)
    counted = np.bincount(arrays["labels"] * classes + arrays["topk"][:, 0])
    arrays["confusion"] = np.pad(counted, (0, classes * classes - len(counted)))
    arrays["confusion"] = arrays["confusion"].reshape(classes, classes)
    assert records._evaluation_problem(arrays) is None
    arrays["labels"] = arrays["labels"] + 2 * classes
    assert records._evaluation_problem(arrays) == f"labels or topk outside 0..{classes - 1}"


def test_an_evaluation_without_class_0_among_its_labels_or_predictions_is_consistent():
    labels = np.array([1, 2, 2, 1])
    topk = np.stack([labels, 3 - labels], axis=1)
    confusion = np.bincount(labels * 3 + topk[:, 0], minlength=9).reshape(3, 3)
    arrays = {"labels": labels, "topk": topk, "topk_prob": np.ones((4, 2)),
              "test_indices": np.arange(4), "confusion": confusion}  # fmt: skip
    assert records._evaluation_problem(arrays) is None


def test_an_empty_evaluation_is_consistent_and_a_matrix_that_is_not_the_counts_is_not():
    assert records._evaluation_problem(_evaluation(n=0)) is None
    arrays = _evaluation()
    arrays["confusion"] = arrays["confusion"][:, ::-1].copy()  # the same sum, other cells
    assert records._evaluation_problem(arrays) == (
        "confusion disagrees with labels and topk's first column"
    )


def test_an_evaluation_is_read_once_from_its_artifact(tmp_path):
    import io

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **_evaluation())
    reads = []

    def fetch(name):
        reads.append(name)
        return buffer.getvalue()

    rec = _record(artifacts=["evaluation.npz"], fetch=fetch)
    first = rec.evaluation()
    assert rec.evaluation() is first and reads == ["evaluation.npz"]
    assert first["confusion"].sum() == 6
    assert _record().evaluation() is None  # no artifact: no evaluation
    bad = _record(artifacts=["evaluation.npz"], fetch=lambda name: b"not an npz")
    with pytest.raises(Exception, match=r"^run 4 in runs: evaluation.npz is unreadable \("):
        bad.evaluation()


def test_an_artifact_is_read_only_when_listed_and_inside_the_run(tmp_path):
    from study.errors import StoreError

    run = tmp_path / "4"
    run.mkdir()
    (run / "a.png").write_bytes(b"png")
    (run / "dir").mkdir()
    rec = _record(location=run, artifacts=["a.png", "dir", "b.png"])
    assert rec.artifact_bytes("a.png") == b"png"
    with pytest.raises(StoreError, match=r"^run 4 in runs has no artifact 'c.png'$"):
        rec.artifact_bytes("c.png")
    with pytest.raises(StoreError, match=r"^run 4 in runs: artifact 'b.png': .*No such file"):
        rec.artifact_bytes("b.png")
    with pytest.raises(StoreError, match=r"^run 4 in runs: artifact 'dir': .*Is a directory"):
        rec.artifact_bytes("dir")
    (run / "a.png").unlink()
    (run / "a.png").symlink_to(tmp_path / "elsewhere")  # replaced by a link since it was read
    with pytest.raises(StoreError, match=r"^run 4 in runs: artifact 'a.png' leads outside$"):
        rec.artifact_bytes("a.png")
    with pytest.raises(StoreError, match=r"^run 4 in runs has no artifact 'a.png'$"):
        _record(artifacts=["a.png"]).artifact_bytes("a.png")  # neither folder nor fetch
    fetched = _record(artifacts=["a.png"], fetch=lambda name: name.encode())
    assert fetched.artifact_bytes("a.png") == b"a.png"
    with pytest.raises(StoreError, match=r"has no artifact 'z.png'"):
        fetched.artifact_bytes("z.png")


def test_a_digest_is_looked_for_in_the_digest_files_first_1000_characters(tmp_path):
    good = write_checkpoint(tmp_path / "checkpoint.pt")
    digest_file = tmp_path / "checkpoint.pt.sha256"
    digest = digest_file.read_text().split()[0]
    digest_file.write_text(" " * 936 + digest + "0")  # the digest ends at character 1,000
    assert records.is_checkpoint(good)
    digest_file.write_text(" " * 937 + digest)  # its last character is the 1,001st
    assert not records.is_checkpoint(good)


def test_skipped_runs_are_printed_one_line_each(capsys):
    records.print_skipped(["run 3 in runs: unreadable", "run 5 in runs: bad metric"])
    assert capsys.readouterr().err == (
        "study: run 3 in runs: unreadable\nstudy: run 5 in runs: bad metric\n"
    )
