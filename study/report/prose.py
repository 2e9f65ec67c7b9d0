"""Generated text: the abstract, claims (only what McNemar's test backs), flags, departures
from the seed and conclusions."""

from __future__ import annotations

import statistics
from collections import defaultdict

from study import health, stats
from study.report.formatting import (
    epochs_text,
    fmt_num,
    plural,
    sentence_start,
    signed,
    span_text,
    stat,
    value_text,
)
from study.report.model import (
    MODEL_ORDER,
    base_model,
    dataset_title,
    flag_reasons,
    model_title,
    ordered,
    plugin_spec,
    run_ece,
    seed_table,
    setting_label,
    timing_machines,
    trained_epochs,
)
from study.report.ranking import MIN_SEEDS, sizes_text
from study.stores import RunRecord


def equal_time_text(c: dict) -> str:
    """One equal-training-time comparison as a sentence, with its paired tests."""
    sa, sb = c["seconds"]
    text = (
        f"At equal training time on {c['title']} (a budget of {c['budget']:g} s each; "
        f"{sa:,.0f} s and {sb:,.0f} s trained), {c['a']} reaches top-1 {c['top1'][0]} against "
        f"{c['b']}'s {c['top1'][1]}"
    )
    tests = c["tests"]
    if not tests:
        return text + "; no paired test is possible (no shared test images)."
    parts = [
        f"b = {r['test'].b:,}, c = {r['test'].c:,}, {r['p']}"
        + (f" at seed {r['seed']}" if r["matched"] else " (unmatched seeds)")
        for r in tests
    ]
    favour = all(r["favours"] for r in tests)
    text += f" (McNemar on the same test images: {'; '.join(parts)}): " + (
        "significant in its favour" if favour else "not significant at every seed"
    )
    seeds = len({r["seed"] for r in tests if r["matched"]})
    if seeds < MIN_SEEDS:
        text += (
            f"; with {plural(seeds, 'shared seed')} this holds for these trained models, and "
            f"a ranking of the two would need {MIN_SEEDS}"
        )
    return text + "."


def abstract(records, datasets, models, best, cells, tests, flags, departed=(), equal=()) -> str:
    architectures = ordered({base_model(m) for m in models}, MODEL_ORDER)
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
    # An equal-training-time comparison answers what a report of accuracy per time asks: first.
    claims = [equal_time_text(c) for c in equal]
    claims += [claim(by_dataset[d], best.get(d)) for d in datasets if d in by_dataset]
    flagged = flagged_text(flags, datasets, models)
    if flagged:
        its = "its" if len(flagged) == 1 else "their"
        claims.append(
            f"{sentence_start(len(flagged), 'cell')} "
            f"{'is' if len(flagged) == 1 else 'are'} flagged as not a working classifier "
            f"({'; '.join(f['short'] for f in flagged)}): "
            f"{its} accuracy is no evidence for or against the model, and {its} calibration is "
            "not ranked."
        )
    return " ".join([text, *(c for c in claims if c)])


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
                    f"its predictions collapse ({f['collapse_why']}; class {f['top_name']} "
                    f"takes {f['top_share']:.0%} of {f['n']:,} predictions and "
                    f"{f['predicted_classes']} of {f['classes']} classes are ever predicted)"
                )
            if f.get("stuck"):
                runs = ", ".join(f"run {i}" for i in f["stuck_runs"])
                parts.append(
                    f"its training loss is still at least {health.STUCK_LOSS_SHARE:g} times "
                    f"a uniform guess's at the end of the last epoch ({runs})"
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
    """What study.report.ranking's decision lets the report say about a data set: `ranked`
    (the highest mean top-1 ranks first), `observed` (the highest observed, not a ranking),
    `single` (one unflagged model only), None (no results)."""
    if not t["best"]:
        return None
    if not t["rows"]:
        return "single"
    return "ranked" if t["ranked"] else "observed"


def single_text(t: dict, how: str | None = None) -> str:
    """A data set with one model to show: 'only VGG-16 was run (how)', or, where the others
    are flagged, 'VGG-16 (how) is the only model not flagged (ResNet-50 is)'."""
    how = f" ({how})" if how else ""
    if not t["excluded"]:
        return f"only {t['best']} was run{how}"
    verb = "is" if len(t["excluded"]) == 1 else "are"
    return f"{t['best']}{how} is the only model not flagged ({either(t['excluded'], 'and')} {verb})"


def reasons_text(t: dict) -> str:
    """Why the highest observed top-1 is not a ranking: every reason, joined."""
    return "; ".join(t["reasons"])


def ranked_text(t: dict) -> str:
    """What backs a ranking, with the input sizes the protocol set per model."""
    sizes = sizes_text(t)
    return (
        f"at least {MIN_SEEDS} seeds in every compared cell, one protocol and budget"
        + (f" (inputs: {sizes})" if sizes else "")
        + ", and every seed-matched McNemar test against every other model significant in its "
        f"favour (p < {stats.SIGNIFICANCE})"
    )


def claim(t: dict, best: dict | None) -> str | None:
    """One sentence per data set: a ranking only where study.report.ranking's rule holds."""
    kind = verdict(t)
    if kind is None or best is None:
        return None
    s = best["stat"]
    how = f"top-1 {s.text()}" + (f", mean of {s.n} runs" if s.n > 1 else "")
    if kind == "single":
        return f"On {t['title']} {single_text(t, how)}: no comparison."
    if kind == "ranked":
        return (
            f"On {t['title']}, {t['best']} ranks first in top-1 accuracy ({how}): {ranked_text(t)}."
        )
    return (
        f"On {t['title']} no model is ranked: the highest observed top-1 is {t['best']}'s "
        f"({how}), which is not a ranking because {reasons_text(t)}."
    )


def either(items, word: str = "or") -> str:
    """'a', 'a or b', 'a, b or c' (or with another joining word)."""
    items = list(items)
    return f" {word} ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def departures(records: list[RunRecord], datasets: list[str]) -> list[dict]:
    """How far the runs are from the seed, one item per aspect where they differ: input size,
    epochs, training and test images (against the official split sizes), the protocol's
    settings (info.departures) and hardware. Each item: a sentence and a short form."""
    out = []
    by_dataset = defaultdict(list)
    for r in records:
        by_dataset[r.dataset].append(r)

    sizes, seed_sizes = defaultdict(set), {}
    sized = departing = 0  # runs with a known input size; those not at the seed's
    for r in records:
        spec, data = plugin_spec("models", r.model), plugin_spec("datasets", r.dataset)
        used = r.config.get("image_size")
        if spec is None or data is None or not isinstance(used, int):
            continue
        sized += 1
        seed = spec.default_input_size("paper", data.image_size)
        if used != seed:
            departing += 1
            sizes[model_title(r.model)].add(used)
            seed_sizes[model_title(r.model)] = seed
    if sizes:
        used = "; ".join(
            f"{m} {span_text(v)} px (seed {seed_sizes[m]} px)" for m, v in sizes.items()
        )
        out.append({
            "aspect": "input size",
            "text": f"Input size: {used}"
                    + (f", in {departing} of {sized} runs (the others at the seed's size)"
                       if departing < sized else "") + ".",
            "short": f"inputs of {span_text(v for vs in sizes.values() for v in vs)} px instead of "
                     f"{' / '.join(str(v) for v in sorted(set(seed_sizes.values())))} px"
                     + (f" (in {departing} of {sized} runs)" if departing < sized else ""),
        })  # fmt: skip

    epochs, seed_epochs = [], []
    for d in datasets:
        data = plugin_spec("datasets", d)
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
            data = plugin_spec("datasets", d)
            infos = [r.info.get("dataset") or {} for r in by_dataset[d]]
            counts = [c for i in infos if isinstance(c := i.get(f"{split}_count"), int)]
            if data is None or not counts or set(counts) == {getattr(data, official)}:
                continue
            size = getattr(data, official)
            held = sorted({a for i in infos if isinstance(a := i.get(f"{split}_available"), int)})
            local = f", the local copy holding {span_text(held)}" if held and held != [size] else ""
            parts.append(f"{dataset_title(d)} {span_text(counts)} of the official {size:,}{local}")
            used_all += counts
            official_all.append(size)
        if parts:
            name = "training" if split == "train" else "test"
            out.append({
                "aspect": f"{name} images",
                "text": f"{name.capitalize()} images used: {'; '.join(parts)}.",
                "short": f"{span_text(used_all)} {name} images instead of "
                         f"{span_text(official_all)}",
            })  # fmt: skip

    protocols = defaultdict(int)
    keys: dict[str, dict] = defaultdict(lambda: {"values": set(), "protocol": set()})
    for r in records:
        protocols[value_text(r.config.get("protocol"))] += 1
        for key, d in (r.info.get("departures") or {}).items():
            keys[key]["values"].add(value_text(d.get("value")))
            keys[key]["protocol"].add(value_text(d.get("protocol")))
    named = ", ".join(f"{p} ({plural(n, 'run')})" for p, n in sorted(protocols.items()))
    if keys or set(protocols) != {"paper"}:
        changed = "; ".join(
            f"{setting_label(k)} {', '.join(sorted(v['values']))} "
            f"(protocol {', '.join(sorted(v['protocol']))})"
            for k, v in sorted(keys.items())
        )
        out.append({
            "aspect": "protocol",
            "text": f"Protocol named: {named}."
                    + (f" Settings that depart from the named protocol: {changed}." if keys
                       else ""),
            # A setting's value where every run has the same one: "bf16 autocast no", not a
            # bare "bf16 autocast" that reads as if it were switched on.
            "short": "protocol settings changed ("
                     + ", ".join(sorted(setting_label(k) + (f" {min(d['values'])}"
                                                            if len(d["values"]) == 1 else "")
                                        for k, d in keys.items())
                                 or ["protocol " + ", ".join(sorted(protocols))])
                     + ")",
        })  # fmt: skip

    # Models: an architecture the seed did not run is not compared with it (Table 1 shows no
    # seed value for it), so say so where a reader would look for the seed's own models.
    seed_models = {m for _, m in seed_table()}
    ours = list(dict.fromkeys(r.model for r in records if r.model))
    extra = [m for m in ours if m not in seed_models]
    if extra:
        absent = [m for m in sorted(seed_models) if m not in ours]
        out.append({
            "aspect": "models",
            "text": f"Models the seed did not run: {', '.join(model_title(m) for m in extra)}"
                    + (f"; of the seed's models, {', '.join(model_title(m) for m in absent)} "
                       "did not run here" if absent and len(absent) < len(seed_models) else "")
                    + ".",
            "short": f"{', '.join(model_title(m) for m in extra)}, which the seed did not run",
        })  # fmt: skip

    hardware = defaultdict(int)
    for machine in timing_machines(records).values():
        hardware[machine] += 1
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


def conclusions(tests, cells, equal=()) -> list[str]:
    """One paragraph per data set, each thing said once: the ranking or why there is none,
    the test-image differences the paired tests do show, the cells left out as flagged;
    led by the equal-training-time comparisons."""
    out = [equal_time_text(c) for c in equal]
    for t in tests:
        if not t["best"]:
            if t["excluded"]:
                out.append(
                    f"On {t['title']} every model is flagged ({either(t['excluded'], 'and')}): "
                    "these runs say nothing about which architecture is better there."
                )
            continue
        verb = "is" if len(t["excluded"]) == 1 else "are"
        excluded = (
            f" ({either(t['excluded'], 'and')} {verb} flagged and in no ranking.)"
            if t["excluded"]
            else ""
        )
        if not t["rows"]:
            out.append(f"On {t['title']} {single_text(t)}, so there is no comparison.")
            continue
        row = t["rows"][0]
        others = ", ".join(dict.fromkeys(f"{r['model']} ({r['top1']})" for r in t["rows"]))
        if verdict(t) == "ranked":
            sentences = [
                f"{t['best']} ranks first on {t['title']}: its mean top-1 ({row['best_top1']}) "
                f"is above {others}, with {ranked_text(t)}."
            ]
        else:
            sentences = [
                f"No model is ranked on {t['title']}. The highest observed top-1 is "
                f"{t['best']}'s ({row['best_top1']}; then {others}); it is not a ranking "
                f"because {reasons_text(t)}."
            ]
            shown = [r for r in t["rows"] if r["test"] is not None and r.get("favours")]
            if shown:
                sentences.append(
                    "On these test images it is significantly better than "
                    + ", ".join(
                        f"{r['model']}"
                        + (f" at seed {r['seed']}" if r["matched"] else "")
                        + f" ({r['p']})"
                        for r in shown
                    )
                    + ", which holds for those trained models, not for the architectures."
                )
        out.append(" ".join(sentences) + excluded)
    return out


def lowest_ece(cells, datasets, models, evaluate, flags) -> list[str]:
    """Per data set, the lowest observed mean ECE among cells that are not flagged (a
    constant predictor's near-zero ECE is not calibration). No test compares ECEs, so this is
    what was observed, never a ranking."""
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


def dataset_prose(t: dict, row: dict, cells, d, models, flags, efficiency, ref) -> list[str]:
    """A short paragraph for a data set's results section: what the best model reached, what
    McNemar's test supports, the train-test gap at the last epoch and speed against accuracy.
    Every number is one the report shows (Tables and Figures named by number)."""
    from study.report.model import last_epoch_gap

    best = row["best"]
    if best is None:
        return []
    title, tab = t["title"], ref["t"]
    cell = next(c for c in row["cells"] if c["model"] == best["model"])
    s = best["stat"]
    how = f"a mean of {s.n} runs, " if s.n > 1 else ""
    out = [
        f"The highest observed top-1 accuracy on {title} is {model_title(best['model'])}'s "
        f"{fmt_num(s.mean)} ({how}95% CI {cell['ci']}; Table {tab['results']})."
        if cell["ci"]
        else f"The highest observed top-1 accuracy on {title} is {model_title(best['model'])}'s "
        f"{fmt_num(s.mean)} (Table {tab['results']})."
    ]
    kind = verdict(t)
    if kind == "single":
        out.append(f"On {title} {single_text(t)}: there is nothing to compare.")
    elif kind == "ranked":
        out.append(f"It ranks first: {ranked_text(t)} (Table {tab['tests']}).")
    elif kind == "observed":
        out.append(
            f"That is the highest observed, not a ranking: {reasons_text(t)} "
            f"(Table {tab['tests']})."
        )
    for m in models:
        f = flags.get((d, m)) or {}
        if f.get("flagged"):
            out.append(
                f"{model_title(m)} is flagged ({flag_reasons(f)}): its accuracy is no evidence "
                "for or against it."
            )
    gaps, negative = [], False
    for m in models:
        pairs = [g for r in cells[(d, m)] if (g := last_epoch_gap(r)) is not None]
        if pairs:
            gap = statistics.fmean(train - test for train, test in pairs)
            gaps.append(f"{model_title(m)} {signed(gap, 3)}")
            negative = negative or gap < 0
    if gaps and ref["f"].get(f"curves:{d}"):
        out.append(
            "Training top-1 (the mean over the last epoch) minus test top-1 after it: "
            + ", ".join(gaps)
            + f" (Figure {ref['f'][f'curves:{d}']}); a positive gap is overfitting or the "
            "training-time randomness (dropout, BatchNorm batch statistics) that testing lacks."
            + (
                " A negative gap is expected of a model still learning: its training top-1 "
                "averages the whole epoch, most of it with weights worse than the final ones "
                "that are tested, and on training images made harder by augmentation, dropout "
                "and label smoothing where the protocol uses them."
                if negative
                else ""
            )
        )
    timed = [
        e for e in efficiency
        if e["key"].split("/", 1)[0] == d and e["rate"].mean is not None
    ]  # fmt: skip
    rates = [(e["rate"].mean, e["model"]) for e in timed]
    if len({e["hardware"] for e in timed}) > 1:  # a speed says little beside another machine's
        out.append(
            f"Training speeds were measured on different kinds of machine (Table "
            f"{tab['efficiency']}), so they are not compared here."
        )
    elif len(rates) > 1:
        (slow, slow_model), (fast, fast_model) = min(rates), max(rates)
        same = fast_model == model_title(best["model"])
        out.append(
            f"Training speed ranges from {slow:,.1f} images/s ({slow_model}) to {fast:,.1f} "
            f"({fast_model}; Table {tab['efficiency']}); the fastest model "
            + (
                "is also the one with the highest top-1."
                if same
                else "is not the one with the highest top-1."
            )  # fmt: skip
        )
    return out
