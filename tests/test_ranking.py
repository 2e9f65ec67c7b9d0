"""When the report may rank models (study.report.ranking): fixed records with known per-image
outcomes, each rule tested on both sides of its boundary (seeds: 2 and 3; McNemar's p: 0.0625
and 0.03125), and the wording every part of the report takes from the one decision."""

from __future__ import annotations

import re
from html import unescape

import numpy as np
from test_stats import fake_run

from study.report.prose import claim, conclusions, verdict
from study.report.ranking import decide
from study.report.tables import results_table

N = 1000


def right(count):
    """Per-image outcomes: the first `count` of N test images classified correctly."""
    return np.arange(N) < count


def cells_of(spec, **config):
    """{("mnist", model): runs} from {model: {seed: correct count}}; ids in order."""
    cells, next_id = {}, 1
    for model, by_seed in spec.items():
        runs = []
        for seed, count in by_seed.items():
            runs.append(fake_run(next_id, model, right(count), seed=seed, config=config))
            next_id += 1
        cells[("mnist", model)] = runs
    return cells


def evaluate(r):
    return r.evaluation()


def decision(spec, flags=None, **config):
    cells = cells_of(spec, **config)
    models = [m for _, m in cells]
    return decide("mnist", models, cells, flags or {}, evaluate), cells


def test_three_seeds_each_significant_in_its_favour_rank_first():
    # ResNet-50 right on 900 images, VGG-16 on 800 of the same at every seed: b = 100, c = 0.
    t, cells = decision({"vgg16": {0: 800, 1: 800, 2: 800}, "resnet50": {0: 900, 1: 900, 2: 900}})
    assert (t["leader"], t["ranked"], t["reasons"]) == ("resnet50", True, [])
    # One test per seed both ran, each seed-matched and in the leader's favour.
    assert [(r["seed"], r["matched"], r["test"].b, r["test"].c) for r in t["rows"]] == [
        ("0", True, 100, 0), ("1", True, 100, 0), ("2", True, 100, 0),
    ]  # fmt: skip
    assert [r["runs"] for r in t["rows"]] == ["4 vs 1", "5 vs 2", "6 vs 3"]
    assert verdict(t) == "ranked"

    # ▲ on the ranked model's top-1 cell only: never on top-5, never on the other model.
    table = results_table(cells, ["mnist"], ["vgg16", "resnet50"], {}, {}, {"mnist": "resnet50"})
    marked = [(row["metric"], c["model"]) for row in table["rows"] for c in row["cells"]
              if c["best"]]  # fmt: skip
    assert marked == [("top1", "resnet50")] and table["ranks"]
    # The same table without a ranking marks nothing, though the top-1 row still names the
    # highest observed mean for the prose.
    table = results_table(cells, ["mnist"], ["vgg16", "resnet50"], {}, {}, {})
    assert not any(c["best"] for row in table["rows"] for c in row["cells"])
    assert not table["ranks"] and table["rows"][0]["best"]["model"] == "resnet50"


def test_two_seeds_per_cell_are_not_a_ranking_however_clear_the_tests():
    t, _ = decision({"vgg16": {0: 800, 1: 800}, "resnet50": {0: 900, 1: 900, 2: 900}})
    assert t["leader"] == "resnet50" and not t["ranked"]
    assert t["reasons"] == [
        "a ranking needs at least 3 seeds in every compared cell, and VGG-16 has 2"
    ]
    assert all(r["favours"] for r in t["rows"])  # every test did go its way
    assert verdict(t) == "observed"


def test_one_seed_short_of_significance_stops_the_ranking():
    # b = 5, c = 0: exact two-sided p = 2 / 2**5 = 0.0625, not below 0.05.
    close = {"vgg16": {0: 800, 1: 800, 2: 895}, "resnet50": {0: 900, 1: 900, 2: 900}}
    t, _ = decision(close)
    assert not t["ranked"]
    assert t["reasons"] == [
        "it does not differ significantly from VGG-16 at seed 2 (p = 0.0625 by McNemar's test)"
    ]
    # b = 6, c = 0: p = 2 / 2**6 = 0.03125, below 0.05: ranked.
    t, _ = decision({**close, "vgg16": {0: 800, 1: 800, 2: 894}})
    assert t["ranked"] and t["reasons"] == []


def test_a_seed_going_the_other_way_stops_the_ranking():
    # ResNet-50's mean is higher, but at seed 1 VGG-16 is significantly better.
    t, _ = decision({"vgg16": {0: 700, 1: 950, 2: 700}, "resnet50": {0: 900, 1: 850, 2: 900}})
    assert t["leader"] == "resnet50" and not t["ranked"]
    assert t["reasons"] == [
        "VGG-16 is significantly better at seed 1 (p < 0.0001 by McNemar's test)"
    ]
    other = [r for r in t["rows"] if r["seed"] == "1"][0]
    assert other["test"].significant and not other["favours"]


def test_a_flagged_cell_is_in_no_ranking_and_is_named_as_left_out():
    spec = {
        "vgg16": {0: 990, 1: 990, 2: 990},  # the highest mean, but flagged
        "resnet50": {0: 900, 1: 900, 2: 900},
        "inception_v3": {0: 800, 1: 800, 2: 800},
    }
    flags = {("mnist", "vgg16"): {"flagged": True}}
    t, cells = decision(spec, flags)
    assert t["leader"] == "resnet50" and t["ranked"]
    assert t["excluded"] == ["VGG-16"] and all(r["model"] != "VGG-16" for r in t["rows"])
    # Left with one unflagged model there is nothing to rank.
    flags[("mnist", "inception_v3")] = {"flagged": True}
    t = decide("mnist", list(m for _, m in cells), cells, flags, evaluate)
    assert verdict(t) == "single" and not t["ranked"] and t["rows"] == []


def test_different_budgets_and_a_tie_are_reasons():
    spec = {"vgg16": {0: 800, 1: 800, 2: 800}, "resnet50": {0: 900, 1: 900, 2: 900}}
    cells = cells_of(spec, epochs=2)
    cells[("mnist", "vgg16")][0].config["epochs"] = 5
    t = decide("mnist", ["vgg16", "resnet50"], cells, {}, evaluate)
    assert t["reasons"] == ["the runs trained under different budgets (epochs)"]

    t, _ = decision({"vgg16": {0: 900, 1: 900, 2: 900}, "resnet50": {0: 900, 1: 900, 2: 900}})
    assert not t["ranked"] and t["reasons"][0] == "ResNet-50 has the same mean top-1"
    assert "does not differ significantly from ResNet-50 at seeds 0, 1, 2" in t["reasons"][1]


def test_models_that_share_no_seed_get_one_unmatched_test_and_no_ranking():
    t, _ = decision({"vgg16": {3: 800, 4: 800, 5: 800}, "resnet50": {0: 900, 1: 900, 2: 900}})
    assert [(r["matched"], r["seed"], r["runs"]) for r in t["rows"]] == [(False, None, "4 vs 1")]
    assert t["reasons"] == ["it shares no seed with VGG-16, so no test is seed-matched"]


def test_test_images_that_differ_leave_a_pair_untested():
    spec = {"vgg16": {0: 800, 1: 800, 2: 800}, "resnet50": {0: 900, 1: 900, 2: 900}}
    cells = cells_of(spec)
    cells[("mnist", "vgg16")][2] = fake_run(3, "vgg16", right(800), seed=2,
                                            indices=np.arange(N)[::-1])  # fmt: skip
    t = decide("mnist", ["vgg16", "resnet50"], cells, {}, evaluate)
    untested = [r for r in t["rows"] if r["test"] is None]
    assert [r["seed"] for r in untested] == ["2"]
    assert t["reasons"] == [
        "it cannot be tested against VGG-16 (their runs were evaluated on different test images)"
    ]


def test_the_sentences_say_what_the_decision_says():
    spec = {"vgg16": {0: 800, 1: 800, 2: 800}, "resnet50": {0: 900, 1: 900, 2: 900}}
    cells = cells_of(spec)
    cells[("mnist", "resnet50")][0].config["image_size"] = 32
    cells[("mnist", "vgg16")][0].config["image_size"] = 64
    t = decide("mnist", ["vgg16", "resnet50"], cells, {}, evaluate)
    table = results_table(cells, ["mnist"], ["vgg16", "resnet50"], {}, {}, {"mnist": "resnet50"})
    best = table["rows"][0]["best"]
    sentence = claim(t, best)
    assert sentence.startswith(
        "On MNIST, ResNet-50 ranks first in top-1 accuracy (top-1 0.9000 ± 0.0000, mean of 3 runs)"
    ), sentence
    # The input sizes the protocol set per model are named with the ranking.
    assert "(inputs: ResNet-50 at 32 px, VGG-16 at 64 px)" in sentence
    assert "ranks first on MNIST" in conclusions([t], cells)[0]

    t, _ = decision({"vgg16": {0: 800}, "resnet50": {0: 900}})
    sentence = claim(t, {"stat": table["rows"][0]["best"]["stat"]})
    assert "no model is ranked: the highest observed top-1 is ResNet-50's" in sentence
    assert "at least 3 seeds in every compared cell, and ResNet-50 has 1, VGG-16 has 1" in (
        sentence
    )
    closing = conclusions([t], cells)[0]
    assert closing.startswith("No model is ranked on MNIST.")
    # A significant test at one seed is said to hold for those trained models only.
    assert "significantly better than VGG-16 at seed 0 (p < 0.0001), which holds for those" in (
        closing
    )
    assert "ranks first" not in closing


def test_the_other_models_follow_the_highest_in_order_of_their_mean():
    # VGG-16 is listed first but has the lowest mean: "then" must go down, not by listing.
    t, cells = decision({"vgg16": {0: 700}, "inception_v3": {0: 900}, "resnet50": {0: 850}})
    assert t["leader"] == "inception_v3"
    assert [r["model"] for r in t["rows"]] == ["ResNet-50", "VGG-16"]
    closing = conclusions([t], cells)[0]
    assert "Inception-V3's (0.9000; then ResNet-50 (0.8500), VGG-16 (0.7000))" in closing


def test_a_ranked_report_marks_names_and_concludes_the_ranking_once(tmp_path):
    from test_stats import conclusions as conclusions_text
    from test_stats import pairs, report_html

    # Three seeds each; at every seed ResNet-18 is right where Small CNN is wrong on 8 images
    # and the reverse on 1: exact p = 0.0391, in ResNet-18's favour.
    records = []
    for seed in (0, 1, 2):
        a, b = pairs(8, 1, both_right=60, both_wrong=31)
        records += [fake_run(2 * seed + 1, "resnet18", a, seed=seed),
                    fake_run(2 * seed + 2, "small_cnn", b, seed=seed)]  # fmt: skip
    html = report_html(records, tmp_path)
    top1 = html[html.index('data-cell="mnist/resnet18/top1"') :].split("</td>")[0]
    assert 'class="mark"' in top1 and "▲" in top1
    assert 'aria-label="ranks first on its data set"' in top1  # a text equivalent
    assert html.count(">▲</span>") == 1  # ResNet-18's top-1 only, not its top-5
    assert "▲ (and bold) marks the model that ranks first on a data set" in html
    assert html.count('<tr data-test="mnist/Small CNN">') == 3  # one test per seed
    text = conclusions_text(html)
    assert text.count("ranks first") == 1  # said once
    assert "ResNet-18 ranks first on MNIST: its mean top-1 (0.6800 ± 0.0000) is above" in text


def test_flagged_cells_are_named_where_a_data_set_is_left_with_one_model_or_none():
    spec = {"vgg16": {0: 990}, "resnet50": {0: 900}}
    flags = {("mnist", "vgg16"): {"flagged": True}}
    t, cells = decision(spec, flags)
    table = results_table(cells, ["mnist"], ["vgg16", "resnet50"], {}, flags, {})
    best = table["rows"][0]["best"]
    assert best["model"] == "resnet50"  # the flagged higher mean is never the one named
    assert claim(t, best) == (
        "On MNIST ResNet-50 (top-1 0.9000) is the only model not flagged (VGG-16 is): "
        "no comparison."
    )
    flags[("mnist", "resnet50")] = {"flagged": True}
    t = decide("mnist", ["vgg16", "resnet50"], cells, flags, evaluate)
    assert t["best"] is None and claim(t, None) is None
    assert conclusions([t], cells) == [
        "On MNIST every model is flagged (VGG-16 and ResNet-50): these runs say nothing about "
        "which architecture is better there."
    ]


def test_cells_trained_for_the_same_time_are_compared_first(tmp_path):
    from pathlib import Path

    from test_stats import conclusions as conclusions_text
    from test_stats import report_html

    from study.report.ranking import equal_time
    from study.stores import read_file_store

    def timed(run_id, model, count, budget, seconds, protocol):
        r = fake_run(run_id, model, right(count),
                     config={"time_budget": budget, "protocol": protocol})  # fmt: skip
        r.info["training"] = {"train_seconds": seconds}
        return r

    cells = {
        ("mnist", "resnet18 [fast]"): [timed(1, "resnet18", 900, 600.0, 582.0, "fast")],
        ("mnist", "resnet18 [paper]"): [timed(2, "resnet18", 800, 600.0, 640.0, "paper")],
        ("mnist", "small_cnn"): [timed(3, "small_cnn", 700, 600.0, 300.0, "paper")],
    }
    models = [m for _, m in cells]
    (c,) = equal_time("mnist", models, cells, {}, evaluate)  # 582 s and 640 s: within 10 %
    assert (c["a"], c["b"], c["seconds"]) == ("ResNet-18 (fast)", "ResNet-18 (paper)",
                                              (582.0, 640.0))  # fmt: skip
    assert [(r["test"].b, r["test"].c, r["favours"]) for r in c["tests"]] == [(100, 0, True)]
    # 300 s is not the same time; 660 s would be just over 10 % from 582 s; another budget
    # or a flagged cell is no equal-time comparison either.
    cells[("mnist", "resnet18 [paper]")][0].info["training"]["train_seconds"] = 660.0
    assert equal_time("mnist", models, cells, {}, evaluate) == []
    cells[("mnist", "resnet18 [paper]")][0].info["training"]["train_seconds"] = 640.0
    assert equal_time("mnist", models, cells, {("mnist", "resnet18 [fast]"): {"flagged": 1}},
                      evaluate) == []  # fmt: skip
    cells[("mnist", "resnet18 [paper]")][0].config["time_budget"] = 900.0
    assert equal_time("mnist", models, cells, {}, evaluate) == []

    # The committed accuracy-per-time runs (real records): the equal-budget pair leads the
    # abstract and the conclusions, with its test.
    store = Path(__file__).parents[1] / "report" / "accuracy-per-time-runs"
    html = report_html(read_file_store(store), tmp_path)
    lead = (
        "At equal training time on CIFAR-10 (a budget of 600 s each; 582 s and 605 s trained), "
        "ResNet-18 (fast, epochs 5) reaches top-1 0.6215 against ResNet-18 (paper, 1.2 epochs, "
        "budget 600 s)'s 0.4438 (McNemar on the same test images: b = 2,599, c = 822, "
        "p < 0.0001 at seed 0): significant in its favour"
    )
    assert conclusions_text(html).startswith(f"5. Conclusions {lead}")
    abstract = html[html.index('id="abstract"') : html.index('id="method"')]
    assert lead in " ".join(unescape(re.sub(r"<[^>]+>", " ", abstract)).split())
    assert "inputs of 32 px instead of 224 px (in 2 of 3 runs)" in html


# Cases the mutation run (benchmarks/mutation.py ranking) found untested.


def test_each_reason_names_only_its_own_model_and_four_seeds_are_enough():
    # ResNet-50 beats VGG-16 at every seed but not Inception-V3 (b = 5, c = 0: p = 0.0625).
    spec = {"vgg16": dict.fromkeys(range(4), 800), "resnet50": dict.fromkeys(range(4), 900),
            "inception_v3": {0: 895, 1: 895, 2: 800, 3: 800}}  # fmt: skip
    t, _ = decision(spec)
    assert t["reasons"] == [
        "it does not differ significantly from Inception-V3 at seeds 0, 1 (p = 0.0625, "
        "p = 0.0625 by McNemar's test)"
    ]
    spec["inception_v3"] = dict.fromkeys(range(4), 800)
    t, _ = decision(spec)
    assert t["ranked"]  # four seeds are at least three


def test_seeds_pair_runs_by_value_whatever_their_order_or_size():
    # Seeds stored in the reverse of id order, large enough to be distinct int objects.
    def big(i):  # a new int object each time: equal seeds need not be the same object
        return int(str(1000 + i))

    spec = {"vgg16": {big(2): 700, big(1): 750, big(0): 800},
            "resnet50": {big(0): 900, big(1): 910, big(2): 920}}  # fmt: skip
    t, _ = decision(spec)
    assert [(r["seed"], r["test"].b) for r in t["rows"]] == [("1000", 100), ("1001", 160),
                                                             ("1002", 220)]  # fmt: skip
    # With no seed shared, the unmatched test takes the lowest seeds, not the lowest ids.
    spec = {"vgg16": {9: 700, 8: 800}, "resnet50": {5: 950, 4: 900}}
    t, _ = decision(spec)
    (row,) = t["rows"]
    assert (row["matched"], row["runs"]) == (False, "4 vs 2")


def test_a_seed_is_an_integer_and_not_a_boolean():
    from study.report.ranking import seed_of

    assert seed_of(fake_run(1, "vgg16", right(10), seed=True)) is None
    assert seed_of(fake_run(1, "vgg16", right(10), seed=3)) == 3


def test_missing_or_different_test_images_leave_a_pair_untested():
    cells = cells_of({"vgg16": {0: 800}, "resnet50": {0: 900}})
    leader, other = cells[("mnist", "resnet50")][0], cells[("mnist", "vgg16")][0]

    def with_indices(ia, ib):
        def ev(r):
            e = dict(r.evaluation())
            e["test_indices"] = ia if r is leader else ib
            return e

        return ev

    n = np.arange(N)
    for ia, ib in ((n + 1, n), (n, n + 1), (n[:-1], n), (n, n[:-1]), (None, n), (n, None)):
        t = decide("mnist", ["vgg16", "resnet50"], cells, {}, with_indices(ia, ib))
        assert t["rows"][0]["test"] is None, (ia, ib)
    # One run without an evaluation is as untestable as two.
    t = decide("mnist", ["vgg16", "resnet50"], cells, {},
               lambda r: None if r is other else r.evaluation())  # fmt: skip
    (row,) = t["rows"]
    assert (row["test"], row["matched"], row["reason"]) == (None, True, "no evaluation artifact")
    t = decide("mnist", ["vgg16", "resnet50"], cells_of({"vgg16": {1: 800}, "resnet50": {0: 900}}),
               {}, lambda r: None)  # fmt: skip
    assert t["rows"][0]["matched"] is False
    assert "it shares no seed with VGG-16, so no test is seed-matched" in t["reasons"]


def test_input_sizes_are_named_only_where_they_differ():
    from study.report.ranking import sizes_text

    assert sizes_text({"sizes": {"A": [32], "B": [32]}}) == ""
    assert sizes_text({"sizes": {}}) == ""
    assert sizes_text({"sizes": {"A": [32], "B": [64]}}) == "A at 32 px, B at 64 px"


def test_equal_time_orders_by_accuracy_and_bounds_both_ways():
    from study.report.model import model_title
    from study.report.ranking import equal_time

    def timed(run_id, count, budget, seconds, seed=0):
        r = fake_run(run_id, "resnet18", right(count), seed=seed, config={"time_budget": budget})
        r.info["training"] = {"train_seconds": seconds}
        return r

    def pair(a, b):
        cells = {("mnist", "x"): a, ("mnist", "y"): b}
        return equal_time("mnist", ["x", "y"], cells, {}, evaluate)

    # The more accurate cell comes first, whichever the order of the models.
    (c,) = pair([timed(1, 800, 600.0, 600.0)], [timed(2, 900, 600.0, 590.0)])
    assert (c["a"], c["seconds"], c["tests"][0]["favours"]) == (model_title("y"), (590.0, 600.0),
                                                                True)  # fmt: skip
    # Exactly 10 % apart is still the same time; budgets differing either way are not.
    assert pair([timed(1, 800, 600.0, 600.0)], [timed(2, 900, 600.0, 540.0)])
    assert not pair([timed(1, 800, 900.0, 600.0)], [timed(2, 900, 600.0, 600.0)])
    assert not pair([timed(1, 800, 600.0, 600.0)], [timed(2, 900, 900.0, 600.0)])
    # A cell whose runs had two budgets has no one budget.
    assert not pair([timed(1, 800, 600.0, 600.0), timed(3, 800, 900.0, 600.0, seed=1)],
                    [timed(2, 900, 600.0, 600.0)])  # fmt: skip
    # A difference McNemar does not find (b = 5, c = 0) does not favour either.
    (c,) = pair([timed(1, 895, 600.0, 600.0)], [timed(2, 900, 600.0, 600.0)])
    assert c["tests"][0]["favours"] is False
    # A boolean budget is no budget.
    assert not pair([timed(1, 800, True, 600.0)], [timed(2, 900, True, 600.0)])


def test_seeds_pair_by_value_whichever_side_has_more_of_them():
    # The leader's seeds in the reverse of id order, the other model with a seed more: every
    # shared seed pairs the runs of that seed, whichever set the shared seeds come from.
    def big(i):
        return int(str(1000 + i))

    spec = {"vgg16": {big(0): 700, big(1): 750, big(2): 800, big(3): 800},
            "resnet50": {big(2): 920, big(1): 910, big(0): 900}}  # fmt: skip
    t, _ = decision(spec)
    assert [(r["seed"], r["runs"], r["test"].b) for r in t["rows"]] == [
        ("1000", "7 vs 1", 200), ("1001", "6 vs 2", 160), ("1002", "5 vs 3", 120),
    ]  # fmt: skip


def test_three_equal_means_are_named_together():
    t, _ = decision(
        {m: dict.fromkeys(range(3), 900) for m in ("vgg16", "resnet50", "inception_v3")}
    )
    assert t["reasons"][0] == "ResNet-50, Inception-V3 have the same mean top-1"


def test_a_reason_is_given_only_for_its_own_model_whatever_the_order():
    # ResNet-50 leads; one model is close to it at two seeds (p = 0.0625), the other clearly
    # below at all four. In either order of the models, the reason names only the close one.
    below = dict.fromkeys(range(4), 800)
    close = {0: 895, 1: 895, 2: 800, 3: 800}
    for close_model, far_model in (("inception_v3", "vgg16"), ("vgg16", "inception_v3")):
        spec = {close_model: close, far_model: below, "resnet50": dict.fromkeys(range(4), 900)}
        t, _ = decision(spec)
        title = {"vgg16": "VGG-16", "inception_v3": "Inception-V3"}[close_model]
        assert t["reasons"] == [
            f"it does not differ significantly from {title} at seeds 0, 1 (p = 0.0625, "
            "p = 0.0625 by McNemar's test)"
        ], close_model


def test_every_reason_a_pair_is_untested_is_named_once():
    spec = {"vgg16": dict.fromkeys(range(3), 800), "resnet50": dict.fromkeys(range(3), 900)}
    cells = cells_of(spec)
    vgg = cells[("mnist", "vgg16")]
    vgg[1] = fake_run(2, "vgg16", right(800), seed=1, indices=np.arange(N)[::-1])
    vgg[2] = fake_run(3, "vgg16", right(800), seed=2, indices=np.arange(N)[::-1])
    t = decide("mnist", ["vgg16", "resnet50"], cells, {},
               lambda r: None if r is vgg[0] else r.evaluation())  # fmt: skip
    assert t["reasons"] == [
        "it cannot be tested against VGG-16 (no evaluation artifact; their runs were evaluated "
        "on different test images)"
    ]


def test_equal_time_keeps_the_order_of_equal_means_and_favours_only_a_significant_lead():
    from study.report.model import model_title
    from study.report.ranking import equal_time

    def timed(run_id, count, seed=0):
        r = fake_run(run_id, "resnet18", right(count), seed=seed, config={"time_budget": 600.0})
        r.info["training"] = {"train_seconds": 600.0}
        return r

    def pair(a, b):
        cells = {("mnist", "x"): a, ("mnist", "y"): b}
        return equal_time("mnist", ["x", "y"], cells, {}, evaluate)

    (c,) = pair([timed(1, 900)], [timed(2, 900)])
    assert (c["a"], c["b"]) == (model_title("x"), model_title("y"))
    # x leads on the mean (0.845 vs 0.800), but y is significantly better at seed 0.
    (c,) = pair([timed(1, 700), timed(3, 990, seed=1)], [timed(2, 800), timed(4, 800, seed=1)])
    assert c["a"] == model_title("x")
    assert [(t["seed"], t["favours"]) for t in c["tests"]] == [("0", False), ("1", True)]
