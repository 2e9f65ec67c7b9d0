"""The seed report's own claims (../shared/seed, Sections 4.2-5), each checked against the runs
a report shows: supported, not supported, not decided, or not testable here, with the evidence.

A claim is a set of relations between the seed's models ("A over B": higher top-1, faster, a
larger train-test gap...). One relation holds only as a ranking does (study.report.ranking):
at least MIN_SEEDS seeds both models ran, and at every one of them A over B; for test accuracy
"over" means McNemar's test significant in A's favour, for a training value (accuracy, loss,
images/s, gap) simply the larger (or smaller) number, for which the runs hold no test (images/s
only at a seed both runs of which were timed on the same kind of machine). A claim
is supported when each of its relations holds, not supported when one holds the other way round,
and not decided otherwise. A claim about a model these runs lack, or whose cell the health rule
flags, is not testable here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from study.report.formatting import fmt_num, plural, ratio
from study.report.model import (
    _id_key,
    base_model,
    dataset_title,
    flag_reasons,
    last_epoch_gap,
    model_title,
    timing_machines,
    training_totals,
)
from study.report.ranking import MIN_SEEDS, paired_test, seed_of


@dataclass(frozen=True)
class Measure:
    """What a relation compares: per run a number (`value`), or per image correctness at
    top-k (`top`: 1 or 5, tested by McNemar)."""

    name: str
    higher: bool = True  # "over" means higher (accuracy, speed) or lower (loss)
    top: int | None = None
    # Whether it measures what a model learned: a flagged cell's is no evidence; its speed is.
    learned: bool = True
    # Whether it is a speed: compared only between runs timed on the same kind of machine.
    timed: bool = False

    def value(self, r):
        if self.name == "train_top1":
            return _last(r, "train_top1")
        if self.name == "train_top1_epoch1":
            return dict(r.metric("train_top1")).get(1)
        if self.name == "train_loss":
            return _last(r, "train_loss")
        if self.name == "images_per_s":
            return ratio(*training_totals(r))
        if self.name == "gap":
            g = last_epoch_gap(r)
            return g[0] - g[1] if g else None
        raise ValueError(self.name)


def _last(r, name):
    values = r.metric(name)
    return values[-1][1] if values else None


TOP1, TOP5 = Measure("top-1", top=1), Measure("top-5", top=5)
TRAIN_TOP1 = Measure("train_top1")
TRAIN_LOSS = Measure("train_loss", higher=False)
SPEED = Measure("images_per_s", learned=False, timed=True)
GAP = Measure("gap")
EARLY = Measure("train_top1_epoch1")
MEASURE_WORDS = {
    "top-1": "test top-1",
    "top-5": "test top-5",
    "train_top1": "training top-1 at the last epoch",
    "train_loss": "training loss at the last epoch (lower)",
    "images_per_s": "training images/s",
    "gap": "training minus test top-1 at the last epoch",
    "train_top1_epoch1": "training top-1 after the first epoch",
}

V, R, I = "vgg16", "resnet50", "inception_v3"  # noqa: E741 - the seed's three networks


@dataclass(frozen=True)
class SeedClaim:
    text: str  # the seed's words
    where: str  # the seed's section
    dataset: str | None  # None: every data set the runs cover
    relations: tuple  # (measure, a, b): a over b; (measure, a, b, "tie"): no difference


CLAIMS = (
    SeedClaim("Inception and ResNet scoring equally highest", "4.2.1", "mnist",
              ((TOP1, I, V), (TOP1, R, V), (TOP1, I, R, "tie"))),
    SeedClaim("VGG achieved the highest training accuracy and lowest training loss, followed by "
              "ResNet and then Inception", "4.2.1", "mnist",
              ((TRAIN_TOP1, V, R), (TRAIN_TOP1, R, I), (TRAIN_LOSS, V, R),
               (TRAIN_LOSS, R, I))),
    SeedClaim("ResNet was much faster at training than the other two models. VGG was slowest",
              "4.2.1", "mnist", ((SPEED, R, I), (SPEED, I, V))),
    SeedClaim("Inception achieved the highest top-1 accuracy, and VGG achieved the worst",
              "4.2.2", "cifar10", ((TOP1, I, R), (TOP1, R, V))),
    SeedClaim("VGG also achieved the worse top-5 accuracy, but ResNet achieved the highest top-5",
              "4.2.2", "cifar10", ((TOP5, R, I), (TOP5, I, V))),
    SeedClaim("again the VGG model achieved the highest training accuracy and lowest training "
              "loss, followed by ResNet and then Inception", "4.2.2", "cifar10",
              ((TRAIN_TOP1, V, R), (TRAIN_TOP1, R, I), (TRAIN_LOSS, V, R),
               (TRAIN_LOSS, R, I))),
    SeedClaim("Again, ResNet was the fastest model to train, and VGG was the slowest", "4.2.2",
              "cifar10", ((SPEED, R, I), (SPEED, I, V))),
    SeedClaim("again Inception achieved the highest top-1 accuracy, and VGG achieved the worst. "
              "This was also true of the top-5", "4.2.3", "tiny_imagenet",
              ((TOP1, I, R), (TOP1, R, V), (TOP5, I, R), (TOP5, R, V))),
    SeedClaim("ResNet reached the highest accuracy first", "4.2.3", "tiny_imagenet",
              ((EARLY, R, V), (EARLY, R, I))),
    SeedClaim("the VGG-16 model tended to score the highest training accuracy, but the lowest "
              "validation set accuracy. This suggests that perhaps this model overfits more",
              "5", None, ((GAP, V, R), (GAP, V, I))),
    SeedClaim("ResNet was significantly faster than the other models", "5", None,
              ((SPEED, R, V), (SPEED, R, I))),
)  # fmt: skip

# A model that stands in for a seed model the runs lack (VGG-16 with BatchNorm for VGG-16).
STAND_INS = {V: ("vgg16_bn",)}


def _cell(d, seed_model, cells):
    """The arm that plays a seed model on a data set: the model itself, else a stand-in
    (named in the evidence); where a model has several arms (trained differently), only the
    one the seed's protocol names would do, so none is chosen."""
    for m in (seed_model, *STAND_INS.get(seed_model, ())):
        arms = [arm for (dd, arm), rs in cells.items() if dd == d and rs and base_model(arm) == m]
        if len(arms) == 1:
            return arms[0]
    return None


def _by_seed(runs) -> dict:
    out = {}
    for r in sorted(runs, key=_id_key):
        s = seed_of(r)
        if s is not None:
            out.setdefault(s, r)
    return out


def _compare(measure, a, b, evaluate):
    """One seed's comparison of run a with run b: 1 (a over b), -1 (b over a), 0 (neither:
    a test not significant, or equal values), None (not measurable)."""
    if measure.top is not None:
        test, _ = paired_test(a, b, evaluate, measure.top)
        if test is None:
            return None
        return 0 if not test.significant else (1 if test.b > test.c else -1)
    va, vb = measure.value(a), measure.value(b)
    if not isinstance(va, int | float) or not isinstance(vb, int | float):
        return None
    sign = (va > vb) - (va < vb)
    return sign if measure.higher else -sign


def relation(rel, d, cells, evaluate) -> dict:
    """Whether one relation holds on data set d: `holds` (every one of >= MIN_SEEDS shared
    seeds goes its way), `reversed` (every one goes the other way), `open`; with the
    observed means."""
    measure, a, b, *tie = rel
    ma, mb = _cell(d, a, cells), _cell(d, b, cells)
    ra, rb = _by_seed(cells[(d, ma)]), _by_seed(cells[(d, mb)])
    shared = sorted(set(ra) & set(rb))
    # Grouped over every run shown, as the efficiency table groups them.
    machines = timing_machines([r for rs in cells.values() for r in rs])
    apart = [
        s for s in shared
        if measure.timed
        and machines.get((ra[s].store, ra[s].id)) != machines.get((rb[s].store, rb[s].id))
    ]  # fmt: skip
    signs = [_compare(measure, ra[s], rb[s], evaluate) for s in shared if s not in apart]
    signs = [s for s in signs if s is not None]
    if measure.top is None:
        means = [_mean(measure, cells[(d, m)]) for m in (ma, mb)]
    else:
        means = [_mean_result(measure, cells[(d, m)]) for m in (ma, mb)]
    enough = len(signs) >= MIN_SEEDS
    if tie:
        holds = enough and all(s == 0 for s in signs)
        against = enough and (all(s == 1 for s in signs) or all(s == -1 for s in signs))
    else:
        holds = enough and all(s == 1 for s in signs)
        against = enough and all(s == -1 for s in signs)
    word = "≈" if tie else ">"
    digits = 1 if measure.name == "images_per_s" else 4
    observed = (
        f"{model_title(ma)} {fmt_num(means[0], digits)} vs {model_title(mb)} "
        f"{fmt_num(means[1], digits)}"
        if None not in means
        else f"{model_title(ma)} vs {model_title(mb)}: not recorded"
    )
    how = "McNemar at each seed" if measure.top is not None else "at each seed"
    if holds or against:
        seeds_text = f"{len(signs)} seeds, {how}"
    else:
        seeds = f"{len(signs)} comparable seed{'s' if len(signs) != 1 else ''}"
        split = f"{signs.count(1)} its way, {signs.count(-1)} the other, {signs.count(0)} neither"
        seeds_text = (
            f"{seeds} of the {MIN_SEEDS} needed" if not enough else f"{seeds} ({how}): {split}"
        )
    if apart:
        seeds_text += f"; {plural(len(apart), 'seed')} timed on different kinds of machine"
    return {
        "state": "holds" if holds else "reversed" if against else "open",
        "text": f"{MEASURE_WORDS[measure.name]}, {model_title(a)} {word} {model_title(b)}: "
        f"{observed}; {seeds_text}",
    }


def _mean(measure, runs):
    values = [v for r in runs if isinstance(v := measure.value(r), int | float)]
    return statistics.fmean(values) if values else None


def _mean_result(measure, runs):
    key = "top1" if measure.top == 1 else "top5"
    values = [v for r in runs if isinstance(v := (r.result or {}).get(key), int | float)]
    return statistics.fmean(values) if values else None


def check(claim: SeedClaim, datasets, cells, flags, evaluate) -> dict:
    """One claim's row: the seed's words, the data set, the verdict and the evidence."""
    scope = [claim.dataset] if claim.dataset else list(datasets)
    named = sorted({m for rel in claim.relations for m in rel[1:3]}, key=[V, R, I].index)
    row = {"text": claim.text, "where": claim.where,
           "dataset": dataset_title(claim.dataset) if claim.dataset else "all",
           "evidence": []}  # fmt: skip
    why_not, states = [], []
    for d in scope:
        if claim.dataset and claim.dataset not in datasets:
            why_not.append(f"no run on {dataset_title(d)}")
            continue
        missing = [m for m in named if _cell(d, m, cells) is None]
        if missing:
            why_not.append(
                f"{', '.join(model_title(m) for m in missing)} not run on {dataset_title(d)}"
            )
            continue
        learned = any(rel[0].learned for rel in claim.relations)
        flagged = [
            m for m in named
            if learned and (flags.get((d, _cell(d, m, cells))) or {}).get("flagged")
        ]  # fmt: skip
        if flagged:
            why_not.append(
                "; ".join(
                    f"{model_title(_cell(d, m, cells))} on {dataset_title(d)} is flagged "
                    f"({flag_reasons(flags[(d, _cell(d, m, cells))])})"
                    for m in flagged
                )
            )
            continue
        stand_ins = [
            f"{model_title(_cell(d, m, cells))} stands in for {model_title(m)}, which these "
            f"runs lack"
            for m in named
            if _cell(d, m, cells) != m
        ]
        results = [relation(rel, d, cells, evaluate) for rel in claim.relations]
        prefix = f"{dataset_title(d)}: " if not claim.dataset else ""
        row["evidence"] += stand_ins + [prefix + x["text"] for x in results]
        states += [x["state"] for x in results]
    row["evidence"] = list(dict.fromkeys(row["evidence"]))  # a stand-in is named once
    if not states:
        row["verdict"] = "not testable here"
        row["evidence"] = why_not
    elif "reversed" in states:
        row["verdict"] = "not supported"
    elif all(s == "holds" for s in states) and not why_not:
        row["verdict"] = "supported"
    else:
        row["verdict"] = "not decided"
        row["evidence"] += [f"not testable: {w}" for w in why_not]
    return row


def check_all(datasets, cells, flags, evaluate) -> list[dict]:
    """Every claim's row; none where the runs hold none of the seed's models (or a stand-in):
    a report of other models has nothing to say about them."""
    if not any(_cell(d, m, cells) for d in datasets for m in (V, R, I)):
        return []
    return [check(c, datasets, cells, flags, evaluate) for c in CLAIMS]
