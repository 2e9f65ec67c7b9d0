"""The template's context: everything the report shows, assembled from the runs."""

from __future__ import annotations

import base64
import datetime as dt
from collections import defaultdict

from study import health, stats
from study.errors import StudyError
from study.identity import run_order
from study.report.figures import COMPUTE_AXES, FigureCache, model_colours, reliability_svg
from study.report.formatting import plural
from study.report.model import (
    CONFUSED_PAIRS,
    CONFUSION_MAX_CLASSES,
    CURVE_METRICS,
    DATASET_ORDER,
    MOVED,
    PER_CLASS_ALL_UP_TO,
    PER_CLASS_EXTREMES,
    SPEED_TOLERANCE,
    TIMING_SPREAD,
    arm_names,
    best_and_worst,
    cell_flags,
    chance_level,
    confused_pairs,
    dataset_title,
    evaluation_cache,
    mean_std,
    model_title,
    ordered,
    ordered_models,
    per_class_scores,
    reliability_data,
    run_evaluation,
    run_flags,
    seed_table,
)
from study.report.prose import (
    abstract,
    conclusions,
    dataset_prose,
    departures,
    flagged_text,
    lowest_ece,
)
from study.report.ranking import MIN_SEEDS, decide, equal_time
from study.report.seed_claims import check_all
from study.report.tables import (
    appendix_entry,
    calibration_rows,
    compute_points,
    dataset_rows,
    efficiency_rows,
    method_section,
    results_table,
    summary_rows,
    timing_noise,
)
from study.stores import RunRecord


def report_context(
    records: list[RunRecord],
    figures: FigureCache,
    *,
    title: str | None = None,
    today: dt.date | None = None,
    left_out: list[dict] = (),
) -> dict:
    cells: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for r, arm in zip(records, arm_names(records), strict=True):
        cells[(r.dataset or "?", arm)].append(r)
    datasets = ordered({d for d, _ in cells}, DATASET_ORDER)
    models = ordered_models(m for _, m in cells)
    seed = seed_table()
    notes: list[str] = []

    evaluate = evaluation_cache()
    flags = {key: cell_flags(rs, evaluate) for key, rs in cells.items()}
    claims = check_all(datasets, cells, flags, evaluate)
    tests = [
        decide(d, [m for m in models if (d, m) in cells], cells, flags, evaluate) for d in datasets
    ]
    ranked = {t["dataset"]: t["leader"] for t in tests if t["ranked"]}
    equal = [
        c for d in datasets
        for c in equal_time(d, [m for m in models if (d, m) in cells], cells, flags, evaluate)
    ]  # fmt: skip
    table = results_table(cells, datasets, models, seed, flags, ranked)
    best = {row["dataset"]: row["best"] for row in table["rows"] if row["metric"] == "top1"}
    starts = sorted(r.start_time for r in records if r.start_time)
    colours = model_colours(models)
    sections = [
        dataset_section(
            d, [m for m in models if (d, m) in cells], cells, figures, evaluate, flags, colours
        )  # fmt: skip
        for d in datasets
    ]
    for s in sections:
        notes.extend(s["notes"])
    efficiency = efficiency_rows(cells, datasets, models)
    compute = compute_points(cells, datasets, models, colours)
    hardware = {e["hardware"] for e in efficiency}
    # Where runs were timed on several kinds of machine, Table "efficiency" names each by a
    # letter and its caption spells them out: a machine's name is too long for a column.
    machines = sorted({m for e in efficiency for m in e["machines"]})
    keys = {m: chr(ord("A") + i) if len(machines) <= 26 else f"M{i + 1}"
            for i, m in enumerate(machines)}  # fmt: skip
    for e in efficiency:
        e["machine_keys"] = ", ".join(keys[m] for m in e["machines"])
    departed = departures(records, datasets)
    method = method_section(records, cells)
    # Only where some run recorded what the figure's axes need (synthetic runs may not).
    drawable = any(p.get(k) for p in compute for k in COMPUTE_AXES)
    compute_chart = figures.get("compute", {"points": compute}) if drawable else None
    left_out = [
        {**r, "model": model_title(r["model"]) if isinstance(r["model"], str) else "–",
         "dataset": dataset_title(r["dataset"]) if isinstance(r["dataset"], str) else "–"}
        for r in sorted(left_out, key=lambda r: (LEFT_OUT_KINDS.index(r["kind"]),
                                                 run_order(r["id"])))
    ]  # fmt: skip
    ref = numbering(
        method, sections, compute_chart, [r.id for r in records], bool(left_out), bool(claims)
    )
    rows = {row["dataset"]: row for row in table["rows"] if row["metric"] == "top1"}
    for section, t in zip(sections, tests, strict=True):
        d = section["name"]
        section["summary"] = summary_rows(d, models, table, efficiency)
        section["prose"] = dataset_prose(
            t, rows[d], cells, d, [m for m in models if (d, m) in cells], flags, efficiency, ref
        )
    # "Reproduction" only where every run follows the seed's protocol on the full data sets.
    what = "a re-run departing from the seed's protocol" if departed else "a reproduction"
    return {
        "title": title or f"Deeper Networks for Image Classification: {what}",
        "departures": departed,
        "date": (today or dt.date.today()).isoformat(),
        "run_span": (starts[0][:10], starts[-1][:10]) if starts else None,
        "abstract": abstract(records, datasets, models, best, cells, tests, flags, departed, equal)
        + left_out_text(left_out, ref),
        "left_out": left_out,
        "n_runs": len(records),
        "models": [{"name": m, "title": model_title(m)} for m in models],
        "datasets": [{"name": d, "title": dataset_title(d)} for d in datasets],
        "method": method,
        "ref": ref,
        "limitations": {
            "single": sum(1 for rs in cells.values() if len(rs) == 1),
            "cells": len(cells),
            "noisy": bool(timing_noise(records)),
        },
        "dataset_rows": dataset_rows(cells, datasets),
        "table": table,
        "sections": sections,
        "efficiency": efficiency,
        "compute_chart": compute_chart,
        "efficiency_hardware": hardware.pop() if len(hardware) == 1 else None,
        "speed_measured": any("GFLOP/s" in e["hardware"] for e in efficiency),
        "moved": any(MOVED in m for e in efficiency for m in e["machines"]),
        "machine_legend": "; ".join(f"{k}: {m}" for m, k in keys.items()),
        "speed_tolerance": f"{SPEED_TOLERANCE:g}",
        "timing_noise": timing_noise(records),
        "timing_spread": f"{TIMING_SPREAD:g}",
        "tests": tests,
        "calibration": calibration_rows(cells, datasets, models, evaluate, flags),
        "calibration_best": lowest_ece(cells, datasets, models, evaluate, flags),
        "flagged": flagged_text(flags, datasets, models),
        "conclusions": conclusions(tests, cells, equal),
        "seed_claims": claims,
        "seed_claims_summary": claims_summary(claims),
        "significance": stats.SIGNIFICANCE,
        "min_seeds": MIN_SEEDS,
        "collapse_top": f"{health.COLLAPSE_TOP_SHARE:.0%}",
        "collapse_ratio": f"{health.COLLAPSE_TOP_RATIO:g}",
        "few_classes": health.FEW_CLASSES,
        "min_entropy": f"{health.MIN_PREDICTION_ENTROPY:g}",
        "stuck_share": f"{health.STUCK_LOSS_SHARE:g}",
        "exact_below": stats.MCNEMAR_EXACT_BELOW,
        "ece_bins": stats.ECE_BINS,
        "appendix": [appendix_entry(r, evaluate, run_flags(r, evaluate)) for r in records],
        "notes": notes,
        "figures_drawn": figures.drawn,
    }


def left_out_text(left_out: list[dict], ref: dict) -> str:
    """The abstract's count of the stored runs the report does not show, by reason."""
    if not left_out:
        return ""
    parts = []
    for kind in LEFT_OUT_KINDS:
        rows = [r for r in left_out if r["kind"] == kind]
        if kind == "status" and rows:
            statuses = sorted({str(r["status"]) for r in rows})
            parts.append(f"{len(rows)} by status ({', '.join(statuses)})")
        elif kind == "filter" and rows:
            parts.append(f"{len(rows)} by the filters named")
        elif kind == "replaced" and rows:
            parts.append(f"{len(rows)} replaced by a run of the same model, data set and seed "
                         "trained otherwise")  # fmt: skip
        elif rows:
            parts.append(f"{plural(len(rows), 'reproduction')} of a reported run")
    return (
        f" The store holds {plural(len(left_out), 'further run')} that this report does not "
        f"show (Table {ref['t']['left_out']}): {', '.join(parts)}."
    )


def claims_summary(claims: list[dict]) -> str:
    """'11 claims: 2 supported, 9 not testable here'."""
    verdicts = ("supported", "not supported", "not decided", "not testable here")
    counts = [(v, sum(1 for c in claims if c["verdict"] == v)) for v in verdicts]
    return f"{plural(len(claims), 'claim')}: " + ", ".join(f"{n} {v}" for v, n in counts if n)


# A misclassified image predicted at least this confidently is a confident mistake.
SURE_MISTAKE = 0.9


# Why a stored run is not in the report, in the order its table lists them.
LEFT_OUT_KINDS = ("status", "filter", "replaced", "reproduction")


def numbering(
    method: dict,
    sections: list[dict],
    compute_chart,
    run_ids=(),
    left_out: bool = False,
    claims: bool = False,
) -> dict:
    """Table and figure numbers in the order they appear, so that captions and text refer to
    them by number: {"t": {key: n}, "f": {key: n}}."""
    tables = ["protocol", *(["differences"] if method["blocks"] else []), "datasets", "results",
              "tests", "calibration"]  # fmt: skip
    for s in sections:  # each data set's section opens with its summary
        tables += [f"summary:{s['name']}", *([f"pairs:{s['name']}"] if s["pairs"] else [])]
    tables.append("efficiency")
    tables += ["seed_claims"] if claims else []  # Section 5.1
    tables += [f"per_class:{s['name']}" for s in sections if s["per_class"]]  # the appendix
    tables += ["left_out"] if left_out else []  # Appendix B: what is not shown, then what is
    tables += [f"run:{i}" for i in run_ids]  # one record per run, last
    figures = []
    for s in sections:
        figures.append(f"bars:{s['name']}")
        figures += [f"{kind}:{s['name']}" for kind, chart in (("curves", "curve_chart"),
                    ("confusion", "confusion_chart"), ("reliability", "reliability_chart"))
                    if s[chart]]  # fmt: skip
        figures.append(f"gallery:{s['name']}")
    figures += ["compute"] if compute_chart else []
    return {"t": {k: n for n, k in enumerate(tables, 1)},
            "f": {k: n for n, k in enumerate(figures, 1)}}  # fmt: skip


def per_class_table(per_class: list[tuple[str, list[dict]]]) -> dict | None:
    """The per-class table of one data set: every class, one precision/recall/F1 column group
    per model, where it has few classes; else per model its best and worst classes by F1."""
    if not per_class:
        return None
    if all(len(scores) <= PER_CLASS_ALL_UP_TO for _, scores in per_class) and (
        len({len(scores) for _, scores in per_class}) == 1
    ):
        first = per_class[0][1]
        rows = []
        for c, s in enumerate(first):
            # A model with several runs sums their test images: then one count per model.
            supports = [scores[c]["support"] for _, scores in per_class]
            rows.append({"class": s["class"],
                         "support": supports[0] if len(set(supports)) == 1
                         else " / ".join(f"{n:,}" for n in supports),
                         "scores": [scores[c] for _, scores in per_class]})  # fmt: skip
        return {"kind": "all", "models": [label for label, _ in per_class], "rows": rows}
    blocks = []
    for label, scores in per_class:
        best, worst = best_and_worst(scores, PER_CLASS_EXTREMES)
        blocks.append({"model": label, "best": best, "worst": worst})
    return {"kind": "extremes", "n": PER_CLASS_EXTREMES, "blocks": blocks,
            "classes": max(len(scores) for _, scores in per_class)}  # fmt: skip


def dataset_section(
    d, models, cells, figures: FigureCache, evaluate=None, flags=None, colours=None
) -> dict:
    notes: list[str] = []
    title = dataset_title(d)
    runs = [(m, r) for m in models for r in cells[(d, m)]]

    colours = colours or model_colours(models)
    chance = chance_level(runs)
    bars = {
        "models": [model_title(m) for m in models],
        "colours": [colours[m] for m in models],
        "top1": [mean_std(cells[(d, m)], "top1") for m in models],
        "top5": [mean_std(cells[(d, m)], "top5") for m in models],
        "chance": chance,
    }
    bar_chart = figures.get("bars", bars)

    curves = []
    for m in models:
        recorded = []
        for r in cells[(d, m)]:
            series = {name: r.metric(name) for name in CURVE_METRICS}
            if not any(series.values()):
                notes.append(
                    f"Run {r.id} ({model_title(m)} on {title}) recorded no training curves."
                )
                continue
            recorded.append(series)
        if recorded:
            label = model_title(m) + (f" ({len(recorded)} seeds)" if len(recorded) > 1 else "")
            curves.append(
                {"model": model_title(m), "label": label, "colour": colours[m], "runs": recorded}
            )
    curve_chart = figures.get("curves", {"models": curves, "chance": chance}) if curves else None

    class_names: list[str] = []
    for _, r in runs:
        names = (r.info.get("dataset") or {}).get("class_names")
        if names:
            class_names = list(names)
            break
    num_classes = len(class_names)
    evaluate = evaluate or run_evaluation
    confusion = []  # per model: summed confusion matrix over its runs
    pairs_by_model = []
    mistakes = []  # per model, its most frequent confusion in words
    per_class = []  # per model: precision, recall and F1 per class, from its summed matrix
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
        per_class.append((label, per_class_scores(total, class_names)))
        pairs_by_model.append(
            {"model": label, "pairs": confused_pairs(total, class_names, CONFUSED_PAIRS)}
        )
        if not confused_pairs(total, class_names, 1):
            mistakes.append(f"{model_title(m)} misclassifies none of its test images")
        for top in confused_pairs(total, class_names, 1):
            mistakes.append(
                f"{model_title(m)} most often predicts {top['predicted']} for a true "
                f"{top['true']} ({top['count']:,} of the {top['of']:,} test images of "
                f"{top['true']}, {top['share']:.1%})"
            )
    show_matrices = 0 < num_classes <= CONFUSION_MAX_CLASSES or (
        not num_classes and confusion and len(confusion[0]["matrix"]) <= CONFUSION_MAX_CLASSES
    )
    confusion_chart = None
    if confusion and show_matrices:
        confusion_chart = figures.get("confusion", {"models": confusion, "classes": class_names})

    gallery = []
    seen = []  # per model, what its gallery holds, in words
    for m in models:
        items = []
        for r in cells[(d, m)]:
            for g in r.info.get("misclassified") or []:  # every image the run recorded
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
        gallery.append({"model": model_title(m), "items": items})
        sure = [i for i in items if isinstance(i["confidence"], int | float)
                and i["confidence"] >= SURE_MISTAKE]  # fmt: skip
        if items:
            seen.append(
                f"{model_title(m)} {plural(len(items), 'image')}, {len(sure)} of them predicted "
                f"with confidence ≥ {SURE_MISTAKE:g}"
            )
    flags = flags or {}
    reliability = reliability_data(
        models, [cells[(d, m)] for m in models], evaluate,
        [bool(flags.get((d, m), {}).get("flagged")) for m in models],
        [colours[m] for m in models],
    )  # fmt: skip
    return {
        "name": d,
        "title": title,
        "bar_chart": bar_chart,
        "reliability_chart": reliability_svg(reliability) if reliability else None,
        "curve_chart": curve_chart,
        "confusion_chart": confusion_chart,
        "pairs": [] if show_matrices else pairs_by_model,
        "per_class": per_class_table(per_class),
        "num_classes": num_classes,
        "gallery": gallery,
        "mistakes": mistakes,
        "gallery_text": seen,
        "notes": notes,
        "flagged": [f["text"] for f in flagged_text(flags, [d], models)],
        "aggregated": any(len(cells[(d, m)]) > 1 for m in models),
    }
