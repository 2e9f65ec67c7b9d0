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
    # A gap wider than the test accuracy itself (0.99 - 0.30 = 0.69) is still a difference.
    ends["vgg16"] = (0.99, 0.30)
    assert verdict(gap_claim, runs(spec, metrics=metrics))["verdict"] == "supported"


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
    # Top-1 wrong everywhere; the true class fifth where `count` says, else not in the five.
    for rs in cells.values():
        for i, r in enumerate(rs):
            # A copy first: the evaluation changed below is the one its record keeps.
            r = rs[i] = dataclasses.replace(r, result=dict(r.result))
            ev = r.evaluation()
            right = ev["topk"][:, 0] == ev["labels"]
            ev["topk"][right, 4] = ev["labels"][right]
            ev["topk"][right, 1:4] = (ev["labels"][right, None] + [1, 2, 3]) % 10
            ev["topk"][:, 0] = (ev["labels"] + 9) % 10
            r.result.update(top1=0.0, top5=float(right.mean()))
    row = verdict(top5_claim, cells)
    assert row["verdict"] == "supported", row
    # The observed means are the runs' top-5, not their top-1.
    assert row["evidence"][0] == (
        "test top-5, ResNet-50 > Inception-V3: ResNet-50 0.9000 vs Inception-V3 0.8000; "
        "3 seeds, McNemar at each seed"
    )


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


def test_equally_highest_is_not_supported_when_either_model_is_above_the_other():
    tie_claim = CLAIMS[0]
    spec = {"vgg16": dict.fromkeys(range(3), 800), "resnet50": dict.fromkeys(range(3), 950),
            "inception_v3": dict.fromkeys(range(3), 900)}  # fmt: skip
    row = verdict(tie_claim, runs(spec, dataset="mnist"))  # ResNet-50 above at every seed
    assert row["verdict"] == "not supported", row
    assert row["evidence"][2].endswith("3 seeds, McNemar at each seed")


def test_only_the_seeds_both_models_ran_are_compared():
    spec = {"vgg16": dict.fromkeys(range(3), 700), "resnet50": dict.fromkeys(range(4), 800),
            "inception_v3": dict.fromkeys(range(5), 900)}  # fmt: skip
    row = verdict(CIFAR_TOP1, runs(spec))
    assert row["verdict"] == "supported", row
    assert row["evidence"][0].endswith("ResNet-50 0.8000; 4 seeds, McNemar at each seed")
    assert row["evidence"][1].endswith("VGG-16 0.7000; 3 seeds, McNemar at each seed")
    # No seed in common: nothing to compare, said with the right number.
    apart = {"vgg16": {0: 700}, "resnet50": {1: 800}, "inception_v3": {2: 900}}
    row = verdict(CIFAR_TOP1, runs(apart))
    assert row["evidence"][0].endswith("; 0 comparable seeds of the 3 needed"), row
    one = {"vgg16": {0: 700}, "resnet50": {0: 800}, "inception_v3": {0: 900}}
    row = verdict(CIFAR_TOP1, runs(one))
    assert row["evidence"][0].endswith("; 1 comparable seed of the 3 needed"), row


def test_more_seeds_than_needed_still_decide():
    four = {m: dict.fromkeys(range(4), c) for m, c in zip(THREE, (700, 800, 900), strict=True)}
    assert verdict(CIFAR_TOP1, runs(four))["verdict"] == "supported"


def test_a_model_run_on_other_data_sets_too_is_found_on_each():
    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    order = {"vgg16": lambda s: (0.99, 0.05, 40.0), "resnet50": lambda s: (0.95, 0.2, 150.0),
             "inception_v3": lambda s: (0.90, 0.4, 80.0)}  # fmt: skip
    cells = {**runs(spec, "cifar10", training(order)), **runs(spec, "mnist", training(order))}
    row = verdict(SPEED_ALL, cells)  # a claim over every data set the runs cover
    assert row["verdict"] == "supported", row
    assert [e.split(":")[0] for e in row["evidence"]] == ["CIFAR-10"] * 2 + ["MNIST"] * 2


def test_a_model_trained_two_ways_is_not_picked_for_the_seeds_one():
    spec = {
        "vgg16 [lr=0.1]": dict.fromkeys(range(3), 700),
        "vgg16 [lr=0.01]": dict.fromkeys(range(3), 700),
        "resnet50": dict.fromkeys(range(3), 800),
        "inception_v3": dict.fromkeys(range(3), 900),
    }
    row = verdict(CIFAR_TOP1, runs(spec))
    assert row["verdict"] == "not testable here"
    assert row["evidence"] == ["VGG-16 not run on CIFAR-10"]


def test_names_read_from_records_are_matched_by_value():
    """Models and data sets in a report come from records (JSON), not from literals: equal
    strings, but not the same objects as the claims' names."""
    fresh = {"".join(["vgg", "16"]): 700, "".join(["resnet", "50"]): 800,
             "".join(["inception", "_v3"]): 900}  # fmt: skip
    cells = runs({m: dict.fromkeys(range(3), c) for m, c in fresh.items()})
    cells = {("".join(["cifar", "10"]), m): rs for (_, m), rs in cells.items()}
    datasets = ["".join(["cifar", "10"])]
    row = check(CIFAR_TOP1, datasets, cells, {}, lambda r: r.evaluation())
    assert row["verdict"] == "supported", row
    assert not any("stands in" in e for e in row["evidence"])


def test_a_claim_over_every_data_set_goes_on_past_one_it_cannot_test():
    speeds = {"vgg16": lambda s: (0.9, 0.1, 40.0), "resnet50": lambda s: (0.9, 0.1, 150.0),
              "inception_v3": lambda s: (0.9, 0.1, 80.0)}  # fmt: skip
    full = {m: dict.fromkeys(range(3), 800) for m in THREE}
    # CIFAR-10 (checked first) lacks Inception-V3; MNIST has all three.
    cells = {
        **runs({m: full[m] for m in THREE[:2]}, "cifar10", training(speeds)),
        **runs(full, "mnist", training(speeds)),
    }
    row = verdict(SPEED_ALL, cells)
    assert row["verdict"] == "not decided", row
    assert row["evidence"][-1] == "not testable: Inception-V3 not run on CIFAR-10"
    assert row["evidence"][0].startswith("MNIST: training images/s, ResNet-50 > VGG-16")
    # The same when the first data set's VGG-16 is flagged, for a claim about learning.
    gap_claim = CLAIMS[9]
    cells = {**runs(full, "cifar10", training(speeds)), **runs(full, "mnist", training(speeds))}
    flags = {("cifar10", "vgg16"): {"flagged": True, "stuck": True}}
    row = verdict(gap_claim, cells, flags)
    assert row["verdict"] == "not decided", row
    assert row["evidence"][0].startswith("MNIST: training minus test top-1")


def test_equal_training_values_go_neither_way():
    same = {m: (lambda s: (0.9, 0.1, 100.0)) for m in THREE}
    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    row = verdict(CIFAR_TRAIN, runs(spec, metrics=training(same)))
    assert row["verdict"] == "not decided"
    assert row["evidence"][0].endswith(
        "3 comparable seeds (at each seed): 0 its way, 0 the other, 3 neither"
    )


def test_a_training_value_one_run_lacks_leaves_that_seed_out():
    order = training({"vgg16": lambda s: (0.99, 0.05, 40.0),
                      "resnet50": lambda s: (0.95, 0.2, 150.0),
                      "inception_v3": lambda s: (0.90, 0.4, 80.0)})  # fmt: skip

    def metrics(model, seed):  # ResNet-50's seed 2 recorded no training accuracy
        m = order(model, seed)
        return {k: v for k, v in m.items() if (model, seed, k) != ("resnet50", 2, "train_top1")}

    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    row = verdict(CIFAR_TRAIN, runs(spec, metrics=metrics))
    assert row["evidence"][0].endswith("; 2 comparable seeds of the 3 needed"), row


def test_the_last_epoch_is_the_last_of_several():
    def metrics(model, seed):  # VGG-16 ahead at epoch 2, ResNet-50 at the last (3)
        last = {"vgg16": 0.90, "resnet50": 0.95, "inception_v3": 0.80}[model]
        second = {"vgg16": 0.85, "resnet50": 0.80, "inception_v3": 0.70}[model]
        return {"train_top1": [(1, 0.5), (2, second), (3, last)],
                "train_loss": [(1, 2.0), (2, 1.0), (3, 1.0 - last)]}  # fmt: skip

    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    row = verdict(CIFAR_TRAIN, runs(spec, metrics=metrics))
    assert row["verdict"] == "not supported", row
    assert row["evidence"][0].startswith(
        "training top-1 at the last epoch, VGG-16 > ResNet-50: VGG-16 0.9000 vs ResNet-50 0.9500"
    )


def test_images_per_second_are_printed_to_one_decimal():
    rate = {"vgg16": 40.25, "resnet50": 150.25, "inception_v3": 80.25}
    rates = training({m: (lambda s, m=m: (0.9, 0.1, rate[m])) for m in THREE})
    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}
    row = verdict(SPEED_ALL, runs(spec, metrics=rates))
    assert row["evidence"][0] == (
        "CIFAR-10: training images/s, ResNet-50 > VGG-16: ResNet-50 150.2 vs VGG-16 40.2; "
        "3 seeds, at each seed"
    )


def test_speeds_are_compared_only_between_runs_timed_on_one_kind_of_machine():
    rate = {"vgg16": 40.0, "resnet50": 150.0, "inception_v3": 80.0}
    rates = training({m: (lambda s, m=m: (0.9, 0.1, rate[m])) for m in THREE})
    spec = {m: dict.fromkeys(range(3), 800) for m in THREE}

    def timed(cells, capability):  # {model: capability}: where each model's runs were timed
        out = {}
        for (d, m), rs in cells.items():
            t = {"device": "cpu", "device_name": "AMD EPYC", "torch_threads": 2,
                 "processes": 1, "cpu_capability": capability[m]}  # fmt: skip
            out[(d, m)] = [dataclasses.replace(r, info={**r.info, "training": t}) for r in rs]
        return out

    same = timed(runs(spec, metrics=rates), dict.fromkeys(THREE, "AVX512"))
    assert verdict(SPEED_ALL, same)["verdict"] == "supported"
    # VGG-16 timed on an AVX2 machine of the same name: its speed is not compared with the others'.
    apart = timed(runs(spec, metrics=rates), {**dict.fromkeys(THREE, "AVX512"), "vgg16": "AVX2"})
    row = verdict(SPEED_ALL, apart)
    assert row["verdict"] == "not decided"
    assert row["evidence"][0] == (
        "CIFAR-10: training images/s, ResNet-50 > VGG-16: ResNet-50 150.0 vs VGG-16 40.0; "
        "0 comparable seeds of the 3 needed; 3 seeds timed on different kinds of machine"
    )
    assert row["evidence"][1].endswith("; 3 seeds, at each seed")  # ResNet-50 > Inception-V3
    # Threads count too: the same CPU with 1 thread against 2 is another kind of machine.
    threads = timed(runs(spec, metrics=rates), dict.fromkeys(THREE, "AVX512"))
    threads[("cifar10", "inception_v3")] = [
        dataclasses.replace(r, info={**r.info, "training": {**r.info["training"],
                                                              "torch_threads": 1}})
        for r in threads[("cifar10", "inception_v3")]
    ]  # fmt: skip
    assert verdict(SPEED_ALL, threads)["verdict"] == "not decided"
    # So does a measured CPU speed: VGG-16's machine of the same name, instructions and threads
    # multiplied matrices at half the speed of the others' (more than 1.25x apart).
    for vgg_gflops, decided in ((100.0, "supported"), (50.0, "not decided")):
        speeds = timed(runs(spec, metrics=rates), dict.fromkeys(THREE, "AVX512"))
        for (_, m), rs in speeds.items():
            gflops = vgg_gflops if m == "vgg16" else 110.0
            rs[:] = [dataclasses.replace(r, info={**r.info, "training": {**r.info["training"],
                                                                         "cpu_gflops": gflops}})
                     for r in rs]  # fmt: skip
        assert verdict(SPEED_ALL, speeds)["verdict"] == decided
