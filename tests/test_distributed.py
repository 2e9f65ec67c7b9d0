"""Multi-process training through torchrun: 2 CPU processes on the gloo backend."""

import subprocess
import sys

import numpy as np

from study.data import prepare
from study.engine import BUDGET_CHECK_EVERY
from study.registry import registry
from study.stores import read_file_store


def test_torchrun_two_processes_train_one_recorded_run(mnist_root, tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "study", "run", "with", "model=small_cnn", "dataset=mnist",
        f"data_root={mnist_root}", "epochs=2", "batch_size=50", "lr=0.003", "gallery=3",
        "-F", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/2:") == 1  # rank 0 alone prints

    (rec,) = read_file_store(tmp_path / "runs")  # rank 0 alone records
    assert rec.status == "COMPLETED"
    assert rec.info["training"]["processes"] == 2
    assert rec.info["dataset"]["train_count"] == 600 and rec.info["dataset"]["test_count"] == 200
    assert [s for s, _ in rec.metric("train_loss")] == [1, 2]

    # The ranks' evaluation shards come together as the whole test split, every label in place.
    data = prepare(registry().dataset("mnist"), mnist_root)
    ev = rec.evaluation()
    assert sorted(ev["test_indices"].tolist()) == list(range(200))
    assert np.array_equal(ev["labels"], data.test.labels[ev["test_indices"]])
    assert ev["confusion"].sum() == 200
    assert np.isclose(np.mean(ev["topk"][:, 0] == ev["labels"]), rec.result["top1"])


def test_torchrun_ranks_stop_together_at_a_time_budget(mnist_root, tmp_path):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "study", "run", "with", "model=small_cnn", "dataset=mnist",
        f"data_root={mnist_root}", "epochs=2", "batch_size=10", "time_budget=1e-9",
        "test_limit=50", "-F", str(tmp_path / "runs"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = read_file_store(tmp_path / "runs")
    assert rec.info["training"]["stopped_by_budget"] is True
    # The ranks agree every BUDGET_CHECK_EVERY steps (of 60 here): that many steps on each rank
    # (5 images each), summed; then the whole test split is evaluated.
    assert rec.metric("train_images") == [(1, float(BUDGET_CHECK_EVERY * 10))]
    assert rec.evaluation()["confusion"].sum() == 50


def test_two_torchrun_nodes_meeting_by_c10d_rendezvous_record_one_run(mnist_root, tmp_path):
    """README's multi-node recipe on one machine: two torchrun "nodes" (one process each) that
    find each other through c10d rendezvous on loopback train one run, recorded once."""
    import socket

    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                "--rdzv-id=study-test",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "-m",
                "study",
                "run",
                "with",
                "model=small_cnn",
                "dataset=mnist",
                f"data_root={mnist_root}",
                "epochs=1",
                "batch_size=50",
                "lr=0.003",
                "test_limit=50",
                "-F",
                str(tmp_path / "runs"),
            ],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    (rec,) = read_file_store(tmp_path / "runs")  # the global rank 0 alone records
    assert rec.status == "COMPLETED" and rec.info["training"]["processes"] == 2
    assert rec.evaluation()["confusion"].sum() == 50
