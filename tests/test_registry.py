"""Plugins are found through real entry points; conflicts and failures name the plugin."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_distribution, run_study

from study.errors import PluginError, UnknownName
from study.registry import Registry, plugin_manager

HERE = Path(__file__).parent


def test_builtin_plugins_are_registered_through_entry_points():
    reg = Registry(plugin_manager())
    assert {"vgg16", "resnet50", "inception_v3", "resnet18", "small_cnn"} <= set(reg.models)
    assert {"mnist", "fashion_mnist", "cifar10", "tiny_imagenet"} <= set(reg.datasets)
    assert reg.models["resnet50"].plugin == "archstudy:study-models"
    assert reg.datasets["cifar10"].plugin == "archstudy:study-datasets"


def test_unknown_name_lists_the_registered_ones():
    reg = Registry(plugin_manager())
    with pytest.raises(UnknownName, match=r"unknown model 'resnet51'.*resnet50.*vgg16"):
        reg.model("resnet51")
    with pytest.raises(UnknownName, match=r"unknown dataset 'cifar100'.*cifar10"):
        reg.dataset("cifar100")


def test_two_plugins_registering_one_name_are_both_named(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path,
        "dupmodels",
        "dup_plugin",
        """
        import study

        @study.hookimpl
        def study_models():
            return [study.ModelSpec(name="resnet18", factory=None, description="a clash",
                                    input_size={}, min_input_size=1)]
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        Registry(plugin_manager())
    message = str(err.value)
    assert "'resnet18'" in message and "rename the model" in message
    assert "archstudy:study-models" in message and "dupmodels:dup_plugin" in message


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "brokenplugin", "broken_plugin", "import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin brokenplugin:broken_plugin .*failed to import"):
        plugin_manager()


def test_study_list_names_each_plugin(tmp_path):
    out = run_study("list", cwd=tmp_path).stdout
    assert "resnet50" in out and "tiny_imagenet" in out
    assert out.count("archstudy:study-models") == 6


@pytest.fixture(scope="module")
def tinynet_site(tmp_path_factory) -> Path:
    """The example third-party plugin distribution, pip-installed into its own folder."""
    src = tmp_path_factory.mktemp("src") / "third_party_plugin"
    shutil.copytree(HERE / "third_party_plugin", src)
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        check=True,
    )  # fmt: skip
    return site


def test_a_pip_installed_third_party_plugin_trains_through_study_run(
    tinynet_site, mnist_root, tmp_path
):
    env = {"PYTHONPATH": str(tinynet_site)}
    listing = run_study("list", cwd=tmp_path, env=env).stdout
    assert "tinynet" in listing and "study-tinynet:tinynet" in listing
    run_study(
        "run", "with", "model=tinynet", "dataset=mnist", f"data_root={mnist_root}",
        "epochs=1", "batch_size=50", "-F", tmp_path / "runs", cwd=tmp_path, env=env,
    )  # fmt: skip
    from study.stores import read_file_store

    (record,) = read_file_store(tmp_path / "runs")
    assert record.status == "COMPLETED"
    assert record.config["model"] == "tinynet"
    assert record.info["model"]["plugin"] == "study-tinynet:tinynet"
    # The plugin's display name is what the report prints (read through the same registry).
    title = subprocess.run(
        [sys.executable, "-c", "import study.report as r; print(r.model_title('tinynet'))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tinynet_site)},
    ).stdout.strip()  # fmt: skip
    assert title == "TinyNet"
    # What it recorded is what its predictions give.
    correct = record.evaluation()["topk"][:, 0] == record.evaluation()["labels"]
    assert record.result["top1"] == pytest.approx(correct.mean())
    assert record.metric("test_top1")[-1][1] == record.result["top1"]


def write_shapes(root: Path, seed: int = 0) -> None:
    """shapes.npz: filled circles (class 0) and squares (class 1) of random size and place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:16, :16]

    def images(n):
        labels = np.arange(n) % 2
        out = np.zeros((n, 16, 16, 1), np.uint8)
        for i, label in enumerate(labels):
            r, cy, cx = rng.integers(3, 6), rng.integers(5, 11), rng.integers(5, 11)
            inside = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            if label == 0:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            out[i, inside, 0] = 255
        return out, labels

    (train_x, train_y), (test_x, test_y) = images(200), images(50)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "shapes.npz", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


def test_the_example_plugins_data_set_trains_and_is_the_readmes(tinynet_site, tmp_path):
    """The README's plugin example is the tested one, byte for byte, and its data set (a file
    format of its own) trains under `fast` with its model."""
    readme = (HERE.parent / "README.md").read_text()
    code = (HERE / "third_party_plugin" / "study_tinynet" / "__init__.py").read_text()
    assert f"```python\n# study_tinynet/__init__.py\n{code}```" in readme
    env = {"PYTHONPATH": str(tinynet_site)}
    write_shapes(tmp_path / "data")
    run_study(
        "run", "with", "fast", "model=tinynet", "dataset=shapes", f"data_root={tmp_path / 'data'}",
        "epochs=15", "batch_size=20", "lr=0.005", "-F", tmp_path / "runs", cwd=tmp_path, env=env,
    )  # fmt: skip
    from study.stores import read_file_store

    (record,) = read_file_store(tmp_path / "runs")
    assert (
        record.status == "COMPLETED" and record.info["dataset"]["plugin"] == "study-tinynet:tinynet"
    )
    assert record.result["top1"] >= 0.9, record.result  # circles from squares: learnable
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "shapes.npz").write_bytes(b"not an npz")
    bad = run_study("run", "with", "model=tinynet", "dataset=shapes",
                    f"data_root={tmp_path / 'bad'}", "-F", tmp_path / "runs", cwd=tmp_path,
                    env=env, check=False)  # fmt: skip
    assert bad.returncode == 2 and "shapes.npz: is not a shapes archive" in bad.stderr


def test_python_m_study_works_in_the_source_checkout():
    """The README's commands run from the checkout, where `python -m study` imports ./study
    first: the installed package must still supply study.plugins and study.templates."""
    out = run_study("list", cwd=HERE.parent).stdout
    assert "resnet50" in out and "archstudy:study-models" in out


def test_a_misspelled_hook_is_named_with_the_hook_it_resembles(tmp_path, monkeypatch):
    fake_distribution(
        tmp_path, "typoplugin", "typo_plugin",
        """
        import study

        @study.hookimpl
        def study_model():
            return []
        """,
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        plugin_manager()
    assert str(err.value) == (
        "plugin typoplugin:typo_plugin defines study_model(), which is no study hook "
        "(did you mean study_models?); the hooks are study_datasets, study_model_families, "
        "study_models"
    )


def test_one_spec_instead_of_a_list_is_accepted_and_other_returns_are_refused(
    tmp_path, monkeypatch
):
    fake_distribution(
        tmp_path, "singleplugin", "single_plugin",
        """
        import study

        @study.hookimpl
        def study_models():
            return study.ModelSpec(name="single", factory=None, description="one spec",
                                   input_size={}, min_input_size=1)

        @study.hookimpl
        def study_datasets():
            return {"name": "not a spec"}
        """,
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError) as err:
        Registry(plugin_manager())
    assert str(err.value) == (
        "plugin singleplugin:single_plugin returned dict from study_datasets(); "
        "expected a list of study.specs.DatasetSpec"
    )
    # The data set hook switched off with the whole plugin, the model spec alone would load:
    pm = plugin_manager()
    pm.unregister(name="singleplugin:single_plugin")
    models = Registry(pm).models  # loads: the rest of the plugins are unaffected
    assert "single" not in models and {"resnet18", "small_cnn"} <= set(models)


def test_a_broken_plugin_can_be_switched_off_without_uninstalling_it(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "brokenplugin", "broken_plugin", "import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="switch it off with STUDY_DISABLE_PLUGINS="):
        plugin_manager()
    monkeypatch.setenv("STUDY_DISABLE_PLUGINS", "brokenplugin:broken_plugin")
    assert "resnet18" in Registry(plugin_manager()).models
    out = run_study(
        "list", cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "STUDY_DISABLE_PLUGINS": "brokenplugin"},
    ).stdout  # fmt: skip
    assert "resnet18" in out and "broken" not in out


def test_the_old_distribution_left_installed_beside_the_new_one_is_named_in_one_line(tmp_path):
    """`pip install archstudy` over an old `study` install: both distributions point at the same
    plugin module. One line says which to uninstall, not pluggy's ValueError."""
    info = tmp_path / "study-0.0.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: study\nVersion: 0.0.9\n")
    (info / "entry_points.txt").write_text("[study.plugins]\nstudy-models = study.plugins.models\n")
    proc = run_study("list", cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)}, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("study: error:")]
    assert "two installed distributions provide the same code" in line
    assert line.endswith("study is archstudy's old name: pip uninstall study")
