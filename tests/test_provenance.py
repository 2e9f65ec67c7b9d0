"""Every run records the code and settings that ran: what a rerun years later needs."""

import hashlib
import json
import re
import subprocess
from pathlib import Path

from conftest import run_study

import study
import study.plugins.models
from study.record import _git_state


def test_a_run_records_its_provenance(mnist_root, tmp_path):
    run_study(
        "run", "with", "model=small_cnn", "dataset=mnist", f"data_root={mnist_root}", "epochs=1",
        "test_limit=50", "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    info = json.loads((tmp_path / "runs" / "1" / "info.json").read_text())
    prov = info["provenance"]
    assert prov["study"] == study.__version__
    assert prov["plugins"] == {
        "archstudy:study-datasets": study.__version__,
        "archstudy:study-models": study.__version__,
    }
    # Each plugin's source, hashed: the files of the package that holds its entry point.
    h = hashlib.sha256()
    for file in sorted(Path(study.plugins.models.__file__).parent.glob("*.py")):
        h.update(file.name.encode() + b"\0" + file.read_bytes())
    assert prov["plugin_code"] == {
        "archstudy:study-datasets": h.hexdigest()[:16],
        "archstudy:study-models": h.hexdigest()[:16],
    }
    assert prov["versions"]["torch"] and prov["versions"]["numpy"]
    assert prov["determinism"]["autocast"] is None  # the CPU trains in fp32
    expected = {"deterministic_algorithms", "cudnn_benchmark", "tf32_matmul", "tf32_cudnn"}
    assert set(prov["determinism"]) >= expected
    assert prov["command"][1:4] == ["run", "with", "model=small_cnn"]
    # An installed copy has no checkout; a source checkout records its commit.
    assert prov["git"] is None or re.fullmatch(r"[0-9a-f]{40}", prov["git"]["commit"])


def test_the_git_state_names_the_commit_and_a_dirty_tree(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q", "-b", "work")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    clean = _git_state(tmp_path)
    assert clean["branch"] == "work" and not clean["dirty"] and clean["diff_sha256"] is None
    (tmp_path / "code.py").write_text("x = 2\n")
    dirty = _git_state(tmp_path)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"]
    assert re.fullmatch(r"[0-9a-f]{64}", dirty["diff_sha256"])
    assert _git_state(tmp_path / "not-a-checkout") is None


def test_the_report_appendix_names_the_code_that_ran(mnist_root, tmp_path):
    from study.report import build_report
    from study.stores import read_file_store

    run_study(
        "run", "with", "model=small_cnn", "dataset=mnist", f"data_root={mnist_root}", "epochs=1",
        "test_limit=50", "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    records = read_file_store(tmp_path / "runs")
    html = build_report(records, tmp_path / "r.html", "html").read_text()
    prov = records[0].info["provenance"]
    row = re.search(r"<tr><th[^>]*>code</th><td colspan=\"3\">([^<]*)</td></tr>", html).group(1)
    if prov["git"]:
        assert row.startswith(f"study {study.__version__} at commit {prov['git']['commit'][:12]}")
    else:
        assert row.startswith(f"study {study.__version__} (installed)")
    assert row.endswith(
        f"plugins: archstudy:study-datasets {study.__version__}, "
        f"archstudy:study-models {study.__version__}"
    )
