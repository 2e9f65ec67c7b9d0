"""The benchmark script runs end to end and writes the JSON record the README's table reads."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from study.stores import read_file_store

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"
FIELDS = {"model", "dataset", "protocol", "image_size", "batch_size", "compile", "device",
          "images_per_s", "step_ms", "data_share", "syncs", "baseline_images_per_s", "ratio",
          "gmacs_per_image", "date", "machine"}  # fmt: skip


def test_benchmark_times_the_engine_step_beside_the_seed_pipeline_and_writes_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "resnet18", "--dataset", "mnist",
         "--protocol", "fast", "--data", "synthetic", "--steps", "1", "--warmup", "0",
         "--batch-size", "4,6", "--baseline-batch", "4", "--no-timm", "--workers", "0",
         "--device", "cpu", "--machine", "test", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "seed fp32" in proc.stdout
    (path,) = tmp_path.glob("*-test.jsonl")
    first, second = [json.loads(line) for line in path.read_text().splitlines()]
    assert FIELDS <= set(first)
    assert first["image_size"] == 28 and first["protocol"] == "fast"  # MNIST's native size
    assert first["images_per_s"] > 0 and first["baseline_images_per_s"] > 0
    # The ratio is taken before rounding the rates it divides, so allow their rounding.
    expected = first["images_per_s"] / first["baseline_images_per_s"]
    assert abs(first["ratio"] - expected) < 0.002 + 1e-3 * expected
    assert 0 <= first["data_share"] and first["syncs"] == [] and first["compile"] is False
    # The seed-style pipeline runs at its batch size only; the second batch size is study's.
    assert (first["batch_size"], second["batch_size"]) == (4, 6)
    assert "baseline_images_per_s" not in second and second["images_per_s"] > 0


CURVES = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_per_time.py"


def test_accuracy_per_time_runs_each_protocol_as_a_recorded_run_and_writes_its_curve(
    mnist_root, tmp_path
):
    proc = subprocess.run(
        [sys.executable, str(CURVES), "--model", "small_cnn", "--dataset", "mnist",
         "--protocol", "paper,fast", "--epochs", "paper=1,fast=2", "--budget", "1000",
         "--target", "0.0", "--data-root", str(mnist_root), "--device", "cpu",
         "--store", str(tmp_path / "runs"), "--machine", "test", "--out", str(tmp_path),
         "test_limit=100", "head=replace"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("*-test-accuracy-per-time.jsonl")
    paper, fast = [json.loads(line) for line in path.read_text().splitlines()]
    assert (paper["protocol"], fast["protocol"]) == ("paper", "fast")
    assert [p["epoch"] for p in fast["curve"]] == [1, 2]
    # Cumulative; fast drops each epoch's last partial batch: 4 batches of 128 of the 600.
    assert [p["train_images"] for p in fast["curve"]] == [512, 1024]
    first, last = fast["curve"]
    assert 0 < first["train_seconds"] < last["train_seconds"] == fast["train_seconds"]
    assert last["test_top1"] == fast["test_top1"] and fast["test_count"] == 100
    assert fast["seconds_to_target"] == first["train_seconds"]  # target 0: the first point
    assert not fast["stopped_by_budget"] and fast["outside_budget_seconds"] > 0
    assert len(paper["curve"]) == 1 and paper["batch_size"] == 100
    assert "reached after" in proc.stdout


def test_accuracy_per_time_bad_input_is_one_line_and_writes_no_record(mnist_root, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, str(CURVES), "--data-root", str(mnist_root), "--machine", "test",
             "--out", str(tmp_path), "--store", str(tmp_path / "runs"), *args],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip

    proc = run("--epochs", "fast=x")
    assert proc.returncode == 2
    assert "'fast=x' is invalid; expected PROTOCOL=EPOCHS with EPOCHS >= 1" in proc.stderr
    # A run that study refuses: study names the problem, the script says which run failed.
    proc = run("--model", "resnet51", "--dataset", "mnist", "--protocol", "fast")
    assert proc.returncode == 1
    assert "unknown model 'resnet51'" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "accuracy_per_time: the fast run failed (exit 2); see above"
    )
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.jsonl"))


SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "report_speed.py"


def test_report_speed_builds_the_committed_sample_in_fresh_processes(tmp_path):
    """One committed sample run (run 1), each build in its own process: the printed pages are
    the PDF's, and every kind of build has its CPU seconds."""
    proc = subprocess.run([sys.executable, str(SPEED), "--repeat", "1", "--ids", "1"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"runs: 1 from .*sample-runs; pages: [1-9]\d*$", proc.stdout, re.M)
    for what in ("PDF, cold", "PDF, warm", "HTML, warm"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(what))
        assert float(re.search(r"best ([0-9.]+) s CPU", line).group(1)) > 0, line

    # A store that is not there: one line naming the failed build, a non-zero exit.
    bad = subprocess.run([sys.executable, str(SPEED), "--repeat", "1", "--runs",
                          str(tmp_path / "nowhere")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("report_speed: the pdf build failed:"), bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_protocol_check_records_each_model_with_its_verdict(mnist_root, tmp_path):
    """benchmarks/protocol_check.py runs each model as a recorded `study run` and writes one
    JSON line per model; a run that misses the target makes the exit status 1."""
    script = SCRIPT.parent / "protocol_check.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--data-root", str(mnist_root), "--models",
         "small_cnn,resnet18", "--steps", "2", "--batch-size", "8", "--test-limit", "50",
         "--machine", "test", "--out", str(tmp_path), "--store", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]  # two steps reach no 0.97
    (path,) = tmp_path.glob("*-test-protocol-check.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["small_cnn", "resnet18"]
    runs = {r.id: r for r in read_file_store(tmp_path / "runs")}
    for row in rows:
        rec = runs[row["run"]]
        assert (row["dataset"], row["protocol"], row["steps"]) == ("mnist", "fast", 2)
        assert row["top1"] == rec.result["top1"] and row["flags"] == rec.info["health"]["flags"]
        assert rec.config["train_limit"] == 16 and rec.config["batch_size"] == 8
        assert row["gmacs"] == round(rec.info["model"]["gmacs_per_image"], 4)
    resnet = rows[1]
    assert resnet["gmacs_paper"] > resnet["gmacs"]  # 224 px against the fast stem at 28 px
    assert rows[0]["gmacs_paper"] is None  # small_cnn has no paper size of its own
    assert "MISSED" in proc.stdout


def test_subset_data_keeps_the_first_images_of_each_class_in_the_official_formats(tmp_path):
    """benchmarks/subset_data.py (what gpu-prepare.sh carries to a GPU): study reads its
    archives as it reads the full ones, and they hold exactly the first N images a class."""
    import fakedata
    import numpy as np

    from study.data import prepare
    from study.registry import registry

    full, small = tmp_path / "full", tmp_path / "small"
    fakedata.write_cifar10(full, n_train=100, n_test=30)
    fakedata.write_tiny_imagenet(full, n_classes=3, per_class=4, n_val=9)
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "subset_data.py"
    subprocess.run(
        [sys.executable, str(script), str(full), str(small), "--cifar-train", "3",
         "--cifar-test", "2", "--tiny-train", "2", "--tiny-val", "1"],
        check=True, capture_output=True, text=True,
        env={**__import__("os").environ, "STUDY_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    for name, train, test in (("cifar10", 3, 2), ("tiny_imagenet", 2, 1)):
        spec = registry().dataset(name)
        whole = prepare(spec, full, cache_dir=tmp_path / "cache")
        part = prepare(spec, small, cache_dir=tmp_path / "cache")
        for split, per_class in ((("train", train)), ("test", test)):
            a, b = getattr(whole, split), getattr(part, split)
            classes = np.unique(a.labels)
            assert np.bincount(b.labels, minlength=len(classes))[classes].tolist() == [
                per_class
            ] * len(classes)
            for c in classes:  # the first images of the class, in order, pixel for pixel
                np.testing.assert_array_equal(
                    b.images[b.labels == c], a.images[a.labels == c][:per_class]
                )


# The sample study on a lent GPU (benchmarks/README.md): gpu-prepare.sh --sample cuts the data
# root into pieces, gpu.sh SAMPLE=... puts them together over several calls and runs a sweep.
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def sample_pieces(tmp_path) -> tuple[Path, Path]:
    """A data root in the three data sets' own formats, and gpu-prepare.sh's pieces of it."""
    import fakedata

    data, pieces = tmp_path / "data", tmp_path / "pieces"
    fakedata.write_mnist(data, n_train=40, n_test=20)
    fakedata.write_cifar10(data, n_train=20, n_test=10)
    fakedata.write_tiny_imagenet(data, n_classes=3, per_class=3)
    subprocess.run(["bash", str(BENCH / "gpu-prepare.sh"), str(data), "--sample", str(pieces)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    return data, pieces


def gpu_sample(dataset, pieces, tmp_path, **env):
    import os
    import shutil

    call = tmp_path / "call"  # what one device call carries: some of the pieces
    shutil.rmtree(call, ignore_errors=True)
    call.mkdir()
    for name in pieces[1]:
        shutil.copytree(pieces[0] / name, call / name)
    return subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(call), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "SAMPLE": dataset, "SAMPLE_ROOT": str(tmp_path / "root"),
             "SAMPLE_RUNS": str(tmp_path / "store"), "SAMPLE_FROM": "",  # not the committed runs
             "STUDY": f"{sys.executable} -m study",
             "STUDY_CACHE_DIR": str(tmp_path / "cache"), **env},
    )  # fmt: skip


def test_sample_pieces_come_together_over_calls_byte_for_byte_or_stop_the_call(tmp_path):
    data, pieces = sample_pieces(tmp_path)
    assert sorted(p.name for p in pieces.iterdir() if p.is_dir()) == [
        "cifar10", "mnist", "tiny-a", "tiny-b"
    ]  # fmt: skip
    root = tmp_path / "root"
    # First call: half of the Tiny-ImageNet zip, nothing yet to put together or check.
    proc = gpu_sample("stage", (pieces, ["tiny-a"]), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert not (root / "tiny-imagenet-200.zip").exists()
    # Second call: the rest; every file is then the data root's own.
    proc = gpu_sample("stage", (pieces, ["tiny-b", "mnist", "cifar10"]), tmp_path)
    assert proc.returncode == 0, proc.stderr
    whole = [p.relative_to(data) for p in data.rglob("*") if p.is_file()]
    assert len(whole) == 6
    for name in whole:
        assert (root / name).read_bytes() == (data / name).read_bytes(), name
    assert not list(root.glob("*.part-*"))
    # A piece changed on the way stops the call.
    archive = pieces / "cifar10" / "cifar-10-python.tar.gz"
    blob = bytearray(archive.read_bytes())
    blob[100] ^= 1
    archive.write_bytes(bytes(blob))
    proc = gpu_sample("stage", (pieces, ["cifar10"]), tmp_path)
    assert proc.returncode != 0
    assert "cifar-10-python.tar.gz: FAILED" in proc.stdout + proc.stderr


def test_sample_mode_runs_one_data_sets_sweep_once_and_returns_its_store(tmp_path):
    _, pieces = sample_pieces(tmp_path)
    small = {"SAMPLE_MODELS": "small_cnn",
             "SAMPLE_EXTRA": "train_limit=20 test_limit=10 batch_size=10 epochs=1"}  # fmt: skip
    proc = gpu_sample("mnist", (pieces, ["mnist"]), tmp_path, **small)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = read_file_store(tmp_path / "out" / "sample-runs")
    assert sorted((r.config["model"], r.config["dataset"], r.config["seed"], r.status)
                  for r in runs) == [("small_cnn", "mnist", 0, "COMPLETED"),
                                     ("small_cnn", "mnist", 1, "COMPLETED")]  # fmt: skip
    # The sample's own settings for MNIST, and the check's sizes after them.
    config = runs[0].config
    assert (config["protocol"], config["epochs"], config["train_limit"]) == ("fast", 1, 20)
    assert config["amp"] is False  # fp32 on every machine, so a cell trains alike anywhere
    # Called again, the sweep finds both cells done.
    proc = gpu_sample("mnist", (pieces, []), tmp_path, **small)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(read_file_store(tmp_path / "out" / "sample-runs")) == 2
    # A fresh machine's store starts from the committed runs (SAMPLE_FROM), so nothing reruns.
    shutil.copytree(tmp_path / "out" / "sample-runs", tmp_path / "committed")
    shutil.rmtree(tmp_path / "store")
    proc = gpu_sample(
        "mnist", (pieces, []), tmp_path, SAMPLE_FROM=str(tmp_path / "committed"), **small
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("skip: COMPLETED") == 2, proc.stdout[-2000:]
    assert len(read_file_store(tmp_path / "out" / "sample-runs")) == 2
    # A data set the sample does not have is refused in one line.
    proc = gpu_sample("imagenet", (pieces, []), tmp_path, **small)
    assert proc.returncode == 2
    assert "no data set imagenet; expected mnist, cifar10 or tiny_imagenet" in proc.stdout
