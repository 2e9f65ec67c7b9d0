"""Recovery through the command line: an interrupted run whose checkpoint changed on disk is
refused by `study run with resume=N` in one line, and the run is not completed from it."""

from __future__ import annotations

import re
import signal

from conftest import run_study
from test_experiment import _start, _wait_for_first_checkpoint

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
