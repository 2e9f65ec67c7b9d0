"""`python -m study run` end to end: what a run records, bad input, determinism, resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from io import BytesIO

import numpy as np
import pytest
from conftest import run_study
from PIL import Image

from study.record import EPOCH_METRICS
from study.report.model import machine_name
from study.stores import read_file_store

FAST = ["model=small_cnn", "dataset=mnist", "batch_size=50", "lr=0.003"]


def _run(tmp_path, data_root, *updates, store="runs"):
    run_study(
        "run", "with", *FAST, f"data_root={data_root}", *updates, "-F", tmp_path / store,
        cwd=tmp_path,
    )  # fmt: skip
    return read_file_store(tmp_path / store)


def test_a_run_records_config_metrics_results_and_artifacts(mnist_root, tmp_path):
    (rec,) = _run(tmp_path, mnist_root, "epochs=2", "gallery=5", "test_limit=100")
    assert rec.status == "COMPLETED"
    assert rec.config["epochs"] == 2 and rec.config["image_size"] == 28  # resolved nulls
    for name in EPOCH_METRICS:
        assert [step for step, _ in rec.metric(name)] == [1, 2], name
    assert set(rec.result) == {"top1", "top5", "test_loss"}
    assert rec.metric("test_top1")[-1][1] == rec.result["top1"]
    assert [lr for _, lr in rec.metric("lr")] == [0.003, 0.003]  # a constant schedule
    # The machine's load as each epoch ended (Linux has it), and the CPUs it is out of.
    assert all(load >= 0 for _, load in rec.metric("load_avg"))
    assert rec.info["training"]["cpus"] == len(os.sched_getaffinity(0))

    ds = rec.info["dataset"]
    assert (ds["train_count"], ds["test_count"], ds["test_available"]) == (600, 100, 200)
    assert ds["class_names"] == [str(i) for i in range(10)]
    model = rec.info["model"]
    assert model["params"] > 0 and model["weight_mb"] > 0 and model["gmacs_per_image"] > 0
    assert rec.info["training"]["epochs_completed"] == 2
    assert rec.info["training"]["train_seconds"] > 0
    assert rec.host["study"]["torch"] and rec.host["cpu"]

    ev = rec.evaluation()
    assert ev["labels"].shape == (100,) and ev["topk"].shape == (100, 5)
    assert ev["confusion"].sum() == 100
    assert np.isclose(np.mean(ev["topk"][:, 0] == ev["labels"]), rec.result["top1"])
    assert np.isclose(np.trace(ev["confusion"]) / 100, rec.result["top1"])
    per_class = rec.info["per_class_accuracy"]
    # Per class: its diagonal of the confusion matrix over its row.
    expected = np.diag(ev["confusion"]) / ev["confusion"].sum(axis=1)
    assert np.allclose(per_class, expected) and len(per_class) == 10

    gallery = rec.info["misclassified"]
    assert len(gallery) == min(5, int(round(100 * (1 - rec.result["top1"]))))
    confidences = [g["confidence"] for g in gallery]
    assert confidences == sorted(confidences, reverse=True)
    for g in gallery:
        assert g["true"] != g["predicted"] and g["true_name"] == str(g["true"])
        image = Image.open(BytesIO(rec.artifact_bytes(g["artifact"])))
        assert image.size == (28, 28)
    assert os.path.exists(rec.info["checkpoint"])


def test_the_same_seed_gives_the_same_metrics(mnist_root, tmp_path):
    a = _run(tmp_path, mnist_root, "epochs=1", "seed=3", store="a")[0]
    b = _run(tmp_path, mnist_root, "epochs=1", "seed=3", store="b")[0]
    for name in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5"):
        assert a.metric(name) == b.metric(name), name
    assert np.array_equal(a.evaluation()["topk_prob"], b.evaluation()["topk_prob"])


@pytest.mark.parametrize(
    "update, message",
    [
        ("epochs=0", "epochs=0 is invalid; expected an integer >= 1"),
        ("batch_size=-1", "batch_size=-1 is invalid"),
        ("lr=abc", "lr='abc' is invalid; expected a number"),
        ("optimizer=rmsprop", "optimizer='rmsprop' is invalid; expected one of: adam, adamw, sgd"),
        ("model=resnet51", "unknown model 'resnet51'; registered models:"),
        ("image_size=4", "image_size=4 is too small for small_cnn; it needs at least 8 px"),
        ("head=middle", "head='middle' is invalid; expected one of: replace, append"),
        ("device=tpu", "device='tpu' is invalid"),
        ("time_budget=0", "time_budget=0 is invalid; expected a number > 0"),
        (
            "warmup=0.9",
            "warmup=0.9 is invalid; expected a share of the schedule's steps, 0 <= x <= 0.5",
        ),
        ("grad_clip=-1", "grad_clip=-1 is invalid; expected a number >= 0"),
        ("health_stop=maybe", "health_stop='maybe' is invalid; expected true or false"),
    ],
)
def test_bad_config_is_one_clear_line_and_records_nothing(mnist_root, tmp_path, update, message):
    proc = run_study(
        "run", "with", *FAST, f"data_root={mnist_root}", update, "-F", tmp_path / "runs",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("study: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_missing_data_offline_names_the_files_and_records_nothing(tmp_path):
    proc = run_study(
        "run", "with", *FAST, f"data_root={tmp_path / 'empty'}", "download=False",
        "-F", tmp_path / "runs", cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "train-images-idx3-ubyte" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_print_config_and_the_paper_named_config(tmp_path):
    out = run_study(
        "print_config", "with", "paper", "model=inception_v3", "dataset=tiny_imagenet",
        cwd=tmp_path,
    ).stdout  # fmt: skip
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # Sacred colours modified entries
    for line in ("epochs = 30", "image_size = 299", "head = 'append'", "lr = 0.0002",
                 "batch_size = 100", "optimizer = 'adam'", "aux_logits = True"):  # fmt: skip
        assert line in out, line
    assert not (tmp_path / "runs").exists()  # print_config records no run


def _start(tmp_path, data_root, store, *updates):
    cmd = [sys.executable, "-m", "study", "run", "with", *FAST, f"data_root={data_root}",
           *updates, "-F", str(tmp_path / store)]  # fmt: skip
    return subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_first_checkpoint(store_dir, proc, timeout=120):
    """Return once epoch 1's checkpoint exists: the run is then early in epoch 2."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        if (store_dir / "1" / "checkpoint.pt").exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"epoch 1 did not finish in {timeout} s")


def test_killed_mid_epoch_then_resumed_matches_the_uninterrupted_run(mnist_root, tmp_path):
    updates = ("epochs=3", "image_size=64", "seed=5")
    (straight,) = _run(tmp_path, mnist_root, *updates, store="straight")

    proc = _start(tmp_path, mnist_root, "killed", *updates)
    _wait_for_first_checkpoint(tmp_path / "killed", proc)
    proc.kill()  # mid-epoch 2
    proc.wait()
    (dead,) = read_file_store(tmp_path / "killed")
    assert dead.status == "RUNNING" and dead.stop_time is None  # kill -9: no chance to record

    run_study("run", "with", "resume=1", "-F", tmp_path / "killed", cwd=tmp_path)
    (resumed,) = read_file_store(tmp_path / "killed")  # the same run, not a second one
    assert resumed.status == "COMPLETED" and resumed.id == "1"
    assert resumed.result == straight.result
    for name in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5"):
        assert resumed.metric(name) == straight.metric(name), name
    # Both machines that trained it are on record, the second from its resumed epoch (here
    # the same kind of machine: a report reads each one's measured speed to tell).
    first, second = resumed.info["training"]["machines"]
    assert (first["from_epoch"], second["from_epoch"], second["from_step"]) == (0, 1, 0)
    assert machine_name(first) == machine_name(second) == machine_name(resumed.info["training"])
    assert second["cpu_gflops"] > 0 and machine_name(first).startswith(first["device_name"])
    # The CPU speed on record is the machine's best probe (before training, after each epoch).
    assert resumed.info["training"]["cpu_gflops"] == second["cpu_gflops"]


def test_a_run_recorded_before_a_setting_existed_resumes_with_the_value_it_trained_with(
    mnist_root, tmp_path
):
    """A `fast` run that trained with dropout 0.5 and whose record predates the `dropout` key
    (removed from its config.json, as an older study wrote it): the resume fills in the 0.5 it
    trained with (settings.BEFORE_RECORDED), not today's `fast` 0, which its checkpoint refuses."""
    proc = _start(tmp_path, mnist_root, "old", "protocol=fast", "dropout=0.5", "epochs=3",
                  "image_size=64")  # fmt: skip
    _wait_for_first_checkpoint(tmp_path / "old", proc)
    proc.kill()
    proc.wait()
    config_file = tmp_path / "old" / "1" / "config.json"
    config = json.loads(config_file.read_text())
    del config["dropout"]
    config_file.write_text(json.dumps(config))

    run_study("run", "with", "resume=1", "-F", tmp_path / "old", cwd=tmp_path)
    (resumed,) = read_file_store(tmp_path / "old")
    assert resumed.status == "COMPLETED" and resumed.id == "1"
    assert resumed.config["dropout"] == 0.5 and resumed.config["protocol"] == "fast"


def test_resuming_a_completed_run_is_refused(mnist_root, tmp_path):
    _run(tmp_path, mnist_root, "epochs=1")
    proc = run_study("run", "with", "resume=1", "-F", tmp_path / "runs", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "already COMPLETED" in proc.stderr


def test_sigterm_records_the_run_as_interrupted(mnist_root, tmp_path):
    proc = _start(tmp_path, mnist_root, "runs", "epochs=50", "image_size=64")
    _wait_for_first_checkpoint(tmp_path / "runs", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.status == "INTERRUPTED" and rec.stop_time


def test_the_fast_named_config_resolves_per_model_and_data_set(tmp_path):
    def config(*updates):
        out = run_study("print_config", "with", "fast", *updates, cwd=tmp_path).stdout
        return re.sub(r"\x1b\[[0-9;]*m", "", out)

    mnist = config("model=vgg16", "dataset=mnist")
    for line in ("image_size = 32", "augment = 'crop'", "optimizer = 'adamw'",
                 "schedule = 'onecycle'", "label_smoothing = 0.1", "head = 'replace'"):  # fmt: skip
        assert line in mnist, line  # VGG-16 needs 32 px; a mirrored digit is no digit
    cifar = config("model=inception_v3", "dataset=cifar10")
    assert "image_size = 32" in cifar and "augment = 'crop-flip'" in cifar
    assert "aux_logits = False" in cifar


def test_a_fast_run_trains_with_its_schedule_and_augmentation(mnist_root, tmp_path):
    (rec,) = _run(tmp_path, mnist_root, "fast", "epochs=2", "batch_size=50")
    assert rec.status == "COMPLETED"
    assert rec.config["schedule"] == "onecycle" and rec.config["augment"] == "crop"
    (_, first), (_, second) = rec.metric("train_loss")
    assert second < first and rec.result["top1"] > 0.15  # it learns (chance: 0.1)


def test_a_time_budget_is_recorded_with_the_images_each_epoch_saw(mnist_root, tmp_path):
    (rec,) = _run(tmp_path, mnist_root, "epochs=3", "time_budget=1e-9", "test_limit=100")
    assert rec.status == "COMPLETED"
    assert rec.info["training"]["stopped_by_budget"] is True
    assert rec.info["training"]["epochs_completed"] == 1
    assert rec.metric("train_images") == [(1, 50.0)]  # one batch of the 600 training images
    assert rec.metric("test_top1")[-1][1] == rec.result["top1"]
    assert rec.evaluation()["labels"].shape == (100,)


def _under_a_terminal(args, cwd) -> str:
    """What `python -m study ARGS` writes to a real pseudo-terminal (stdout and stderr)."""
    import os
    import pty

    out = bytearray()

    def read(fd):
        data = os.read(fd, 1 << 16)
        out.extend(data)
        return data

    old = os.getcwd()
    os.chdir(cwd)
    try:
        status = pty.spawn([sys.executable, "-m", "study", *map(str, args)], read)
    finally:
        os.chdir(old)
    assert os.waitstatus_to_exitcode(status) == 0, out.decode(errors="replace")
    return out.decode(errors="replace")


def test_progress_bars_only_on_a_terminal(mnist_root, tmp_path):
    """Piped (a log, a cluster job, Sacred's cout.txt) a run writes plain lines, one per
    epoch, with no carriage-return debris; on a terminal it draws tqdm's bar."""
    args = ["run", "with", *FAST, f"data_root={mnist_root}", "epochs=1", "test_limit=50"]
    piped = run_study(*args, "-F", tmp_path / "piped", cwd=tmp_path)
    assert "\r" not in piped.stdout + piped.stderr and "it/s" not in piped.stderr
    (line,) = [ln for ln in piped.stdout.splitlines() if ln.startswith("epoch 1/1:")]
    assert ", test top-1 " in line
    assert "\r" not in (tmp_path / "piped" / "1" / "cout.txt").read_text()
    shown = _under_a_terminal([*args, "-F", tmp_path / "tty"], tmp_path)
    assert "epoch 1/1: 100%|" in shown  # tqdm's bar, drawn on the terminal
