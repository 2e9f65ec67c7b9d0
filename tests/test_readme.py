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


def test_the_readme_settings_table_is_the_settings_module(tmp_path):
    """One table of settings (study.settings): the README's is what it prints, Sacred's config
    holds exactly its keys and defaults, and `study help run` shows every one."""
    from study import protocols
    from study.experiment import ex
    from study.settings import SETTINGS, defaults, markdown_table

    assert markdown_table() in README.read_text(), "regenerate: python -m study.settings"
    assert ex.configurations[-1]() == defaults()
    assert list(defaults()) == [s.name for s in SETTINGS]
    # Protocol values are read from the protocols, never copied: fast's weight decay as set.
    row = next(ln for ln in markdown_table().splitlines() if ln.startswith("| `weight_decay`"))
    assert f"fast {protocols.FAST.weight_decay:g}" in row
    shown = run_study("help", "run", cwd=tmp_path).stdout
    assert shown == run_study("run", "--help", cwd=tmp_path).stdout
    assert shown == run_study("print_config", cwd=tmp_path).stdout  # no model: the defaults
    for s in SETTINGS:
        assert f"\n  {s.name} (default: " in shown
    assert "dummy" not in shown


def test_every_environment_variable_the_code_reads_is_in_the_readme_table():
    root = README.parent
    code = "".join(p.read_text() for d in ("study", "plugins") for p in (root / d).rglob("*.py"))
    read = set(re.findall(r"\bSTUDY_[A-Z_]+[A-Z]\b", code))
    text = README.read_text()
    table = text[text.index("## Environment variables") : text.index("## Layout")]
    listed = set(re.findall(r"^\| `(STUDY_[A-Z_]+)` \|", table, re.M))
    assert read and read <= listed, sorted(read - listed)
    assert listed - read == {"STUDY_TEST_DATA"}  # the tests' own
    anchors = re.findall(r"\]\(#([a-z-]+)\)", text)
    headings = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
                for h in re.findall(r"^#{2,3} (.+)$", text, re.M)}  # fmt: skip
    assert set(anchors) <= headings, set(anchors) - headings  # every link finds its section
