"""The README's first command, as written there, gives what the README says it gives."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from conftest import run_study

from study.stores import read_file_store

README = Path(__file__).resolve().parent.parent / "README.md"


def first_command() -> list[str]:
    """The `python -m study run ...` line of the README's first code block."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    (line,) = [ln for ln in block.splitlines() if ln.startswith("python -m study run ")]
    return shlex.split(line)[3:]  # after `python -m study`


@pytest.mark.realdata
def test_the_first_command_reaches_the_accuracy_the_readme_states(tmp_path, real_data):
    args = first_command()
    assert args[:2] == ["run", "with"] and "fast" in args
    # The README's data_root is relative to the checkout; here, the real data root.
    args = [f"data_root={real_data}" if a.startswith("data_root=") else a for a in args]
    run_study(*args, cwd=tmp_path)
    (rec,) = read_file_store(tmp_path / "runs")
    stated = float(re.search(r"reaches a test top-1 of (0\.\d+)", README.read_text()).group(1))
    assert rec.status == "COMPLETED" and rec.info["health"]["flags"] == []
    # Seeded and on the CPU: another machine's kernels may round differently, so within 0.005.
    assert rec.result["top1"] >= 0.95 and abs(rec.result["top1"] - stated) <= 0.005
