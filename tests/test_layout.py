"""The PDF's page layout, measured from WeasyPrint's laid-out pages (the boxes the PDF is drawn
from): no page more than a third empty where a figure could move up, and no table that fits on
one page split across two."""

import base64

import pytest

pytest.importorskip("weasyprint")

from study.report import render  # noqa: E402

# A4 with WeasyPrint's default margins: a content area of 972 CSS px.


def image(height: int) -> str:
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="600" height="{height}" '
        f'viewBox="0 0 600 {height}"><rect width="600" height="{height}" fill="#369"/>'
        '<text x="20" y="100">axis</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def page(text_height: int, figure_class: str = "", figure_height: int = 400) -> str:
    """Text `text_height` px tall, then a 600 px wide figure that does not fit below it."""
    return f"""<html><head><style>
      body {{ margin: 0; font-size: 12px; }}
      .text {{ margin: 0; line-height: 20px; }}
      figure {{ margin: 0; page-break-inside: avoid; }}
      img {{ display: block; max-width: 100%; }}
    </style></head><body>
      <p class="text">{"A line of text.<br>" * (text_height // 20)}</p>
      <figure id="figure-1" class="{figure_class}"><img src="{image(figure_height)}" alt="a figure">
        <figcaption>Figure 1: a caption.</figcaption></figure>
      <p>The text after the figure.</p>
    </body></html>"""


def figure_page_and_width(document) -> tuple[int, float]:
    for number, p in enumerate(document.pages, 1):
        for box in render._boxes(p._page_box):
            if render._is_image(box):
                return number, box.width
    raise AssertionError("no image laid out")


def test_a_figure_that_would_leave_a_page_more_than_a_third_empty_shrinks_to_fit():
    html = page(600)  # 372 px (38 %) left: the 400 px figure moves to page 2
    plain = render.layout_pdf(html)
    assert render.empty_shares(plain)[0] == pytest.approx(0.38, abs=0.02)
    assert render.pages_too_empty(plain) == [1]
    assert figure_page_and_width(plain) == (2, 600)

    fitted = render.fitted_layout(html)
    assert render.pages_too_empty(fitted) == []
    number, width = figure_page_and_width(fitted)
    assert number == 1
    assert render.MIN_FIGURE_SCALE * 600 <= width < 600
    assert render.empty_shares(fitted)[0] < 1 / 3


def test_a_figure_is_never_drawn_below_the_smallest_readable_scale():
    html = page(600, figure_height=900)  # 372 px left: it would need a scale of about 0.4
    fitted = render.fitted_layout(html)
    assert figure_page_and_width(fitted) == (2, 600)  # left whole, at full size
    assert render.pages_too_empty(fitted) == [1]  # and the page stays reported


def test_a_gallery_of_thumbnails_is_not_shrunk():
    fitted = render.fitted_layout(page(600, figure_class="galleries"))
    assert figure_page_and_width(fitted) == (2, 600)


def test_the_page_before_an_appendix_and_the_last_page_may_be_empty():
    html = """<html><head><style>#appendix { page-break-before: always; }</style></head><body>
      <p>One line, then a forced break.</p>
      <section id="appendix"><h2>Appendix</h2><p>One line.</p></section></body></html>"""
    document = render.layout_pdf(html)
    assert len(document.pages) == 2 and min(render.empty_shares(document)) > 0.9
    assert render.pages_too_empty(document) == []


def test_a_table_split_across_pages_is_found_only_where_it_fits_on_one():
    rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(30))
    short = f'<div style="height: 900px">text</div><table id="t-short">{rows}</table>'
    long_rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(120))
    long = f'<table id="t-long">{long_rows}</table>'
    document = render.layout_pdf(f"<html><body>{short}{long}</body></html>")
    assert render.split_tables(document) == ["t-short"]


def test_a_kept_table_that_would_leave_a_page_empty_lets_the_next_paragraph_go_first():
    rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(20))  # 400 px
    html = f"""<html><head><style>
      body {{ margin: 0; font-size: 12px; line-height: 20px; }} p {{ margin: 0; }}
      td {{ padding: 0; height: 20px; }} table {{ border-collapse: collapse; margin: 0; }}
      .keep {{ page-break-inside: avoid; }}
    </style></head><body>
      <p>{"A line of text.<br>" * 30}</p>
      <div class="keep scroll"><table id="table-1">{rows}</table></div>
      <p id="after">{"The paragraph after the table.<br>" * 6}</p>
    </body></html>"""
    plain = render.layout_pdf(html)
    assert render.pages_too_empty(plain) == [1]
    assert render.tables_to_float(plain) == ["table-1"]

    fitted = render.fitted_layout(html)
    assert render.pages_too_empty(fitted) == []
    assert render.split_tables(fitted) == []
    first_page = [b.element.get("id") for b in render._boxes(fitted.pages[0]._page_box)
                  if b.element is not None]  # fmt: skip
    assert "after" in first_page and "table-1" not in first_page


def test_with_text_first_moves_only_a_paragraph_that_follows_the_table():
    kept = '<div class="keep"><table id="table-2"><tr><td>x</td></tr></table></div>'
    assert render.with_text_first(kept + " <p>after</p>", "table-2") == ("<p>after</p>\n" + kept)
    assert render.with_text_first(kept + "<figure>f</figure><p>x</p>", "table-2") is None
    assert render.with_text_first(kept + "<p>x</p>", "table-9") is None


def test_a_table_that_cannot_float_does_not_undo_one_that_did(monkeypatch):
    """Of two tables opening too-empty pages, one with a paragraph after it and one without:
    the first moves, the second stays, and the page is still laid out (the second's "nothing
    to move" once replaced the whole HTML with nothing)."""
    rows = "".join(f"<tr><td>row {i}</td></tr>" for i in range(20))
    html = f"""<html><head><style>
      body {{ margin: 0; font-size: 12px; line-height: 20px; }} p {{ margin: 0; }}
      td {{ padding: 0; height: 20px; }} .keep {{ page-break-inside: avoid; }}
    </style></head><body>
      <p>{"A line of text.<br>" * 30}</p>
      <div class="keep scroll"><table id="table-1">{rows}</table></div>
      <p id="after">{"The paragraph after the table.<br>" * 6}</p>
      <div class="keep scroll"><table id="table-2">{rows}</table></div>
    </body></html>"""
    real = render.tables_to_float
    monkeypatch.setattr(render, "tables_to_float", lambda doc: [*real(doc), "table-2"])
    fitted = render.fitted_layout(html)
    assert render.pages_too_empty(fitted) == []


def test_a_value_drawn_past_its_column_is_found_and_one_that_wraps_or_fits_is_not():
    """Table 11 of a sample once printed '1170.5 ± 154.3' over the next column: the value
    may not wrap, and its column was narrower."""
    style = "table-layout: fixed; width: 300px; font-size: 12px"
    cols = '<colgroup><col style="width: 20%"><col style="width: 80%"></colgroup>'

    def table(name: str, cell: str, css: str) -> str:
        return (f'<table id="{name}" style="{style}">{cols}<tr>'
                f'<td style="{css}">{cell}</td><td>next</td></tr></table>')  # fmt: skip

    html = "".join([
        table("t-over", "1170.5 ± 154.3", "white-space: nowrap"),
        table("t-wraps", "1170.5 ± 154.3", "white-space: normal"),
        table("t-fits", "258.6", "white-space: nowrap"),
    ])  # fmt: skip
    document = render.layout_pdf(f"<html><body>{html}</body></html>")
    assert render.overflowing_cells(document) == ["t-over: 1170.5 ± 154.3"]


def test_a_paragraph_left_with_one_word_on_its_first_line_is_laid_out_again():
    """The sample's Tiny-ImageNet prose, with the report's stylesheet: WeasyPrint 70 set "The"
    alone on the first line (the names' joiners, then a link after a long run of text); the
    fitted layout lays the page out again with the names in no-wrap spans."""
    from importlib import resources

    css = resources.files("study.templates").joinpath("report.css").read_text(encoding="utf-8")
    prose = (
        '<p class="prose">The highest observed top-1 accuracy on Tiny-ImageNet is ResNet-50&#39;s '
        '0.1962 (95% CI [0.1854, 0.2074]; <a href="#table-4">Table 4</a>). That is the highest '
        "observed, not a ranking: a ranking needs at least 3 seeds in every compared cell, and "
        'ResNet-50 has 1, VGG-16 has 1 (<a href="#table-5">Table 5</a>).</p>'
    )
    html = f'<html><head><style>{css}</style></head><body><section class="dataset">{prose}'
    html += "</section></body></html>"
    assert render.lone_first_words(render.fitted_layout(html)) == []

    # The check itself: a first line of one word is found, a full one is not.
    broken = '<p style="width: 400px">The<br>' + "rest of the paragraph, " * 20 + "</p>"
    whole = '<p style="width: 400px">' + "A paragraph of many words, " * 20 + "</p>"
    assert render.lone_first_words(render.layout_pdf(f"<html><body>{broken}")) == ["The"]
    assert render.lone_first_words(render.layout_pdf(f"<html><body>{whole}")) == []


def test_a_note_is_never_split_across_pages():
    """The report's stylesheet keeps a note (the timing note under the compute figure) whole:
    here it would start two lines above the first page's end."""
    from importlib import resources

    css = resources.files("study.templates").joinpath("report.css").read_text(encoding="utf-8")
    note = '<p class="note">' + "Timing noise: the epochs of a run disagree in speed. " * 12
    fill = 900  # px of the first page's content area filled before the note

    def pages_of_note(css: str) -> set[int]:
        document = render.layout_pdf(
            f'<html><head><style>{css}</style></head><body><div style="height: {fill}px">'
            f"</div>{note}</p></body></html>"
        )
        return {
            n
            for n, page in enumerate(document.pages)
            for b in render._boxes(page._page_box)
            if type(b).__name__ == "LineBox" and b.element_tag == "p"
        }

    assert pages_of_note(css) == {1}
    without = css.replace(".note, .footnote { page-break-inside: avoid; }", "")
    assert pages_of_note(without) == {0, 1}  # the same note without the rule: split
