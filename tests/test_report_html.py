"""The report's stylesheet, as the PDF and the HTML page get it, built from committed sample runs
(no training): the PDF read back, the page opened in a real browser."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from study.report import build_report, select_runs
from study.stores import read_file_store

SAMPLE = Path(__file__).resolve().parents[1] / "report" / "sample-runs"
IDS = ["4", "5", "7", "8"]  # two models on CIFAR-10 and MNIST: every kind of table and figure


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("html")
    records = select_runs(read_file_store(SAMPLE), ids=IDS)
    pdf = build_report(records, out / "r.pdf", "pdf", cache_dir=out / "figures")
    html = build_report(records, out / "r.html", "html", cache_dir=out / "figures")
    return {"records": records, "pdf": pdf, "html": html, "out": out}


def test_the_stylesheet_reaches_the_page_and_the_pdf_verbatim(built):
    from pypdf import PdfReader

    css = resources.files("study.templates").joinpath("report.css").read_text(encoding="utf-8")
    style = re.search(r"<style>\n?(.*?)\n?</style>", built["html"].read_text(), re.S).group(1)
    assert style.strip() == css.strip()
    assert '"DejaVu Serif"' in style and "&#34;" not in style

    # The PDF: "n / pages" at the foot of every page (the @bottom-center counter), and the fonts
    # the stylesheet names: DejaVu Serif for text, DejaVu Sans Mono for config strings.
    pages = PdfReader(built["pdf"]).pages
    feet = [page.extract_text().strip().splitlines()[-1].strip() for page in pages]
    assert feet == [f"{n} / {len(pages)}" for n in range(1, len(pages) + 1)]
    fonts = {
        re.sub(r"^/[A-Z]{6}\+", "", font.get_object()["/BaseFont"])
        for page in pages
        for font in page["/Resources"]["/Font"].values()
    }
    assert {"DejaVu-Serif", "DejaVu-Sans-Mono"} <= fonts, fonts
