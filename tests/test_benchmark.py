"""The benchmark script runs end to end and writes the JSON record the README's table reads."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmark.py"
FIELDS = {"model", "dataset", "protocol", "image_size", "device", "images_per_s",
          "baseline_images_per_s", "ratio", "data_share", "baseline_data_share", "date",
          "machine"}  # fmt: skip


def test_benchmark_measures_both_pipelines_and_writes_json(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "resnet18", "--dataset", "mnist",
         "--protocol", "fast", "--data", "synthetic", "--steps", "1", "--warmup", "0",
         "--batch-size", "4", "--workers", "0", "--device", "cpu", "--machine", "test",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio" in proc.stdout
    (path,) = tmp_path.glob("*-test.jsonl")
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert FIELDS <= set(record)
    assert record["image_size"] == 28 and record["protocol"] == "fast"  # MNIST's native size
    assert record["images_per_s"] > 0 and record["baseline_images_per_s"] > 0
    assert 0 <= record["data_share"] <= 1 and 0 <= record["baseline_data_share"] <= 1
