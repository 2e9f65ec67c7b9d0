"""HTML from the Jinja2 template, PDF from the HTML (WeasyPrint), and where the output may go."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from importlib import resources
from pathlib import Path

from study.errors import StudyError
from study.report.formatting import count_text, fmt_num, no_break
from study.report.links import with_links
from study.report.model import FLAG_MARKS, flag_reasons

# What the marks of Table 1's cells say, for a screen reader and a pointer's tooltip.
MARK_NAMES = {"▲": "ranks first on its data set"} | {
    mark: flag_reasons({flag: True}) for flag, mark in FLAG_MARKS.items()
}


def check_output_path(out: Path) -> None:
    """One line, before any work, where the report cannot be written to `out`."""
    if out.is_dir():
        raise StudyError(f"--out {out}: is a folder; give a file path, e.g. {out / 'study.pdf'}")
    if out.exists() and not out.is_file():  # a device, a pipe: replacing it is never wanted
        raise StudyError(f"--out {out}: is not a regular file; give a new or regular file path")
    folder = out.parent
    for ancestor in (folder, *folder.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise StudyError(f"--out {out}: {ancestor} is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot create {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise StudyError(f"--out {out}: {folder} is not writable")


def render_html(context: dict) -> str:
    import jinja2
    import markupsafe

    templates = resources.files("study.templates")

    def load(name: str) -> str:
        return templates.joinpath(name).read_text(encoding="utf-8")

    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(load),
        autoescape=True,  # every run-derived string is text, never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["count"] = count_text
    env.filters["nb"] = no_break
    env.filters["mark_names"] = lambda marks: ", ".join(MARK_NAMES[m] for m in marks)
    # The stylesheet and script are ours, not run-derived: autoescaping would turn the CSS's
    # quotes into &#34; and the browser and WeasyPrint would drop every rule with a quoted value.
    css, script = (markupsafe.Markup(load(name)) for name in ("report.css", "report.js"))
    html = env.get_template("report.html.j2").render(css=css, script=script, **context)
    return with_links(html)


def render_pdf(html: str) -> bytes:
    return fitted_layout(html).write_pdf()


def fitted_layout(html: str, nowrap: bool = False):
    """The PDF's layout, fitted so that no page is left more than MOST_EMPTY empty where that
    can be helped, the way a typesetter floats figures and tables: where a block that cannot
    break would open the next page, (1) it and the figures on the page before are drawn
    smaller, never below MIN_FIGURE_SCALE of their width, so that it fits there; else (2) a
    table kept whole lets the paragraph after it go first and fill the page. Where a
    paragraph's first line is left holding one word (lone_first_words), the layout is made
    again with hyphenated names kept whole by no-wrap spans instead of joiners."""
    original = html
    document = layout_pdf(html, nowrap)
    scales: dict[str, float] = {}
    for _ in range(FIT_PASSES):
        shrink = figures_to_shrink(document, scales)
        if shrink:
            for figure_id, (scale, _) in shrink.items():
                scales[figure_id] = scales.get(figure_id, 1.0) * scale
            html = with_image_widths(html, {f: width for f, (_, width) in shrink.items()})
        else:
            moved = False
            for table in tables_to_float(document):
                changed = with_text_first(html, table)
                if changed is not None:
                    html, moved = changed, True
            if not moved:
                break
        document = layout_pdf(html, nowrap)
    if not nowrap and lone_first_words(document):
        return fitted_layout(original, nowrap=True)
    return document


def lone_first_words(document) -> list[str]:
    """Paragraphs whose first line holds a single word on less than half the width while more
    lines follow: WeasyPrint (70), breaking a long run of text followed by an inline element
    (a link), can fall back to the paragraph's first break. Seen with joiners in the names of
    the sample's Tiny-ImageNet prose; no-wrap spans break that text at the right place."""
    out = []
    for page in document.pages:
        for box in _boxes(page._page_box):
            if type(box).__name__ != "BlockBox" or box.element_tag != "p":
                continue
            lines = [c for c in box.children if type(c).__name__ == "LineBox"]
            if len(lines) < 2:
                continue
            first = "".join(t.text for t in _boxes(lines[0]) if type(t).__name__ == "TextBox")
            if len(first.split()) == 1 and lines[0].width < box.width / 2:
                out.append(first.strip())
    return out


def tables_to_float(document) -> list[str]:
    """Tables (by id) kept whole that open the page after a too-empty page."""
    out = []
    for number in pages_too_empty(document):
        opening = _opening_block(document.pages[number]._page_box)
        if opening is not None and opening.element_tag != "figure":
            table = next((b for b in _boxes(opening) if b.element_tag == "table"), None)
            if table is not None and table.element.get("id"):
                out.append(table.element.get("id"))
    return out


KEPT_TABLE = re.compile(
    r'<div class="keep[^"]*">\s*<table[^>]*\bid="(?P<id>[^"]+)".*?</table>\s*</div>', re.S
)


def with_text_first(html: str, table_id: str) -> str | None:
    """`html` with the paragraph that follows a kept table's wrapper moved before it (None
    where no paragraph follows it)."""
    for kept in KEPT_TABLE.finditer(html):
        if kept.group("id") != table_id:
            continue
        after = re.match(r"\s*(<p\b.*?</p>)", html[kept.end() :], re.S)
        if after is None:
            return None
        text = after.group(1)
        return html[: kept.start()] + text + "\n" + kept.group(0) + html[kept.end() + after.end() :]
    return None


MIN_FIGURE_SCALE = 0.7  # smaller, a figure's labels stop being readable on paper
FIT_PASSES = 4


def figures_to_shrink(document, scales: dict[str, float]) -> dict[str, tuple[float, float]]:
    """{figure id: (scale, image width in CSS px)} that lets the block opening the page after a
    too-empty page move up into it: that block (if a figure) and the figures above it on the
    too-empty page shrink by one common scale, each staying at MIN_FIGURE_SCALE of its width or
    more (`scales`: what earlier passes applied). A block kept whole (a table) keeps its size."""
    shares = empty_shares(document)
    out = {}
    for number in pages_too_empty(document):
        page, following = (document.pages[i]._page_box for i in (number - 1, number))
        opening = _opening_block(following)
        if opening is None:
            continue
        figures = [f for f in _figures(page) if f.element is not opening.element]
        if _shrinkable(opening):
            figures.insert(0, opening)
        images = [_image(f) for f in figures]
        if not figures or any(i is None or not i.height for i in images):
            continue
        moving = images[0].height if figures[0] is opening else 0.0
        fixed = opening.margin_height() - moving
        shrinkable = sum(i.height for i in images) - moving
        gap = shares[number - 1] * page.height
        scale = 0.97 * (gap + shrinkable - fixed) / (moving + shrinkable)
        ids = [f.element.get("id") for f in figures]
        if scale >= 1 or any(scales.get(i, 1.0) * scale < MIN_FIGURE_SCALE for i in ids):
            continue
        out.update({i: (scale, image.width * scale) for i, image in zip(ids, images, strict=True)})
    return out


def _boxes(box):
    """A box and its descendants, in document order."""
    stack = [box]
    while stack:
        box = stack.pop(0)
        yield box
        stack[:0] = list(getattr(box, "children", ()) or ())


def _is_image(box) -> bool:
    return "Replaced" in type(box).__name__


def _image(figure):
    return next((b for b in _boxes(figure) if _is_image(b)), None)


def _shrinkable(box) -> bool:
    """A figure drawn as one image (not a gallery of thumbnails) with an id."""
    return (
        box.element_tag == "figure"
        and bool(box.element.get("id"))
        and "galleries" not in (box.element.get("class") or "")
        and "thumb" not in (box.element.get("class") or "")
    )


def _figures(page):
    return [b for b in _boxes(page) if _shrinkable(b)]


def _opening_block(root):
    """The block a page starts with if it cannot break: a figure, or a block kept whole."""
    for box in _boxes(root):
        if type(box).__name__ == "MarginBox":
            continue
        if box.element_tag == "figure":
            return box
        if box.element is not None and "keep" in (box.element.get("class") or "").split():
            return box
        if type(box).__name__ in ("LineBox", "TableBox") or _is_image(box):
            return None  # text, a table that may break, or an image comes first
    return None


def with_image_widths(html: str, widths: dict[str, float]) -> str:
    """The first image of each figure with an id in `widths` drawn at that width."""
    for figure_id, width in widths.items():
        opening = re.search(r'<figure[^>]*\bid="' + re.escape(figure_id) + r'"[^>]*>', html)
        if not opening:
            continue
        image = html.find("<img ", opening.end())
        if image < 0:
            continue
        rest = re.sub(r'^style="width: [0-9.]+px; max-width: none" ', "", html[image + 5 :])
        html = f'{html[:image]}<img style="width: {width:.1f}px; max-width: none" {rest}'

    return html


def layout_pdf(html: str, nowrap: bool = False):
    """The laid-out PDF (a WeasyPrint Document): its pages' boxes, before they are written."""
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return HTML(string=names_kept_whole(html, nowrap), base_url=".").render()


# A page may be at most this share empty below its content, except the last one and the one
# before an appendix (a new part starts on a new page).
MOST_EMPTY = 1 / 3


def empty_shares(document) -> list[float]:
    """Per page of a laid-out PDF, the share of its content area left empty below the lowest
    box drawn there (its border's bottom; the page number in the margin is not content)."""
    shares = []
    for page in document.pages:
        root = page._page_box
        top, height = root.content_box_y(), root.height
        bottom = top
        content = [c for c in root.children if type(c).__name__ != "MarginBox"]
        for box in (b for child in content for b in _boxes(child)):
            # What is drawn: lines, images, table rows and empty boxes (rules, spacers). A block
            # broken across pages reaches to the page's bottom: it does not count.
            drawn = type(box).__name__ in ("LineBox", "TableRowBox") or _is_image(box)
            if box.position_y is None or not (drawn or not getattr(box, "children", None)):
                continue
            bottom = max(bottom, box.border_box_y() + box.border_height())
        shares.append(max(0.0, min(1.0, (top + height - bottom) / height)))
    return shares


def pages_too_empty(document) -> list[int]:
    """Pages (1-based) more than MOST_EMPTY empty, other than the last and any page that ends
    where an appendix starts."""
    shares = empty_shares(document)
    # The pages a part (forced onto a new page by the stylesheet) starts on.
    starts = {
        next(i for i, page in enumerate(document.pages) if part in page.anchors)
        for part in PARTS
        if any(part in page.anchors for page in document.pages)
    }
    return [
        i + 1 for i, share in enumerate(shares[:-1]) if share > MOST_EMPTY and i + 1 not in starts
    ]


def split_tables(document) -> list[str]:
    """Tables (by id) drawn across a page break although they would fit on one page."""
    pages_of, height_of, name_of = defaultdict(set), defaultdict(float), {}
    for number, page in enumerate(document.pages):
        for box in _boxes(page._page_box):
            if type(box).__name__ == "TableBox" and box.element.get("id"):
                key = id(box.element)  # the element, not its id: an id may repeat
                name_of[key] = box.element.get("id")
                pages_of[key].add(number)
                height_of[key] += box.margin_height()
    room = document.pages[0]._page_box.height
    return sorted(
        name_of[k] for k, pages in pages_of.items() if len(pages) > 1 and height_of[k] < room
    )


def overflowing_cells(document) -> list[str]:
    """Table cells whose text is drawn past the cell's border into the next column (a value
    that may not wrap, wider than its column): 'table-11: 1170.5 ± 154.3', one per cell. Text
    that only eats into the cell's own padding is left alone."""
    out = []
    for page in document.pages:
        for table in (b for b in _boxes(page._page_box) if type(b).__name__ == "TableBox"):
            for cell in (b for b in _boxes(table) if type(b).__name__ == "TableCellBox"):
                right = cell.padding_box_x() + cell.padding_width()
                texts = [b for b in _boxes(cell) if type(b).__name__ == "TextBox"]
                if any(b.position_x + b.width > right + 0.5 for b in texts):  # 0.5 px: rounding
                    name = table.element.get("id") or "a table"
                    out.append(f"{name}: {''.join(b.text for b in texts)}")
    return out


PARTS = ("appendix",)  # sections the stylesheet starts on a new page (report.css)


# A capitalised hyphenated name: Tiny-ImageNet, Inception-V3, ResNet-50, VGG-16-BN, CIFAR-10.
HYPHENATED_NAME = re.compile(r"(?<![\w&#-])[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+(?![\w-])")
WORD_JOINER = "\u2060"  # no line break on either side; invisible, and not in the PDF's text


def names_kept_whole(html: str, nowrap: bool = False) -> str:
    """A word joiner after every hyphen of a hyphenated name in the page's text, so that no
    line of the PDF ends in "Tiny-" or "Inception-"; its text still reads "Tiny-ImageNet"
    (pdftotext, pypdf). A joiner, not a no-wrap span: 120 more spans cost WeasyPrint 7% of a
    build; `nowrap` puts each name in such a span, where joiners broke a line badly (see
    lone_first_words). Only text between tags is touched, outside <title>, <style> and
    <script>: attributes, figures' data URIs, CSS and code stay as they are. The HTML page is
    left to the browser."""
    parts = re.split(
        r"(<title>.*?</title>|<style>.*?</style>|<script>.*?</script>|<[^>]+>)", html, flags=re.S
    )
    for i in range(0, len(parts), 2):  # even items are text, odd ones tags or the style
        parts[i] = HYPHENATED_NAME.sub(
            (lambda m: f'<span class="nb">{m.group(0)}</span>')
            if nowrap
            else (lambda m: m.group(0).replace("-", "-" + WORD_JOINER)),
            parts[i],
        )
    return "".join(parts)
