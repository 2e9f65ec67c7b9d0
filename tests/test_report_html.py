"""The report's stylesheet, as the PDF and the HTML page get it, built from recorded runs
(tests/records, no training): the PDF read back, the page opened in a real browser."""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

import pytest
from conftest import RECORDS

from study.report import build_report, select_runs
from study.stores import read_file_store

IDS = ["4", "5", "7", "8"]  # two models on CIFAR-10 and MNIST: every kind of table and figure


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("html")
    records = select_runs(read_file_store(RECORDS), ids=IDS)
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


def test_every_reference_in_the_text_is_a_link(built):
    """Every "Table N", "Figure N", "Section N", "Appendix X" and "run N" outside a heading,
    a caption's own label and a run record's caption naming its own run is a link to an id."""
    html = built["html"].read_text()
    ids = set(re.findall(r'\bid="([^"]+)"', html))
    targets = re.findall(r'<a href="#([^"]+)">', html)
    assert targets and set(targets) <= ids
    assert {"table-", "figure-", "run-"} <= {re.sub(r"\d+$", "", t) for t in targets}
    body = re.sub(r"<(script|style|title|h\d)\b.*?</\1>", "", html, flags=re.S)
    body = re.sub(r"<a [^>]*>.*?</a>|<b>(Table|Figure) \d+:</b>", "", body, flags=re.S)
    body = re.sub(r"<caption class=\"caption run-caption\">.*?</caption>", "", body, flags=re.S)
    text = re.sub(r"<[^>]+>", " ", body)
    left = re.findall(r"\b(?:Tables?|Figures?|Sections?|[Rr]uns?) \d[\d.]*|Appendix [A-Z]\b", text)
    assert left == []
    # The contents: one link per numbered heading, in the page's order.
    nav = re.search(r'<nav class="toc".*?</nav>', html, re.S).group(0)
    assert re.findall(r'<a href="#[^"]+">(\d[\d.]*)', nav)[:4] == ["1.", "1.1", "1.2", "1.3"]
    assert "Appendix B: runs" in nav


# ---- In a real browser: Debian's chromium, driven through its chromedriver (nothing downloads).

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does)")  # fmt: skip
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # every request
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_at(browser, path: Path, width: int):
    """The page as a window `width` CSS px wide shows it; a phone's below 600 px."""
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 844, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    browser.get(path.as_uri())
    return browser


# Every element that holds text of its own, as the window lays it out: (tag, font px, text).
VISIBLE_TEXT = """
return Array.from(document.body.querySelectorAll('*')).filter(function (e) {
  return e.getClientRects().length && Array.from(e.childNodes).some(function (n) {
    return n.nodeType === 3 && n.textContent.trim(); });
}).map(function (e) {
  return [e.tagName, parseFloat(getComputedStyle(e).fontSize), e.textContent.trim().slice(0, 40)];
});
"""

# Cells whose content is wider than the cell: text running into the next column.
OVERFLOWING_CELLS = """
return Array.from(document.querySelectorAll('th, td')).filter(function (c) {
  return c.scrollWidth > c.clientWidth + 1;
}).map(function (c) { return c.textContent.trim().slice(0, 40); });
"""


@pytest.mark.parametrize("width", [390, 1280])
def test_the_page_fits_the_window_and_reads_at_its_size(browser, built, width):
    page = open_at(browser, built["html"], width)
    assert page.execute_script("return window.innerWidth") == width  # the viewport is set
    # Nothing runs off sideways: wide tables scroll inside their own box.
    assert page.execute_script("return document.documentElement.scrollWidth") <= width
    assert page.execute_script(OVERFLOWING_CELLS) == []
    small = [t for t in page.execute_script(VISIBLE_TEXT) if t[1] < 12]
    assert small == []  # no text below 12 px, gallery captions and table notes included
    body = page.execute_script(
        "return getComputedStyle(document.querySelector('p.prose')).fontSize"
    )
    assert float(body.rstrip("px")) >= 16


def test_links_tables_figures_and_marks_in_the_browser(browser, built):
    from selenium.webdriver.common.by import By

    page = open_at(browser, built["html"], 1280)
    # Every internal link resolves to an element; a gallery's "run N" to run N's record.
    broken = page.execute_script("""
      return Array.from(document.querySelectorAll('a[href^="#"]')).filter(function (a) {
        return !document.getElementById(decodeURIComponent(a.hash.slice(1))); }).length""")
    assert broken == 0
    run = page.find_element(By.CSS_SELECTOR, "figure.thumb figcaption a")
    record = page.find_element(By.ID, run.get_attribute("href").split("#")[1])
    assert record.get_attribute("class").startswith("run")
    assert f"{run.text.capitalize()}," in record.text  # "run 7" -> "Run 7, vgg16_bn on ..."

    # Accessibility: a <caption> in every table, a scope on every header cell, a text
    # equivalent for every mark, the gallery's models as headings.
    assert (
        page.execute_script("""return Array.from(document.querySelectorAll('table'))
      .filter(function (t) { return t.id && !t.caption; }).length""")
        == 0
    )
    assert page.execute_script("return document.querySelectorAll('th:not([scope])').length") == 0
    marks = page.execute_script("""return Array.from(document.querySelectorAll('.mark, .flag'))
      .map(function (m) { return [m.textContent, m.getAttribute('aria-label')]; })""")
    # (no ▲ here: no cell of this store holds the seeds a ranking needs; test_ranking has one)
    assert marks and all(label for _, label in marks)
    assert page.find_elements(By.CSS_SELECTOR, "h5.gallery-model")

    # Config strings: monospace, in a block collapsed until its summary is clicked.
    details = page.find_element(By.CSS_SELECTOR, "td.config details")
    code = details.find_element(By.TAG_NAME, "code")
    assert "DejaVu Sans Mono" in code.value_of_css_property("font-family")
    assert details.get_attribute("open") is None and not code.is_displayed()
    details.find_element(By.TAG_NAME, "summary").click()
    assert code.is_displayed() and "seed=" in code.text

    # A figure opens large, wider than the column, and closes again.
    figure = page.find_element(By.CSS_SELECTOR, "img.figure")
    page.execute_script("arguments[0].scrollIntoView()", figure)
    figure.click()
    dialog = page.find_element(By.CSS_SELECTOR, "dialog.zoom")
    assert dialog.get_attribute("open") is not None
    large = dialog.find_element(By.TAG_NAME, "img")
    assert large.size["width"] >= 1280 - 32 > figure.size["width"]
    dialog.find_element(By.CSS_SELECTOR, "button.close").click()
    assert dialog.get_attribute("open") is None


def column(page, table_id: str, index: int) -> list[str]:
    return page.execute_script(
        "var at = arguments[1];"
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".map(function (r) { return r.cells[at].textContent.trim(); })",
        table_id,
        index,
    )


def test_sorting_a_table_reorders_its_rows(browser, built):
    from selenium.webdriver.common.by import By

    page = open_at(browser, built["html"], 1280)
    table = page.find_element(By.CSS_SELECTOR, "table.efficiency").get_attribute("id")
    rate = 9  # training images/s

    def rows() -> list[tuple[str, str, float]]:  # model, data set, images/s
        names, datasets = column(page, table, 0), column(page, table, 1)
        rates = [float(v.split()[0].replace(",", "")) for v in column(page, table, rate)]
        return list(zip(names, datasets, rates, strict=True))

    before = rows()
    header = page.find_elements(By.CSS_SELECTOR, f"#{table} thead th")[rate]
    assert header.text.startswith("training images/s")
    assert before != sorted(before, key=lambda r: r[2])  # the table's own order: by model
    header.find_element(By.TAG_NAME, "button").click()
    # Whole rows move: each keeps its model and data set beside its rate.
    assert rows() == sorted(before, key=lambda r: r[2])
    assert header.get_attribute("aria-sort") == "ascending"
    header.find_element(By.TAG_NAME, "button").click()
    assert rows() == sorted(before, key=lambda r: -r[2])
    assert header.get_attribute("aria-sort") == "descending"


def test_no_request_leaves_the_page(browser, built):
    import json

    page = open_at(browser, built["html"], 390)
    page.get_log("performance")  # what earlier tests loaded
    page.get(built["html"].as_uri())
    page.execute_script("document.querySelector('img.figure').click()")  # the script ran
    urls = [
        event["params"]["request"]["url"]
        for entry in page.get_log("performance")
        if (event := json.loads(entry["message"])["message"])["method"]
        == "Network.requestWillBeSent"
    ]
    assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls


def test_config_strings_break_between_settings_in_the_pdf(built):
    """Each run's config is one line of `key=value` settings; the PDF breaks it between
    settings, never inside one ("optimize r=adam" was break-all), except after a path's "/"."""
    import html as markup

    from pypdf import PdfReader

    configs = re.findall(r'<code class="mono">(.*?)</code>', built["html"].read_text(), re.S)
    text = [markup.unescape(re.sub(r"<[^>]+>", "", c)) for c in configs]
    settings = {s for c in text for s in c.split(" ") if not set("/-") & set(s)}
    assert len(configs) == len(IDS) and len(settings) > 20
    lines = {
        line.strip() for page in PdfReader(built["pdf"]).pages
        for line in page.extract_text().splitlines()
    }  # fmt: skip
    split = [s for s in settings if not any(s in line for line in lines)]
    assert split == []
