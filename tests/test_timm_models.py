"""timm's architectures through the plugin interface (`model=timm:NAME`, the `timm` extra):
looked up on demand, never imported at start, trained like any model; nothing downloads."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import run_study

from study.stores import read_file_store

timm = pytest.importorskip("timm")


def test_study_list_names_the_family_without_importing_timm(tmp_path):
    probe = (
        "import sys; from study.cli import main; main(['list']); "
        "print('timm imported' if 'timm' in sys.modules else 'timm not imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path
    ).stdout
    assert "timm:NAME" in out and "archstudy:study-timm" in out and "`study list timm`" in out
    assert out.strip().endswith("timm not imported")
    listed = run_study("list", "timm", cwd=tmp_path).stdout.splitlines()
    assert listed[0] == f"{len(timm.list_models())} models in timm (model=timm:NAME):"
    assert "  timm:resnet10t" in listed


def test_a_timm_spec_comes_from_timms_own_metadata():
    from study.registry import registry

    spec = registry().model("timm:resnet10t")
    assert spec.name == "timm:resnet10t" and spec.display_name == "resnet10t (timm)"
    assert spec.input_size == {"paper": 176, "fast": None}  # timm's pretrained input size
    assert spec.pretrained_weights and spec.normalises_activations  # BatchNorm inside
    assert f"timm {timm.__version__}" in spec.description
    assert registry().models["timm:resnet10t"].plugin == "archstudy:study-timm"
    assert "timm:nope" not in registry().models and "timm:resnet10t" in registry().models


def test_a_timm_model_trains_as_a_recorded_run_and_a_misspelt_one_is_one_line(mnist_root, tmp_path):
    run_study(
        "run", "with", "fast", "model=timm:resnet10t", "dataset=mnist", f"data_root={mnist_root}",
        "epochs=1", "batch_size=20", "test_limit=50", "-F", tmp_path / "runs", cwd=tmp_path,
    )  # fmt: skip
    (run,) = read_file_store(tmp_path / "runs")
    assert run.status == "COMPLETED" and run.config["model"] == "timm:resnet10t"
    assert run.info["model"]["plugin"] == "archstudy:study-timm"
    assert run.info["model"]["image_size"] == 32  # MNIST's 28 px raised to the family's minimum
    assert run.info["model"]["params"] > 1e6
    bad = run_study("run", "with", "model=timm:resnet10x", "dataset=mnist",
                    f"data_root={mnist_root}", cwd=tmp_path, check=False)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == (
        "study: error: unknown model 'timm:resnet10x': timm has no such architecture; did you "
        "mean timm:resnet10t, timm:resnet101, timm:resnet101s? (`study list timm` lists them)"
    )
