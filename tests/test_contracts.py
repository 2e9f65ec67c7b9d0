"""Bad values stop `study run` with one line before any work, and nothing is recorded; a run
whose loss stops being finite ends FAILED with one line naming the epoch and step."""

import json
import re

import pytest
import torch
from conftest import fake_distribution, run_study

from study.stores import read_file_store

BASE = ["model=small_cnn", "dataset=mnist", "epochs=1", "batch_size=50"]


def _run(tmp_path, mnist_root, *updates):
    return run_study(
        "run", "with", *BASE, f"data_root={mnist_root}", *updates, "-F", tmp_path / "runs",
        cwd=tmp_path, check=False,
    )  # fmt: skip


CASES = [
    ("lr=1e999", "lr=inf is invalid; expected a finite number"),
    ("momentum=nan", "momentum='nan' is invalid; expected a number"),
    ("time_budget=1e999", "time_budget=inf is invalid; expected a finite number"),
    ("seed=4294967296", "seed=4294967296 is invalid; expected 0 <= seed <= 4294967295"),
    ("num_workers=100000", "num_workers=100000 is invalid; this machine has"),
    ("data_on_device=maybe", "data_on_device='maybe' is invalid; expected auto, true or false"),
    ("compile_mode=fastest", "compile_mode='fastest' is invalid; expected one of: default,"),
    ("grad_compression=fp8", "grad_compression='fp8' is invalid; expected one of: none, bf16"),
    ("epochz=3", "unknown setting 'epochz'; did you mean epochs? every setting: README"),
]
if not torch.cuda.is_available():
    CASES.append(("device=cuda:0", "device='cuda:0' is unavailable: no CUDA device"))


@pytest.mark.parametrize(("update", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_is_one_line_exit_2_and_records_nothing(mnist_root, tmp_path, update, message):
    proc = _run(tmp_path, mnist_root, update)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("study: error:")]
    assert message in line
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.name != "_sources"]


def test_nan_from_a_json_config_file_is_refused(mnist_root, tmp_path):
    config = tmp_path / "nan.json"
    config.write_text('{"time_budget": NaN}')  # what json.dumps(float("nan")) writes
    proc = _run(tmp_path, mnist_root, str(config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "study: error: time_budget=nan is invalid; expected a finite number" in proc.stderr


def test_a_loss_that_stops_being_finite_fails_the_run_with_one_line(mnist_root, tmp_path):
    proc = _run(tmp_path, mnist_root, "optimizer=sgd", "lr=1e30")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("study: error:")]
    assert "epoch 1: the training loss was not finite (nan or inf) in" in line
    run = json.loads((tmp_path / "runs" / "1" / "run.json").read_text())
    assert run["status"] == "FAILED"
    assert not (tmp_path / "runs" / "1" / "checkpoint.pt").exists()


BROKEN_PLUGIN = """
import study
from torch import nn


def _spec(name, factory):
    return study.ModelSpec(name=name, factory=factory, description="broken on purpose",
                           input_size={"paper": None, "fast": None}, min_input_size=4)


def returns_none(options):
    return None


def too_many_logits(options):
    inputs = options.in_channels * options.image_size**2
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, options.num_classes + 3))


def raises(options):
    raise FileNotFoundError("weights.pt")


@study.hookimpl
def study_models():
    return [_spec("returns_none", returns_none), _spec("too_many_logits", too_many_logits),
            _spec("raises", raises)]
"""

PLUGIN_CASES = [
    ("returns_none", "model returns_none (plugin brokenmodels:broken_models): its factory "
     "returned NoneType, not a torch.nn.Module"),
    ("too_many_logits", "model too_many_logits: its output for a batch of 2 images has shape "
     "(2, 13), expected (2, 10): one logit per class of mnist"),
    ("raises", "model raises (plugin brokenmodels:broken_models) failed to build: "
     "FileNotFoundError: weights.pt"),
]  # fmt: skip


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    """An installed distribution (module + dist-info with an entry point) of broken models."""
    site = tmp_path_factory.mktemp("broken-site")
    return fake_distribution(site, "brokenmodels", "broken_models", BROKEN_PLUGIN)


@pytest.mark.parametrize(("model", "message"), PLUGIN_CASES, ids=[c[0] for c in PLUGIN_CASES])
def test_a_broken_model_plugin_is_one_line_before_the_run(
    broken_site, mnist_root, tmp_path, model, message
):
    proc = run_study(
        "run", "with", f"model={model}", "dataset=mnist", f"data_root={mnist_root}",
        "epochs=1", "-F", tmp_path / "runs", cwd=tmp_path, check=False,
        env={"PYTHONPATH": str(broken_site)},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert f"study: error: {message}" in proc.stderr
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.name != "_sources"]


def test_an_image_size_beyond_memory_is_one_line_before_the_run(mnist_root, tmp_path):
    proc = _run(tmp_path, mnist_root, "image_size=100000")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("study: error: image_size=100000: one image through small_cnn needs")
    assert "px or less would fit" in line
    assert not (tmp_path / "runs" / "1").exists()


PLAIN_DATASET_PLUGIN = """
import numpy as np
import study
from study.specs import Decoded, Split


def find(root):
    return []


def decode(files, workers=0):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8)
    labels = np.arange(40) % 2
    return Decoded(Split(images[:30], labels[:30]), Split(images[30:], labels[30:]), ["a", "b"])


@study.hookimpl
def study_datasets():
    return [study.DatasetSpec(name="letters", num_classes=2, class_names=["a", "b"],
                              image_size=8, channels=1, train_size=30, test_size=10,
                              find=find, decode=decode)]
"""


@pytest.fixture(scope="module")
def letters_site(tmp_path_factory):
    """A data set plugin that declares only what the README's minimum asks for."""
    site = tmp_path_factory.mktemp("letters-site")
    return fake_distribution(site, "letters", "letters_plugin", PLAIN_DATASET_PLUGIN)


def test_a_plugin_data_set_is_never_flipped_unless_it_says_so_and_paper_asks_for_epochs(
    letters_site, tmp_path
):
    env = {"PYTHONPATH": str(letters_site)}
    fast = run_study(
        "print_config", "with", "fast", "model=small_cnn", "dataset=letters", cwd=tmp_path,
        env=env,
    ).stdout  # fmt: skip
    assert "augment = 'crop'" in fast  # not crop-flip: mirror invariance is the author's claim
    paper = run_study(
        "run", "with", "model=small_cnn", "dataset=letters", "head=replace", "-F", tmp_path,
        cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert paper.returncode == 2 and "Traceback" not in paper.stderr
    assert (
        "study: error: dataset letters declares no epochs for the paper protocol "
        "(DatasetSpec.paper_epochs); set epochs=N"
    ) in paper.stderr
    # Refused before the run: nothing was started or recorded.
    assert "Started run" not in paper.stderr + paper.stdout and read_file_store(tmp_path) == []
    # With epochs given it runs under paper, and its epochs are no departure (none declared).
    run_study(
        "run", "with", "model=small_cnn", "dataset=letters", "epochs=1", "-F", tmp_path,
        cwd=tmp_path, env=env,
    )  # fmt: skip
    (rec,) = read_file_store(tmp_path)
    assert rec.status == "COMPLETED" and rec.config["protocol"] == "paper"
    assert rec.config["epochs"] == 1 and "epochs" not in rec.info["departures"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("pretrained=True", "pretrained=True is invalid: model small_cnn declares no pretrained "
         "weights; use pretrained=False or a path to a weights file"),
        ("head=append", "head='append' is invalid: model small_cnn has no 1000-way ImageNet "
         "head to append to; use head=replace"),
    ],
)  # fmt: skip
def test_what_a_model_does_not_declare_is_refused(mnist_root, tmp_path, update, message):
    proc = _run(tmp_path, mnist_root, update)
    assert proc.returncode == 2 and f"study: error: {message}" in proc.stderr


def test_the_cache_key_follows_the_decoding_code(tmp_path, monkeypatch):
    import importlib

    from study.data import decoder_fingerprint
    from study.specs import DatasetSpec

    module = tmp_path / "decoder_v.py"
    module.write_text("def decode(files, workers=0):\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = DatasetSpec("d", 2, ["a", "b"], 8, 1, 1, 1, find=None,
                       decode=importlib.import_module("decoder_v").decode)  # fmt: skip
    before = decoder_fingerprint(spec)
    module.write_text("def decode(files, workers=0):\n    return 2  # fixed\n")
    assert decoder_fingerprint(spec) != before and len(before) == 16


def _resolved(tmp_path, *updates):
    out = run_study("print_config", "with", *updates, "-u", cwd=tmp_path).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # Sacred colours the values a command line set
    return {
        line.split("=")[0].strip(): line.split("=", 1)[1].split("#")[0].strip()
        for line in out.splitlines()
        if "=" in line and not line.startswith(("INFO", "WARNING", "Configuration"))
    }


def test_a_run_with_no_named_config_is_exactly_the_paper_protocol(tmp_path):
    for model in ("resnet18", "small_cnn"):  # with and without an ImageNet head to extend
        plain = _resolved(tmp_path, f"model={model}", "dataset=cifar10")
        paper = _resolved(tmp_path, "paper", f"model={model}", "dataset=cifar10")
        assert plain == paper
    assert plain["head"] == "'replace'" and plain["precise_bn"] == "0"
    resnet = _resolved(tmp_path, "model=resnet18", "dataset=cifar10")
    assert resnet["head"] == "'append'" and resnet["epochs"] == "25"


def test_bf16_autocast_on_a_cpu_without_bf16_instructions_is_warned():
    """amp=true on such a CPU is emulated (measured: over 30x slower than fp32): one line says
    so and what to use; a CPU with them, CUDA, auto and false say nothing."""
    import torch

    from study.experiment import amp_warning

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    line = amp_warning({"amp": True}, cpu, has_bf16=lambda: False)
    assert line.startswith("warning: amp=true on a CPU without bf16 instructions")
    assert "amp=auto trains in fp32 on the CPU" in line
    assert amp_warning({"amp": True}, cpu, has_bf16=lambda: True) is None
    for amp, device in (("auto", cpu), (False, cpu), (True, cuda)):
        assert amp_warning({"amp": amp}, device, has_bf16=lambda: False) is None


def test_departures_from_the_named_protocol_are_recorded_and_short_schedules_warned(
    mnist_root, tmp_path
):
    proc = run_study(
        "run", "with", "fast", "model=small_cnn", "dataset=mnist", f"data_root={mnist_root}",
        "epochs=1", "lr=0.05", "test_limit=50", "seed=3", "gallery=4", "-F", tmp_path / "runs",
        cwd=tmp_path,
    )  # fmt: skip
    (warning,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: ")]
    assert warning == (
        "warning: drop_last leaves out the last 88 of 600 training images in each epoch's order "
        "(one batch shape; drop_last=false keeps them); schedule=onecycle over 4 steps (1 epochs "
        "of 4 batches, 2 of warm-up to lr 0.05) is short: the health rule will say if the run "
        "learns nothing; give more epochs or images"
    )
    info = json.loads((tmp_path / "runs" / "1" / "info.json").read_text())
    assert info["departures"] == {
        "epochs": {"value": 1, "protocol": 10},
        "lr": {"value": 0.05, "protocol": 0.003},
        "test_limit": {"value": 50, "protocol": None},
    }  # not seed, gallery or data_root: the settings table says they are no departure

    from study import experiment, identity, settings

    assert set(identity.PLACE_KEYS) <= set(experiment.NOT_DEPARTURES)
    assert {"seed", "compile"} <= set(experiment.NOT_DEPARTURES)
    assert experiment.NOT_DEPARTURES == tuple(s.name for s in settings.SETTINGS if not s.departs)


def _spec_with(decode, **fields):
    from study.specs import DatasetSpec

    base = dict(name="toy", num_classes=2, class_names=["a", "b"], image_size=8, channels=1,
                train_size=4, test_size=2, find=lambda root: [], decode=decode)  # fmt: skip
    return DatasetSpec(**{**base, **fields})


def _decoded(images):
    import numpy as np

    from study.specs import Decoded, Split

    labels = np.arange(len(images)) % 2
    return Decoded(Split(images, labels), Split(images[:2], labels[:2]), ["a", "b"])


def test_decoded_data_must_match_its_spec_and_be_normalisable(tmp_path):
    import numpy as np

    from study.data import prepare
    from study.errors import DataError

    constant = _spec_with(lambda files, workers=0: _decoded(np.full((4, 8, 8, 1), 7, np.uint8)))
    with pytest.raises(DataError) as err:
        prepare(constant, tmp_path, cache_dir=tmp_path / "cache")
    assert str(err.value) == (
        "toy (train split): every image has the same value in channel 0, so it cannot be "
        "normalised (its standard deviation is 0)"
    )
    resized = _spec_with(lambda files, workers=0: _decoded(np.zeros((4, 16, 16, 1), np.uint8)))
    with pytest.raises(DataError, match=r"decoded images are uint8 \(4, 16, 16, 1\); the spec"):
        prepare(resized, tmp_path, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_an_empty_split_and_float_labels_are_refused_before_any_training(tmp_path):
    import numpy as np

    from study.data import prepare
    from study.errors import DataError
    from study.specs import Decoded, Split

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1])
    empty = Split(images[:0], labels[:0])
    cases = [
        (Decoded(empty, Split(images, labels), ["a", "b"]),
         "toy (train split): no images; every split needs at least one"),
        (Decoded(Split(images, labels), empty, ["a", "b"]),
         "toy (test split): no images; every split needs at least one"),
        (Decoded(Split(images, labels + 0.7), Split(images, labels), ["a", "b"]),
         "toy (train split): labels are float64; expected integers 0..1"),
    ]  # fmt: skip
    for decoded, message in cases:
        spec = _spec_with(lambda files, workers=0, d=decoded: d)
        with pytest.raises(DataError) as err:
            prepare(spec, tmp_path, cache_dir=tmp_path / "cache")
        assert str(err.value) == message
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]


def test_a_spec_whose_class_count_disagrees_with_its_names_is_refused(tmp_path, monkeypatch):
    from study.errors import PluginError
    from study.registry import Registry, plugin_manager

    fake_distribution(
        tmp_path,
        "countplugin",
        "count_plugin",
        "import study\n\n@study.hookimpl\ndef study_datasets():\n"
        "    return [study.DatasetSpec(name='c', num_classes=3, class_names=['a', 'b'],\n"
        "            image_size=8, channels=1, train_size=1, test_size=1, find=None,\n"
        "            decode=None)]\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="declares num_classes=3 but 2 class names"):
        Registry(plugin_manager())


def test_an_unknown_command_is_one_line_naming_it(tmp_path):
    proc = run_study("reprodce", "1", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "dummy" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(
        "study: error: unknown command 'reprodce' (did you mean reproduce?); commands: export, "
    )


def test_a_file_named_like_a_protocol_does_not_replace_it(tmp_path):
    (tmp_path / "fast").write_text("not a config\n")
    config = _resolved(tmp_path, "fast", "model=small_cnn", "dataset=mnist", "lr=0.05")
    assert config["protocol"] == "'fast'" and config["optimizer"] == "'adamw'"
    assert config["lr"] == "0.05"  # the command line still wins over the protocol


def test_a_report_output_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
    (tmp_path / "a-file").write_text("")
    for out, message in [
        (tmp_path, f"--out {tmp_path}: is a folder; give a file path"),
        (tmp_path / "a-file" / "r.pdf", f"--out {tmp_path / 'a-file' / 'r.pdf'}: "
         f"{tmp_path / 'a-file'} is a file, not a folder"),
    ]:  # fmt: skip
        proc = run_study("report", "--runs", tmp_path / "none", "--out", out, cwd=tmp_path,
                         check=False)  # fmt: skip
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"study: error: {message}")


def test_lower_case_booleans_on_the_command_line_are_booleans(tmp_path):
    config = _resolved(tmp_path, "model=small_cnn", "dataset=mnist", "compile=false",
                       "sync_bn=TRUE", "data_on_device=false")  # fmt: skip
    assert (config["compile"], config["sync_bn"], config["data_on_device"]) == (
        "False", "True", "False",
    )  # fmt: skip


def test_settings_from_yaml_and_json_files_under_the_command_line(tmp_path):
    (tmp_path / "my.yaml").write_text("# a study's settings\nepochs: 3\nlr: 0.01\ncompile: false\n")
    (tmp_path / "more.json").write_text('{"batch_size": 32, "lr": 0.02}')
    config = _resolved(tmp_path, "model=small_cnn", "dataset=mnist", "my.yaml", "more.json",
                       "batch_size=64")  # fmt: skip
    # Files in the order given (the later wins), the command line's KEY=VALUE over both.
    assert (config["epochs"], config["lr"], config["batch_size"]) == ("3", "0.02", "64")
    assert config["compile"] == "False"


class _RunsCode:
    def __reduce__(self):
        return (open, ("pwned", "w"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.yaml", "epochs: [1\n", "config file bad.yaml is not valid YAML at line 2"),
        ("list.json", "[1, 2]", "config file list.json must hold a mapping of settings"),
        ("typo.yml", "epocs: 2\n", "unknown setting 'epocs'; did you mean epochs?"),
        ("missing.yaml", None, "config file missing.yaml: No such file or directory"),
        ("evil.pickle", _RunsCode(), "config file evil.pickle: a pickle is never read"),
        ("notes.txt", "epochs: 2", "with 'notes.txt': neither a named config (fast, paper) nor"),
    ],
    ids=["bad-yaml", "not-a-mapping", "unknown-key", "missing", "pickle", "unknown-kind"],
)
def test_a_bad_config_file_is_one_line_exit_2_and_records_nothing(
    mnist_root, tmp_path, name, content, message
):
    import pickle

    if isinstance(content, str):
        (tmp_path / name).write_text(content)
    elif content is not None:
        (tmp_path / name).write_bytes(pickle.dumps(content))
    proc = _run(tmp_path, mnist_root, name)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"study: error: {message}")
    assert not (tmp_path / "pwned").exists()  # the pickle was never unpickled
    runs = tmp_path / "runs"
    assert not runs.exists() or not [p for p in runs.iterdir() if p.name != "_sources"]


def test_version_is_written_once_and_printed(tmp_path):
    from importlib.metadata import version

    import study

    proc = run_study("--version", cwd=tmp_path)
    assert proc.stdout == f"study {study.__version__}\n"
    assert version("archstudy") == study.__version__  # pyproject.toml reads it from the package


def test_every_setting_declares_its_values_or_is_checked_with_its_context():
    """study.settings.VALID: each setting's type and range, declared beside it and shown by
    `study help run`; the rest need the model, the data or the machine (study.experiment)."""
    from study.errors import ConfigError
    from study.settings import BY_NAME, VALID

    assert set(BY_NAME) - set(VALID) == {"model", "dataset", "data_root", "image_size", "device"}
    cases = {
        ("optimizer", "adamx"): "optimizer='adamx' is invalid; expected one of: adam, adamw, sgd",
        ("compile", 1): "compile=1 is invalid; expected true or false",  # 1 is not true
        ("amp", "yes"): "amp='yes' is invalid; expected auto, true or false",
        ("seed", -1): "seed=-1 is invalid; expected an integer >= 0",
        ("lr", 0): "lr=0 is invalid; expected a number > 0",
        ("warmup", 0.6): "warmup=0.6 is invalid; expected a share of the schedule's steps, 0 <=",
        ("label_smoothing", 1.0): "label_smoothing=1.0 is invalid; expected 0 <= x < 1",
        ("dropout", -0.1): "dropout=-0.1 is invalid; expected 0 <= x < 1",
        ("train_limit", 0): "train_limit=0 is invalid; expected an integer >= 1 or null",
        ("folder_image_size", 4096): "folder_image_size=4096 is invalid; expected 8 <= ",
    }
    for (name, value), message in cases.items():
        with pytest.raises(ConfigError) as err:
            VALID[name].check(name, value)
        assert str(err.value).startswith(message), str(err.value)
    for name, good in (
        ("compile", False),
        ("amp", "auto"),
        ("seed", 2**32 - 1),
        ("stop_after", None),
    ):
        VALID[name].check(name, good)  # no error
