"""When the report may rank models: the one rule the results table, the paired-tests table,
the abstract, the per-data-set prose and the conclusions all read, so no sentence ranks what a
table does not.

A model *ranks first* on a data set only when
- every compared cell holds at least MIN_SEEDS seeds (McNemar's test covers the draw of test
  images, not training noise: agreement across seeds is what stands in for the latter);
- every compared run trained under one protocol and budget (protocol, epochs, time budget,
  training images); the input sizes the protocol sets per model are named with the claim;
- its mean top-1 is higher than every other model's, and
- for every other model and every seed both ran, the seed-matched McNemar test is significant
  in its favour (b > c).
Otherwise the report says "highest observed" and gives every reason it is not a ranking.
Cells flagged by study.health's rule are in no ranking at all.
"""

from __future__ import annotations

import math
import statistics

from study import stats
from study.report.formatting import p_text, stat, value_text
from study.report.model import (
    _id_key,
    dataset_title,
    model_title,
    setting_label,
    training_totals,
)

MIN_SEEDS = 3

# What must be equal across the compared runs for their accuracies to be a comparison of
# models: the named protocol and the budget it trained with.
BUDGET_KEYS = ("protocol", "epochs", "time_budget", "train_limit")


def seed_of(r):
    seed = r.config.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def seeds(runs) -> list[int]:
    return sorted({s for r in runs if (s := seed_of(r)) is not None})


def budget(r) -> tuple[str, ...]:
    return tuple(f"{k}={value_text(r.config.get(k))}" for k in BUDGET_KEYS)


def paired_test(a, b, evaluate, k: int = 1) -> tuple[stats.McNemar | None, str | None]:
    """McNemar's test of run a against run b on per-image top-k correctness, or why not."""
    ea, eb = evaluate(a), evaluate(b)
    if ea is None or eb is None:
        return None, "no evaluation artifact"
    ia, ib = ea.get("test_indices"), eb.get("test_indices")
    if ia is None or ib is None or len(ia) != len(ib) or (ia != ib).any():
        return None, "their runs were evaluated on different test images"
    return stats.mcnemar(stats.correctness(ea, k), stats.correctness(eb, k)), None


def pair_rows(leader_runs, other_runs, evaluate) -> list[dict]:
    """One test per seed both models ran (lowest seed first); with no shared seed, one test of
    the lowest-seeded runs that share their test images, marked unmatched."""
    rows = []
    shared = sorted(set(seeds(leader_runs)) & set(seeds(other_runs)))
    for s in shared:
        a = min((r for r in leader_runs if seed_of(r) == s), key=_id_key)
        b = min((r for r in other_runs if seed_of(r) == s), key=_id_key)
        test, why = paired_test(a, b, evaluate)
        rows.append({"seed": s, "matched": True, "a": a, "b": b, "test": test, "reason": why})
    if rows:
        return rows

    def order(r):
        s = seed_of(r)
        return (s if s is not None else math.inf, _id_key(r))

    why = "no evaluation artifact"
    for a in sorted(leader_runs, key=order):
        for b in sorted(other_runs, key=order):
            test, why = paired_test(a, b, evaluate)
            if test is not None:
                return [{"seed": None, "matched": False, "a": a, "b": b, "test": test,
                         "reason": None}]  # fmt: skip
    return [{"seed": None, "matched": False, "a": None, "b": None, "test": None, "reason": why}]


def decide(d: str, models: list[str], cells: dict, flags: dict, evaluate) -> dict:
    """The data set's verdict: the model with the highest observed mean top-1 among unflagged
    cells (`leader`), whether it ranks first (`ranked`), every reason it does not (`reasons`),
    the paired tests (`rows`, one per shared seed and model) and the flagged cells left out."""
    present = [m for m in models if cells.get((d, m))]
    excluded = [m for m in present if (flags.get((d, m)) or {}).get("flagged")]
    eligible = [m for m in present if m not in excluded]
    means = {}
    for m in eligible:
        s = stat(cells[(d, m)], lambda r: r.result["top1"])
        if s.mean is not None:
            means[m] = s
    out = {
        "dataset": d,
        "title": dataset_title(d),
        "leader": None,
        "best": None,  # the leader's title
        "ranked": False,
        "reasons": [],
        "rows": [],
        "excluded": [model_title(m) for m in excluded],
        "sizes": {},
    }
    if not means:
        return out
    top = max(s.mean for s in means.values())
    leader = next(m for m in eligible if m in means and means[m].mean == top)
    # The rest in order of mean top-1, highest first, as the prose lists them after the leader.
    others = sorted(
        (m for m in eligible if m in means and m != leader), key=lambda m: -means[m].mean
    )
    out.update(leader=leader, best=model_title(leader))
    if not others:
        return out

    reasons = out["reasons"]
    compared = [leader, *others]
    few = [
        f"{model_title(m)} has {len(seeds(cells[(d, m)]))}"
        for m in compared
        if len(seeds(cells[(d, m)])) < MIN_SEEDS
    ]
    if few:
        reasons.append(
            f"a ranking needs at least {MIN_SEEDS} seeds in every compared cell, and "
            + ", ".join(few)
        )
    budgets = {budget(r) for m in compared for r in cells[(d, m)]}
    if len(budgets) > 1:
        differing = [k for i, k in enumerate(BUDGET_KEYS) if len({b[i] for b in budgets}) > 1]
        reasons.append(
            "the runs trained under different budgets ("
            + ", ".join(setting_label(k) for k in differing)
            + ")"
        )
    tied = [m for m in others if means[m].mean == top]
    if tied:
        reasons.append(
            f"{', '.join(model_title(m) for m in tied)} "
            f"{'has' if len(tied) == 1 else 'have'} the same mean top-1"
        )

    leader_title = model_title(leader)
    leader_text = means[leader].text()
    for m in others:
        title = model_title(m)
        for p in pair_rows(cells[(d, leader)], cells[(d, m)], evaluate):
            test = p["test"]
            row = {
                "best": leader_title,
                "best_top1": leader_text,
                "model": title,
                "top1": means[m].text(),
                "seed": value_text(p["seed"]) if p["matched"] else None,
                "matched": p["matched"],
                "test": test,
                "reason": p["reason"],
            }
            if test is not None:
                row.update(p=p_text(test.p_value), runs=f"{p['a'].id} vs {p['b'].id}",
                           favours=test.significant and test.b > test.c)  # fmt: skip
            out["rows"].append(row)
        reasons.extend(pair_reasons(title, [r for r in out["rows"] if r["model"] == title]))

    for m in compared:
        sizes = sorted({s for r in cells[(d, m)] if isinstance(s := r.config.get("image_size"),
                                                                  int)})  # fmt: skip
        if sizes:
            out["sizes"][model_title(m)] = sizes
    out["ranked"] = not reasons
    return out


def pair_reasons(title: str, rows: list[dict]) -> list[str]:
    """Why the tests against one model do not back a ranking, one clause per kind."""
    out = []

    def where(rs):
        matched = [r["seed"] for r in rs if r["matched"]]
        if not matched:
            return ""
        return f" at seed{'s' if len(matched) > 1 else ''} {', '.join(matched)}"

    untested = [r for r in rows if r["test"] is None]
    same = [r for r in rows if r["test"] is not None and not r["test"].significant]
    against = [r for r in rows if r["test"] is not None and r["test"].significant
               and not r["favours"]]  # fmt: skip
    if untested:
        why = "; ".join(dict.fromkeys(r["reason"] for r in untested))  # each reason once
        out.append(f"it cannot be tested against {title} ({why})")
    if same:
        out.append(
            f"it does not differ significantly from {title}{where(same)} "
            f"({', '.join(r['p'] for r in same)} by McNemar's test)"
        )
    if against:
        out.append(
            f"{title} is significantly better{where(against)} "
            f"({', '.join(r['p'] for r in against)} by McNemar's test)"
        )
    if any(not r["matched"] for r in rows):
        out.append(f"it shares no seed with {title}, so no test is seed-matched")
    return out


def sizes_text(decision: dict) -> str:
    """The input sizes of the compared models, named with a claim: 'ResNet-50 at 32 px,
    Inception-V3 at 75 px'; '' where all share one size."""
    sizes = decision["sizes"]
    if len({tuple(v) for v in sizes.values()}) <= 1:
        return ""
    return ", ".join(f"{m} at {'/'.join(str(s) for s in v)} px" for m, v in sizes.items())


# Two cells trained for the same time when every run had one time budget and their training
# seconds agree within this share: then their accuracies compare what each reaches in it.
EQUAL_TIME_SHARE = 0.10


def equal_time(d: str, models: list[str], cells: dict, flags: dict, evaluate) -> list[dict]:
    """Every pair of unflagged cells on data set d that trained for the same time (see
    EQUAL_TIME_SHARE), higher mean top-1 first, with its paired tests (one per shared seed)."""

    def seconds(m):
        values = [s for r in cells[(d, m)] if isinstance(s := training_totals(r)[1], int | float)]
        return statistics.fmean(values) if values else None

    def the_budget(m):
        budgets = {r.config.get("time_budget") for r in cells[(d, m)]}
        (b,) = budgets if len(budgets) == 1 else (None,)
        return b if isinstance(b, int | float) and not isinstance(b, bool) else None

    usable = [
        m for m in models
        if cells.get((d, m)) and not (flags.get((d, m)) or {}).get("flagged")
        and the_budget(m) is not None and seconds(m)
    ]  # fmt: skip
    out = []
    for i, a in enumerate(usable):
        for b in usable[i + 1 :]:
            sa, sb = seconds(a), seconds(b)
            if the_budget(a) != the_budget(b) or abs(sa - sb) > EQUAL_TIME_SHARE * max(sa, sb):
                continue
            top = {m: stat(cells[(d, m)], lambda r: r.result["top1"]) for m in (a, b)}
            if top[b].mean > top[a].mean:
                a, b, sa, sb = b, a, sb, sa
            rows = pair_rows(cells[(d, a)], cells[(d, b)], evaluate)
            out.append({
                "dataset": d, "title": dataset_title(d), "budget": the_budget(a),
                "a": model_title(a), "b": model_title(b), "seconds": (sa, sb),
                "top1": (top[a].text(), top[b].text()),
                "tests": [
                    {**r, "p": p_text(r["test"].p_value), "seed": value_text(r["seed"]),
                     "favours": r["test"].significant and r["test"].b > r["test"].c}
                    for r in rows if r["test"] is not None
                ],
            })  # fmt: skip
    return out
