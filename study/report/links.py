"""The report's navigation, made from the rendered page: a table of contents from its numbered
headings, and every "Table N", "Figure N", "Section N.M", "Appendix X" and "run N" in its text a
link to the element it names. Made from the page rather than in the template, so that a reference
written anywhere (template, prose, notes) is linked alike, and one to something the page lacks
stays plain text."""

from __future__ import annotations

import re

# Text between tags is what gets linked; <title>, <style> and <script> are never text.
PARTS = re.compile(r"(<(title|style|script)\b.*?</\2>|<[^>]+>)", re.S)
ID = re.compile(r' id="([^"]+)"')
# A numbered heading with its own id, or the id of the <section> it opens (SECTION_OPENED, in
# the text just before it). Literal starts: the page is 1.4 MB of mostly figures' data URIs.
HEADING = re.compile(r'<h([23])(?: id="([^"]+)")?[^>]*>(.*?)</h\1>', re.S)
SECTION_OPENED = re.compile(r'<section [^>]*\bid="([^"]+)"[^>]*>\s*$')
NUMBERED = re.compile(r"(\d+(?:\.\d+)*)\.?\s|(Appendix [A-Z])\b")
NUMBER = r"\d+(?:\.\d+)*"
# "Table 4", "Tables 12–20", "Sections 3.1–3.3", "runs 1, 2", "Appendix A".
REFERENCE = re.compile(
    rf"\b(?P<kind>Tables?|Figures?|Sections?|[Rr]uns?)\s(?P<numbers>{NUMBER}"
    rf"(?:(?:–|, | and ){NUMBER})*)(?!\d|[.,]\d)"
    r"|\b(?P<appendix>Appendix [A-Z])\b"
)
LABEL = re.compile(r"(Table|Figure) \d+:")  # a caption's own label, <b>Table 4:</b>
HEADINGS = tuple(f"<h{n}" for n in range(1, 7))
HEADING_ENDS = tuple(f"</h{n}" for n in range(1, 7))
PREFIX = {"table": "table-", "figure": "figure-", "run": "run-"}


def with_links(html: str) -> str:
    """`html` with its table of contents filled in and its references linked."""
    ids = set(ID.findall(html))
    sections: dict[str, str] = {}  # "3.1" or "Appendix A" -> id
    contents: list[tuple[int, str, str]] = []  # (level, id, text)
    for m in HEADING.finditer(html):
        level, target, text = int(m[1]), m[2], re.sub(r"<[^>]+>", "", m[3]).strip()
        if not target:
            opened = SECTION_OPENED.search(html, max(0, m.start() - 200), m.start())
            target = opened and opened[1]
        if not target:
            continue
        contents.append((level, target, text))
        numbered = NUMBERED.match(text)
        if numbered:
            sections[numbered[1] or numbered[2]] = target

    def target(kind: str, number: str) -> str | None:
        kind = kind.lower().rstrip("s")
        found = sections.get(number) if kind == "section" else PREFIX[kind] + number
        return found if found in ids else None

    def link(m: re.Match, in_caption: bool) -> str:
        if m["appendix"]:
            found = sections.get(m["appendix"])
            return f'<a href="#{found}">{m[0]}</a>' if found else m[0]
        kind = m["kind"]
        if in_caption and kind.lower().startswith("run"):
            return m[0]  # a run record's caption names its own run
        out = kind + " "
        for i, piece in enumerate(re.split(rf"({NUMBER})", m["numbers"])):
            found = target(kind, piece) if i % 2 else None
            if i == 1 and found:  # the word goes into the first number's link
                out = f'<a href="#{found}">{out}{piece}</a>'
            else:
                out += f'<a href="#{found}">{piece}</a>' if found else piece
        return out

    parts = PARTS.split(html)
    out, in_link, in_caption, in_heading = [], 0, 0, 0
    for i in range(0, len(parts), 3):  # text, tag, the tag's name group (or None)
        text = parts[i]
        if not (in_link or in_heading or LABEL.fullmatch(text)):  # headings name themselves
            text = REFERENCE.sub(lambda m, c=in_caption > 0: link(m, c), text)
        out.append(text)
        if i + 1 < len(parts):
            tag = parts[i + 1]
            in_link += tag.startswith("<a ") - tag.startswith("</a>")
            in_caption += tag.startswith("<caption") - tag.startswith("</caption>")
            in_heading += tag.startswith(HEADINGS) - tag.startswith(HEADING_ENDS)
            out.append(tag)
    return fill_contents("".join(out), contents)


def fill_contents(html: str, contents: list[tuple[int, str, str]]) -> str:
    """The <nav id="contents"> placeholder, filled with a nested list of the headings."""
    items, open_sub = [], False
    for level, target, text in contents:
        if level == 3 and not open_sub:
            items.append("<ol>")
            open_sub = True
        elif level == 2 and open_sub:
            items.append("</ol></li>")
            open_sub = False
        elif level == 2 and items:
            items.append("</li>")
        items.append(f'<li><a href="#{target}">{text}</a>')
        if level == 3:
            items.append("</li>")
    items.append("</ol></li>" if open_sub else "</li>" if items else "")
    nav = '<h2 id="contents-heading">Contents</h2><ol>' + "".join(items) + "</ol>"
    return re.sub(
        r'(<nav class="toc" id="contents"[^>]*>)(</nav>)', lambda m: m[1] + nav + m[2], html
    )
