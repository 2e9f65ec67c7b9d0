"""Recovery through the command line: an interrupted run whose checkpoint changed on disk is
refused by `study run with resume=N` in one line, and the run is not completed from it; a
scheduler's stop signal checkpoints the step in progress, and the resumed run ends where an
uninterrupted one does."""

from __future__ import annotations

import re
import signal

import pytest
import torch
from conftest import run_study
from test_experiment import _run, _start, _wait_for_first_checkpoint

from study.stores import read_file_store


def test_a_tampered_checkpoint_is_refused_by_resume(mnist_root, tmp_path):
    proc = _start(tmp_path, mnist_root, "runs", "epochs=50", "image_size=32")
    _wait_for_first_checkpoint(tmp_path / "runs", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    (stopped,) = read_file_store(tmp_path / "runs")
    assert stopped.status == "INTERRUPTED" and stopped.has_checkpoint()

    checkpoint = tmp_path / "runs" / "1" / "checkpoint.pt"
    tampered = bytearray(checkpoint.read_bytes())
    tampered[len(tampered) // 2] ^= 0x01  # one bit, where torch.load may not notice
    checkpoint.write_bytes(bytes(tampered))

    resumed = run_study("run", "with", "resume=1", "-F", "runs", cwd=tmp_path, check=False)
    assert resumed.returncode == 2
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("study: error:")]
    assert errors == [
        "study: error: runs/1/checkpoint.pt: the file does not match its digest "
        "(checkpoint.pt.sha256): it changed after it was written; it cannot be resumed (start a "
        "new run, or restore the file)"
    ], resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert not re.search(r"^epoch \d+/50: ", resumed.stdout + resumed.stderr, re.M)  # no training
    (after,) = read_file_store(tmp_path / "runs")
    assert after.status == "FAILED"  # not COMPLETED, not left RUNNING
    assert after.metric("test_top1") == stopped.metric("test_top1")
    assert checkpoint.read_bytes() == bytes(tampered)  # left as found, for a person to look at


@pytest.mark.parametrize("stop", [signal.SIGUSR1, signal.SIGUSR2])
def test_a_stop_signal_checkpoints_the_step_in_progress_and_resume_continues_it(
    mnist_root, tmp_path, stop
):
    """SIGUSR1 (sbatch --signal's default) or SIGUSR2 (submitit's) in epoch 2: the run writes
    a checkpoint of the step it is on and stops, INTERRUPTED; `resume=1` continues from that
    step, and ends with the metrics of a run that was never stopped."""
    updates = ("epochs=3", "image_size=64", "seed=5")
    (straight,) = _run(tmp_path, mnist_root, *updates, store="straight")

    proc = _start(tmp_path, mnist_root, "stopped", *updates)
    _wait_for_first_checkpoint(tmp_path / "stopped", proc)
    proc.send_signal(stop)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out
    assert "its checkpoint holds that step: resume=ID continues from it" in out
    (stopped,) = read_file_store(tmp_path / "stopped")
    assert stopped.status == "INTERRUPTED"
    checkpoint = torch.load(tmp_path / "stopped" / "1" / "checkpoint.pt", weights_only=True)
    partial = checkpoint["partial"]
    assert partial["epoch"] in (2, 3) and partial["ranks"][0]["step"] >= 1

    resumed = run_study("run", "with", "resume=1", "-F", tmp_path / "stopped", cwd=tmp_path)
    step = partial["ranks"][0]["step"]
    assert f"resuming run 1 in epoch {partial['epoch']} after step {step}" in resumed.stdout
    (done,) = read_file_store(tmp_path / "stopped")
    assert done.status == "COMPLETED" and done.result == straight.result
    for name in ("train_loss", "train_top1", "test_loss", "test_top1", "test_top5"):
        assert done.metric(name) == straight.metric(name), name
