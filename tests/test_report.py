"""`study report`: a PDF / HTML report built from real runs made in this test session."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import statistics
import zipfile
from html import unescape
from pathlib import Path

import pytest
from conftest import run_study

from study.errors import StudyError
from study.report import build_report, main, select_runs
from study.report.model import cell_flags
from study.stores import read_file_store

EVIL = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]
TINY_CLASSES = 25  # more than the 20 a confusion matrix is drawn for


COMMENT = "<script>document.title='x'</script>"


def write_evil_tiny_imagenet(root: Path) -> None:
    """A 25-class Tiny-ImageNet whose first two class names are markup."""
    import fakedata

    files = fakedata.tiny_files(TINY_CLASSES, 4, 2 * TINY_CLASSES, 0)
    wnids = fakedata.tiny_wnids(TINY_CLASSES)
    lines = files["words.txt"].decode().splitlines()
    lines[1] = f"{wnids[0]}\t{EVIL[0]}, first"
    lines[2] = f"{wnids[1]}\t{EVIL[1]}, second"
    files["words.txt"] = ("\n".join(lines) + "\n").encode()
    with zipfile.ZipFile(root / "tiny-imagenet-200.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(f"tiny-imagenet-200/{name}", data)


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """Four real runs: small_cnn on MNIST twice (seeds 0, 1: one aggregated cell), ResNet-18
    on MNIST, small_cnn on a 25-class Tiny-ImageNet with markup in its class names."""
    import fakedata

    base = tmp_path_factory.mktemp("report")
    data = base / "data"
    fakedata.write_mnist(data, n_train=600, n_test=200, seed=0)
    write_evil_tiny_imagenet(data)
    # precise_bn=0: evaluated with BatchNorm's lagging running averages, these short runs on
    # easy fake data still make mistakes, which the gallery tests need.
    common = [f"data_root={data}", "batch_size=50", "lr=0.003", "precise_bn=0"]
    runs = [
        ["model=small_cnn", "dataset=mnist", "epochs=2", "seed=0"],
        ["model=small_cnn", "dataset=mnist", "epochs=2", "seed=1"],
        ["model=resnet18", "dataset=mnist", "image_size=32", "train_limit=200", "epochs=1"],
        ["model=small_cnn", "dataset=tiny_imagenet", "epochs=2"],
    ]
    for updates in runs:
        # The ResNet-18 run carries a Sacred comment that is markup, as a user might type it.
        comment = ["-c", COMMENT] if "model=resnet18" in updates else []
        run_study("run", "with", *updates, *common, "-F", base / "runs", *comment, cwd=base)
    return base / "runs"


@pytest.fixture(scope="session")
def odd_store(store, tmp_path_factory) -> Path:
    """Two real runs that go wrong as real runs do: Small CNN on MNIST at lr=1.0, which
    collapses to one class, and one stopped by a 0.05 s time budget after its first batch."""
    base = tmp_path_factory.mktemp("odd")
    data = store.parent / "data"
    common = [f"data_root={data}", "batch_size=50", "precise_bn=0", "model=small_cnn",
              "dataset=mnist"]  # fmt: skip
    for updates in (["lr=1.0", "epochs=1"], ["lr=0.003", "epochs=25", "time_budget=0.05"]):
        run_study("run", "with", *updates, *common, "-F", base / "runs", cwd=base)
    return base / "runs"


@pytest.fixture(scope="session")
def odd(store, odd_store, tmp_path_factory) -> dict:
    """A report of every run, the two odd ones included."""
    out = tmp_path_factory.mktemp("odd-built")
    records = select_runs(read_file_store(store)) + select_runs(read_file_store(odd_store))
    pdf = build_report(records, out / "study.pdf", "pdf")
    html = build_report(records, out / "study.html", "html")
    return {"records": records, "pdf": pdf, "html": plain(html.read_text())}


@pytest.fixture(scope="session")
def built(store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("built")
    records = select_runs(read_file_store(store))
    pdf = build_report(records, out / "study.pdf", "pdf")
    html = build_report(records, out / "study.html", "html")
    return {"records": records, "pdf": pdf, "html": plain(html.read_text()), "out": out}


def plain(html: str) -> str:
    """The report's HTML without its cross-reference links (test_report_html tests those), so
    that a sentence reads as written: "Table 4 gives", not '<a href="#table-4">Table 4</a>'."""
    return re.sub(r'<a href="#[^"]*">|</a>', "", html)


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    text = " ".join(page.extract_text() for page in PdfReader(path).pages)
    return " ".join(text.split())  # lines wrap wherever the layout put them


def cells(html: str) -> dict[str, str]:
    """Table 1 as {dataset/model/metric: the cell's printed value (ours)}."""
    found = re.findall(r'data-cell="([^"]+)">\s*(?:<span class="ours">([^<]*)</span>)?', html)
    return {key: value for key, value in found}


def by_cell(records):
    out = {}
    for r in records:
        out.setdefault((r.dataset, r.model), []).append(r)
    return out


def test_table1_prints_the_stored_results(built):
    table = cells(built["html"])
    text = pdf_text(built["pdf"])
    for (dataset, model), rs in by_cell(built["records"]).items():
        for metric in ("top1", "top5"):
            values = [r.result[metric] for r in rs]
            if len(values) == 1:
                expected = f"{values[0]:.4f}"
            else:
                expected = f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"
            assert table[f"{dataset}/{model}/{metric}"] == expected
            assert expected in text
    assert "(n=2)" in built["html"]  # the seeds of one cell are aggregated, and said to be
    assert "mean ± sample standard deviation over n runs" in built["html"]
    assert re.search(r"Small CNN on MNIST: n = 2 \(runs 1, 2; seeds 0, 1\)", built["html"])


def test_no_cell_is_marked_without_a_ranking(built):
    # No cell of this store holds three seeds (Small CNN on MNIST two, the rest one), so no
    # model ranks first anywhere: Table 1 marks nothing and its caption says why.
    assert 'class="num best"' not in built["html"] and ">▲<" not in built["html"]
    assert "No value is marked: a model ranks first only with at least 3 seeds" in built["html"]


def test_sections_figures_and_gallery(built):
    from pypdf import PdfReader

    text = pdf_text(built["pdf"])
    titles = ["Abstract", "1. Method", "Training protocol", "Table 1", "2. Data sets",
              "3. Results", "MNIST results", "Misclassified test images", "Tiny-ImageNet results",
              "4. Efficiency", "GMACs / image", "5. Conclusions", "6. Limitations", "7. References",
              "Appendix A: per-class", "Appendix B: runs"]  # fmt: skip
    positions = [text.find(t) for t in titles]
    assert all(p >= 0 for p in positions), dict(zip(titles, positions, strict=True))
    assert positions == sorted(positions), str(list(zip(titles, positions, strict=True)))
    assert "The best model by top-1 accuracy is" not in text

    # MNIST: bars, curves, confusion matrices; Tiny-ImageNet (25 classes): bars, curves and a
    # table of the most confused pairs instead of a matrix; accuracy against compute.
    html = built["html"]
    assert html.count('<img class="figure') == 6
    assert "most frequent confusions" in html and "confusion matrices" in html
    assert "data:image/svg+xml;base64," in html

    # The gallery: every misclassified thumbnail each run recorded, as images in the PDF.
    expected = {28: 0, 64: 0}
    for (dataset, _), rs in by_cell(built["records"]).items():
        n = sum(len(r.info["misclassified"]) for r in rs)
        expected[28 if dataset == "mnist" else 64] += n
    assert expected[64] > 0 and expected[28] > 0
    assert html.count('<img class="misclassified"') == sum(expected.values())
    reader = PdfReader(built["pdf"])
    sizes = {}
    for page in reader.pages:
        for name, obj in page["/Resources"]["/XObject"].get_object().items():
            obj = obj.get_object()
            if obj["/Subtype"] == "/Image" and obj["/Width"] == obj["/Height"]:
                sizes.setdefault(obj["/Width"], set()).add(name)
    assert {w: len(sizes.get(w, ())) for w in (28, 64)} == expected


def test_the_most_frequent_mistakes_are_read_from_the_summed_confusion_matrices(built):
    import numpy as np

    from study.report import model_title

    html = unescape(built["html"])
    sentences = re.findall(r'<p class="prose mistakes">(.*?)</p>', html, re.S)
    assert len(sentences) == 2  # one per data set
    for (_, m), rs in by_cell(built["records"]).items():
        total = sum(np.asarray(r.evaluation()["confusion"], dtype=np.int64) for r in rs)
        off = total - np.diag(np.diag(total))
        t, p = np.unravel_index(np.argmax(off), off.shape)  # first in row order on a tie
        names = rs[0].info["dataset"]["class_names"]
        words = (
            f"{model_title(m)} most often predicts {names[p]} for a true {names[t]} "
            f"({off[t, p]:,} of the {total[t].sum():,} test images of {names[t]}, "
            f"{off[t, p] / total[t].sum():.1%})"
            if off.max()
            else f"{model_title(m)} misclassifies none of its test images"
        )
        assert any(words in " ".join(s.split()) for s in sentences), (words, sentences)
        confident = sum(1 for r in rs for g in r.info["misclassified"] if g["confidence"] >= 0.9)
        shown = sum(len(r.info["misclassified"]) for r in rs)
        gallery = f"{model_title(m)} {shown} images, {confident} of them predicted"
        assert (gallery in html) == (shown > 1)  # a cell without mistakes shows none


def test_table1_sets_its_settings_two_pairs_a_row(built):
    """Half the height of one pair a row: Table 1 then fits where it starts (the sample's left
    one row on the next page)."""
    from study.report.tables import method_section

    table = re.search(r'<table class="protocol".*?</table>', built["html"], re.S).group(0)
    assert re.findall(r'<th scope="col">(\w+)</th>', table) == ["setting", "value"] * 2
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    common = method_section(built["records"], {})["common"]
    assert len(rows) == (len(common) + 1) // 2
    # The first half down the left, the rest down the right.
    labels = [re.findall(r'<th scope="row">(.*?)</th>', row) for row in rows]
    assert [pair[0] for pair in labels] == [c["label"] for c in common[: len(rows)]]
    assert [pair[1] for pair in labels if len(pair) > 1] == [
        c["label"] for c in common[len(rows) :]
    ]


def test_pages_are_a4(built):
    from pypdf import PdfReader

    for page in PdfReader(built["pdf"]).pages:
        width, height = float(page.mediabox.width), float(page.mediabox.height)
        assert abs(width - 595.28) < 1 and abs(height - 841.89) < 1  # A4 in points


def test_no_page_is_more_than_a_third_empty_and_no_short_table_is_split(built, odd):
    """Measured from the layout the PDF was written from (tests/test_layout.py: the rule
    itself on pages made to break it)."""
    from pypdf import PdfReader

    from study.report import render

    for report in (built, odd):
        html = (report["pdf"].parent / "study.html").read_text()
        document = render.fitted_layout(html)
        assert len(document.pages) == len(PdfReader(report["pdf"]).pages)
        assert render.pages_too_empty(document) == []
        assert render.split_tables(document) == []
        assert (over := render.overflowing_cells(document)) == [], over
        # Each run record (kept whole) under a third of a page: a run of them can then never
        # leave a page more than a third empty, whatever the number of runs.
        room = document.pages[0]._page_box.height
        records = [
            b.margin_height() / room
            for page in document.pages
            for b in render._boxes(page._page_box)
            if b.element_tag == "div" and "run" in (b.element.get("class") or "").split()
        ]
        assert records and max(records) < render.MOST_EMPTY, records  # fmt: skip


def test_run_derived_text_is_escaped(built):
    html = built["html"]
    assert (
        '<th scope="row">comment</th><td colspan="3">&lt;script&gt;document.title=&#39;x&#39;'
        "&lt;/script&gt;" in html
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    # The one script is the page's own (sorting, figures opened large), at its end.
    assert html.lower().count("<script") == 1 and "<script>alert" not in html
    assert "<img src=x" not in html
    text = pdf_text(built["pdf"])
    assert EVIL[0] in text  # shown as text


def test_a_run_without_evaluation_or_curves_gets_a_note(built, tmp_path):
    records = list(built["records"])
    first = records[0]
    records[0] = dataclasses.replace(
        first, artifacts=[a for a in first.artifacts if a != "evaluation.npz"], metrics={}
    )
    html = plain(build_report(records, tmp_path / "r.html", "html").read_text())
    assert f"Run {first.id} (Small CNN on MNIST) has no evaluation artifact" in html
    assert f"Run {first.id} (Small CNN on MNIST) recorded no training curves" in html
    assert "this run recorded no training curves, evaluation artifact" in html

    # A run that recorded nothing but its config (failed at once, read with --status any).
    bare = dataclasses.replace(
        first, id="99", status="FAILED", result=None, info={}, metrics={}, artifacts=[]
    )
    html = build_report([*records, bare], tmp_path / "r.html", "html").read_text()
    assert "Run 99, small_cnn on mnist (FAILED)" in html
    assert "this run recorded no training curves, evaluation artifact, result" in html


def test_the_settings_table_lists_only_what_changed_what_a_run_did(built):
    from study.report.tables import method_section

    records = built["records"]
    assert all(r.config.get("optimizer") != "sgd" and not r.config.get("compile") for r in records)
    method = method_section(records, {})
    listed = {row["label"] for row in method["common"]}
    listed |= {label for b in method["blocks"] for label in (r["label"] for r in b["rows"])}
    assert {"optimizer", "learning rate", "batch size", "seed"} <= listed
    # SGD's momentum under Adam, a compile mode without compiling, torchrun's options on one
    # process, and where the run ran: none of them changed what was trained.
    for label in ("momentum", "torch.compile mode", "SyncBatchNorm (torchrun)",
                  "gradient compression (torchrun)", "device"):  # fmt: skip
        assert label not in listed
    assert "torch.compile" in method["off"] and "torch.compile" not in listed

    sgd = [dataclasses.replace(r, config={**r.config, "optimizer": "sgd", "compile": True})
           for r in records]  # fmt: skip
    method = method_section(sgd, {})
    listed = {row["label"] for row in method["common"]}
    assert {"momentum", "torch.compile", "torch.compile mode"} <= listed
    assert "torch.compile" not in method["off"]


def test_dropout_is_listed_only_where_the_models_have_dropout_layers(built):
    """The fixture's small_cnn runs record no dropout layers: `paper`'s 0.5 changed nothing in
    them. The same runs, recorded as a model with two such layers, list it."""
    from study.report.tables import method_section

    records = [
        dataclasses.replace(r, config={**r.config, "dropout": 0.5}) for r in built["records"]
    ]
    assert {r.info["model"]["dropout_layers"] for r in records} == {0}  # what a run records
    method = method_section(records, {})
    assert "classifier dropout" not in {row["label"] for row in method["common"]}
    with_layers = [
        dataclasses.replace(r, info={**r.info, "model": {**r.info["model"], "dropout_layers": 2}})
        for r in records
    ]
    method = method_section(with_layers, {})
    assert {"label": "classifier dropout", "value": "0.5"} in method["common"]
    no_dropout = [dataclasses.replace(r, config={**r.config, "dropout": 0.0}) for r in with_layers]
    assert "classifier dropout" in method_section(no_dropout, {})["off"]


def test_a_negative_train_test_gap_is_explained(built, tmp_path):
    records = list(built["records"])
    gap = "A negative gap is expected of a model still learning"
    assert gap not in built["html"]  # every gap of the fixture is positive or zero
    i, r = next((i, r) for i, r in enumerate(records) if r.metric("train_top1"))
    test = dict(r.metric("test_top1"))
    lower = [(e, max(0.0, test[e] - 0.2) if e in test else v) for e, v in r.metric("train_top1")]
    records[i] = dataclasses.replace(r, metrics={**r.metrics, "train_top1": lower})
    html = plain(build_report(records, tmp_path / "r.html", "html").read_text())
    assert gap in html


def test_a_model_no_longer_installed_keeps_the_display_name_its_runs_recorded(built, tmp_path):
    records = list(built["records"])
    assert records[0].info["model"]["title"] == "Small CNN"  # what a run records
    # The Small CNN runs, as if made by a plugin since uninstalled that named its model so.
    renamed = []
    for r in records:
        if r.model == "small_cnn" and r.dataset == "mnist":
            info = {**r.info, "model": {**r.info["model"], "name": "tinynet", "title": "TinyNet 7"}}
            r = dataclasses.replace(r, config={**r.config, "model": "tinynet"}, info=info)
        renamed.append(r)
    html = plain(build_report(renamed, tmp_path / "r.html", "html").read_text())
    text = re.sub(r"<[^>]+>", " ", html.split("<body")[1].split("<script")[0])
    assert "TinyNet 7" in text
    # The raw name is left only where the appendix quotes each run's record as it is.
    raw = re.sub(r"Run \d+, tinynet on|model=&#34;tinynet&#34;", "", text)
    assert "tinynet" not in raw
    # Outside a report's build the installed plugins alone name things.
    from study.report.model import model_title

    assert model_title("tinynet") == "tinynet"


def test_the_method_says_what_became_of_each_models_output_layer(built):
    """From what each run recorded: the seed's extra layer on ResNet-18's ImageNet head under
    `paper`; Small CNN has no ImageNet head, so no claim that its last layer was replaced."""
    heads = {r.model: r.info["model"]["head"] for r in built["records"]}
    assert heads == {"resnet18": "append", "small_cnn": "own"}
    text = unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", built["html"])))
    assert (
        "Output layers: ResNet-18 keeps its ImageNet head, with one extra fully connected layer "
        "(the seed's); Small CNN builds its own output layer (no ImageNet head)."
    ) in text
    assert "The last layer of every model is replaced" not in text


def test_no_runs_is_one_clear_error(tmp_path, store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudyError, match=r"no runs found in .*empty matching"):
        main(["--runs", str(tmp_path / "empty"), "--out", str(tmp_path / "r.pdf")])
    with pytest.raises(StudyError, match="models=vgg16"):
        main(["--runs", str(store), "--models", "vgg16", "--out", str(tmp_path / "r.pdf")])
    with pytest.raises(StudyError, match="no such run store"):
        main(["--runs", str(tmp_path / "missing")])
    assert not (tmp_path / "r.pdf").exists()


def test_filters_and_html_format(store, tmp_path, capsys):
    out = tmp_path / "only.html"
    argv = ["--runs", str(store), "--out", str(out), "--format", "html", "--datasets", "mnist",
            "--ids", "1,3"]  # fmt: skip
    assert main(argv) == 0
    html = out.read_text()
    assert set(cells(html)) == {f"mnist/{m}/{k}" for m in ("resnet18", "small_cnn")
                                for k in ("top1", "top5")}  # fmt: skip
    assert "Run 1," in html and "Run 3," in html and "Run 2," not in html
    assert "2 runs" in capsys.readouterr().out
    # The runs the filters left out are named in the report, with the reason, and counted.
    left = dict(re.findall(r'<tr data-left-out="(\d+)">(.*?)</tr>', html, re.S))
    assert sorted(left) == ["2", "4"] and "not among the --ids named" in left["4"]
    assert "Tiny-ImageNet</span></td>" in left["4"]
    assert re.search(r"The store holds 2 further runs that this report does not show "
                     r"\(Table \d+\): 2 by the filters named\.", plain(html))  # fmt: skip

    # A run that failed is left out by its status, and said so.
    copy = tmp_path / "runs"
    shutil.copytree(store, copy)
    run_json = copy / "2" / "run.json"
    run_json.write_text(run_json.read_text().replace('"COMPLETED"', '"FAILED"'))
    assert main(["--runs", str(copy), "--out", str(out), "--format", "html"]) == 0
    html = plain(out.read_text())
    left = dict(re.findall(r'<tr data-left-out="(\d+)">(.*?)</tr>', html, re.S))
    assert list(left) == ["2"]
    assert "<td>FAILED</td><td>status FAILED: the report shows COMPLETED runs</td>" in left["2"]
    assert "1 further run that this report does not show" in html
    assert "1 by status (FAILED)" in html


def test_a_run_left_out_beside_a_shown_run_of_its_cell_is_named_as_replaced(
    store, odd_store, tmp_path
):
    """A cell re-run with another budget, the first run left out by --ids (as the sample's
    3-epoch VGG-16 is): its row names the shown run and what sets the two apart."""
    copy = tmp_path / "runs"
    shutil.copytree(store, copy)
    shutil.copytree(odd_store / "1", copy / "5")  # Small CNN, MNIST, seed 0, lr 1.0, 1 epoch
    out = tmp_path / "r.html"
    assert main(["--runs", str(copy), "--out", str(out), "--ids", "1,2,3,4"]) == 0
    html = plain(out.read_text())
    left = dict(re.findall(r'<tr data-left-out="(\d+)">(.*?)</tr>', html, re.S))
    assert list(left) == ["5"]
    # The two differ in learning rate and epochs; the first key that tells them apart is named.
    assert ("<td>not among the --ids named; run 1, shown, has the same model, data set and seed "
            "and trains it with learning rate 0.003 (this run: learning rate 1.0)</td>"
            in left["5"]), left["5"]  # fmt: skip
    assert ("The store holds 1 further run that this report does not show (Table "
            in html)  # fmt: skip
    assert "1 replaced by a run of the same model, data set and seed trained otherwise." in html
    # Another seed of a shown cell is not a replacement: only the filter is named.
    assert main(["--runs", str(copy), "--out", str(out), "--ids", "1,3,4,5"]) == 0
    left = dict(re.findall(r'<tr data-left-out="(\d+)">(.*?)</tr>', plain(out.read_text()), re.S))
    assert list(left) == ["2"] and "run 1, shown" not in left["2"]
    assert "not among the --ids named" in left["2"]
    # A duplicate of a shown run (the same config, another id) is not a replacement either.
    shutil.copytree(copy / "1", copy / "6")
    assert main(["--runs", str(copy), "--out", str(out), "--ids", "1,2,3,4,5"]) == 0
    left = dict(re.findall(r'<tr data-left-out="(\d+)">(.*?)</tr>', plain(out.read_text()), re.S))
    assert list(left) == ["6"] and "<td>not among the --ids named</td>" in left["6"]


def test_the_sweep_filter_keeps_the_runs_that_sweep_tagged(store):
    records = read_file_store(store)
    tagged = dataclasses.replace(records[1], meta={"comment": "sweep:grid-abc123"})
    others = [dataclasses.replace(records[0], meta={"comment": "sweep:grid-other"}), records[2]]
    assert select_runs([*others, tagged], sweep="grid-abc123") == [tagged]
    with pytest.raises(StudyError, match="matching sweep=grid-nope"):
        select_runs([*others, tagged], sweep="grid-nope")


def test_a_failed_build_keeps_the_earlier_report(built, tmp_path, monkeypatch):
    import study.report

    out = tmp_path / "study.pdf"
    out.write_bytes(built["pdf"].read_bytes())
    before = out.read_bytes()

    def broken(html):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(study.report, "render_pdf", broken)
    with pytest.raises(RuntimeError):
        build_report(built["records"], out, "pdf")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".figures")] == [
        "study.pdf"
    ]


def test_a_build_collects_garbage_less_often_and_restores_the_collector(
    built, tmp_path, monkeypatch
):
    """The build freezes the objects that exist and raises the collector's thresholds (about
    15% of a build's CPU time was full collections); both come back after it, also when the
    build fails."""
    import gc

    import study.report

    before, seen = gc.get_threshold(), []

    def renderer(html):
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(study.report, "render_pdf", renderer)
    with pytest.raises(RuntimeError):
        build_report(built["records"], tmp_path / "a.pdf", "pdf")
    (thresholds, frozen) = seen[0]
    assert thresholds[0] > before[0] and frozen > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_rebuild_draws_only_what_changed(built, tmp_path):
    cache = tmp_path / "cache"
    records = built["records"]
    build_report(records, tmp_path / "a.html", "html", cache_dir=cache)
    first = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert len(first) == 6  # one file per figure

    build_report(records, tmp_path / "b.html", "html", cache_dir=cache)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == first  # nothing drawn

    # Without Small CNN's second MNIST seed only MNIST's figures and the compute figure may
    # change (its curves do: one run has no seed band); Tiny-ImageNet's are reused.
    fewer = [r for r in records if not (r.dataset == "mnist" and r.config["seed"] == 1)]
    assert len(fewer) == len(records) - 1
    build_report(fewer, tmp_path / "c.html", "html", cache_dir=cache)
    new = {p.name for p in cache.iterdir()} - set(first)
    before, after = (
        (tmp_path / name).read_text().split('id="results-tiny_imagenet"')
        for name in ("a.html", "c.html")
    )
    figures = re.compile(r'<img class="figure[^"]*" src="([^"]+)"')
    assert figures.findall(after[1].split('id="efficiency"')[0]) == figures.findall(
        before[1].split('id="efficiency"')[0]
    )  # Tiny-ImageNet's figures: the cached ones
    every = {
        name: set(figures.findall((tmp_path / name).read_text())) for name in ("a.html", "c.html")
    }
    changed = every["c.html"] - every["a.html"]
    assert 1 <= len(new) == len(changed) <= 4  # drawn: exactly the figures that changed


def test_the_figure_cache_follows_study_cache_dir(built, tmp_path, monkeypatch):
    records = [r for r in built["records"] if r.dataset == "tiny_imagenet"]
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "caches"))
    build_report(records, tmp_path / "a" / "r.html", "html")
    cached = {p.name for p in (tmp_path / "caches" / "figures").iterdir()}
    assert cached and not (tmp_path / "a" / ".figures").exists()
    monkeypatch.delenv("STUDY_CACHE_DIR")  # no place for caches named: beside the report
    build_report(records, tmp_path / "b" / "r.html", "html")
    assert {p.name for p in (tmp_path / "b" / ".figures").iterdir()} == cached


def test_records_read_back_match_the_files_sacred_wrote(store, built):
    # Read here with json alone, not through the reader under test.
    folders = sorted((p for p in store.iterdir() if (p / "run.json").is_file()), key=lambda p:
                     int(p.name))  # fmt: skip
    assert [r.id for r in built["records"]] == [p.name for p in folders]
    for record, folder in zip(built["records"], folders, strict=True):
        run, config, metrics = (
            json.loads((folder / name).read_text())
            for name in ("run.json", "config.json", "metrics.json")
        )
        assert record.status == run["status"] == "COMPLETED"
        assert record.result == run["result"] and record.start_time == run["start_time"]
        assert {k: record.config[k] for k in config} == config
        for name, series in metrics.items():
            pairs = list(zip(series["steps"], series["values"], strict=True))
            assert record.metric(name) == pairs, name


def test_the_seeds_published_values_stand_beside_ours(built, tmp_path):
    # A ResNet-50 cell on MNIST exists in the seed's Table 1 (0.9923 / 0.9999); a ResNet-18
    # cell does not. The record is relabelled rather than trained: ResNet-50 is slow on a CPU.
    records = [
        dataclasses.replace(r, config={**r.config, "model": "resnet50"})
        if r.model == "resnet18" else r
        for r in built["records"]
    ]  # fmt: skip
    html = build_report(records, tmp_path / "r.html", "html").read_text()
    cell = re.search(r'data-cell="mnist/resnet50/top1">(.*?)</td>', html, re.S).group(1)
    assert '<span class="seed">seed 0.9923</span>' in cell
    # Beside it, labelled Δ: ours minus the seed's (the caption says the protocols differ).
    (ours,) = [r.result["top1"] for r in records if r.model == "resnet50"]
    assert f"Δ {ours - 0.9923:+.4f}".replace("-", "−") in cell
    assert "Δ</i>, our value minus the seed's" in html
    cell = re.search(r'data-cell="mnist/resnet50/top5">(.*?)</td>', html, re.S).group(1)
    assert '<span class="seed">seed 0.9999</span>' in cell
    cell = re.search(r'data-cell="mnist/small_cnn/top1">(.*?)</td>', html, re.S).group(1)
    assert "seed" not in cell
    assert "labelled <i>seed</i>" in html


def test_accuracy_against_training_time_sums_the_epochs_training_seconds():
    from study.report import _against_training_time

    run = {"test_top1": [(1, 0.4), (2, 0.5), (3, 0.6)],
           "train_seconds": [(1, 10.0), (2, 12.5), (3, 11.0)]}  # fmt: skip
    assert _against_training_time(run) == [(10.0, 0.4), (22.5, 0.5), (33.5, 0.6)]
    # A run recorded before training seconds were a metric has no such curve.
    assert _against_training_time({"test_top1": [(1, 0.4)], "train_seconds": []}) == []


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def verdicts(html: str) -> dict[str, list[str]]:
    """Table 2 as {dataset: [the verdict of each pair]}."""
    out: dict[str, list[str]] = {}
    for d, row in re.findall(r'<tr data-test="([^/]+)/[^"]*">(.*?)</tr>', html, re.S):
        verdict = "differs" if "<td>differs</td>" in row else "not shown"
        out.setdefault(d, []).append(verdict)
    return out


def test_claims_follow_the_ranking_rule(built, tmp_path, capsys):
    text = pdf_text(built["pdf"])
    abstract = section(text, "Abstract", "1. Method")
    closing = section(text, "5. Conclusions", "6. Limitations")
    ranking = re.search(r".{0,200}ranks first (on|in)\b.{0,200}", text)
    assert not ranking, ranking.group(0)  # fewer than three seeds in any cell
    for d in verdicts(built["html"]):
        title = {"mnist": "MNIST", "tiny_imagenet": "Tiny-ImageNet"}[d]
        assert f"On {title} no model is ranked: the highest observed top-1 is " in abstract
        assert f"No model is ranked on {title}." in closing
    # Tiny-ImageNet has one model: no ranking wording there.
    assert "On Tiny-ImageNet only Small CNN was run" in abstract
    assert not re.search(r"ranked on Tiny-ImageNet|Tiny-ImageNet no model is ranked", text)

    # A real two-model, one-seed store: one run predicting exactly as another (the same run
    # under a second model name). One seed is no ranking, the means tie and McNemar gives
    # p = 1: every reason is given. (Small CNN's seed-0 run: the
    # one-epoch ResNet-18 run is flagged, and a flagged cell is never ranked at all.)
    run = next(r for r in built["records"] if r.model == "small_cnn" and r.dataset == "mnist")
    assert not cell_flags([run], lambda r: r.evaluation()).get("flagged")
    twin = dataclasses.replace(run, id="98", config={**run.config, "model": "resnet50"})
    pdf = build_report([run, twin], tmp_path / "twin.pdf", "pdf")
    text = pdf_text(pdf)
    abstract = section(text, "Abstract", "1. Method")
    closing = section(text, "5. Conclusions", "6. Limitations")
    names = "(Small CNN|ResNet-50)"
    assert re.search(
        rf"On MNIST no model is ranked: the highest observed top-1 is {names}'s \(top-1 "
        r"[0-9.]+\), which is not a ranking because a ranking needs at least 3 seeds in every "
        rf"compared cell, and {names} has 1, {names} has 1; {names} has the same mean top-1; "
        rf"it does not differ significantly "
        rf"from {names} at seed 0 \(p = 1\.0+ by McNemar's test\)\.",
        abstract,
    ), abstract
    assert "ranks first" not in abstract + closing
    assert closing.count("No model is ranked on MNIST.") == 1
    assert "significantly better" not in abstract + closing

    # One run: singular counts, no best model.
    out = tmp_path / "one.pdf"
    assert main(["--runs", str(run.store), "--ids", run.id, "--out", str(out)]) == 0
    assert f"study report: 1 run -> {out}" in capsys.readouterr().out
    text = pdf_text(out)
    assert "1 recorded run in 1 model × data set cell," in text
    assert "1 runs" not in text and "ranked" not in section(text, "Abstract", "1. Method")


def test_chance_and_collapsed_cells_are_flagged_everywhere(odd):
    import base64

    import numpy as np

    html, text = odd["html"], pdf_text(odd["pdf"])
    constant = next(r for r in odd["records"] if r.config["lr"] == 1.0)
    ev = constant.evaluation()
    predicted, labels = ev["topk"][:, 0], ev["labels"]
    assert len(set(predicted.tolist())) == 1  # the run really is a constant predictor
    top1 = float((predicted == labels).mean())
    assert constant.result["top1"] == pytest.approx(top1)

    arm = "small_cnn [learning rate 1.0, epochs 1]"
    title = "Small CNN (learning rate 1.0, epochs 1)"
    cell = re.search(rf'data-cell="mnist/{re.escape(arm)}/top1">(.*?)</td>', html, re.S).group(1)
    # At chance, collapsed, and stuck (its one epoch's loss is far above ln 10).
    assert re.search(r'<span class="flag"[^>]*>†‡§</span>', cell)
    assert "† At chance" in text and "‡ Predictions collapsed" in text
    assert "§ Stuck: a run's training loss over the last quarter of its last epoch is still" in text
    share = f"{np.bincount(predicted).max() / predicted.size:.0%}"
    sentence = f"{title} on MNIST: top-1 {top1:.4f} is not significantly above chance (0.1000"
    assert sentence in text
    assert f"takes {share} of {predicted.size:,} predictions and 1 of 10 classes" in text
    assert f"Flagged: {title} on MNIST" in text  # in the data set's results section
    abstract = section(text, "Abstract", "1. Method")
    assert f"{title} on MNIST: at chance; predictions collapsed; stuck" in abstract
    flagged = len(re.findall(r'<p class="flagged">', html))
    words = ["", "One cell is", "Two cells are", "Three cells are", "Four cells are"][flagged]
    assert f"{words} flagged as not a working classifier" in abstract  # no numeral opens it

    # Its ECE is "not meaningful" in Table 3, the reliability panel and the appendix, and it
    # is left out of the calibration ranking.
    row = re.search(rf'<tr data-ece="MNIST/{re.escape(title)}">(.*?)</tr>', html, re.S).group(1)
    assert "not meaningful (at chance; predictions collapsed; stuck)" in row
    ranking = re.search(r'<p class="caption">Lowest observed ECE per data set(.*?)</p>', html, re.S)
    ranking = ranking.group(1)
    assert f": {title} (" not in ranking  # never ranked ...
    assert title in ranking and "excluded: flagged" in ranking  # ... and said to be left out
    uris = re.findall(r'<img class="reliability" src="data:image/svg\+xml;base64,([^"]+)"', html)
    assert "ECE not meaningful" in base64.b64decode(uris[0]).decode()
    appendix = text[text.index("Appendix B: runs") :]
    assert "ECE not meaningful (at chance; predictions collapsed; stuck)" in appendix

    # A cell that learned (the two seeds of Small CNN at lr 0.003, 2 epochs) is not flagged.
    learned = re.search(
        r'data-cell="mnist/small_cnn \[learning rate 0.003, epochs 2\]/top1">(.*?)</td>', html, re.S
    ).group(1)
    assert "flag" not in learned


def test_departures_from_the_seed_are_stated(odd):
    from study.registry import registry

    text = pdf_text(odd["pdf"])
    records = odd["records"]
    title = text[: text.index("Report built")]
    assert "reproduction" not in title and "departing from the seed's protocol" in title
    abstract = section(text, "Abstract", "1. Method")
    # Only ResNet-18's run departs in input size (Small CNN keeps its own 28 px): said so.
    sized = len(records)
    assert (
        "The runs depart from the seed's protocol (Section 1.3): inputs of 32 px instead of 224 px"
        f" (in 1 of {sized} runs);" in abstract
    )
    # A setting every departing run set alike is named with its value; one set two ways, bare.
    assert (
        "protocol settings changed (batch size 50, epochs, input size (px) 32, learning rate, "
        "training subset 200, training time budget (s) 0.05);" in abstract
    )
    part = section(text, "1.3 Departures from the seed", "2. Data sets")

    # Input size against the seed's (the model's paper input size).
    resnet = next(r for r in records if r.model == "resnet18")
    seed_size = registry().model("resnet18").input_size["paper"]
    assert (
        f"Input size: ResNet-18 {resnet.config['image_size']} px (seed {seed_size} px), in 1 of "
        f"{sized} runs (the others at the seed's size)." in part
    )

    # Epochs: what was trained, a budget-stopped run by the fraction it saw.
    mnist = [r for r in records if r.dataset == "mnist"]
    trained = sorted(
        sum(v for _, v in r.metric("train_images")) / r.info["dataset"]["train_count"]
        for r in mnist
    )
    assert trained[0] < 1  # the budget-stopped run
    low = f"{trained[0]:.2g}"
    high = f"{trained[-1]:g}"
    assert f"Epochs trained: MNIST {low}–{high} (seed 6)" in part

    # Training and test images against the official split sizes (DatasetSpec).
    spec = registry().dataset("mnist")
    counts = sorted({r.info["dataset"]["train_count"] for r in mnist})
    assert f"MNIST {counts[0]}–{counts[-1]} of the official {spec.train_size:,}" in part
    tests = {r.info["dataset"]["test_count"] for r in mnist}
    assert f"MNIST {tests.pop()} of the official {spec.test_size:,}" in part

    # Architectures the seed never ran are named: Table 1 has no seed value for them.
    models = part[part.index("Models the seed did not run:") :].split(".")[0]
    assert "ResNet-18" in models and "Small CNN" in models and "VGG-16" not in models
    # Beside some of the seed's models, the others it ran are named as not run here.
    from study.report.prose import departures

    one_seed_model = [
        dataclasses.replace(r, config={**r.config, "model": "resnet50"}) if r.model == "resnet18"
        else r for r in records
    ]  # fmt: skip
    (item,) = [d for d in departures(one_seed_model, ["mnist"]) if d["aspect"] == "models"]
    assert item["text"] == (
        "Models the seed did not run: Small CNN; of the seed's models, Inception-V3, VGG-16 did "
        "not run here."
    )

    # The protocol's own record of where each run departs from it (info.departures).
    assert f"Protocol named: paper ({len(records)} runs)." in part
    assert "learning rate 0.003, 1.0 (protocol 0.0002)" in part
    assert "training time budget (s) 0.05 (protocol none)" in part
    assert "time_budget" not in part and "train_limit" not in part  # no raw config keys
    assert "Hardware: " in part


def efficiency_rows(html: str) -> dict[str, list[str]]:
    """The efficiency table as {dataset/model: [its cells' text]}."""
    rows = re.findall(r'<tr data-eff="([^"]+)">(.*?)</tr>', html, re.S)
    return {key: re.findall(r"<td[^>]*>(.*?)</td>", row, re.S) for key, row in rows}


def test_efficiency_is_images_over_seconds_and_budget_runs_are_named_by_what_they_trained(odd):
    rows = efficiency_rows(odd["html"])
    text = pdf_text(odd["pdf"])
    names = ["model", "dataset", "input", "params", "mb", "gmacs", "trained", "images",
             "seconds", "rate", "n"]  # fmt: skip
    if len(next(iter(rows.values()))) == len(names) + 1:  # runs timed on several machines
        names.append("hardware")
    by_arm = {key: dict(zip(names, cells_, strict=True)) for key, cells_ in rows.items()}
    resnet = next(r for r in odd["records"] if r.model == "resnet18")
    constant = next(r for r in odd["records"] if r.config["lr"] == 1.0)
    for r, key in (
        (resnet, "mnist/resnet18"),
        (constant, "mnist/small_cnn [learning rate 1.0, epochs 1]"),
    ):
        row = by_arm[key]
        images = sum(v for _, v in r.metric("train_images"))
        seconds = r.info["training"]["train_seconds"]
        assert float(row["images"].replace(",", "")) == images
        assert row["seconds"] == f"{seconds:.1f}"
        assert row["rate"] == f"{images / seconds:.1f}"  # the ratio, whole run
        assert row["trained"] == "1 epoch"
    # Over several epochs the whole-run rate is not the mean of the epochs' rates.
    two = next(r for r in odd["records"] if r.config.get("epochs") == 2 and r.model == "small_cnn"
               and r.dataset == "tiny_imagenet")  # fmt: skip
    rates = [v for _, v in two.metric("images_per_s")]
    images = sum(v for _, v in two.metric("train_images"))
    row = by_arm["tiny_imagenet/small_cnn"]
    assert row["rate"] == f"{images / two.info['training']['train_seconds']:.1f}"
    assert len(rates) == 2

    # The budget-stopped run is named and tabled by what it trained, never by its 25 epochs.
    budget = next(r for r in odd["records"] if r.config.get("time_budget"))
    assert budget.info["training"]["stopped_by_budget"]
    trained = (
        sum(v for _, v in budget.metric("train_images")) / budget.info["dataset"]["train_count"]
    )
    label = f"{trained:.2g} epochs, budget 0.05 s"
    assert f"Small CNN (learning rate 0.003, {label})" in text
    assert by_arm[f"mnist/small_cnn [learning rate 0.003, {label}]"]["trained"] == label
    assert "epochs=25" not in text[: text.index("Appendix B: runs")]


def layout(html: str):
    """WeasyPrint's layout of the report, as the PDF draws it: per page, the content box's
    right edge and every box in document order."""
    from weasyprint import HTML

    def walk(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from walk(child)

    for page in HTML(string=html, base_url=".").render().pages:
        box = page._page_box
        yield box.content_box_x() + box.width, list(walk(box))


def test_tables_fit_the_page_and_keep_their_captions(odd):
    html = odd["html"]
    first_page: dict[int, int] = {}
    order: list[tuple[str, int]] = []  # captions and tables in document order, by element
    for n, (right, boxes) in enumerate(layout(html)):
        for box in boxes:
            kind = type(box).__name__
            if kind == "TableBox":
                assert box.position_x + box.margin_width() <= right + 0.5, box.element.get("class")
            if kind == "TextBox":
                assert box.position_x + box.width <= right + 0.5, box.text
            element = getattr(box, "element", None)
            tag = getattr(element, "tag", "")
            is_caption = tag.endswith("caption") and "".join(element.itertext()).startswith("Table")
            if (kind == "TableBox" or is_caption) and id(element) not in first_page:
                first_page[id(element)] = n
                order.append(("table" if kind == "TableBox" else "caption", id(element)))
    # A table's <caption> is on the page where its table starts.
    pairs = [
        (a, b)
        for a, b in zip(order, order[1:], strict=False)
        if a[0] == "caption" and b[0] == "table"
    ]
    assert len(pairs) >= 3  # Tables 1, 2 and 3
    for (_, caption), (_, table) in pairs:
        assert first_page[caption] == first_page[table]


def test_counts_and_names_read_as_a_reader_expects(odd):
    html, text = odd["html"], pdf_text(odd["pdf"])
    resnet = next(r for r in odd["records"] if r.model == "resnet18")
    params = resnet.info["model"]["params"]
    assert params > 1000 and f">{params:,}<" in html and f"{params:,}" in text
    assert f">{params}<" not in html
    available = resnet.info["dataset"]["train_available"]
    assert f"({available:,})" in html
    # Hyphenated names never break at the hyphen; escaped like any run string.
    assert '<span class="nb">ResNet-18</span>' in html
    assert '<span class="nb">Tiny-ImageNet</span>' in html
    assert "hyphens: manual" in html
    # The interval's kind is named once, in Table 1's caption, not in every cell.
    assert html.count("95% CI Wilson") == 1
    assert "seed-to-seed variance is not included" in text


def test_timing_noise_is_stated_where_a_runs_epochs_disagree(odd, tmp_path):
    from study.report import TIMING_SPREAD, dataset_title, model_title

    note = re.search(r"Timing noise:[^<]*", odd["html"])
    note = note.group(0) if note else ""
    for r in odd["records"]:
        rates = [v for _, v in r.metric("images_per_s")]
        if r.info["training"]["stopped_by_budget"]:
            rates = rates[:-1]
        if len(rates) > 1 and max(rates) > TIMING_SPREAD * min(rates):
            assert f"run {r.id} ({model_title(r.model)} on {dataset_title(r.dataset)})" in note

    # A real run's epochs, one of them as slow as a machine under load makes it.
    run = next(r for r in odd["records"] if r.dataset == "tiny_imagenet")
    rates = run.metrics["images_per_s"]
    slowed = [(rates[0][0], rates[0][1] / 4), *rates[1:]]
    loaded = dataclasses.replace(run, metrics={**run.metrics, "images_per_s": slowed})
    html = plain(build_report([loaded], tmp_path / "r.html", "html").read_text())
    low, high = min(v for _, v in slowed), max(v for _, v in slowed)
    who = f"run {run.id} (Small CNN on Tiny-ImageNet)"
    assert f"Timing noise: {who} trained at {low:.1f} to {high:.1f} images/s" in html
    # With the load the run recorded per epoch, the note gives its range and the CPUs.
    loads = [(e, 0.5 + e) for e, _ in slowed]
    busy = dataclasses.replace(loaded, metrics={**loaded.metrics, "load_avg": loads},
                               info={**loaded.info, "training": {**loaded.info["training"],
                                                                "cpus": 2}})  # fmt: skip
    html = plain(build_report([busy], tmp_path / "r.html", "html").read_text())
    span = f"{min(v for _, v in loads):.1f} to {max(v for _, v in loads):.1f}"
    assert f"images/s across its epochs (load average {span} on 2 CPUs)" in html
    html = build_report([run], tmp_path / "r.html", "html").read_text()
    assert ("Timing noise" in html) == (
        max(v for _, v in rates) > TIMING_SPREAD * min(v for _, v in rates)
    )


def svg_figures(html: str) -> list[str]:
    """Every SVG figure of a report (matplotlib's and the reliability diagrams), decoded."""
    import base64

    return [
        base64.b64decode(data).decode()
        for data in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)
    ]


def artist_colours(svg: str) -> list[tuple[str, str, str]]:
    """(what, model, colour) of every artist the report names by model (`bar-top1--Small-CNN`):
    matplotlib writes the colour into the style of the group's first path (or marker use);
    the reliability diagram into the group's fill."""
    found = re.findall(
        r'<g id="([a-z0-9_-]+?)--([A-Za-z0-9-]+)"(?: fill="(#[0-9a-f]{6})")?>\s*'
        r"(?:<defs>.*?</defs>\s*)?(?:<g [^>]*>\s*)?"  # a marker's definition, its clip group
        r'(?:<(?:path|use)[^>]*?style="[^"]*?(?:stroke|fill): (#[0-9a-f]{6}))?',
        svg,
        re.S,
    )
    return [(what, model, a or b) for what, model, a, b in found if a or b]


def test_each_model_keeps_one_colour_in_every_figure(built):
    colours: dict[str, set[str]] = {}
    kinds: dict[str, set[str]] = {}
    for svg in svg_figures(built["html"]):
        for what, model, colour in artist_colours(svg):
            colours.setdefault(model, set()).add(colour)
            kinds.setdefault(model, set()).add(re.sub(r"-.*", "", what))
    assert set(colours) == {"Small-CNN", "ResNet-18"}, colours
    assert all(len(c) == 1 for c in colours.values()), colours  # one colour per model...
    assert len({c for cs in colours.values() for c in cs}) == len(colours)  # ...each its own
    for model, seen in kinds.items():  # bars, curves, reliability and compute alike
        assert {"bar", "test_top1", "train_top1", "reliability", "compute"} <= seen, (model, seen)


def test_reliability_diagrams_show_how_many_images_each_bin_holds():
    import base64

    from study.report.figures import reliability_svg

    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    panel = {"model": "ResNet-50", "label": "ResNet-50", "edges": edges, "count": [0, 30, 10, 960],
             "accuracy": [None, 0.5, 0.6, 0.99], "confidence": [None, 0.4, 0.6, 0.97],
             "ece": 0.01, "flagged": False, "colour": "#4c72b0"}  # fmt: skip
    svg = base64.b64decode(reliability_svg({"models": [panel]}).split(",", 1)[1]).decode()
    counts = re.search(r'<g class="bin-counts"[^>]*>(.*?)</g>', svg, re.S).group(1)
    heights = [float(h) for h in re.findall(r'height="([0-9.]+)"', counts)]
    # One bar per non-empty bin, in proportion to its count (the tallest 24 units high).
    assert heights == pytest.approx([24 * 30 / 960, 24 * 10 / 960, 24.0], abs=0.06)
    assert "images per bin (tallest 960)" in svg


def test_the_seed_models_keep_their_colours_whatever_else_is_reported():
    from study.report.figures import model_colours

    seed = model_colours(["vgg16", "inception_v3", "resnet50"])
    assert len(set(seed.values())) == 3
    assert model_colours(["resnet50", "small_cnn"])["resnet50"] == seed["resnet50"]
    assert model_colours(["resnet18", "vgg16"])["vgg16"] == seed["vgg16"]
    # A variant of a seed model takes its colour where the original is absent, else its own.
    assert model_colours(["vgg16_bn", "resnet50"])["vgg16_bn"] == seed["vgg16"]
    both = model_colours(["vgg16", "vgg16_bn", "inception_v3", "resnet50"])
    assert len(set(both.values())) == 4 and all(both[m] == seed[m] for m in seed)


def test_curves_put_train_and_test_in_one_panel_with_a_band_over_seeds(built):
    (mnist,) = [svg for svg in svg_figures(built["html"]) if "band-test_top1--" in svg]
    panels = re.split(r'<g id="axes_\d+">', mnist)[1:]
    accuracy = [p for p in panels if 'id="test_top1--Small-CNN"' in p]
    assert len(accuracy) == 1 and 'id="train_top1--Small-CNN"' in accuracy[0]  # one panel
    assert 'id="chance-top-1-accuracy"' in accuracy[0]
    loss = [p for p in panels if 'id="test_loss--Small-CNN"' in p]
    assert len(loss) == 1 and 'id="train_loss--Small-CNN"' in loss[0]
    rate = [p for p in panels if 'id="lr--Small-CNN"' in p]  # the learning rate: its own panel
    assert len(rate) == 1 and "test_top1" not in rate[0]
    # Small CNN has two seeds on MNIST: a band; ResNet-18 has one run: a line alone.
    assert 'id="band-test_top1--Small-CNN"' in mnist
    assert 'id="test_top1--ResNet-18"' in mnist and "band-test_top1--ResNet-18" not in mnist


def test_bar_chart_scales_to_low_accuracy_and_keeps_its_legend_off_the_bars(built):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from study.report.figures import PALETTE, bar_figure

    # Tiny-ImageNet's real run: low accuracy on 25 classes.
    (tiny,) = [r for r in built["records"] if r.dataset == "tiny_imagenet"]
    chance = 1 / tiny.info["dataset"]["num_classes"]
    top1, top5 = tiny.result["top1"], tiny.result["top5"]
    fig = bar_figure({"models": ["Small CNN"], "colours": [PALETTE[0]], "chance": chance,
                      "top1": [[top1, 0.0]], "top5": [[top5, 0.0]]})  # fmt: skip
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    low, high = ax.get_ylim()
    tallest = max(top1, top5, min(5 * chance, 1.0))
    assert low == 0 and tallest < high <= min(1.0, tallest) * 1.2  # scaled to the data
    chance_lines = [line for line in ax.lines if (line.get_gid() or "").startswith("chance")]
    assert [line.get_ydata()[0] for line in chance_lines] == [chance, min(5 * chance, 1.0)]
    assert all(line.get_linestyle() == "--" for line in chance_lines)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not legend.overlaps(ax.get_tightbbox(renderer))  # below the bars, labels and ticks


def test_every_figure_and_table_is_numbered_captioned_and_referred_to(built):
    html, text = built["html"], pdf_text(built["pdf"])
    for kind in ("Figure", "Table"):
        numbers = [int(n) for n in re.findall(rf"<b>{kind} (\d+):</b>", html)]
        assert numbers == list(range(1, len(numbers) + 1)), (kind, numbers)  # in order
        named = set()  # in the text as well as in its own caption: "Table 3", "Tables 9–17"
        for first, last in re.findall(rf"\b{kind}s? (\d+)(?:–(\d+))?\b(?!:)", text):
            named.update(range(int(first), int(last or first) + 1))
        assert set(numbers) <= named, (kind, sorted(set(numbers) - named))
    # Every table has a caption (the appendix's per-run records too); every figure too.
    tables = len(re.findall(r"<table class=", html))
    assert tables == len(re.findall(r"<b>Table \d+:</b>", html))
    figures = html.count('<img class="figure') + html.count('<img class="reliability"')
    galleries = html.count('<figure class="galleries"')
    assert galleries == 2 and figures + galleries == len(re.findall(r"<b>Figure \d+:</b>", html))
    assert "Sections 3.1–3.2 show each data set's figures" in html


def test_one_data_set_is_one_section(built, tmp_path):
    mnist = [r for r in built["records"] if r.dataset == "mnist"]
    html = plain(build_report(mnist, tmp_path / "mnist.html", "html").read_text())
    assert "Section 3.1 shows the data set's figures" in html and "3.1–3.1" not in html


def test_each_data_set_has_prose_that_follows_from_its_numbers(built):
    from study.report import model_title

    html = built["html"]
    tested = verdicts(html)
    for d in ("mnist", "tiny_imagenet"):
        prose = re.search(rf'id="results-{d}">.*?<p class="prose">(.*?)</p>', html, re.S).group(1)
        top1 = {k.split("/")[1]: v for k, v in cells(html).items() if k.startswith(f"{d}/")
                and k.endswith("/top1") and v}  # fmt: skip
        best = max(top1, key=lambda m: float(top1[m].split(" ")[0]))
        assert f"{model_title(best)}&#39;s {top1[best].split(' ')[0]}" in prose
        if len(tested.get(d, [])) == 0:
            assert "nothing to compare" in prose
        else:  # fewer than three seeds per cell: the highest observed, never a ranking
            assert "That is the highest observed, not a ranking: a ranking needs at least 3" in (
                prose
            )
            assert "ranks first" not in prose
        # The train-test gap at the last epoch, per model, as the runs recorded it.
        for model, rs in by_cell(built["records"]).items():
            if model[0] != d:
                continue
            gaps = []
            for r in rs:
                train, test = dict(r.metric("train_top1")), dict(r.metric("test_top1"))
                last = max(set(train) & set(test))
                gaps.append(train[last] - test[last])
            gap = f"{statistics.fmean(gaps):+.3f}".replace("-", "−")
            assert f"{model_title(model[1])} {gap}" in prose, (model, gap, prose)


def test_per_class_precision_recall_and_f1_come_from_the_predictions(built):
    import numpy as np

    html = built["html"]
    # MNIST's ResNet-18 cell is one run: its per-class table is its own predictions.
    (run,) = [r for r in built["records"] if r.model == "resnet18"]
    ev = run.evaluation()
    labels, predicted = ev["labels"], ev["topk"][:, 0]
    table = re.search(r"MNIST: precision \(P\), recall.*?</table>", html, re.S).group(0)
    models = re.findall(r'<th colspan="3" class="model"[^>]*>(.*?)</th>', table)
    column = 1 + 3 * [i for i, m in enumerate(models) if "ResNet-18" in m][0]
    names = run.info["dataset"]["class_names"]
    for c, name in enumerate(names):
        row = re.search(rf'data-class="mnist/{re.escape(str(name))}">(.*?)</tr>', table, re.S)
        values = re.findall(r'<td class="num(?: wrap)?">([^<]*)</td>', row.group(1))
        hit = int(((predicted == c) & (labels == c)).sum())
        precision = hit / (predicted == c).sum() if (predicted == c).any() else None
        recall = hit / (labels == c).sum()
        images = values[0].split(" / ")  # one count per model where they differ
        assert images[column // 3 if len(images) > 1 else 0] == f"{(labels == c).sum():,}"
        assert values[column] == ("–" if precision is None else f"{precision:.3f}")
        assert values[column + 1] == f"{recall:.3f}"
        if precision is not None and precision + recall:
            f1 = 2 * precision * recall / (precision + recall)
            assert values[column + 2] == f"{f1:.3f}"
    # Tiny-ImageNet (25 classes): the 5 best and 5 worst classes by F1, not all 25.
    tiny = re.search(r"Tiny-ImageNet \(25 classes\).*?</table>", html, re.S).group(0)
    assert len(re.findall(r'data-class="tiny_imagenet/best/', tiny)) == 5
    assert len(re.findall(r'data-class="tiny_imagenet/worst/', tiny)) == 5
    assert np.unique(labels).size == len(names)


def test_limitations_and_references_are_stated(built):
    text = pdf_text(built["pdf"])
    limitations = section(text, "6. Limitations", "7. References")
    # MNIST's Small CNN has two seeds; the other cells one run each.
    assert "2 of 3 cells hold one trained model" in limitations
    assert "test images only" in limitations
    assert "images/s compares models only roughly" in limitations
    references = section(text, "7. References", "Appendix A: per-class")
    for cited in ("Simonyan", "Deep Residual Learning", "Rethinking the Inception", "McNemar",
                  "Wilson", "Tiny ImageNet", "CIFAR", "MNIST", "Deeper Networks"):  # fmt: skip
        assert cited in references, cited


def test_names_never_break_at_their_hyphen(built):
    """No line of the PDF ends in "Tiny-" or "ResNet-": the PDF's text gets a word joiner after
    each hyphen of such a name, which its text does not read back; the HTML page is as it was."""
    from pypdf import PdfReader
    from weasyprint import HTML

    from study.report import render_pdf

    def lines(pdf: bytes) -> list[str]:
        import io

        pages = PdfReader(io.BytesIO(pdf)).pages
        return [line.rstrip() for page in pages for line in page.extract_text().splitlines()]

    # A column where "On Tiny-ImageNet" must wrap: WeasyPrint alone breaks it at the hyphen.
    page = '<p style="width: 30mm">aaaa bbbb cccc On Tiny-ImageNet and Inception-V3 too</p>'
    assert any(line.endswith("Tiny-") for line in lines(HTML(string=page).write_pdf()))
    kept = lines(render_pdf(page))
    assert "Tiny-ImageNet" in kept and not any(line.endswith("-") for line in kept), kept

    assert "\u2060" not in built["html"] and "Tiny-ImageNet" in built["html"]
    text = lines(built["pdf"].read_bytes())
    assert not [line for line in text if re.search(r"\b[A-Z][A-Za-z0-9]*-$", line)]
    assert "\u2060" not in " ".join(text) and "Tiny-ImageNet" in " ".join(text)


def test_table_cells_wrap_between_words_never_inside_one(odd, tmp_path):
    """The statistics, calibration, efficiency, data-set and results tables have widths to fit
    their content: a header or number may wrap between words, never inside one; the efficiency
    table too where runs timed on several machines give it a column more."""

    def walk(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from walk(child)

    def words(text):
        return {w for w in re.split(r"[\s\-/]+", text) if w}

    def slower(r):  # ResNet-18's run as if timed on a machine of a third the speed
        return on_machine(r, cpu_gflops=r.info["training"]["cpu_gflops"] / 3)

    records = [slower(r) if r.model == "resnet18" else r for r in odd["records"]]
    two = plain(build_report(records, tmp_path / "two.html", "html").read_text())
    assert '<th scope="col">machine</th>' in two
    for html in (odd["html"], two):
        checked = set()
        for _, boxes in layout(html):
            for table in boxes:
                kind = table.element.get("class") if type(table).__name__ == "TableBox" else None
                if kind not in ("tests", "calibration", "efficiency", "table1", "datasets"):
                    continue
                checked.add(kind)
                for cell in walk(table):
                    if type(cell).__name__ != "TableCellBox":
                        continue
                    lines = [
                        "".join(t.text for t in walk(line) if type(t).__name__ == "TextBox")
                        for line in walk(cell)
                        if type(line).__name__ == "LineBox"
                    ]
                    whole = set().union(*(words(line) for line in lines)) if lines else set()
                    text = " ".join(cell.element.itertext())  # <br> separates too
                    assert words(text) <= whole, (kind, text, lines)
        assert checked == {"tests", "calibration", "efficiency", "table1", "datasets"}


def test_fixed_figure_layout_keeps_labels_inside_and_legends_off_the_axes():
    """The figures' margins are set by hand (no constrained layout): every axes with its tick
    labels, axis labels and title lies inside the figure, and the legend below touches none."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from study.report.figures import PALETTE, bar_figure, compute_figure, curve_figure

    names = [
        "VGG-16-BN",
        "Inception-V3",
        "ResNet-50",
        "ResNet-18 (paper, 1.2 epochs, budget 600 s)",
    ]
    epochs = [(1, 0.00019), (2, 0.0002), (3, 0.0002)]  # an lr panel's long tick labels
    run = {"test_top1": [(1, 0.2), (2, 0.5), (3, 0.61)], "train_top1": [(1, 0.3), (2, 0.6)],
           "test_loss": [(1, 2.1), (2, 1.4), (3, 1.1)], "train_loss": [(1, 2.0), (2, 1.2)],
           "lr": epochs, "train_seconds": [(1, 150.0), (2, 148.0), (3, 151.0)],
           "images_per_s": [(1, 39.2), (2, 141.2), (3, 150.5)]}  # fmt: skip
    figures = [
        bar_figure({"models": names, "colours": list(PALETTE[:4]), "chance": 0.005,
                    "top1": [[0.0075, 0.0]] * 4, "top5": [[0.0485, 0.0]] * 4}),  # fmt: skip
        curve_figure({"chance": 0.1, "models": [
            {"model": n, "label": n, "colour": PALETTE[i], "runs": [run]}
            for i, n in enumerate(names)]}),  # fmt: skip
        compute_figure({"points": [
            {"model": n, "colour": PALETTE[i], "dataset": d, "top1": 0.1 * (i + 1),
             "seconds": 38.0 * (i + 1), "gmacs": 0.08 * (i + 1), "params": 2.4e7 * (i + 1)}
            for i, n in enumerate(names) for d in ("MNIST", "CIFAR-10", "Tiny-ImageNet")]}),
    ]  # fmt: skip
    for fig in figures:
        FigureCanvasAgg(fig).draw()
        renderer = fig.canvas.get_renderer()
        page = fig.bbox
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0
        for ax in fig.axes:
            tight = ax.get_tightbbox(renderer)
            assert page.x0 - 1 <= tight.x0 and tight.x1 <= page.x1 + 1, ax.get_title()
            assert page.y0 - 1 <= tight.y0 and tight.y1 <= page.y1 + 1, ax.get_title()
            assert not box.overlaps(tight), ax.get_title()


def test_each_data_set_opens_with_a_summary_table_of_its_numbers(built):
    import statistics as st

    from study.report import model_title
    from study.report.model import training_totals

    html = unescape(built["html"])
    for (d, m), rs in by_cell(built["records"]).items():
        row = re.search(rf'<tr data-summary="{d}/{re.escape(model_title(m))}">(.*?)</tr>', html,
                        re.S).group(1)  # fmt: skip
        values = [re.sub(r"<[^>]+>", "", v).strip() for v in re.findall(r"<td[^>]*>(.*?)</td>",
                  row, re.S)]  # fmt: skip
        top1 = [r.result["top1"] for r in rs]
        assert values[1].startswith(f"{st.fmean(top1):.4f}") and values[2] == str(len(rs))
        assert values[4] == f"{rs[0].info['model']['params'] / 1e6:.1f}"
        assert values[5] == f"{rs[0].info['model']['gmacs_per_image']:.3f}"
        rate = st.fmean(images / seconds for images, seconds in map(training_totals, rs))
        assert values[6] == f"{rate:.1f}"
        assert values[8] == str(rs[0].config["image_size"])


def test_pareto_front_keeps_the_cells_nothing_beats_on_time_and_accuracy():
    from study.report.figures import pareto_front

    cells = [(100, 0.5), (50, 0.6), (200, 0.9), (150, 0.7), (50, 0.4), (300, 0.9)]
    assert pareto_front(cells) == [(50, 0.6), (150, 0.7), (200, 0.9)]
    assert pareto_front([(10, 0.9), (20, 0.8)]) == [(10, 0.9)]
    assert pareto_front([]) == []


def test_compute_figure_gives_each_data_set_its_row_and_every_cost_axis_labels():
    """One row per data set with its own accuracy axis (MNIST's 0.97-0.99 is not squashed by
    Tiny-ImageNet's 0.05), and at least two labelled ticks on every cost axis, whether the costs
    span a factor of 80 (log) or of 1.05 (linear)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from study.report.figures import PALETTE, compute_figure

    points = [
        {"model": m, "colour": PALETTE[i], "dataset": d, "top1": top1 + 0.01 * i,
         "seconds": 38.0 * 9**i, "gmacs": 0.3 * (i + 1), "params": 11.1e6 + 0.3e6 * i}
        for d, top1 in (("MNIST", 0.97), ("Tiny-ImageNet", 0.05))
        for i, m in enumerate(("VGG-16", "ResNet-50", "Inception-V3"))
    ]  # fmt: skip
    fig = compute_figure({"points": points})
    FigureCanvasAgg(fig).draw()
    assert len(fig.axes) == 2 * 3
    mnist, tiny = fig.axes[0].get_ylim(), fig.axes[3].get_ylim()
    assert mnist[0] > 0.9 and mnist[1] <= 1.01 and tiny[1] < 0.2
    for ax in fig.axes:
        low, high = sorted(ax.get_xlim())
        labelled = [
            t for t in ax.get_xticklabels() if t.get_text() and low <= t.get_position()[0] <= high
        ]
        assert len(labelled) >= 2, (ax.get_xscale(), [t.get_text() for t in labelled])
    scales = [ax.get_xscale() for ax in fig.axes[:3]]
    assert scales == ["log", "linear", "linear"]  # time spans 81x; GMACs 3x; parameters 1.05x
    fronts = [line.get_gid() for ax in fig.axes for line in ax.lines]
    assert fronts.count("pareto-mnist") == 1 and fronts.count("pareto-tiny-imagenet") == 1


def on_machine(r, **changes):
    """Run r as if every machine that trained it had these fields (None: not recorded)."""

    def changed(t):
        return {k: v for k, v in {**t, **changes}.items() if v is not None}

    training = changed(r.info["training"])
    training["machines"] = [changed(m) for m in training.get("machines", [])]
    return dataclasses.replace(r, info={**r.info, "training": training})


def test_speeds_timed_on_different_kinds_of_machine_are_not_compared(built, tmp_path):
    """One CPU name covers machines whose vector instructions or speed differ: each run's kind
    of machine is named with them, its threads and the fp32 matrix-multiply speed it measured
    before training, and a data set's prose compares training speeds only between runs timed
    on one kind."""
    records = built["records"]
    assert {r.info["training"]["device"] for r in records} == {"cpu"}
    assert all(r.info["training"]["cpu_gflops"] > 0 for r in records)  # each run measured it
    # ... and lists the one machine that trained it, from its start.
    assert all([(m["device_name"], m["from_epoch"], m["from_step"])
                for m in r.info["training"]["machines"]]
               == [(r.info["training"]["device_name"], 0, 0)] for r in records)  # fmt: skip

    def timed(r, capability=None, gflops=100.0):
        """The run as if timed where its CPU had these instructions and this speed."""
        capability = capability or r.info["training"]["cpu_capability"]
        return on_machine(r, cpu_capability=capability, cpu_gflops=gflops)

    def machine(r, speed="100") -> str:
        t = r.info["training"]
        return (f"{t['device_name']} (cpu, {t['cpu_capability']}, {t['torch_threads']} threads, "
                f"{speed} GFLOP/s)")  # fmt: skip

    def report(runs, name):
        html = plain(build_report(runs, tmp_path / name, "html").read_text())
        prose = re.search(r'id="results-mnist">.*?<p class="prose">(.*?)</p>', html, re.S).group(1)
        # The table names each machine by a letter; its caption spells the letters out.
        legend = re.search(r"Model size, compute and [^<]*? Machines: ([^<]*)\.</caption>", html)
        legend = dict(item.split(": ", 1) for item in legend.group(1).split("; ")) if legend else {}
        hardware = {key: legend.get(cells_[-1]) for key, cells_ in efficiency_rows(html).items()}
        return html, prose, hardware

    # One machine: every run measured the same speed, or speeds within 1.25x of each other.
    for speeds, shown in (({}, "100"), ({"resnet18": 124.0}, "100–124")):
        alike = [timed(r, gflops=speeds.get(r.model, 100.0)) for r in records]
        html, prose, _ = report(alike, "one.html")
        assert f"for the whole run on {machine(alike[0], shown)}, where every run trained" in html
        assert "Training speed ranges from" in prose
        assert "GFLOP/s is the fp32 matrix-multiply speed a CPU run measured" in html

    # ResNet-18's run as if timed on a machine of the same name with other instructions, at
    # another speed, or without a measured speed beside runs that have one: not compared.
    for capability, gflops, speed in (("AVX2-elsewhere", 100.0, "100"), (None, 126.0, "126"),
                                      (None, None, None)):  # fmt: skip
        moved = [timed(r, capability, gflops) if r.model == "resnet18" else timed(r)
                 for r in records]  # fmt: skip
        html, prose, hardware = report(moved, "two.html")
        assert "Training speed ranges from" not in prose
        assert "Training speeds were measured on different kinds of machine (Table" in prose
        resnet = next(r for r in moved if r.model == "resnet18")
        small = next(r for r in moved if r.model == "small_cnn" and r.dataset == "mnist")
        named = machine(resnet, speed) if speed else machine(resnet)[: -len(", 100 GFLOP/s)")]
        named += "" if speed else ", speed not measured)"
        assert hardware["mnist/resnet18"] == named != hardware["mnist/small_cnn"]
        assert hardware["mnist/small_cnn"] == machine(small)
        assert "on the hardware each run used" in html

    # A run that recorded no machine at all is named so in the legend.
    _, prose, hardware = report([on_machine(r, device_name=None) if r.model == "resnet18"
                                 else timed(r) for r in records], "three.html")  # fmt: skip
    assert hardware["mnist/resnet18"] == "not recorded"
    assert "Training speeds were measured on different kinds of machine (Table" in prose

    # ResNet-18's run as if resumed at step 7 of epoch 2 on a machine of its name: at 110
    # GFLOP/s that is its own machine again, and speeds are compared; at 200, its seconds span
    # two machines, so it is compared with nothing and the legend says where it moved.
    def resumed(r, gflops):
        first = timed(r).info["training"]["machines"][0]
        later = {**first, "cpu_gflops": gflops, "from_epoch": 1, "from_step": 7}
        training = {**timed(r).info["training"], "machines": [first, later]}
        return dataclasses.replace(r, info={**r.info, "training": training})

    for gflops in (110.0, 200.0):
        runs = [resumed(r, gflops) if r.model == "resnet18" else timed(r) for r in records]
        html, prose, hardware = report(runs, "four.html")
        resnet = next(r for r in runs if r.model == "resnet18")
        if gflops == 110.0:
            assert f"for the whole run on {machine(resnet, '100–110')}, where every" in html
            assert "Training speed ranges from" in prose
        else:
            assert hardware["mnist/resnet18"] == (
                f"run {resnet.id} on {machine(resnet)}, and from step 7 of epoch 2 on "
                f"{machine(resnet, '200')}"
            )
            assert hardware["mnist/small_cnn"] == machine(resnet)
            assert "Training speeds were measured on different kinds of machine (Table" in prose
