"""`study report`: a paper-style PDF (or one self-contained HTML page) built from stored runs.

Runs are read through `study.stores` only (RunRecords). One module per concern: runs (which
runs), model (cells, arms, flags), tables, prose, figures, content (the template's context),
links (contents and cross-references) and render (Jinja2, WeasyPrint); this module holds the
command line and build_report.

The report follows the seed study's order: abstract, method, data sets, Table 1 (with the
seed's published values beside ours), per-data-set results (bar chart, training curves,
confusion matrices or most-confused pairs, a gallery of misclassified images), efficiency, and
an appendix with every run's provenance.

Every number comes from the runs; several runs in one model x data set cell are aggregated
(mean, sample std, n) and said to be. Runs of one model trained differently (another protocol,
learning rate, budget...) are separate cells, named by what differs (`ResNet-18 (fast)`).
Figures are drawn by matplotlib as SVG and cached by content hash (`$STUDY_CACHE_DIR/figures/
<hash>.svg` where that is set, else `<out dir>/.figures/`), so a rebuild draws only what
changed. The output is written atomically: a failed build leaves an earlier report untouched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
from contextlib import contextmanager
from pathlib import Path

from study.atomic import write_atomic
from study.errors import StudyError
from study.report.content import report_context
from study.report.figures import FigureCache, _against_training_time
from study.report.formatting import plural
from study.report.model import (
    REPEAT_KEYS,
    TIMING_SPREAD,
    _id_key,
    arm_names,
    dataset_title,
    model_title,
    titles_recorded_in,
)

# build_report calls render_pdf through this module, so a test can replace it here.
from study.report.render import check_output_path, render_html, render_pdf
from study.report.runs import (
    exclusion,
    name_replaced,
    run_filter,
    select_runs,
    split_reproductions,
    usable_runs,
)
from study.stores import RunRecord, print_skipped, read_runs

# The names other modules and the tests import from `study.report`.
__all__ = [
    "DEFAULT_OUT",
    "FORMATS",
    "REPEAT_KEYS",
    "TIMING_SPREAD",
    "_against_training_time",
    "_id_key",
    "arm_names",
    "build_report",
    "check_output_path",
    "dataset_title",
    "main",
    "model_title",
    "render_html",
    "render_pdf",
    "run_filter",
    "select_runs",
    "usable_runs",
]

DEFAULT_OUT = "report/study.pdf"


FORMATS = ("pdf", "html")


def main(argv: list[str]) -> int:
    """`study report [--runs DIR] [--out PATH] [--format pdf|html] [filters]`."""
    parser = argparse.ArgumentParser(
        prog="study report", description="Write a paper-style report of stored runs."
    )
    parser.add_argument(
        "--runs", default=None, help="file store (default ./runs, or $STUDY_MONGO_URL when set)"
    )
    parser.add_argument("--mongo", metavar="URL", help="read runs from this MongoDB instead")
    parser.add_argument("--db", metavar="NAME", help="the MongoDB database (default: study)")
    parser.add_argument("--out", default=None, help=f"output file (default {DEFAULT_OUT})")
    parser.add_argument("--format", choices=FORMATS, default=None, help="pdf (default) or html")
    parser.add_argument("--experiment", help="only runs of this Sacred experiment name")
    parser.add_argument("--ids", help="only these run ids, e.g. 1,2,5")
    parser.add_argument("--models", help="only these models, e.g. resnet50,vgg16")
    parser.add_argument("--datasets", help="only these data sets, e.g. mnist,cifar10")
    parser.add_argument("--sweep", metavar="ID", help="only the runs of this `study sweep`")
    parser.add_argument(
        "--status", default="COMPLETED", help="only runs with this status (comma list, or 'any')"
    )
    parser.add_argument("--title", default=None, help="the report's title")
    args = parser.parse_args(argv)

    fmt = args.format
    if fmt is None:
        fmt = "html" if args.out and args.out.lower().endswith((".html", ".htm")) else "pdf"
    out = Path(args.out or (DEFAULT_OUT if fmt == "pdf" else "report/study.html"))
    check_output_path(out)  # before reading any run
    filters = dict(
        experiment=args.experiment,
        ids=_split(args.ids),
        models=_split(args.models),
        datasets=_split(args.datasets),
        sweep=args.sweep,
        status=_split(args.status),
    )
    statuses, skipped, filtered, excluded = [], [], [], {}

    def keep(r: RunRecord) -> bool:  # before a run's metrics and info are read
        statuses.append(r.status)
        row = exclusion(r, **filters)
        if row is not None:
            filtered.append(row)  # the report's left-out table names it, with why
            excluded[r.id] = r
        return row is None

    where, stored = read_runs(args.runs, args.mongo, args.db, keep=keep, skipped=skipped)
    records = select_runs(stored, where=where, holds=statuses or None, **filters)
    records, reproductions = split_reproductions(records, filters["ids"])
    if not records:
        raise StudyError(f"no runs to report on: {'; '.join(r['why'] for r in reproductions)}")
    left_out = reproductions + filtered
    records = usable_runs(records, skipped)
    left_out = name_replaced(left_out, excluded, records)
    print_skipped(skipped)
    written = build_report(records, out, fmt, title=args.title, skipped=skipped, left_out=left_out)
    print(
        f"study report: {plural(len(records), 'run')} -> {written}"
        + (f" ({len(skipped)} skipped)" if skipped else "")
    )
    return 0


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@contextmanager
def fewer_collections():
    """Python's cyclic garbage collector, at its default thresholds, took about 15% of a
    build's CPU time: WeasyPrint and matplotlib allocate millions of short-lived objects, and
    each full collection re-scanned every object the process already held. For the build,
    what exists is frozen (never scanned) and collections run less often (peak memory
    +13 MB on the 9-run sample); both are restored after it."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def figure_cache_dir(out: Path) -> Path:
    """Where the figures are cached: with the data set caches where $STUDY_CACHE_DIR names a
    place for caches (a read-only checkout, CI), else beside the report."""
    if os.environ.get("STUDY_CACHE_DIR"):
        return Path(os.environ["STUDY_CACHE_DIR"]).expanduser() / "figures"
    return out.parent / ".figures"


def build_report(
    records: list[RunRecord],
    out: str | Path,
    fmt: str = "pdf",
    *,
    title: str | None = None,
    cache_dir: str | Path | None = None,
    today: dt.date | None = None,
    skipped: list[str] = (),
    left_out: list[dict] = (),
) -> Path:
    """Render `records` to `out` (pdf or html), atomically; return the path written."""
    if fmt not in FORMATS:
        raise StudyError(f"format={fmt!r} is invalid; expected one of: {', '.join(FORMATS)}")
    if not records:
        raise StudyError("no runs to report on; record some with `study run`")
    out = Path(out)
    check_output_path(out)
    figures = FigureCache(Path(cache_dir) if cache_dir else figure_cache_dir(out))
    with fewer_collections(), titles_recorded_in(records):
        context = report_context(records, figures, title=title, today=today, left_out=left_out)
        context["skipped"] = list(skipped)  # named in the appendix: a reader sees what is missing
        html = render_html(context)
        # Rendered in memory first, so a failed build leaves the earlier report as it was.
        document = html if fmt == "html" else render_pdf(html)
    try:
        write_atomic(out, document)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot write the report ({exc.strerror})") from None
    return out
