"""HTML from the Jinja2 template, PDF from the HTML (WeasyPrint), and where the output may go."""

from __future__ import annotations

import os
import re
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
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return HTML(string=names_kept_whole(html), base_url=".").write_pdf()


# A capitalised hyphenated name: Tiny-ImageNet, Inception-V3, ResNet-50, VGG-16-BN, CIFAR-10.
HYPHENATED_NAME = re.compile(r"(?<![\w&#-])[A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)+(?![\w-])")
WORD_JOINER = "\u2060"  # no line break on either side; invisible, and not in the PDF's text


def names_kept_whole(html: str) -> str:
    """A word joiner after every hyphen of a hyphenated name in the page's text, so that no
    line of the PDF ends in "Tiny-" or "Inception-"; its text still reads "Tiny-ImageNet"
    (pdftotext, pypdf). A joiner, not a no-wrap span: 120 more spans cost WeasyPrint 7% of a
    build. Only text between tags is touched, outside <title>, <style> and <script>:
    attributes, figures' data URIs, CSS and code stay as they are. The HTML page is left to
    the browser."""
    parts = re.split(
        r"(<title>.*?</title>|<style>.*?</style>|<script>.*?</script>|<[^>]+>)", html, flags=re.S
    )
    for i in range(0, len(parts), 2):  # even items are text, odd ones tags or the style
        parts[i] = HYPHENATED_NAME.sub(
            lambda m: m.group(0).replace("-", "-" + WORD_JOINER), parts[i]
        )
    return "".join(parts)
