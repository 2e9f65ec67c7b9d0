"""`study report`: a paper-style PDF (or one self-contained HTML page) built from stored runs.

Runs are read through `study.stores` only (RunRecords). The report follows the seed study's
order: abstract, method, data sets, Table 1 (with the seed's published values beside ours),
per-data-set results (bar chart, training curves, confusion matrices or most-confused pairs, a
gallery of misclassified images), efficiency, and an appendix with every run's provenance.

Every number comes from the runs; several runs in one model x data set cell are aggregated
(mean, sample std, n) and said to be. Runs of one model trained differently (another protocol,
learning rate, budget...) are separate cells, named by what differs (`ResNet-18 (fast)`).
Figures are drawn by matplotlib as SVG and cached by content hash (`<out dir>/.figures/
<hash>.svg`), so a rebuild draws only what changed. The output is written atomically: a failed
build leaves an earlier report untouched.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import statistics
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from study import stats
from study.atomic import write_atomic
from study.errors import StudyError
from study.identity import PLACE_KEYS, run_order
from study.stores import RunRecord, print_skipped, read_runs
from study.sweep import TAG_PREFIX  # a sweep tags its runs with this Sacred comment

DEFAULT_OUT = "report/study.pdf"
FORMATS = ("pdf", "html")
FIGURE_VERSION = "3"  # bump when the drawing code changes: old cache entries stop matching
CONFUSION_MAX_CLASSES = 20
CONFUSED_PAIRS = 10
GALLERY_PER_CELL = 8
# Predictions collapse onto a few classes when the most predicted class takes this share of
# them, or at most this share of the test set's classes is ever predicted: such a cell's
# accuracy and calibration say nothing about the model's ranking of classes.
COLLAPSE_TOP_SHARE = 0.9
COLLAPSE_CLASS_SHARE = 0.3
# A run whose fastest full epoch trained this many times faster than its slowest was disturbed
# (other load on the machine): its images/s is not the model's speed alone.
TIMING_SPREAD = 1.5
# Per-epoch metrics the training-curve figure draws.
CURVE_METRICS = (
    "train_top1",
    "train_loss",
    "test_top1",
    "epoch_seconds",
    "train_seconds",
    "images_per_s",
)

# The seed's order; models and data sets it did not have follow, alphabetically.
MODEL_ORDER = ("vgg16", "inception_v3", "resnet50")
DATASET_ORDER = ("mnist", "fashion_mnist", "cifar10", "tiny_imagenet")
# The training protocol, as the Method section lists it: (config key, label).
PROTOCOL_KEYS = (
    ("optimizer", "optimizer"),
    ("lr", "learning rate"),
    ("momentum", "momentum (sgd)"),
    ("weight_decay", "weight decay"),
    ("batch_size", "batch size"),
    ("epochs", "epochs"),
    ("time_budget", "training time budget (s)"),
    ("image_size", "input size (px)"),
    ("augment", "augmentation"),
    ("pretrained", "pretrained weights"),
    ("head", "head"),
    ("aux_logits", "auxiliary classifier"),
    ("schedule", "learning-rate schedule"),
    ("label_smoothing", "label smoothing"),
    ("precise_bn", "precise BatchNorm (images)"),
    ("amp", "bf16 autocast"),
    ("compile", "torch.compile"),
    ("compile_mode", "torch.compile mode"),
    ("sync_bn", "SyncBatchNorm (torchrun)"),
    ("grad_compression", "gradient compression (torchrun)"),
    ("protocol", "protocol"),
    ("train_limit", "training subset"),
    ("test_limit", "test subset"),
    ("seed", "seed"),
    ("device", "device"),
)
# Keys in which runs of one arm may differ: repeats of the same training, pooled as mean ± std
# (PLACE_KEYS say where a run ran, not what it trained).
REPEAT_KEYS = ("seed", *PLACE_KEYS)


# ---------------------------------------------------------------------------------------------
# Command line


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
    wanted, statuses, skipped = run_filter(**filters), [], []

    def keep(r: RunRecord) -> bool:  # before a run's metrics and info are read
        statuses.append(r.status)
        return wanted(r)

    where, stored = read_runs(args.runs, args.mongo, args.db, keep=keep, skipped=skipped)
    records = select_runs(stored, where=where, holds=statuses or None, **filters)
    records = usable_runs(records, skipped)
    print_skipped(skipped)
    written = build_report(records, out, fmt, title=args.title, skipped=skipped)
    print(
        f"study report: {plural(len(records), 'run')} -> {written}"
        + (f" ({len(skipped)} skipped)" if skipped else "")
    )
    return 0


def plural(n: int, noun: str) -> str:
    """`1 run`, `2 runs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def run_filter(
    *,
    experiment: str | None = None,
    ids: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    sweep: str | None = None,
    status: list[str] | None = ("COMPLETED",),
):
    """Whether a run passes every filter (it needs run.json and config.json only)."""
    wanted_status = None if not status or "any" in [s.lower() for s in status] else set(status)

    def keep(r: RunRecord) -> bool:
        return (
            (experiment is None or r.experiment == experiment)
            and (ids is None or r.id in ids)
            and (models is None or r.model in models)
            and (datasets is None or r.dataset in datasets)
            and (sweep is None or r.comment == f"{TAG_PREFIX}{sweep}")
            and (wanted_status is None or r.status in wanted_status)
        )

    return keep


def select_runs(
    records: list[RunRecord],
    *,
    where: str = "the store",
    holds: list[str] | None = None,
    experiment: str | None = None,
    ids: list[str] | None = None,
    models: list[str] | None = None,
    datasets: list[str] | None = None,
    sweep: str | None = None,
    status: list[str] | None = ("COMPLETED",),
) -> list[RunRecord]:
    """The runs that pass every filter; StudyError when none does. `holds`: the statuses of
    every run in the store, where `records` was already filtered while reading."""
    keep = run_filter(
        experiment=experiment, ids=ids, models=models, datasets=datasets, sweep=sweep,
        status=status,
    )  # fmt: skip
    chosen = [r for r in records if keep(r)]
    if not chosen:
        filters = [
            f"{name}={','.join(v) if isinstance(v, list | tuple) else v}"
            for name, v in (
                ("experiment", experiment),
                ("ids", ids),
                ("models", models),
                ("datasets", datasets),
                ("sweep", sweep),
                ("status", status),
            )
            if v
        ]
        holds = [r.status for r in records] if holds is None else holds
        statuses = sorted(set(holds))
        raise StudyError(
            f"no runs found in {where} matching {' '.join(filters) or 'any run'}; "
            f"the store holds {plural(len(holds), 'run')}"
            + (f" (statuses: {', '.join(statuses)})" if statuses else "")
            + "; record some with `study run` or relax the filters"
        )
    return chosen


def usable_runs(records: list[RunRecord], skipped: list[str]) -> list[RunRecord]:
    """The runs whose evaluation (if any) reads back whole; the others get a line in
    `skipped`. StudyError when none is left."""
    usable = []
    for r in records:
        try:
            r.evaluation()
            usable.append(r)
        except StudyError as exc:
            skipped.append(f"skipped a malformed run: {exc}")
    if not usable:
        raise StudyError(f"no runs to report on: {'; '.join(skipped)}")
    return usable


# ---------------------------------------------------------------------------------------------
# Building


def build_report(
    records: list[RunRecord],
    out: str | Path,
    fmt: str = "pdf",
    *,
    title: str | None = None,
    cache_dir: str | Path | None = None,
    today: dt.date | None = None,
    skipped: list[str] = (),
) -> Path:
    """Render `records` to `out` (pdf or html), atomically; return the path written."""
    if fmt not in FORMATS:
        raise StudyError(f"format={fmt!r} is invalid; expected one of: {', '.join(FORMATS)}")
    if not records:
        raise StudyError("no runs to report on; record some with `study run`")
    out = Path(out)
    check_output_path(out)
    figures = FigureCache(Path(cache_dir) if cache_dir else out.parent / ".figures")
    context = report_context(records, figures, title=title, today=today)
    context["skipped"] = list(skipped)  # named in the appendix: a reader sees what is missing
    html = render_html(context)
    # Rendered in memory first, so a failed build leaves the earlier report as it was.
    document = html if fmt == "html" else render_pdf(html)
    try:
        write_atomic(out, document)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot write the report ({exc.strerror})") from None
    return out


def check_output_path(out: Path) -> None:
    """One line, before any work, where the report cannot be written to `out`."""
    if out.is_dir():
        raise StudyError(f"--out {out}: is a folder; give a file path, e.g. {out / 'study.pdf'}")
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
    return env.get_template("report.html.j2").render(css=load("report.css"), **context)


def render_pdf(html: str) -> bytes:
    import logging

    from weasyprint import HTML

    logging.getLogger("weasyprint").setLevel(logging.ERROR)
    logging.getLogger("fontTools").setLevel(logging.ERROR)
    return HTML(string=html, base_url=".").write_pdf()


# ---------------------------------------------------------------------------------------------
# Numbers


def fmt_num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits == 0:  # counts (parameters, images): thousands separators
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def count_text(value: Any) -> str:
    """An integer count as printed: `138,367,554`; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "–" if value is None else str(value)


def no_break(value: Any):
    """A name whose hyphenated words never break at the hyphen ("Inception-V3",
    "Tiny-ImageNet"); it may still wrap between words. Escaped like any run string."""
    from markupsafe import Markup, escape

    words = str(value).split(" ")
    return Markup(" ").join(
        Markup('<span class="nb">{}</span>').format(w) if "-" in w else escape(w) for w in words
    )


@dataclass
class Stat:
    """A value over the runs of one cell: mean, sample std (n > 1), n."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    def text(self, digits: int = 4, spread: bool = True) -> str:
        """The value as printed: one run's value, or mean ± std over several (spread=False:
        the value alone where every run has the same one)."""
        if not self.values:
            return "–"
        if self.n == 1 or (not spread and len(set(self.values)) == 1):
            return fmt_num(self.values[0], digits)
        return f"{fmt_num(self.mean, digits)} ± {fmt_num(self.std, digits)}"


def stat(records: list[RunRecord], get) -> Stat:
    values = []
    for r in records:
        try:
            v = get(r)
        except (KeyError, TypeError, AttributeError):
            v = None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            values.append(float(v))
    return Stat(values)


def _ordered(names, order) -> list[str]:
    names = set(names)
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def arm_names(records: list[RunRecord]) -> list[str]:
    """Each run's arm of the comparison: its model, plus, where runs of the same model on the
    same data set were trained differently (not only with another seed), what sets it apart,
    e.g. `resnet18 [fast]` beside `resnet18 [paper]`. Pooling such runs as if they were seeds
    would average two protocols into one number."""
    names = [r.model or "?" for r in records]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[(r.dataset, r.model)].append(i)
    rank = {key: n for n, (key, _) in enumerate(PROTOCOL_KEYS)}
    for members in groups.values():
        # A key a run's config lacks (recorded before the key existed) counts as null.
        keys = {k for i in members for k in records[i].config} - set(REPEAT_KEYS)
        configs = [
            {k: json.dumps(records[i].config.get(k), sort_keys=True) for k in keys} for i in members
        ]
        differing = [k for k in keys if len({c[k] for c in configs}) > 1]
        # The protocol first, then in the Method table's order each further key that is still
        # needed to tell two arms apart.
        chosen: list[str] = []
        for key in sorted(differing, key=lambda k: (k != "protocol", rank.get(k, len(rank)), k)):
            values_by_label = defaultdict(set)
            for c in configs:
                values_by_label[tuple(c[k] for k in chosen)].add(c[key])
            if any(len(v) > 1 for v in values_by_label.values()):
                chosen.append(key)
        for pos, i in enumerate(members if chosen else []):
            config = records[i].config
            parts: list[str] = []
            for k in chosen:
                if k in ("epochs", "time_budget") and stopped_by_budget(records[i]):
                    # Named by what it trained, not by the epochs it planned; the runs of
                    # one arm share one name (their mean).
                    same = [records[j] for q, j in enumerate(members)
                            if all(configs[q][c] == configs[pos][c] for c in chosen)]  # fmt: skip
                    text = budget_text([r for r in same if stopped_by_budget(r)])
                elif k == "protocol":
                    text = _value_text(config.get(k))
                else:
                    text = f"{k}={_value_text(config.get(k))}"
                if text not in parts:
                    parts.append(text)
            names[i] = f"{names[i]} [{', '.join(parts)}]"
    return names


def stopped_by_budget(r: RunRecord) -> bool:
    return bool((r.info.get("training") or {}).get("stopped_by_budget"))


def budget_text(rs: list[RunRecord]) -> str:
    """`1.2 epochs, budget 600 s`: what budget-stopped runs trained (their mean)."""
    trained = [e for r in rs if (e := trained_epochs(r)) is not None]
    budgets = sorted({r.config.get("time_budget") for r in rs}, key=str)
    epochs = epochs_text([statistics.fmean(trained)]) if trained else "?"
    return f"{_epochs_label(epochs)}, budget {', '.join(f'{b:g}' for b in budgets)} s"


def training_totals(r: RunRecord) -> tuple[float | None, float | None]:
    """(training images seen, training seconds) over the whole run: images/s is their ratio,
    not a mean of per-epoch rates (an epoch slowed by other load would weigh as one epoch)."""
    images = [v for _, v in r.metric("train_images")]
    seconds = (r.info.get("training") or {}).get("train_seconds")
    if not isinstance(seconds, int | float):
        per_epoch = [v for _, v in r.metric("train_seconds")]
        seconds = sum(per_epoch) if per_epoch else None
    return (sum(images) if images else None), seconds


def base_model(arm: str) -> str:
    return arm.split(" [", 1)[0]


def _ordered_models(arms) -> list[str]:
    """The seed's model order, then other models alphabetically; arms of a model together."""
    order = {m: n for n, m in enumerate(MODEL_ORDER)}

    def natural(text: str) -> tuple:  # epochs=5 before epochs=30
        return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))

    return sorted(
        set(arms), key=lambda a: (order.get(base_model(a), len(order)), base_model(a), natural(a))
    )


def model_title(name: str) -> str:
    """`resnet50` -> `ResNet-50` (the plugin's display name); an arm `resnet18 [fast]` ->
    `ResNet-18 (fast)`."""
    base, _, label = name.partition(" [")
    title = _title("models", base)
    return f"{title} ({label[:-1]})" if label else title


def dataset_title(name: str) -> str:
    return _title("datasets", name)


def _title(kind: str, name: str) -> str:
    """A plugin's display name; the raw name where no installed plugin provides it (runs
    read back long after, or from another machine)."""
    from study.errors import StudyError
    from study.registry import registry

    try:
        provided = getattr(registry(), kind).get(name)
    except StudyError:
        provided = None
    return provided.spec.title if provided is not None else name


def seed_table() -> dict[tuple[str, str], dict[str, float]]:
    """The seed report's Table 1: {(dataset, model): {top1, top5}}."""
    text = resources.files("study.templates").joinpath("seed_table1.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {
        (row["dataset"], row["model"]): {"top1": float(row["top1"]), "top5": float(row["top5"])}
        for row in rows
    }


# ---------------------------------------------------------------------------------------------
# The report's content


def report_context(
    records: list[RunRecord],
    figures: FigureCache,
    *,
    title: str | None = None,
    today: dt.date | None = None,
) -> dict:
    cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r, arm in zip(records, arm_names(records), strict=True):
        cells[(r.dataset or "?", arm)].append(r)
    datasets = _ordered({d for d, _ in cells}, DATASET_ORDER)
    models = _ordered_models(m for _, m in cells)
    seed = seed_table()
    notes: list[str] = []

    evaluate = _evaluation_cache()
    flags = {key: cell_flags(rs, evaluate) for key, rs in cells.items()}
    table = results_table(cells, datasets, models, seed, flags)
    best = {row["dataset"]: row["best"] for row in table["rows"] if row["metric"] == "top1"}
    starts = sorted(r.start_time for r in records if r.start_time)
    sections = [
        dataset_section(
            d, [m for m in models if (d, m) in cells], cells, figures, evaluate, flags
        )  # fmt: skip
        for d in datasets
    ]
    tests = [
        comparisons(d, [m for m in models if (d, m) in cells], cells, best.get(d), evaluate)
        for d in datasets
    ]
    for s in sections:
        notes.extend(s["notes"])
    efficiency = efficiency_rows(cells, datasets, models)
    hardware = {e["hardware"] for e in efficiency}
    departed = departures(records, datasets)
    # "Reproduction" only where every run follows the seed's protocol on the full data sets.
    what = "a re-run departing from the seed's protocol" if departed else "a reproduction"
    return {
        "title": title or f"Deeper Networks for Image Classification: {what}",
        "departures": departed,
        "date": (today or dt.date.today()).isoformat(),
        "run_span": (starts[0][:10], starts[-1][:10]) if starts else None,
        "abstract": abstract(records, datasets, models, best, cells, tests, flags, departed),
        "n_runs": len(records),
        "models": [{"name": m, "title": model_title(m)} for m in models],
        "datasets": [{"name": d, "title": dataset_title(d)} for d in datasets],
        "method": method_section(records, cells),
        "dataset_rows": dataset_rows(cells, datasets),
        "table": table,
        "sections": sections,
        "efficiency": efficiency,
        "efficiency_hardware": hardware.pop() if len(hardware) == 1 else None,
        "timing_noise": timing_noise(records),
        "timing_spread": f"{TIMING_SPREAD:g}",
        "tests": tests,
        "calibration": calibration_rows(cells, datasets, models, evaluate, flags),
        "calibration_best": lowest_ece(cells, datasets, models, evaluate, flags),
        "flagged": flagged_text(flags, datasets, models),
        "conclusions": conclusions(tests, cells),
        "significance": stats.SIGNIFICANCE,
        "collapse_top": f"{COLLAPSE_TOP_SHARE:.0%}",
        "collapse_classes": f"{COLLAPSE_CLASS_SHARE:.0%}",
        "exact_below": stats.MCNEMAR_EXACT_BELOW,
        "ece_bins": stats.ECE_BINS,
        "appendix": [appendix_entry(r, evaluate, run_flags(r, evaluate)) for r in records],
        "notes": notes,
        "figures_drawn": figures.drawn,
    }


def abstract(records, datasets, models, best, cells, tests, flags, departed=()) -> str:
    architectures = _ordered({base_model(m) for m in models}, MODEL_ORDER)
    variants = (
        f", trained as {len(models)} variants ({', '.join(model_title(m) for m in models)}),"
        if len(models) > len(architectures)
        else ""
    )
    text = (
        f"We train and evaluate {plural(len(architectures), 'network architecture')} "
        f"({', '.join(model_title(m) for m in architectures)}){variants} on "
        f"{plural(len(datasets), 'image data set')} "
        f"({', '.join(dataset_title(d) for d in datasets)}), {plural(len(records), 'recorded run')}"
        f" in {plural(len(cells), 'model × data set cell')}, and report top-1 and top-5 test "
        "accuracy, training behaviour, class confusion and cost."
    )
    if departed:
        text += (
            " The runs depart from the seed's protocol (Section 1.3): "
            + "; ".join(d["short"] for d in departed if d["short"])
            + "."
        )
    by_dataset = {t["dataset"]: t for t in tests}
    claims = [claim(by_dataset[d], best.get(d)) for d in datasets if d in by_dataset]
    flagged = flagged_text(flags, datasets, models)
    if flagged:
        claims.append(
            f"{plural(len(flagged), 'cell')} "
            f"{'is' if len(flagged) == 1 else 'are'} flagged as not a working classifier "
            f"({'; '.join(f['short'] for f in flagged)}): "
            "their accuracy is no evidence for or against the model, and their calibration is "
            "not ranked."
        )
    return " ".join([text, *(c for c in claims if c)])


def cell_flags(rs: list[RunRecord], evaluate) -> dict:
    """Whether a cell's pooled test predictions are at chance or collapsed (see
    COLLAPSE_*), with the numbers that say so; {} where no run has an evaluation."""
    import numpy as np

    evs = [ev for ev in (evaluate(r) for r in rs) if ev is not None and "topk" in ev]
    if not evs:
        return {}
    num_classes = next(
        (c for r in rs if isinstance(c := (r.info.get("dataset") or {}).get("num_classes"), int)),
        None,
    )
    labels = np.concatenate([ev["labels"] for ev in evs])
    predicted = np.concatenate([ev["topk"][:, 0] for ev in evs])
    n = int(predicted.size)
    num_classes = num_classes or int(max(labels.max(), predicted.max())) + 1
    counts = np.bincount(predicted, minlength=num_classes)
    present = len(np.unique(labels))  # a test subset may hold fewer classes than the data set
    correct = int((predicted == labels).sum())
    chance = 1.0 / num_classes
    ci = stats.wilson_interval(correct, n)
    top = int(counts.argmax())
    out = {
        "chance": ci.low <= chance,  # not significantly better than guessing
        "collapse": bool(
            counts[top] >= COLLAPSE_TOP_SHARE * n
            or (counts > 0).sum() <= COLLAPSE_CLASS_SHARE * present
        ),
        "top1": correct / n,
        "chance_level": chance,
        "ci_low": ci.low,
        "top_class": top,
        "top_share": counts[top] / n,
        "predicted_classes": int((counts > 0).sum()),
        "classes": present,
        "n": n,
    }
    names = next(
        (names for r in rs if (names := (r.info.get("dataset") or {}).get("class_names"))), []
    )
    out["top_name"] = str(names[top]) if top < len(names) else str(top)
    out["flagged"] = out["chance"] or out["collapse"]
    return out


def run_flags(r: RunRecord, evaluate) -> dict:
    return cell_flags([r], evaluate)


FLAG_MARKS = {"chance": "†", "collapse": "‡"}


def flag_reasons(f: dict) -> str:
    """`at chance; collapsed` for a flagged cell."""
    words = {"chance": "at chance", "collapse": "predictions collapsed"}
    return "; ".join(words[k] for k in ("chance", "collapse") if f.get(k))


def flagged_text(flags, datasets, models) -> list[dict]:
    """Each flagged cell, with a sentence giving the numbers behind its flags."""
    out = []
    for d in datasets:
        for m in models:
            f = flags.get((d, m)) or {}
            if not f.get("flagged"):
                continue
            parts = []
            if f["chance"]:
                parts.append(
                    f"top-1 {fmt_num(f['top1'])} is not significantly above chance "
                    f"({fmt_num(f['chance_level'])}: the 95% Wilson interval of top-1 starts at "
                    f"{fmt_num(f['ci_low'])})"
                )
            if f["collapse"]:
                parts.append(
                    f"its predictions collapse: class {f['top_name']} takes "
                    f"{f['top_share']:.0%} of {f['n']:,} predictions and "
                    f"{f['predicted_classes']} of {f['classes']} classes are ever predicted"
                )
            who = f"{model_title(m)} on {dataset_title(d)}"
            out.append(
                {
                    "short": f"{who}: {flag_reasons(f)}",
                    "text": f"{who}: {'; '.join(parts)}. Its ECE is not meaningful.",
                }
            )
    return out


def verdict(t: dict) -> str | None:
    """What the paired tests let the report say about a data set: `best` (the highest mean
    top-1 differs significantly from every other model), `none` (it does not, or cannot be
    tested), `single` (one model only), None (no results)."""
    if not t["best"]:
        return None
    if not t["rows"]:
        return "single"
    if all(row["test"] is not None and row["test"].significant for row in t["rows"]):
        return "best"
    return "none"


def claim(t: dict, best: dict | None) -> str | None:
    """One sentence per data set: a best model only where McNemar's test backs it."""
    kind = verdict(t)
    if kind is None or best is None:
        return None
    s = best["stat"]
    how = f"top-1 {s.text()}" + (f", mean of {s.n} runs" if s.n > 1 else "")
    alpha = stats.SIGNIFICANCE
    if kind == "single":
        return f"On {t['title']} only {t['best']} was run ({how}): no comparison."
    if kind == "best":
        return (
            f"On {t['title']}, {t['best']} has the highest top-1 accuracy ({how}) and differs "
            f"significantly from every other model (McNemar, p < {alpha})."
        )
    return (
        f"On {t['title']} the models do not differ significantly (McNemar, p ≥ {alpha} or "
        f"untestable for at least one pair with the highest top-1, {t['best']}, {how}), so "
        "no best model is named."
    )


def _spec(kind: str, name: str | None):
    """The installed plugin's spec, or None (runs read back where the plugin is missing)."""
    from study.registry import registry

    try:
        provided = getattr(registry(), kind).get(name)
    except StudyError:
        provided = None
    return provided.spec if provided is not None else None


def _span(values) -> str:
    """`28`, `28–64`: the range of some numbers, with thousands separators."""
    values = sorted(set(values))
    low, high = values[0], values[-1]
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def departures(records: list[RunRecord], datasets: list[str]) -> list[dict]:
    """How far the runs are from the seed, one item per aspect where they differ: input size,
    epochs, training and test images (against the official split sizes), the protocol's
    settings (info.departures) and hardware. Each item: a sentence and a short form."""
    out = []
    by_dataset = defaultdict(list)
    for r in records:
        by_dataset[r.dataset].append(r)

    sizes, seed_sizes = defaultdict(set), {}
    for r in records:
        spec, data = _spec("models", r.model), _spec("datasets", r.dataset)
        used = r.config.get("image_size")
        if spec is None or data is None or not isinstance(used, int):
            continue
        seed = spec.default_input_size("paper", data.image_size)
        if used != seed:
            sizes[model_title(r.model)].add(used)
            seed_sizes[model_title(r.model)] = seed
    if sizes:
        used = "; ".join(f"{m} {_span(v)} px (seed {seed_sizes[m]} px)" for m, v in sizes.items())
        out.append({
            "aspect": "input size",
            "text": f"Input size: {used}.",
            "short": f"inputs of {_span(v for vs in sizes.values() for v in vs)} px instead of "
                     f"{' / '.join(str(v) for v in sorted(set(seed_sizes.values())))} px",
        })  # fmt: skip

    epochs, seed_epochs = [], []
    for d in datasets:
        data = _spec("datasets", d)
        if data is None or data.paper_epochs is None:
            continue
        trained = [e for r in by_dataset[d] if (e := trained_epochs(r)) is not None]
        if trained and any(abs(e - data.paper_epochs) > 1e-9 for e in trained):
            epochs.append(f"{dataset_title(d)} {epochs_text(trained)} (seed {data.paper_epochs})")
            seed_epochs.append(data.paper_epochs)
    if epochs:
        all_trained = [e for r in records if (e := trained_epochs(r)) is not None]
        out.append({
            "aspect": "epochs",
            "text": f"Epochs trained: {'; '.join(epochs)}.",
            "short": f"{epochs_text(all_trained)} epochs instead of "
                     f"{' / '.join(str(e) for e in sorted(set(seed_epochs)))}",
        })  # fmt: skip

    for split, official in (("train", "train_size"), ("test", "test_size")):
        parts, used_all, official_all = [], [], []
        for d in datasets:
            data = _spec("datasets", d)
            infos = [r.info.get("dataset") or {} for r in by_dataset[d]]
            counts = [c for i in infos if isinstance(c := i.get(f"{split}_count"), int)]
            if data is None or not counts or set(counts) == {getattr(data, official)}:
                continue
            size = getattr(data, official)
            held = sorted({a for i in infos if isinstance(a := i.get(f"{split}_available"), int)})
            local = f", the local copy holding {_span(held)}" if held and held != [size] else ""
            parts.append(f"{dataset_title(d)} {_span(counts)} of the official {size:,}{local}")
            used_all += counts
            official_all.append(size)
        if parts:
            name = "training" if split == "train" else "test"
            out.append({
                "aspect": f"{name} images",
                "text": f"{name.capitalize()} images used: {'; '.join(parts)}.",
                "short": f"{_span(used_all)} {name} images instead of {_span(official_all)}",
            })  # fmt: skip

    protocols = defaultdict(int)
    keys: dict[str, dict] = defaultdict(lambda: {"values": set(), "protocol": set()})
    for r in records:
        protocols[_value_text(r.config.get("protocol"))] += 1
        for key, d in (r.info.get("departures") or {}).items():
            keys[key]["values"].add(_value_text(d.get("value")))
            keys[key]["protocol"].add(_value_text(d.get("protocol")))
    named = ", ".join(f"{p} ({plural(n, 'run')})" for p, n in sorted(protocols.items()))
    if keys or set(protocols) != {"paper"}:
        changed = "; ".join(
            f"{k} {', '.join(sorted(v['values']))} (protocol {', '.join(sorted(v['protocol']))})"
            for k, v in sorted(keys.items())
        )
        out.append({
            "aspect": "protocol",
            "text": f"Protocol named: {named}."
                    + (f" Settings that depart from the named protocol: {changed}." if keys
                       else ""),
            "short": "protocol settings changed ("
                     + ", ".join(sorted(keys) or ["protocol " + ", ".join(sorted(protocols))])
                     + ")",
        })  # fmt: skip

    hardware = defaultdict(int)
    for r in records:
        t = r.info.get("training") or {}
        if t.get("device_name"):
            hardware[f"{t['device_name']} ({t.get('device', '?')})"] += 1
    if hardware:
        # The seed's hardware is not part of its protocol: stated so timings can be read.
        out.append({
            "aspect": "hardware",
            "text": "Hardware: "
                    + "; ".join(f"{h}, {plural(n, 'run')}" for h, n in sorted(hardware.items()))
                    + ".",
            "short": None,
        })  # fmt: skip
    # Hardware alone is not a departure from the protocol.
    return out if any(d["short"] for d in out) else []


def trained_epochs(r: RunRecord) -> float | None:
    """Epochs a run trained: the images it saw over the training split's size (a run stopped
    by its time budget trained a fraction of its last epoch); else the epochs recorded."""
    images = [v for _, v in r.metric("train_images")]
    count = (r.info.get("dataset") or {}).get("train_count")
    if images and isinstance(count, int) and count > 0:
        return sum(images) / count
    done = (r.info.get("training") or {}).get("epochs_completed", r.config.get("epochs"))
    return float(done) if isinstance(done, int | float) else None


def epochs_text(values) -> str:
    """`2`, `1–25`, `0.083`: whole epochs as integers, a fraction to two figures."""

    def one(e: float) -> str:
        if abs(e - round(e)) < 1e-9:
            return str(round(e))
        return f"{e:.1f}" if e >= 1 else f"{e:.2g}"

    values = sorted(set(values))
    low, high = one(values[0]), one(values[-1])
    return low if low == high else f"{low}–{high}"


def _value_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def method_section(records, cells) -> dict:
    """The protocol: values every run shares, and per run the values that differ."""
    common, differing = [], []
    for key, label in PROTOCOL_KEYS:
        values = {json.dumps(r.config.get(key), sort_keys=True) for r in records}
        if len(values) == 1:
            common.append({"label": label, "value": _value_text(records[0].config.get(key))})
        else:
            differing.append((key, label))
    other = sorted(
        {
            k
            for r in records
            for k in r.config
            if k not in dict(PROTOCOL_KEYS)
            and k not in PLACE_KEYS
            and k not in ("model", "dataset")
            and len({json.dumps(x.config.get(k), sort_keys=True) for x in records}) > 1
        }
    )
    differing += [(k, k) for k in other]
    rows = [
        {
            "id": r.id,
            "model": model_title(r.model or "?"),
            "dataset": dataset_title(r.dataset or "?"),
            "values": [_value_text(r.config.get(k)) for k, _ in differing],
        }
        for r in records
    ]
    multi = [
        {
            "dataset": dataset_title(d),
            "model": model_title(m),
            "n": len(rs),
            "ids": ", ".join(r.id for r in rs),
            "seeds": ", ".join(_value_text(r.config.get("seed")) for r in rs),
        }
        for (d, m), rs in cells.items()
        if len(rs) > 1
    ]
    heads = sorted({_value_text(r.config.get("head")) for r in records})
    arms = sorted({model_title(m) for _, m in cells if m != base_model(m)})
    return {
        "arms": arms,
        "common": common,
        "differing": [label for _, label in differing],
        "rows": rows if differing else [],
        "multi": multi,
        "heads": heads,
    }


def dataset_rows(cells, datasets) -> list[dict]:
    rows = []
    for d in datasets:
        rs = [r for (dd, _), runs in cells.items() if dd == d for r in runs]
        infos = [r.info.get("dataset") or {} for r in rs]

        def values(key, infos=infos):
            seen = []
            for i in infos:
                v = i.get(key)
                if v is not None and v not in seen:
                    seen.append(v)
            return ", ".join(count_text(v) for v in seen) if seen else "–"

        sizes = sorted({r.config.get("image_size") for r in rs if r.config.get("image_size")})
        rows.append(
            {
                "title": dataset_title(d),
                "classes": values("num_classes"),
                "native": values("image_size"),
                "channels": values("channels"),
                "input": ", ".join(str(s) for s in sizes) or "–",
                "train": values("train_count"),
                "train_available": values("train_available"),
                "test": values("test_count"),
                "test_available": values("test_available"),
                "fingerprint": values("fingerprint"),
            }
        )
    return rows


def results_table(cells, datasets, models, seed, flags=None) -> dict:
    rows = []
    for d in datasets:
        for metric, label in (("top1", "Top-1 accuracy"), ("top5", "Top-5 accuracy")):
            values = []
            for m in models:
                rs = cells.get((d, m), [])
                s = stat(rs, lambda r, metric=metric: r.result[metric])
                published = seed.get((d, base_model(m)), {}).get(metric)
                interval = stats.accuracy_interval(s.values, _test_count(rs))
                values.append(
                    {
                        "model": m,
                        "stat": s,
                        "text": s.text() if rs else "",
                        "ci": interval_text(interval),
                        "n": s.n,
                        "ran": bool(rs),
                        "seed": fmt_num(published) if published is not None and rs else None,
                        "best": False,
                        "marks": "".join(
                            mark
                            for key, mark in FLAG_MARKS.items()
                            if metric == "top1" and (flags or {}).get((d, m), {}).get(key)
                        ),
                    }
                )
            means = [v["stat"].mean for v in values if v["stat"].mean is not None]
            top = max(means) if means else None
            best = None
            for v in values:
                if top is not None and v["stat"].mean == top:
                    v["best"] = True
                    best = best or {"model": v["model"], "stat": v["stat"]}
            rows.append(
                {"dataset": d, "title": dataset_title(d), "metric": metric, "label": label,
                 "cells": values, "best": best}
            )  # fmt: skip
    any_seed = any(c["seed"] for row in rows for c in row["cells"])
    aggregated = any(c["n"] > 1 for row in rows for c in row["cells"])
    single = any(c["n"] == 1 and c["ci"] for row in rows for c in row["cells"])
    marks = {k for row in rows for c in row["cells"] for k in c["marks"]}
    return {"rows": rows, "any_seed": any_seed, "aggregated": aggregated, "single": single,
            "marks": marks}  # fmt: skip


def _test_count(rs: list[RunRecord]) -> int | None:
    """The test-set size of a cell's runs (for a Wilson interval), when recorded."""
    for r in rs:
        count = (r.info.get("dataset") or {}).get("test_count")
        if isinstance(count, int) and count > 0:
            return count
    return None


def interval_text(interval: stats.Interval | None) -> str | None:
    """`[low, high]`: which interval it is (Wilson or t) Table 1's caption says, once."""
    if interval is None:
        return None
    return f"[{fmt_num(interval.low)}, {fmt_num(interval.high)}]"


def dataset_section(d, models, cells, figures: FigureCache, evaluate=None, flags=None) -> dict:
    notes: list[str] = []
    title = dataset_title(d)
    runs = [(m, r) for m in models for r in cells[(d, m)]]

    bars = {
        "models": [model_title(m) for m in models],
        "top1": [_mean_std(cells[(d, m)], "top1") for m in models],
        "top5": [_mean_std(cells[(d, m)], "top5") for m in models],
    }
    bar_chart = figures.get("bars", bars)

    curves = []
    for m, r in runs:
        series = {name: r.metric(name) for name in CURVE_METRICS}
        if not any(series.values()):
            notes.append(f"Run {r.id} ({model_title(m)} on {title}) recorded no training curves.")
            continue
        label = model_title(m) + (f" (run {r.id})" if len(cells[(d, m)]) > 1 else "")
        curves.append({"label": label, **series})
    curve_chart = figures.get("curves", {"runs": curves}) if curves else None

    class_names: list[str] = []
    for _, r in runs:
        names = (r.info.get("dataset") or {}).get("class_names")
        if names:
            class_names = list(names)
            break
    num_classes = len(class_names)
    evaluate = evaluate or _evaluation
    confusion = []  # per model: summed confusion matrix over its runs
    pairs_by_model = []
    for m in models:
        total, used = None, []
        for r in cells[(d, m)]:
            ev = evaluate(r)
            if ev is None or "confusion" not in ev:
                notes.append(
                    f"Run {r.id} ({model_title(m)} on {title}) has no evaluation artifact: "
                    "no confusion matrix from it."
                )
                continue
            matrix = ev["confusion"].astype(int).tolist()
            if total is None:
                total = matrix
            elif len(matrix) == len(total):
                total = [
                    [a + b for a, b in zip(x, y, strict=True)]
                    for x, y in zip(total, matrix, strict=True)
                ]
            used.append(r.id)
        if total is None:
            continue
        label = model_title(m) + (f" (sum of {len(used)} runs)" if len(used) > 1 else "")
        confusion.append({"label": label, "matrix": total})
        pairs_by_model.append(
            {"model": label, "pairs": confused_pairs(total, class_names, CONFUSED_PAIRS)}
        )
    show_matrices = 0 < num_classes <= CONFUSION_MAX_CLASSES or (
        not num_classes and confusion and len(confusion[0]["matrix"]) <= CONFUSION_MAX_CLASSES
    )
    confusion_chart = None
    if confusion and show_matrices:
        confusion_chart = figures.get("confusion", {"models": confusion, "classes": class_names})

    gallery = []
    for m in models:
        items = []
        for r in cells[(d, m)]:
            for g in (r.info.get("misclassified") or [])[:GALLERY_PER_CELL]:
                try:
                    data = r.artifact_bytes(g["artifact"])
                except (StudyError, OSError, KeyError):
                    notes.append(f"Run {r.id}: misclassified image {g.get('artifact')} is missing.")
                    continue
                items.append(
                    {
                        "src": "data:image/png;base64," + base64.b64encode(data).decode(),
                        "true": g.get("true_name", g.get("true")),
                        "predicted": g.get("predicted_name", g.get("predicted")),
                        "confidence": g.get("confidence"),
                        "run": r.id,
                    }
                )
        items.sort(key=lambda i: -(i["confidence"] or 0))
        gallery.append({"model": model_title(m), "items": items[:GALLERY_PER_CELL]})
    flags = flags or {}
    reliability = reliability_data(
        models, [cells[(d, m)] for m in models], evaluate,
        [bool(flags.get((d, m), {}).get("flagged")) for m in models],
    )  # fmt: skip
    return {
        "name": d,
        "title": title,
        "bar_chart": bar_chart,
        "reliability_chart": reliability_svg(reliability) if reliability else None,
        "curve_chart": curve_chart,
        "confusion_chart": confusion_chart,
        "pairs": [] if show_matrices else pairs_by_model,
        "num_classes": num_classes,
        "gallery": gallery,
        "notes": notes,
        "flagged": [f["text"] for f in flagged_text(flags, [d], models)],
        "aggregated": any(len(cells[(d, m)]) > 1 for m in models),
    }


def _mean_std(rs, metric) -> list[float | None]:
    s = stat(rs, lambda r: r.result[metric])
    return [s.mean, s.std or 0.0]


def _evaluation(r: RunRecord):
    try:
        return r.evaluation()
    except (StudyError, OSError, ValueError):
        return None


def _evaluation_cache():
    """_evaluation, reading each run's evaluation.npz once per report."""
    cache: dict[int, Any] = {}

    def evaluate(r: RunRecord):
        if id(r) not in cache:
            cache[id(r)] = _evaluation(r)
        return cache[id(r)]

    return evaluate


# ---------------------------------------------------------------------------------------------
# Statistics: paired tests, calibration, conclusions


def p_text(p: float) -> str:
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}"


def paired_runs(best_runs, other_runs, evaluate):
    """The pair McNemar's test compares: the runs of the two models with the lowest seed both
    ran (seed-matched: same subset, same initialisation stream), evaluated on the same test
    images; failing that, any two runs on the same test images. (pair, why-not)."""

    def seed_of(r):
        seed = r.config.get("seed")
        return seed if isinstance(seed, int) else math.inf

    matched = [(seed_of(a), a, b) for a in best_runs for b in other_runs
               if seed_of(a) == seed_of(b)]  # fmt: skip
    unmatched = [(math.inf, a, b) for a in best_runs for b in other_runs
                 if seed_of(a) != seed_of(b)]  # fmt: skip
    order = sorted(matched, key=lambda x: (x[0], _id_key(x[1]), _id_key(x[2])))
    order += sorted(unmatched, key=lambda x: (seed_of(x[1]), _id_key(x[1]), _id_key(x[2])))
    reason = "no evaluation artifact"
    for _, a, b in order:
        ea, eb = evaluate(a), evaluate(b)
        if ea is None or eb is None:
            continue
        ia, ib = ea.get("test_indices"), eb.get("test_indices")
        if ia is None or ib is None or len(ia) != len(ib) or (ia != ib).any():
            reason = "their runs were evaluated on different test images"
            continue
        return (a, b, ea, eb), None
    return None, reason


def _id_key(r: RunRecord):
    return run_order(r.id)


def comparisons(d, models, cells, best, evaluate) -> dict:
    """McNemar's test of the data set's best model (by mean top-1) against each other model."""
    out = {"dataset": d, "title": dataset_title(d), "best": None, "rows": []}
    if not best:
        return out
    best_model = best["model"]
    out["best"] = model_title(best_model)
    for m in models:
        if m == best_model:
            continue
        row = {
            "model": model_title(m),
            "best": model_title(best_model),
            "best_top1": stat(cells[(d, best_model)], lambda r: r.result["top1"]).text(),
            "top1": stat(cells[(d, m)], lambda r: r.result["top1"]).text(),
            "test": None,
        }
        pair, reason = paired_runs(cells[(d, best_model)], cells[(d, m)], evaluate)
        if pair is None:
            row["reason"] = reason
        else:
            a, b, ea, eb = pair
            test = stats.mcnemar(stats.correctness(ea), stats.correctness(eb))
            seed_a, seed_b = a.config.get("seed"), b.config.get("seed")
            row.update(
                test=test,
                p=p_text(test.p_value),
                runs=f"{a.id} vs {b.id}",
                seed=_value_text(seed_a) if seed_a == seed_b else None,
            )
        out["rows"].append(row)
    return out


def conclusions(tests, cells) -> list[str]:
    """One paragraph per data set: a difference is called one only when McNemar's p < 0.05."""
    out = []
    alpha = stats.SIGNIFICANCE
    for t in tests:
        if not t["best"]:
            continue
        if not t["rows"]:
            out.append(f"On {t['title']} only {t['best']} was run, so there is no comparison.")
            continue
        sentences = [
            f"{t['best']} is the best model on {t['title']}: it differs significantly from "
            "every other model."
            if verdict(t) == "best"
            else f"No model is shown best on {t['title']}: the highest mean top-1 does not "
            "differ significantly from every other model."
        ]
        for row in t["rows"]:
            test = row["test"]
            if test is None:
                sentences.append(
                    f"{row['best']} and {row['model']} cannot be compared by a paired test "
                    f"({row['reason']})."
                )
            elif test.significant:
                sentences.append(
                    f"{row['best']} (top-1 {row['best_top1']}) differs significantly from "
                    f"{row['model']} ({row['top1']}): McNemar {test.method}, {row['p']}, "
                    f"below {alpha}."
                )
            else:
                sentences.append(
                    f"{row['best']} (top-1 {row['best_top1']}) and {row['model']} "
                    f"({row['top1']}) show no significant difference (McNemar {test.method}, "
                    f"{row['p']} ≥ {alpha}); these runs do not establish which is better."
                )
        out.append(" ".join(sentences))
    return out


def run_ece(r: RunRecord, evaluate) -> float | None:
    ev = evaluate(r)
    if ev is None or "topk_prob" not in ev:
        return None
    return stats.expected_calibration_error(stats.top1_confidence(ev), stats.correctness(ev))


def calibration_rows(cells, datasets, models, evaluate, flags=None) -> list[dict]:
    rows = []
    for d in datasets:
        for m in models:
            rs = cells.get((d, m))
            if rs:
                s = stat(rs, lambda r: run_ece(r, evaluate))
                f = (flags or {}).get((d, m), {})
                rows.append({"dataset": dataset_title(d), "model": model_title(m),
                             "ece": s, "n": s.n, "flagged": f.get("flagged", False),
                             "why": flag_reasons(f)})  # fmt: skip
    return rows


def lowest_ece(cells, datasets, models, evaluate, flags) -> list[str]:
    """Per data set, the lowest mean ECE among cells that are not flagged: a constant
    predictor's near-zero ECE is not calibration."""
    out = []
    for d in datasets:
        ranked = []
        for m in models:
            rs = cells.get((d, m))
            if rs and not flags.get((d, m), {}).get("flagged"):
                s = stat(rs, lambda r: run_ece(r, evaluate))
                if s.mean is not None:
                    ranked.append((s.mean, model_title(m), s))
        excluded = [model_title(m) for m in models if flags.get((d, m), {}).get("flagged")]
        note = f" ({', '.join(excluded)} excluded: flagged)" if excluded else ""
        if len(ranked) > 1:
            mean, title, s = min(ranked, key=lambda x: x[0])
            out.append(f"{dataset_title(d)}: {title} ({s.text(4)}){note}")
        elif excluded:
            out.append(f"{dataset_title(d)}: not ranked{note}")
    return out


def reliability_data(models, runs_per_model, evaluate, flagged=None) -> dict | None:
    """Per model: the reliability bins of its runs' test predictions, pooled."""
    import numpy as np

    panels = []
    flagged = flagged or [False] * len(models)
    for m, rs, flag in zip(models, runs_per_model, flagged, strict=True):
        evs = [ev for ev in (evaluate(r) for r in rs) if ev is not None and "topk_prob" in ev]
        if not evs:
            continue
        conf = np.concatenate([stats.top1_confidence(ev) for ev in evs])
        right = np.concatenate([stats.correctness(ev) for ev in evs])
        rel = stats.reliability_bins(conf, right)

        def listed(a):
            return [None if not np.isfinite(x) else round(float(x), 6) for x in a]

        panels.append(
            {
                "label": model_title(m) + (f" ({len(evs)} runs)" if len(evs) > 1 else ""),
                "edges": listed(rel.edges),
                "count": [int(c) for c in rel.count],
                "accuracy": listed(rel.accuracy),
                "confidence": listed(rel.confidence),
                "ece": round(stats.expected_calibration_error(conf, right), 6),
                "flagged": flag,
            }
        )
    return {"models": panels} if panels else None


def confused_pairs(matrix, class_names, k) -> list[dict]:
    """The k most frequent (true, predicted) confusions, off the diagonal."""
    pairs = []
    for t, row in enumerate(matrix):
        total = sum(row)
        for p, count in enumerate(row):
            if t != p and count:
                pairs.append((count, t, p, total))
    pairs.sort(key=lambda x: (-x[0], x[1], x[2]))

    def name(i):
        return class_names[i] if i < len(class_names) else str(i)

    return [
        {"true": name(t), "predicted": name(p), "count": c, "share": c / total if total else 0}
        for c, t, p, total in pairs[:k]
    ]


def efficiency_rows(cells, datasets, models) -> list[dict]:
    rows = []
    for d in datasets:
        for m in models:
            rs = cells.get((d, m))
            if not rs:
                continue
            hardware = sorted(
                {
                    f"{(r.info.get('training') or {}).get('device_name', '?')} "
                    f"({(r.info.get('training') or {}).get('device', '?')})"
                    for r in rs
                }
            )
            stopped = [r for r in rs if stopped_by_budget(r)]
            trained = [e for r in rs if (e := trained_epochs(r)) is not None]
            rows.append(
                {
                    "key": f"{d}/{m}",
                    "model": model_title(m),
                    "dataset": dataset_title(d),
                    "n": len(rs),
                    "trained": budget_text(stopped)
                    if stopped
                    else (_epochs_label(epochs_text(trained)) if trained else "–"),
                    "images": stat(rs, lambda r: training_totals(r)[0]),
                    "params": stat(rs, lambda r: r.info["model"]["params"]),
                    "weight_mb": stat(rs, lambda r: r.info["model"]["weight_mb"]),
                    "gmacs": stat(rs, lambda r: r.info["model"]["gmacs_per_image"]),
                    "rate": stat(rs, lambda r: _ratio(*training_totals(r))),
                    "seconds": stat(rs, lambda r: training_totals(r)[1]),
                    "input": ", ".join(sorted({str(r.config.get("image_size")) for r in rs})),
                    "hardware": "; ".join(hardware),
                }
            )
    return rows


def timing_noise(records: list[RunRecord]) -> list[str]:
    """A sentence per run whose full epochs' training rates disagree beyond TIMING_SPREAD."""
    out = []
    for r in records:
        rates = [v for _, v in r.metric("images_per_s") if v > 0]
        if stopped_by_budget(r):
            rates = rates[:-1]  # the last epoch was cut short
        if len(rates) > 1 and max(rates) > TIMING_SPREAD * min(rates):
            out.append(
                f"run {r.id} ({model_title(r.model or '?')} on {dataset_title(r.dataset or '?')})"
                f" trained at {min(rates):.1f} to {max(rates):.1f} images/s across its epochs"
            )
    return out


def _epochs_label(text: str) -> str:
    return f"{text} epoch{'' if text == '1' else 's'}"


def _ratio(images, seconds) -> float | None:
    return images / seconds if images is not None and seconds else None


def _version(value) -> str:
    return value if isinstance(value, str) else "not recorded"


def code_text(prov) -> str:
    """The code that ran, from a run's provenance: the commit (and whether the tree was dirty)
    or the installed version, and each plugin distribution with its version."""
    if not isinstance(prov, dict):
        return "not recorded (the run predates provenance records)"
    git = prov.get("git")
    if isinstance(git, dict) and git.get("commit"):
        dirty = f", with uncommitted changes (diff sha256 {str(git.get('diff_sha256'))[:12]})"
        commit, branch = str(git["commit"])[:12], git.get("branch")
        code = f"study {prov.get('study')} at commit {commit} on {branch}"
        code += dirty if git.get("dirty") else ""
    else:
        code = f"study {prov.get('study')} (installed)"
    plugins = prov.get("plugins") if isinstance(prov.get("plugins"), dict) else {}
    if plugins:
        code += "; plugins: " + ", ".join(f"{p} {v or '?'}" for p, v in sorted(plugins.items()))
    return code


def appendix_entry(r: RunRecord, evaluate=None, flags=None) -> dict:
    host = r.host or {}
    libs = host.get("study") if isinstance(host.get("study"), dict) else {}
    versions = [("python", _version(host.get("python_version")))]
    versions += [(k, _version(libs.get(k))) for k in ("study", "torch", "torchvision", "cuda")]
    if libs.get("cudnn"):
        versions.append(("cudnn", str(libs["cudnn"])))
    missing = []
    if not r.metrics:
        missing.append("training curves")
    if "evaluation.npz" not in r.artifacts:
        missing.append("evaluation artifact")
    if not r.result:
        missing.append("result")
    return {
        "id": r.id,
        "store": r.store,
        "experiment": r.experiment,
        "comment": r.comment,
        "status": r.status,
        "model": r.model,
        "dataset": r.dataset,
        "start": r.start_time or "–",
        "stop": r.stop_time or "–",
        "host": host.get("hostname", "–"),
        "cpu": host.get("cpu", "–"),
        "gpus": ", ".join(map(str, libs.get("gpus") or [])) or "none",
        "os": " ".join(map(str, host.get("os") or [])) or "–",
        "versions": versions,
        "code": code_text(r.info.get("provenance") if isinstance(r.info, dict) else None),
        "config": [(k, json.dumps(v)) for k, v in sorted(r.config.items())],
        "result": r.result,
        "ece": run_ece(r, evaluate or _evaluation),
        "flagged": flag_reasons(flags or {}),
        "missing": missing,
    }


# ---------------------------------------------------------------------------------------------
# Figures


@dataclass
class FigureCache:
    """SVG figures by content hash: a figure whose data did not change is not drawn again."""

    folder: Path
    drawn: int = 0
    used: list[str] = field(default_factory=list)

    def get(self, kind: str, data: dict) -> str:
        import matplotlib

        key = json.dumps(
            {"kind": kind, "data": data, "v": FIGURE_VERSION, "mpl": matplotlib.__version__},
            sort_keys=True,
            default=str,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        path = self.folder / f"{digest}.svg"
        self.used.append(path.name)
        try:
            svg = path.read_bytes()
        except OSError:
            svg = DRAW[kind](data)
            self.drawn += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, svg)
        return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def draw_bars(data: dict) -> bytes:
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    n = len(data["models"])
    width = 0.38
    xs = list(range(n))
    for offset, metric, label in ((-width / 2, "top1", "top-1"), (width / 2, "top5", "top-5")):
        means = [v[0] if v[0] is not None else 0 for v in data[metric]]
        errs = [v[1] for v in data[metric]]
        bars = ax.bar(
            [x + offset for x in xs], means, width, yerr=errs if any(errs) else None, label=label
        )
        ax.bar_label(bars, labels=[f"{m:.4f}" for m in means], fontsize=7, padding=2)
    # Arm names can be long ("ResNet-18 (fast, epochs=30)"): wrap them to fit under their bars.
    ax.set_xticks(xs, [textwrap.fill(m, 22) for m in data["models"]], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def _against_training_time(run: dict) -> list[tuple[float, float]]:
    """(cumulative training seconds, test top-1) after each epoch: accuracy per unit of time,
    the fair comparison of protocols that differ in cost. Runs recorded before `train_seconds`
    was a metric have no such curve."""
    seconds = dict(run.get("train_seconds") or [])
    points, total = [], 0.0
    for epoch, top1 in run.get("test_top1") or []:
        if epoch not in seconds:
            return []
        total += seconds[epoch]
        points.append((total, top1))
    return points


def draw_curves(data: dict) -> bytes:
    fig = _figure(7.0, 6.6)
    axes = fig.subplots(3, 2)
    panels = (
        ("train_top1", "train accuracy", "epoch"),
        ("train_loss", "train loss", "epoch"),
        ("test_top1", "test accuracy (top-1)", "epoch"),
        ("epoch_seconds", "epoch time (s)", "epoch"),
        (_against_training_time, "test accuracy (top-1) against training time", "training (s)"),
        ("images_per_s", "training images / s", "epoch"),
    )
    for ax, (series, label, xlabel) in zip(axes.flat, panels, strict=True):
        drawn = False
        for run in data["runs"]:
            points = series(run) if callable(series) else run.get(series) or []
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                        label=run["label"])  # fmt: skip
                drawn = True
        if not drawn:  # e.g. runs recorded before study kept per-epoch training seconds
            ax.text(0.5, 0.5, "not recorded by these runs", ha="center", va="center",
                    fontsize=8, color="0.4", transform=ax.transAxes)  # fmt: skip
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if xlabel == "epoch":
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.spines[["top", "right"]].set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)),
                   fontsize=7)  # fmt: skip
    return _svg(fig)


def draw_confusion(data: dict) -> bytes:
    models = data["models"]
    cols = min(3, len(models))
    rows = math.ceil(len(models) / cols)
    fig = _figure(2.4 * cols + 0.4, 2.4 * rows + 0.2)
    axes = fig.subplots(rows, cols, squeeze=False)
    names = data["classes"]
    for ax in axes.flat[len(models) :]:
        ax.set_axis_off()
    for ax, entry in zip(axes.flat, models, strict=False):
        matrix = entry["matrix"]
        k = len(matrix)
        normed = [[c / (sum(row) or 1) for c in row] for row in matrix]
        ax.imshow(normed, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if matrix[i][j]:
                        ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=5,
                                color="white" if normed[i][j] > 0.5 else "black")  # fmt: skip
        labels = [str(names[i]) if i < len(names) else str(i) for i in range(k)]
        ax.set_xticks(range(k), labels, rotation=90, fontsize=5)
        ax.set_yticks(range(k), labels, fontsize=5)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(entry["label"], fontsize=8)
    return _svg(fig)


DRAW = {"bars": draw_bars, "curves": draw_curves, "confusion": draw_confusion}


def reliability_svg(data: dict) -> str:
    """Reliability diagrams (one panel per model) as a small hand-written SVG data URI: cheap
    enough to draw on every build, so they need no figure cache."""
    from xml.sax.saxutils import escape

    size, pad, gap = 150.0, 30.0, 20.0  # plot square, left/bottom margin, space between panels
    panels = data["models"]
    width = len(panels) * (size + pad + gap) + gap
    height = size + pad + 34.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
             'font-family="DejaVu Sans, sans-serif" font-size="8">']  # fmt: skip
    for i, p in enumerate(panels):
        x0, y0 = gap + pad + i * (size + pad + gap), 26.0  # the plot's top-left corner

        def x(v, x0=x0):
            return x0 + v * size

        def y(v, y0=y0):
            return y0 + (1 - v) * size

        parts.append(f'<text x="{x(0.5):.1f}" y="10" text-anchor="middle">'
                     f"{escape(p['label'])}</text>")  # fmt: skip
        ece = "ECE not meaningful" if p.get("flagged") else f"ECE {p['ece']:.4f}"
        parts.append(f'<text x="{x(0.5):.1f}" y="21" text-anchor="middle">{ece}</text>')
        edges = p["edges"]
        for k, (acc, conf) in enumerate(zip(p["accuracy"], p["confidence"], strict=True)):
            if acc is None:
                continue
            left, w = x(edges[k]), (edges[k + 1] - edges[k]) * size
            parts.append(f'<rect x="{left:.1f}" y="{y(acc):.1f}" width="{w:.1f}" '
                         f'height="{y(0) - y(acc):.1f}" fill="#4c72b0" stroke="white" '
                         'stroke-width="0.5"/>')  # fmt: skip
            top, bottom = max(acc, conf), min(acc, conf)
            parts.append(f'<rect x="{left:.1f}" y="{y(top):.1f}" width="{w:.1f}" '
                         f'height="{y(bottom) - y(top):.1f}" fill="#dd8452" '
                         'fill-opacity="0.45"/>')  # fmt: skip
        parts.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#333" '
                     'stroke-dasharray="3 2" stroke-width="0.8"/>')  # fmt: skip
        parts.append(f'<rect x="{x(0)}" y="{y(1)}" width="{size}" height="{size}" '
                     'fill="none" stroke="#333" stroke-width="0.8"/>')  # fmt: skip
        for t in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{x(t):.1f}" y="{y(0) + 10:.1f}" '
                         f'text-anchor="middle">{t:g}</text>')  # fmt: skip
            parts.append(f'<text x="{x(0) - 3:.1f}" y="{y(t) + 3:.1f}" '
                         f'text-anchor="end">{t:g}</text>')  # fmt: skip
        parts.append(f'<text x="{x(0.5):.1f}" y="{y(0) + 22:.1f}" text-anchor="middle">'
                     "top-1 confidence</text>")  # fmt: skip
        parts.append(f'<text transform="translate({x(0) - 20:.1f} {y(0.5):.1f}) rotate(-90)" '
                     'text-anchor="middle">accuracy</text>')  # fmt: skip
    parts.append("</svg>")
    svg = "".join(parts).encode()
    return "data:image/svg+xml;base64," + base64.b64encode(svg).decode()
