"""`study reproduce` and `study export`: a stored run re-run to a verdict, a study as one file."""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tarfile

import pytest
from conftest import run_study
from mongo_server import MongoServer, server_command

from study.record import EPOCH_METRICS
from study.reproduce import TIMING_METRICS
from study.stores import read_file_store

RUN = ["model=small_cnn", "dataset=mnist", "batch_size=50", "epochs=2", "test_limit=100"]


def _verdict(proc) -> str:
    return re.search(r"^verdict: (\w+) \(run (\d+) reproducing run (\d+)\)", proc.stdout, re.M)


@pytest.fixture(scope="module")
def stored(tmp_path_factory, mnist_root):
    """A file store holding one completed two-epoch run (id 1), and its data root."""
    work = tmp_path_factory.mktemp("reproduce")
    run_study("run", "with", *RUN, f"data_root={mnist_root}", "-F", work / "runs", cwd=work)
    return work


def _copy_store(stored, tmp_path):
    shutil.copytree(stored / "runs", tmp_path / "runs")
    return tmp_path / "runs"


def test_a_reproduction_on_the_same_machine_is_identical(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    proc = run_study("reproduce", "1", "--runs", runs, cwd=tmp_path)
    kind, new, old = _verdict(proc).groups()
    assert (kind, old) == ("identical", "1")
    compared = [m for m in EPOCH_METRICS if m not in TIMING_METRICS]  # lr, losses, accuracies
    assert f"equal: every per-epoch metric ({len(compared)} metrics over 2 epochs)" in proc.stdout
    assert "and all 100 per-image predictions" in proc.stdout
    assert "differences between the two runs: none" in proc.stdout
    # The new run sits in the same store, tagged in Sacred's meta, not in its config.
    again = {r.id: r for r in read_file_store(runs)}[new]
    assert again.meta["reproduces"] == {"id": "1", "store": str(runs)}
    assert "reproduces" not in again.config
    # The original's config, but for download: a reproduction never downloads unasked.
    original_config = read_file_store(runs)[0].config
    assert again.config == {**original_config, "download": False}


def test_a_prefix_is_reproduced_with_the_original_schedule(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    # onecycle would differ at epoch 1 if the prefix shortened the schedule to 1 epoch
    proc = run_study("reproduce", "1", "--runs", runs, "--epochs", "1", cwd=tmp_path)
    kind, new, _ = _verdict(proc).groups()
    assert kind == "identical"
    assert "the first 1 of run 1's 2 epochs" in proc.stdout
    again = {r.id: r for r in read_file_store(runs)}[new]
    assert again.config["epochs"] == 2 and again.config["stop_after"] == 1
    assert [step for step, _ in again.metric("test_top1")] == [1]
    bad = run_study("reproduce", "1", "--runs", runs, "--epochs", "3", cwd=tmp_path, check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "study: error: epochs=3 is invalid; expected 1..2 (run 1 trained 2 epochs): "
        "a reproduction compares a prefix of the original"
    )


def test_a_changed_learning_rate_is_named_and_judged(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    proc = run_study("reproduce", "1", "--runs", runs, "with", "lr=0.02", cwd=tmp_path, check=False)
    kind = _verdict(proc).group(1)
    assert kind in ("equivalent", "different")
    assert proc.returncode == (1 if kind == "different" else 0)
    assert "config: lr 0.0002 -> 0.02 (given with `with`)" in proc.stdout
    assert re.search(r"McNemar on per-image correctness .*: b = \d+, c = \d+, p = ", proc.stdout)


def test_a_clear_gap_is_different_and_exits_1(stored, tmp_path):
    import numpy as np

    runs = _copy_store(stored, tmp_path)
    # The original's record made to say it got every test image wrong: a fixed gap.
    folder = runs / "1"
    with np.load(folder / "evaluation.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["topk"][:, 0] = (arrays["labels"] + 1) % 10
    # ...and its confusion matrix with it (a reader refuses one the predictions disagree with)
    counts = np.bincount(arrays["labels"] * 10 + arrays["topk"][:, 0], minlength=100)
    arrays["confusion"] = counts.reshape(10, 10)
    np.savez(folder / "evaluation.npz", **arrays)
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["test_top1"]["values"] = [0.0] * len(metrics["test_top1"]["values"])
    (folder / "metrics.json").write_text(json.dumps(metrics))
    proc = run_study("reproduce", "1", "--runs", runs, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert _verdict(proc).groups() == ("different", "2", "1")
    (again,) = [r for r in read_file_store(runs) if r.id == "2"]
    right = int(round(again.result["top1"] * 100))
    assert right > 0  # the reproduction learnt something: the gap is real
    assert f"top-1 after epoch 2: 0.0000 (run 1) vs {right / 100:.4f} (run 2), 100 test images" in (
        proc.stdout
    )
    assert f": b = 0, c = {right}, p = " in proc.stdout and ", significant" in proc.stdout


def test_an_older_plugin_version_in_the_record_is_named(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    info_path = runs / "1" / "info.json"
    info = json.loads(info_path.read_text())
    now = info["provenance"]["plugins"]["archstudy:study-models"]
    code = info["provenance"]["plugin_code"]["archstudy:study-datasets"]
    info["provenance"]["plugins"]["archstudy:study-models"] = "0.0.1"
    # The data set plugin's code changed with no version bump: the digest still tells.
    info["provenance"]["plugin_code"]["archstudy:study-datasets"] = "0123456789abcdef"
    info["provenance"]["versions"]["torch"] = "1.13.1"
    info_path.write_text(json.dumps(info))
    proc = run_study("reproduce", "1", "--runs", runs, cwd=tmp_path)
    assert _verdict(proc).group(1) == "identical"
    assert f"plugin: archstudy:study-models '0.0.1' -> '{now}'" in proc.stdout
    assert f"plugin code: archstudy:study-datasets '0123456789abcdef' -> '{code}'" in proc.stdout
    assert "plugin: archstudy:study-datasets" not in proc.stdout  # its version did not change
    assert "version: torch '1.13.1' -> " in proc.stdout


def test_a_run_recorded_under_the_old_distribution_name_finds_its_plugins(
    stored, tmp_path, monkeypatch
):
    """Runs recorded before the rename name their plugins "study:study-models"; reproduce
    compares them with archstudy's own, and STUDY_DISABLE_PLUGINS accepts either name."""
    runs = _copy_store(stored, tmp_path)
    info_path = runs / "1" / "info.json"
    info = json.loads(info_path.read_text())
    prov = info["provenance"]
    for table in ("plugins", "plugin_code"):
        prov[table] = {k.replace("archstudy:", "study:"): v for k, v in prov[table].items()}
    for part in ("model", "dataset"):
        info[part]["plugin"] = info[part]["plugin"].replace("archstudy:", "study:")
    info_path.write_text(json.dumps(info))
    proc = run_study("reproduce", "1", "--runs", runs, cwd=tmp_path)
    assert _verdict(proc).group(1) == "identical"
    assert "plugin: " not in proc.stdout and "plugin code: " not in proc.stdout

    from study.registry import current_plugin_name, disabled_plugins

    assert current_plugin_name("study:study-models") == "archstudy:study-models"
    assert current_plugin_name("study") == "archstudy"
    assert current_plugin_name("study-tinynet:tinynet") == "study-tinynet:tinynet"
    proc = run_study(
        "list", cwd=tmp_path, env={"STUDY_DISABLE_PLUGINS": "study:study-models, study-tinynet"}
    )
    assert "resnet50" not in proc.stdout and "cifar10" in proc.stdout
    monkeypatch.setenv("STUDY_DISABLE_PLUGINS", "study")
    assert disabled_plugins() == {"archstudy"}


def test_a_run_whose_plugin_is_not_installed_names_the_distribution(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    config_path, info_path = runs / "1" / "config.json", runs / "1" / "info.json"
    config, info = json.loads(config_path.read_text()), json.loads(info_path.read_text())
    assert info["dataset"]["plugin"] == "archstudy:study-datasets"  # what a run records
    config["model"] = "tinynet"
    info["model"].update(name="tinynet", plugin="study-tinynet:models")
    info["provenance"]["plugins"]["study-tinynet:models"] = "0.2"
    config_path.write_text(json.dumps(config))
    info_path.write_text(json.dumps(info))
    proc = run_study("reproduce", "1", "--runs", runs, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "study: error: run 1's model 'tinynet' came from plugin study-tinynet:models 0.2, which "
        "is not installed here; install it (pip install 'study-tinynet==0.2') to reproduce it"
    )
    assert sorted(p.name for p in runs.iterdir() if p.name.isdigit()) == ["1"]  # nothing ran


def _change_one_pixel(data_root):
    path = data_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[16 + 400] ^= 0xFF  # one pixel of the first test image, past the IDX header
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


def test_different_data_is_refused_before_training_unless_allowed(stored, mnist_root, tmp_path):
    runs = _copy_store(stored, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(mnist_root, data)
    _change_one_pixel(data)
    proc = run_study(
        "reproduce", "1", "--runs", runs, "with", f"data_root={data}", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"study: error: the data differs from run 1's: MNIST/raw/t10k-images-idx3-ubyte\.gz is "
        r"sha256:[0-9a-f]{64} here, sha256:[0-9a-f]{64} in the original; use the same files "
        r"\(with data_root=DIR\), or pass --allow-data-change to go on",
        line,
    )
    assert [r.id for r in read_file_store(runs)] == ["1"]  # nothing trained, nothing recorded

    proc = run_study(
        "reproduce", "1", "--runs", runs, "--allow-data-change", "with", f"data_root={data}",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert _verdict(proc) is not None
    assert "  data: MNIST/raw/t10k-images-idx3-ubyte.gz is sha256:" in proc.stdout
    assert "place: data_root " in proc.stdout and f"-> '{data}' (where it ran" in proc.stdout


def test_a_run_records_its_data_root_as_typed_and_resolved(stored, mnist_root):
    (run,) = read_file_store(stored / "runs")
    assert run.config["data_root"] == str(mnist_root)
    assert run.info["dataset"]["data_root"] == {
        "typed": str(mnist_root),
        "resolved": str(mnist_root.resolve()),
    }
    content = run.info["dataset"]["content"]
    assert sorted(content) == [
        f"MNIST/raw/{name}.gz"
        for name in sorted(
            (
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
            )
        )  # fmt: skip
    ]
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", v) for v in content.values())


def test_a_relative_data_root_is_stored_as_typed(mnist_root, tmp_path):
    shutil.copytree(mnist_root, tmp_path / "data")
    run_study(
        "run", "with", *RUN, "epochs=1", "data_root=data", "-F", "runs", cwd=tmp_path
    )  # fmt: skip
    (run,) = read_file_store(tmp_path / "runs")
    assert run.config["data_root"] == "data"
    assert run.info["dataset"]["data_root"]["resolved"] == str((tmp_path / "data").resolve())


# -- export ------------------------------------------------------------------------------------


def _report_text(html: str) -> str:
    """The report's text, without markup, the date line and the store it was read from."""
    text = re.sub(r"<[^>]+>", " ", html)
    text = re.sub(r"data:image/[^\"' ]+", "", text)
    return re.sub(r"\s+", " ", text)


def test_an_export_round_trips(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    out = tmp_path / "study.tar.gz"
    proc = run_study("export", out, "--runs", runs, cwd=tmp_path)
    assert proc.stdout.startswith(f"wrote {out}: 1 run(s) from {runs}")
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        env = tar.extractfile("study-export/environment.txt").read().decode()
        howto = tar.extractfile("study-export/REPRODUCE.md").read().decode()
        fingerprints = json.loads(tar.extractfile("study-export/fingerprints.json").read())
    for name in ("run.json", "config.json", "info.json", "metrics.json", "evaluation.npz"):
        assert f"study-export/runs/1/{name}" in names
    assert {"study-export/report.pdf", "study-export/report.html"} <= names
    assert re.search(r"^torch==\S+$", env, re.M) and re.search(r"^sacred==0\.8\.7$", env, re.M)
    assert f"study reproduce 1 --runs {out.name} with data_root=DATA_ROOT" in howto
    assert fingerprints["1"] == read_file_store(runs)[0].info["dataset"]["content"]

    for source, html in ((runs, "store.html"), (out, "archive.html")):
        run_study("report", "--runs", source, "--format", "html", "--out", html, cwd=tmp_path)
    store_text = _report_text((tmp_path / "store.html").read_text())
    archive_text = _report_text((tmp_path / "archive.html").read_text())
    assert archive_text.replace(str(out), str(runs)) == store_text

    listed = run_study("runs", "--runs", out, cwd=tmp_path)
    assert listed.stdout.startswith(f"1 run(s) in {out}")
    proc = run_study("reproduce", "1", "--runs", out, "--into", "again", cwd=tmp_path)
    assert _verdict(proc).group(1) == "identical"
    assert [r.meta["reproduces"]["store"] for r in read_file_store(tmp_path / "again")] == [
        str(out)
    ]


def test_an_export_carries_checkpoints_only_when_asked(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    (run,) = read_file_store(runs)
    checkpoint = run.location / "checkpoint.pt"
    assert run.info["checkpoint"] and checkpoint.is_file()
    for flag, out in (([], "plain.tar.gz"), (["--checkpoints"], "full.tar.gz")):
        run_study("export", out, "--runs", runs, *flag, cwd=tmp_path)
    member = "study-export/runs/1/checkpoint.pt"
    with tarfile.open(tmp_path / "plain.tar.gz") as tar:
        assert not [n for n in tar.getnames() if "checkpoint" in n]
    with tarfile.open(tmp_path / "full.tar.gz") as tar:
        assert tar.extractfile(member).read() == checkpoint.read_bytes()


def _archive(path, members):
    """A .tar.gz with (name, bytes | None for a symlink) members."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ([("study-export/runs/../../escaped.txt", b"x")], "lies outside study-export/"),
        ([("/tmp/absolute.txt", b"x")], "lies outside study-export/"),
        ([("study-export/runs/1/run.json", None)], "is a link or special file"),
        ([("study-export/runs/1/huge.bin", b"\0" * 5000)], "unpack to over 4,096 bytes"),
    ],
)
def test_a_hostile_archive_is_refused_in_one_line(tmp_path, members, expected):
    archive = _archive(tmp_path / "hostile.tar.gz", members)
    for command in (["report", "--runs", archive], ["reproduce", "1", "--runs", archive]):
        proc = run_study(
            *command, cwd=tmp_path, env={"STUDY_ARCHIVE_MAX_BYTES": "4096"}, check=False
        )
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"study: error: {archive}: member ") and expected in line
    assert not any((folder / "escaped.txt").exists() for folder in (tmp_path, tmp_path.parent))


# -- MongoDB ---------------------------------------------------------------------------------


@pytest.mark.skipif(server_command() is None, reason="secantusd-py not installed")
def test_a_mongo_run_is_reproduced_in_mongo_with_its_provenance(mnist_root, tmp_path):
    from study.stores import read_runs

    server = MongoServer(tmp_path / "mongo").start()
    try:
        url = f"{server.url}:repro"
        env = {"STUDY_MONGO_URL": ""}
        run_study("run", "with", *RUN, f"data_root={mnist_root}", "-m", url, cwd=tmp_path, env=env)
        _, (run,) = read_runs(mongo_url=url)
        prov = run.info["provenance"]
        assert prov["plugins"] and prov["versions"]["torch"] and "determinism" in prov
        assert run.info["dataset"]["content"]

        proc = run_study("reproduce", str(run.id), "--mongo", url, cwd=tmp_path, env=env)
        kind, new, old = _verdict(proc).groups()
        assert (kind, old) == ("identical", str(run.id))
        _, records = read_runs(mongo_url=url)
        again = {r.id: r for r in records}[new]
        assert again.meta["reproduces"]["id"] == str(run.id)
        assert not (tmp_path / "runs").exists()  # recorded in MongoDB, not a file store

        # An export from MongoDB carries each run's GridFS artifacts in the file layout.
        out = tmp_path / "mongo.tar.gz"
        run_study("export", out, "--mongo", url, cwd=tmp_path, env=env)
        _, copies = read_runs(str(out))
        assert sorted(r.id for r in copies) == sorted([str(run.id), new])
        for copy in copies:
            assert copy.evaluation()["labels"].shape == (100,)
            assert copy.info["provenance"] == {r.id: r for r in records}[copy.id].info["provenance"]
    finally:
        server.stop()


def test_runs_long_shows_the_provenance(stored, tmp_path):
    proc = run_study("runs", "--runs", stored / "runs", "--long", cwd=tmp_path)
    (run,) = read_file_store(stored / "runs")
    prov = run.info["provenance"]
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert f"code: study {prov['study']}" in "\n".join(lines)
    assert "plugins: archstudy:study-datasets" in "\n".join(lines)
    assert f"torch {prov['versions']['torch']}" in "\n".join(lines)
    assert any(line.startswith("determinism: ") and "cudnn_benchmark=" in line for line in lines)
    digest = run.info["dataset"]["content"]["MNIST/raw/train-images-idx3-ubyte.gz"]
    assert f"data: MNIST/raw/train-images-idx3-ubyte.gz {digest[:19]}" in lines


def test_runs_as_json_and_csv_give_one_row_per_run_and_skip_a_hostile_record(stored, tmp_path):
    import csv

    runs = _copy_store(stored, tmp_path)
    shutil.copytree(runs / "1", runs / "2")
    shutil.copytree(runs / "1", runs / "3")  # a copy whose record lies about its values
    config = json.loads((runs / "3" / "config.json").read_text())
    config.update(seed="7; rm -rf /")
    (runs / "3" / "config.json").write_text(json.dumps(config))

    out = run_study("runs", "--runs", runs, "--format", "json", cwd=tmp_path)
    rows = json.loads(out.stdout)
    (real,) = [r for r in read_file_store(runs) if r.id == "1"]
    seconds = sum(v for _, v in real.metric("train_seconds"))
    flags = real.info["health"]["flags"]  # `ok`, or the flags as `study runs` names them
    first = {
        "id": "1", "model": "small_cnn", "dataset": "mnist", "seed": real.config["seed"],
        "protocol": "paper", "status": "COMPLETED", "top1": real.result["top1"],
        "top5": real.result["top5"],
        "health": ", ".join(f.upper() for f in flags) or "ok", "epochs": 2,
        "train_seconds": round(seconds, 3), "start_time": real.start_time,
        "stop_time": real.stop_time,
    }  # fmt: skip
    assert rows == [first, {**first, "id": "2"}]
    # The hostile record is left out, said in one line, and nothing of it reaches the rows.
    assert "skipped a malformed run" in out.stderr and "3/config.json: seed is" in out.stderr

    text = run_study("runs", "--runs", runs, "--format", "csv", cwd=tmp_path).stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0]) == list(first) and [r["id"] for r in table] == ["1", "2"]
    assert float(table[0]["top1"]) == first["top1"] and table[0]["seed"] == str(first["seed"])
    bad = run_study("runs", "--runs", runs, "--format", "xml", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "invalid choice: 'xml'" in bad.stderr


def test_the_report_leaves_reproductions_out_and_names_the_data(stored, tmp_path):
    runs = _copy_store(stored, tmp_path)
    run_study("reproduce", "1", "--runs", runs, cwd=tmp_path)
    proc = run_study("report", "--runs", runs, "--format", "html", "--out", "r.html", cwd=tmp_path)
    assert "study report: 1 run -> r.html" in proc.stdout
    html = re.sub(r"</?a\b[^>]*>", "", (tmp_path / "r.html").read_text())  # links aside
    row = re.search(r'<tr data-left-out="2">(.*?)</tr>', html, re.S).group(1)
    assert f"reproduces run 1 of {runs} (`study reproduce`)" in row
    assert "1 reproduction of a reported run" in html  # counted in the abstract
    (run,) = [r for r in read_file_store(runs) if r.id == "1"]
    root = run.info["dataset"]["data_root"]
    assert f"data_root {root['typed']} (resolved {root['resolved']}); content fingerprint " in html
    both = run_study(
        "report", "--runs", runs, "--ids", "1,2", "--format", "html", "--out", "b.html",
        cwd=tmp_path,
    )  # fmt: skip
    assert "study report: 2 runs -> b.html" in both.stdout


def test_stop_after_beyond_the_epochs_is_one_line(tmp_path):
    proc = run_study(
        "print_config", "with", "model=small_cnn", "dataset=mnist", "epochs=2", "stop_after=3",
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "study: error: stop_after=3 is invalid; expected 1..2 (the run's epochs): it trains that "
        "many epochs of the schedule and stops"
    )


def test_content_fingerprints_follow_the_bytes_not_the_place(tmp_path):
    from study.data import content_fingerprints

    def tree(root, pixel=b"\x00"):
        (root / "set" / "train").mkdir(parents=True)
        (root / "set" / "train" / "a.jpg").write_bytes(b"jpeg" + pixel)
        (root / "set" / "labels.txt").write_text("cat\n")
        return [root / "set" / "train", root / "set" / "labels.txt"]

    here = content_fingerprints(tree(tmp_path / "a"), tmp_path / "a")
    assert sorted(here) == ["set/labels.txt", "set/train"]  # a folder is one source
    assert content_fingerprints(tree(tmp_path / "b"), tmp_path / "b") == here  # elsewhere
    changed = content_fingerprints(tree(tmp_path / "c", pixel=b"\x01"), tmp_path / "c")
    assert changed["set/labels.txt"] == here["set/labels.txt"]
    assert changed["set/train"] != here["set/train"]  # one byte of one file in the folder


def test_every_command_takes_the_same_option_names(stored, mnist_root, tmp_path):
    """--runs / --mongo and comma lists everywhere; -F / -m (Sacred's) and export's repeatable
    --model / --id kept as aliases."""
    run_study("run", "with", *RUN, "epochs=1", f"data_root={mnist_root}", "--runs", "mine",
              cwd=tmp_path)  # fmt: skip
    assert [r.id for r in read_file_store(tmp_path / "mine")] == ["1"]
    runs = _copy_store(stored, tmp_path)
    for selection in (["--models", "small_cnn,vgg16", "--ids", "1"], ["--model", "small_cnn",
                                                                       "--id", "1"]):  # fmt: skip
        out = run_study("export", "e.tar.gz", "--runs", runs, *selection, cwd=tmp_path).stdout
        assert "1 run(s) from" in out
    none = run_study("export", "e.tar.gz", "--runs", runs, "--ids", "2,3", cwd=tmp_path,
                     check=False)  # fmt: skip
    assert none.returncode == 2 and "no COMPLETED run in" in none.stderr
    sweep = run_study("sweep", "--models", "small_cnn", "--datasets", "mnist", "--runs", runs,
                      "--dry-run", cwd=tmp_path).stdout  # fmt: skip
    assert f"recording to {runs}" in sweep
