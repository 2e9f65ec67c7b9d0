"""The seed report's own claims checked against runs (study.report.seed_claims): fixed records
with known per-image outcomes and training metrics, each verdict on both sides of its rule."""

from __future__ import annotations

import dataclasses

import numpy as np
from test_stats import fake_run

from study.report.seed_claims import CLAIMS, check

N = 1000
CIFAR_TOP1 = CLAIMS[3]  # "Inception achieved the highest top-1 accuracy, and VGG the worst"
CIFAR_TRAIN = CLAIMS[5]  # VGG highest training accuracy and lowest loss, then ResNet, Inception
SPEED_ALL = CLAIMS[10]  # "ResNet was significantly faster than the other models"


def runs(spec, dataset="cifar10", metrics=None):
    """{(dataset, model): runs} from {model: {seed: correct count}}; `metrics(model, seed)`
    gives a run's metrics."""
    cells, next_id = {}, 1
    for model, by_seed in spec.items():
        rs = []
        for seed, count in by_seed.items():
            r = fake_run(next_id, model, np.arange(N) < count, seed=seed, dataset=dataset)
            if metrics:
                r = dataclasses.replace(r, metrics=metrics(model, seed))
            rs.append(r)
            next_id += 1
        cells[(dataset, model)] = rs
    return cells


def verdict(claim, cells, flags=None):
    datasets = sorted({d for d, _ in cells})
    return check(claim, datasets, cells, flags or {}, lambda r: r.evaluation())


def test_an_accuracy_claim_is_supported_only_with_three_seeds_each_significant():
    three = {"vgg16": {0: 700, 1: 700, 2: 700}, "resnet50": {0: 800, 1: 800, 2: 800},
             "inception_v3": {0: 900, 1: 900, 2: 900}}  # fmt: skip
    row = verdict(CIFAR_TOP1, runs(three))
    assert row["verdict"] == "supported", row
    assert row["evidence"][0] == (
        "test top-1, Inception-V3 > ResNet-50: Inception-V3 0.9000 vs ResNet-50 0.8000; "
        "3 seeds, McNemar at each seed"
    )
    # Two seeds: the same outcomes decide nothing.
    two = {m: {0: c[0], 1: c[1]} for m, c in three.items()}
    row = verdict(CIFAR_TOP1, runs(two))
    assert row["verdict"] == "not decided"
    assert "2 comparable seeds of the 3 needed" in row["evidence"][0]
    # The other way round at every seed: not supported.
    reversed_ = {"vgg16": three["inception_v3"], "resnet50": three["resnet50"],
                 "inception_v3": three["vgg16"]}  # fmt: skip
    assert verdict(CIFAR_TOP1, runs(reversed_))["verdict"] == "not supported"
    # A difference McNemar does not find (b = 5, c = 0: p = 0.0625) decides nothing.
    close = {**three, "inception_v3": {0: 805, 1: 805, 2: 805}}
    row = verdict(CIFAR_TOP1, runs(close))
    assert row["verdict"] == "not decided"
    assert row["evidence"][0].endswith(
        "3 comparable seeds (McNemar at each seed): 0 its way, 0 the other, 3 neither"
    )


def test_a_claim_about_a_model_not_run_or_flagged_is_not_testable_here():
    cells = runs({"vgg16": {0: 700}, "resnet50": {0: 800}})
    row = verdict(CIFAR_TOP1, cells)
    assert row == {"text": CIFAR_TOP1.text, "where": "4.2.2", "dataset": "CIFAR-10",
                   "evidence": ["Inception-V3 not run on CIFAR-10"],
                   "verdict": "not testable here"}  # fmt: skip
    cells = runs({"vgg16": {0: 700}, "resnet50": {0: 800}, "inception_v3": {0: 900}})
    flags = {("cifar10", "vgg16"): {"flagged": True, "collapse": True}}
    row = verdict(CIFAR_TOP1, cells, flags)
    assert row["verdict"] == "not testable here"
    assert row["evidence"] == ["VGG-16 on CIFAR-10 is flagged (predictions collapsed)"]
    # Speed does not depend on what a model learned: a flagged cell's images/s still counts.
    assert verdict(SPEED_ALL, cells, flags)["verdict"] == "not decided"


def training(values):
    """metrics(model, seed) giving train_top1 / train_loss / images/s from {model: (...)}."""

    def metrics(model, seed):
        top1, loss, rate = values[model](seed)
        return {"train_top1": [(1, top1 - 0.1), (2, top1)], "train_loss": [(1, 2.0), (2, loss)],
                "train_images": [(1, rate * 10.0), (2, rate * 10.0)],
                "train_seconds": [(1, 10.0), (2, 10.0)]}  # fmt: skip

    return metrics


def test_training_claims_compare_the_numbers_at_every_seed():
    spec = {m: {0: 800, 1: 800, 2: 800} for m in ("vgg16", "resnet50", "inception_v3")}
    order = {"vgg16": lambda s: (0.99, 0.05, 40.0), "resnet50": lambda s: (0.95, 0.2, 150.0),
             "inception_v3": lambda s: (0.90, 0.4, 80.0)}  # fmt: skip
    cells = runs(spec, metrics=training(order))
    assert verdict(CIFAR_TRAIN, cells)["verdict"] == "supported"
    assert verdict(SPEED_ALL, cells)["verdict"] == "supported"
    # At seed 1 ResNet-50 trains to a higher accuracy than VGG-16: the seeds disagree.
    mixed = {**order, "resnet50": lambda s: (0.995 if s == 1 else 0.95, 0.2, 150.0)}
    row = verdict(CIFAR_TRAIN, runs(spec, metrics=training(mixed)))
    assert row["verdict"] == "not decided"
    assert row["evidence"][0].startswith(
        "training top-1 at the last epoch, VGG-16 > ResNet-50: VGG-16 0.9900 vs ResNet-50 "
    )
    assert row["evidence"][0].endswith(
        "3 comparable seeds (at each seed): 2 its way, 1 the other, 0 neither"
    )


def test_a_stand_in_is_named_once_and_checked_in_the_seed_models_place():
    spec = {"vgg16_bn": {0: 700, 1: 700, 2: 700}, "resnet50": {0: 800, 1: 800, 2: 800},
            "inception_v3": {0: 900, 1: 900, 2: 900}}  # fmt: skip
    row = verdict(CIFAR_TOP1, runs(spec))
    assert row["verdict"] == "supported"
    assert row["evidence"][0] == "VGG-16-BN stands in for VGG-16, which these runs lack"
    assert sum("stands in" in e for e in row["evidence"]) == 1


def test_the_report_prints_every_claim_with_its_verdict(tmp_path):
    import html
    import re

    from test_stats import report_html

    spec = {"vgg16": {0: 700}, "resnet50": {0: 800}, "inception_v3": {0: 900}}
    records = [r for rs in runs(spec).values() for r in rs]
    page = report_html(records, tmp_path)
    rows = re.findall(r'<tr data-claim="\d+">(.*?)</tr>', page, re.S)
    assert len(rows) == len(CLAIMS) == 11
    text = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", r)).split()) for r in rows]
    assert text[3].startswith(
        "“Inception achieved the highest top-1 accuracy, and VGG achieved the worst” (§4.2.2) "
        "CIFAR-10 not decided test top-1, Inception-V3 > ResNet-50"
    )
    assert text[0].endswith("MNIST not testable here no run on MNIST")
    assert "(11 claims: 6 not decided, 5 not testable here)" in page

    # A report of none of the seed's models has no claims table.
    other = [
        fake_run(1, "resnet18", np.arange(N) < 900),
        fake_run(2, "small_cnn", np.arange(N) < 800),
    ]
    assert 'data-claim="' not in report_html(other, tmp_path)


# Cases the mutation run (benchmarks/mutation.py seed-claims) found untested.
THREE = ("vgg16", "resnet50", "inception_v3")


def test_the_overfitting_claim_compares_each_models_train_test_gap():
    gap_claim = CLAIMS[9]  # VGG-16 scores the highest training but lowest test accuracy
    spec = {m: {0: 800, 1: 800, 2: 800} for m in THREE}
    # (train top-1, test top-1) at the last epoch: gaps 0.20, 0.05 and 0.10.
    ends = {"vgg16": (0.99, 0.79), "resnet50": (0.95, 0.90), "inception_v3": (0.90, 0.80)}

    def metrics(model, seed):
        train, test = ends[model]
        return {"train_top1": [(1, 0.5), (2, train)], "test_top1": [(1, 0.4), (2, test)]}

    row = verdict(gap_claim, runs(spec, metrics=metrics))
    assert row["verdict"] == "supported", row
    assert row["evidence"][0] == (
        "CIFAR-10: training minus test top-1 at the last epoch, VGG-16 > ResNet-50: "
        "VGG-16 0.2000 vs ResNet-50 0.0500; 3 seeds, at each seed"
    )
    ends["vgg16"] = (0.96, 0.94)  # a gap of 0.02: the smallest
    assert verdict(gap_claim, runs(spec, metrics=metrics))["verdict"] == "not supported"


def test_equally_highest_needs_no_difference_between_the_two_and_both_above_the_third():
    tie_claim = CLAIMS[0]  # MNIST: Inception and ResNet scoring equally highest
    spec = {"vgg16": dict.fromkeys(range(3), 800), "resnet50": dict.fromkeys(range(3), 900),
            "inception_v3": dict.fromkeys(range(3), 900)}  # fmt: skip
    row = verdict(tie_claim, runs(spec, dataset="mnist"))
    assert row["verdict"] == "supported", row
    assert row["evidence"][2] == (
        "test top-1, Inception-V3 ≈ ResNet-50: Inception-V3 0.9000 vs ResNet-50 0.9000; "
        "3 seeds, McNemar at each seed"
    )
    # Inception-V3 significantly above ResNet-50 at every seed: not equal.
    spec["inception_v3"] = dict.fromkeys(range(3), 950)
    assert verdict(tie_claim, runs(spec, dataset="mnist"))["verdict"] == "not supported"
    spec["inception_v3"] = {0: 950, 1: 950, 2: 900}  # two seeds differ, one does not
    assert verdict(tie_claim, runs(spec, dataset="mnist"))["verdict"] == "not decided"


def test_a_top5_claim_is_judged_on_top5_correctness():
    top5_claim = CLAIMS[4]  # CIFAR-10: ResNet highest top-5, VGG the worst
    spec = {"vgg16": dict.fromkeys(range(3), 700), "resnet50": dict.fromkeys(range(3), 900),
            "inception_v3": dict.fromkeys(range(3), 800)}  # fmt: skip
    cells = runs(spec)
    # Top-1 wrong everywhere; the true class second where `count` says, else not in the five.
    for rs in cells.values():
        for r in rs:
            ev = r.evaluation()
            right = ev["topk"][:, 0] == ev["labels"]
            ev["topk"][right, 1] = ev["labels"][right]
            ev["topk"][:, 0] = (ev["labels"] + 9) % 10
    row = verdict(top5_claim, cells)
    assert row["verdict"] == "supported", row
    assert row["evidence"][0].startswith("test top-5, ResNet-50 > Inception-V3: ")


def test_which_model_learned_fastest_is_read_after_the_first_epoch():
    early_claim = CLAIMS[8]  # Tiny-ImageNet: ResNet reached the highest accuracy first
    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    first = {"vgg16": 0.10, "resnet50": 0.30, "inception_v3": 0.20}

    def metrics(model, seed):  # VGG-16 ends highest, but ResNet-50 leads after epoch 1
        return {"train_top1": [(1, first[model]), (2, 0.9 if model == "vgg16" else 0.5)]}

    row = verdict(early_claim, runs(spec, dataset="tiny_imagenet", metrics=metrics))
    assert row["verdict"] == "supported", row
    assert row["evidence"][0].startswith(
        "training top-1 after the first epoch, ResNet-50 > VGG-16: ResNet-50 0.3000 vs "
        "VGG-16 0.1000"
    )
