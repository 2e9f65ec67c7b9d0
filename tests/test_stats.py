"""study.stats: hand-computed values on fixed predictions, and scipy / statsmodels where they
implement the same test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from study import stats


def pairs(b: int, c: int, both_right: int = 0, both_wrong: int = 0):
    """Per-sample correctness of models A and B with b (A right, B wrong) and c (A wrong,
    B right) discordant samples."""
    a = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    bb = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(a), np.array(bb)


# ---------------------------------------------------------------------------------------------
# By hand


def test_mcnemar_exact_by_hand():
    a, b = pairs(1, 5, both_right=40, both_wrong=4)
    result = stats.mcnemar(a, b)
    assert (result.b, result.c, result.n) == (1, 5, 50)
    assert result.method == "exact binomial" and result.statistic is None
    # 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    assert result.p_value == pytest.approx(14 / 64, abs=1e-12)
    assert not result.significant
    assert stats.mcnemar(*pairs(0, 0, both_right=9)).p_value == 1.0
    assert stats.mcnemar(*pairs(3, 3)).p_value == 1.0  # capped at 1
    # 0 vs 12: 2 / 2**12, significant
    assert stats.mcnemar(*pairs(0, 12)).p_value == pytest.approx(2 / 4096, abs=1e-15)
    assert stats.mcnemar(*pairs(0, 12)).significant
    # 3 vs 15: 2 * (1 + 18 + 153 + 816) / 2**18, a tail of four terms
    assert stats.mcnemar(*pairs(3, 15)).p_value == pytest.approx(2 * 988 / 2**18, rel=1e-12)


def test_discordant_pairs_are_counted_without_a_warning():
    import warnings

    a, b = pairs(3, 2, both_right=4, both_wrong=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report's output carries no numpy warning
        assert stats.mcnemar_counts(a, b) == (3, 2)
        assert stats.mcnemar_counts(b, a) == (2, 3)


def test_mcnemar_chi_square_by_hand():
    result = stats.mcnemar(*pairs(30, 10, both_right=50))
    assert result.method == "chi-square with continuity correction"
    assert result.statistic == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert result.p_value == pytest.approx(0.002663, abs=1e-6)
    assert result.significant
    # The switch: b + c = 24 is exact, 25 is chi-square.
    assert stats.mcnemar(*pairs(12, 12)).method == "exact binomial"
    assert stats.mcnemar(*pairs(13, 12)).method.startswith("chi-square")


def test_mcnemar_needs_paired_samples():
    with pytest.raises(ValueError, match="paired samples differ"):
        stats.mcnemar([True, False], [True])
    # The shorter first too: one sample would otherwise be broadcast against all of the other's.
    with pytest.raises(ValueError, match=r"^paired samples differ in shape: \(1,\) vs \(3,\)$"):
        stats.mcnemar_counts([True], [True, False, False])


@pytest.mark.parametrize("p", [0.0, 1.0, -0.5, 1.5])
def test_a_quantile_outside_0_1_is_refused_by_name(p):
    message = rf"^p={p} must lie strictly between 0 and 1$"
    with pytest.raises(ValueError, match=message):
        stats.t_quantile(p, 3)
    with pytest.raises(ValueError, match=message):
        stats.normal_quantile(p)


def test_wilson_by_hand():
    ci = stats.wilson_interval(8, 10)
    z = 1.959963984540054
    centre = (0.8 + z * z / 20) / (1 + z * z / 10)
    half = z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (ci.estimate, ci.method, ci.n) == (0.8, "wilson", 10)
    assert ci.low == pytest.approx(centre - half, abs=1e-12)
    assert ci.high == pytest.approx(centre + half, abs=1e-12)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.4902, 0.9433)
    full = stats.wilson_interval(10, 10)  # never beyond [0, 1], never zero-width
    assert full.high == 1.0 and 0.6 < full.low < 0.75
    with pytest.raises(ValueError):
        stats.wilson_interval(11, 10)


def test_t_interval_by_hand():
    ci = stats.mean_interval([0.8, 0.9, 1.0])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, 2}
    assert ci.estimate == pytest.approx(0.9) and ci.std == pytest.approx(0.1)
    assert (ci.low, ci.high) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert ci.method == "t" and ci.n == 3
    with pytest.raises(ValueError):
        stats.mean_interval([0.5])


def test_accuracy_interval_picks_t_or_wilson():
    assert stats.accuracy_interval([0.8, 0.9], 100).method == "t"
    three = stats.accuracy_interval([0.8, 0.9, 1.0], 100)  # three seeds and more: t too
    assert three == stats.Interval(0.9, three.low, three.high, "t", 3, three.std)
    assert three.low == pytest.approx(stats.mean_interval([0.8, 0.9, 1.0]).low)
    assert stats.accuracy_interval([0.8], 10) == stats.wilson_interval(8, 10)
    assert stats.accuracy_interval([0.8], None) is None
    wide = stats.accuracy_interval([0.1, 0.9], 50)  # t_{0.975, 1} = 12.7: clipped to [0, 1]
    assert (wide.low, wide.high) == (0.0, 1.0) and stats.mean_interval([0.1, 0.9]).low < 0


def test_ece_by_hand():
    conf = [0.95, 0.95, 0.55, 0.55]
    right = [True, False, True, True]
    # bin (14/15, 1]: accuracy 0.5, confidence 0.95; bin (8/15, 9/15]: 1.0 vs 0.55
    assert stats.expected_calibration_error(conf, right) == pytest.approx(0.5 * 0.45 + 0.5 * 0.45)
    assert stats.expected_calibration_error([1.0, 1.0], [True, True]) == 0.0
    rel = stats.reliability_bins(conf, right)
    assert len(rel.edges) == 16 and rel.count.sum() == 4
    assert rel.count[14] == 2 and rel.count[8] == 2
    assert rel.accuracy[14] == 0.5 and np.isnan(rel.accuracy[0])
    # Edges belong to the bin below: 1/15 is in bin 0, 0 too.
    edges = stats.reliability_bins([0.0, 1 / 15, 1.0], [1, 1, 1])
    assert list(edges.count[[0, 1, 14]]) == [2, 0, 1]


def test_per_sample_values_from_an_evaluation():
    evaluation = {
        "labels": np.array([0, 1, 2]),
        "topk": np.array([[0, 1], [2, 1], [2, 0]]),
        "topk_prob": np.array([[0.9, 0.1], [0.6, 0.3], [0.5, 0.5]], dtype=np.float16),
    }
    assert stats.correctness(evaluation).tolist() == [True, False, True]
    assert stats.top1_confidence(evaluation).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# The significance level: decisions on both sides of 0.05 and at it


def test_the_decision_is_p_below_0_05():
    def decided(p):
        return stats.McNemar(0, 0, 0, None, p, "exact binomial").significant

    assert stats.SIGNIFICANCE == 0.05
    assert decided(math.nextafter(0.05, 0.0)) and decided(0.0)
    assert not decided(0.05)  # at the level: not significant
    assert not decided(math.nextafter(0.05, 1.0)) and not decided(1.0)


@pytest.mark.parametrize(
    ("b", "c", "p", "significant"),
    [
        # exact: 2 * P(X <= min(b, c)), X ~ Bin(b + c, 1/2)
        (0, 7, 2 / 2**7, True),  # 0.0156: significant at 0.05, not at 0.01
        (1, 8, 2 * (1 + 9) / 2**9, True),  # 0.0391
        (10, 2, 2 * (1 + 12 + 66) / 2**12, True),  # 0.0386
        (1, 7, 2 * (1 + 8) / 2**8, False),  # 0.0703
        (9, 2, 2 * (1 + 11 + 55) / 2**11, False),  # 0.0654
        # chi-square: (|b - c| - 1)^2 / (b + c) = 4 -> p = erfc(sqrt(2)) = 0.0455
        (18, 7, math.erfc(math.sqrt(2.0)), True),
        (8, 17, math.erfc(math.sqrt(1.28)), False),  # 64 / 25 = 2.56 -> 0.1096
    ],
)
def test_p_values_either_side_of_0_05_by_hand(b, c, p, significant):
    result = stats.mcnemar(*pairs(b, c, both_right=20, both_wrong=3))
    assert result.p_value == pytest.approx(p, rel=1e-12)
    assert result.significant is significant
    assert 0.01 < p < 0.12  # every case lies between the usual levels


def test_distributions_at_hand_computed_values():
    # I_x(1, 1) = x, I_x(a, 1) = x^a, I_{1/2}(a, a) = 1/2
    assert stats.betainc(1.0, 1.0, 0.3) == pytest.approx(0.3, rel=1e-12)
    assert stats.betainc(3.0, 1.0, 0.5) == pytest.approx(0.125, rel=1e-12)
    assert stats.betainc(2.5, 2.5, 0.5) == pytest.approx(0.5, rel=1e-12)
    assert stats.betainc(2.0, 3.0, 0.9) == pytest.approx(0.9963, rel=1e-12)  # 1 - 4(.1)^3 + 3(.1)^4
    assert (stats.betainc(2.0, 3.0, 0.0), stats.betainc(2.0, 3.0, 1.0)) == (0.0, 1.0)
    assert (stats.betainc(2.0, 3.0, -0.5), stats.betainc(2.0, 3.0, 1.5)) == (0.0, 1.0)
    # Student's t with 1 degree of freedom is Cauchy: F(t) = 1/2 + atan(t) / pi
    for t in (-3.0, -0.5, 0.0, 0.5, 3.0):
        assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12)
    assert stats.t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), rel=1e-10)
    # 2 degrees of freedom: t_p = (2p - 1) / sqrt(2 p (1 - p))
    assert stats.t_quantile(0.975, 2) == pytest.approx(0.95 / math.sqrt(0.04875), rel=1e-10)
    assert stats.t_quantile(0.025, 2) == pytest.approx(-0.95 / math.sqrt(0.04875), rel=1e-10)
    assert stats.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    assert stats.normal_quantile(0.975) == pytest.approx(1.959963984540054, rel=1e-12)
    assert stats.normal_quantile(0.5) == pytest.approx(0.0, abs=1e-12)
    assert stats.normal_quantile(0.025) == pytest.approx(-1.959963984540054, rel=1e-12)
    for bad in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError):
            stats.t_quantile(bad, 3)
        with pytest.raises(ValueError):
            stats.normal_quantile(bad)


def test_mcnemar_chi_square_edges_by_hand():
    assert stats.mcnemar_chi2(13, 13) == (0.0, 1.0)  # the correction never overshoots
    assert stats.mcnemar_chi2(14, 12) == (pytest.approx(1 / 26), pytest.approx(
        math.erfc(math.sqrt(1 / 52))))  # fmt: skip
    assert stats.mcnemar_chi2(0, 0) == (0.0, 1.0)
    assert stats.mcnemar_exact_p(0, 0) == 1.0
    assert stats.mcnemar_exact_p(0, 1) == 1.0  # 2 * 1/2
    assert stats.mcnemar_exact_p(0, 2) == pytest.approx(0.5, rel=1e-12)
    # The switch at MCNEMAR_EXACT_BELOW, and a caller's own threshold.
    assert stats.MCNEMAR_EXACT_BELOW == 25
    assert stats.mcnemar(*pairs(18, 7), exact_below=26).method == "exact binomial"
    assert stats.mcnemar(*pairs(2, 2), exact_below=4).method.startswith("chi-square")


def test_intervals_at_their_edges_by_hand():
    none = stats.wilson_interval(0, 10)
    z2 = 1.959963984540054**2
    assert none.low == 0.0 and none.high == pytest.approx(z2 / (10 + z2), rel=1e-12)
    everything = stats.wilson_interval(10, 10)  # the mirror image
    assert everything.high == 1.0 and everything.low == pytest.approx(10 / (10 + z2), rel=1e-12)
    for successes, n in ((-1, 10), (11, 10), (0, 0), (-1, 100)):
        message = rf"^need 0 <= successes <= n and n >= 1, got {successes} / {n}$"
        with pytest.raises(ValueError, match=message):
            stats.wilson_interval(successes, n)
    # At successes = n the upper bound is 1 exactly in arithmetic, and in floats it can round
    # above (n = 27: 1.0000000000000002); at 0 the lower one below. Both are clipped.
    assert stats.wilson_interval(27, 27).high == 1.0
    assert stats.wilson_interval(0, 15).low == 0.0  # and n = 15 rounds below 0
    one = stats.wilson_interval(1, 1)  # one test image is enough for an interval
    assert one.high == 1.0 and one.low == pytest.approx(1 / (1 + z2), rel=1e-12)
    ci = stats.mean_interval([0.5, 0.7])  # t_{0.975, 1} = tan(0.475 pi), s = 0.1414, n = 2
    half = math.tan(math.pi * 0.475) * math.sqrt(0.02) / math.sqrt(2)
    assert (ci.low, ci.high) == (pytest.approx(0.6 - half), pytest.approx(0.6 + half))
    assert stats.mean_interval([0.4, 0.4, 0.4]).low == pytest.approx(0.4)  # no spread
    ninety = stats.mean_interval([0.8, 0.9, 1.0], confidence=0.9)  # t_{0.95, 2} = 2.919986
    assert ninety.high - ninety.estimate == pytest.approx(2.919985580355516 * 0.1 / math.sqrt(3))
    assert stats.accuracy_interval([], 100) is None
    assert stats.accuracy_interval([0.8], 0) is None


def test_ece_of_an_empty_set_and_of_perfect_calibration():
    assert math.isnan(stats.expected_calibration_error([], []))
    # Half right at confidence 0.5, all right at confidence 1: perfectly calibrated.
    conf = [0.5, 0.5, 1.0]
    assert stats.expected_calibration_error(conf, [True, False, True]) == 0.0
    assert stats.expected_calibration_error([0.2, 0.2], [True, True], bins=5) == pytest.approx(0.8)
    # A bin of one image counts: one wrong answer at confidence 0.9 is an ECE of 0.9.
    assert stats.expected_calibration_error([0.9], [False]) == pytest.approx(0.9)
    assert stats.expected_calibration_error([0.9, 0.3], [False, True]) == pytest.approx(0.8)
    rel = stats.reliability_bins([0.2, 0.2], [True, True], bins=5)
    assert list(rel.count) == [2, 0, 0, 0, 0]
    assert rel.edges == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])


# ---------------------------------------------------------------------------------------------
# Against scipy / statsmodels


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 100])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, p):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
    assert stats.t_cdf(1.7, df) == pytest.approx(scipy_stats.t.cdf(1.7, df), rel=1e-9)


@pytest.mark.parametrize("df", [1e3, 1e5, 1e7])
@pytest.mark.parametrize("t", [0.01, 0.5, 2.0, 5.0])
def test_t_cdf_matches_scipy_at_many_degrees_of_freedom(df, t):
    # Where the continued fraction must be taken on the side that converges (1 - I_{1-x}(b, a)).
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), rel=1e-8)


@pytest.mark.parametrize(
    ("a", "b", "x"),
    [(2, 3, 0.9), (50, 50, 0.3), (50, 50, 0.7), (0.5, 30, 0.01), (30, 0.5, 0.99), (200, 5, 0.9),
     (5, 200, 0.1), (1000, 1000, 0.55)],
)  # fmt: skip
def test_betainc_matches_scipy_on_either_side_of_its_mean(a, b, x):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.betainc(a, b, x) == pytest.approx(scipy_stats.beta.cdf(x, a, b), rel=1e-12)


def test_t_interval_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    values = [0.91, 0.935, 0.902, 0.944, 0.921]
    low, high = scipy_stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values)
    )
    ci = stats.mean_interval(values)
    assert (ci.low, ci.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


@pytest.mark.parametrize("k, n", [(0, 10), (8, 10), (10, 10), (973, 1000), (1, 3), (512, 600)])
def test_wilson_matches_statsmodels(k, n):
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    low, high = proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
    ci = stats.wilson_interval(k, n)
    assert ci.low == pytest.approx(low, abs=1e-9) and ci.high == pytest.approx(high, abs=1e-9)


@pytest.mark.parametrize("b, c", [(0, 0), (1, 5), (7, 2), (0, 24), (3, 15), (16, 5), (13, 12),
                                  (30, 10), (9, 60), (140, 170)])  # fmt: skip
def test_mcnemar_matches_statsmodels(b, c):
    tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    ours = stats.mcnemar(*pairs(b, c, both_right=100, both_wrong=7))
    table = [[100, b], [c, 7]]
    exact = ours.method == "exact binomial"
    theirs = tables.mcnemar(table, exact=exact, correction=True)
    assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-9, abs=1e-300)
    if not exact:
        assert ours.statistic == pytest.approx(float(theirs.statistic), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# The report's statistics, on runs with fixed predictions


def fake_run(
    run_id, model, correct, *, seed=0, dataset="mnist", indices=None, conf=0.9, config=None
):
    """A COMPLETED RunRecord whose evaluation.npz holds these per-image outcomes."""
    import io

    from study.stores import RunRecord

    correct = np.asarray(correct, dtype=bool)
    n = correct.size
    labels = np.arange(n) % 10
    top1 = np.where(correct, labels, (labels + 1) % 10)
    topk = np.stack([(top1 + k) % 10 for k in range(5)], axis=1)
    probs = np.tile([conf, 0.04, 0.03, 0.02, 0.01], (n, 1))
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, top1), 1)
    buf = io.BytesIO()
    indices = np.arange(n) if indices is None else indices
    np.savez(buf, labels=labels, topk=topk, topk_prob=probs.astype(np.float16),
             test_indices=indices, confusion=confusion)  # fmt: skip
    data = buf.getvalue()
    return RunRecord(
        id=str(run_id), store="memory", status="COMPLETED", experiment="study", command="run",
        config={"model": model, "dataset": dataset, "seed": seed, "head": "replace",
                **(config or {})},
        info={"dataset": {"test_count": n, "num_classes": 10,
                          "class_names": [str(i) for i in range(10)]}},
        result={"top1": float(correct.mean()), "top5": 1.0, "test_loss": 0.5},
        metrics={}, host={}, start_time=None, stop_time=None, artifacts=["evaluation.npz"],
        fetch=lambda name: data,
    )  # fmt: skip


def report_html(records, tmp_path) -> str:
    from study.report import build_report

    return build_report(records, tmp_path / "r.html", "html").read_text()


def conclusions(html: str) -> str:
    import html as html_lib
    import re

    part = html[html.index('<section id="conclusions">') : html.index('<section id="appendix">')]
    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", part)).split())


def test_report_calls_a_clear_difference_a_difference(tmp_path):
    good = [True] * 95 + [False] * 5
    poor = [True] * 50 + [False] * 50
    html = report_html([fake_run(1, "resnet18", good), fake_run(2, "small_cnn", poor)], tmp_path)
    text = conclusions(html)
    # One seed each: the difference on these test images is stated, no ranking is made.
    assert "The highest observed top-1 is ResNet-18's (0.9500; then Small CNN (0.5000))" in text
    assert "it is significantly better than Small CNN at seed 0 (p < 0.0001)" in text
    row = html[html.index('<tr data-test="mnist/Small CNN">') :].split("</tr>")[0]
    assert "<td>chi-square with continuity correction</td>" in row  # b + c = 45
    assert "<td>differs</td>" in row and "ranks first" not in text
    assert html.count('<span class="ci wilson">[') == 4  # one run per cell: Wilson, 100 images
    assert html.count("95% CI Wilson") == 1  # named once, in the caption
    ci = stats.wilson_interval(95, 100)
    assert f'<span class="ci wilson">[{ci.low:.4f}, {ci.high:.4f}]' in html
    # ECE of a constant 0.9 confidence (stored as float16): |accuracy - 0.9|
    ece = abs(0.95 - float(np.float16(0.9)))
    assert f"ECE {ece:.4f}" in html


def test_report_finds_no_difference_in_identical_predictions(tmp_path):
    same = [True] * 70 + [False] * 30
    html = report_html([fake_run(1, "resnet18", same), fake_run(2, "small_cnn", same)], tmp_path)
    text = conclusions(html)
    assert "does not differ significantly from Small CNN at seed 0 (p = 1.0000 by McNemar" in text
    assert "<td>exact binomial</td>" in html and "<td>no significant difference</td>" in html
    assert "significantly better" not in text


def test_a_small_gap_is_not_called_a_difference(tmp_path):
    a = [True] * 80 + [False] * 20
    b = list(a)
    b[0] = b[1] = b[2] = False  # b = 3 images only A gets right
    b[80] = True  # c = 1
    html = report_html([fake_run(1, "resnet18", a), fake_run(2, "small_cnn", b)], tmp_path)
    text = conclusions(html)
    p = stats.mcnemar(np.array(a), np.array(b)).p_value
    assert p == pytest.approx(0.625)
    assert f"does not differ significantly from Small CNN at seed 0 (p = {p:.4f}" in text


def test_seed_matched_pair_and_different_test_images(tmp_path):
    good = [True] * 90 + [False] * 10
    poor = [True] * 40 + [False] * 60
    records = [
        fake_run(1, "resnet18", good, seed=0),
        fake_run(2, "resnet18", good, seed=1, indices=np.arange(100) + 7),
        fake_run(3, "small_cnn", poor, seed=1, indices=np.arange(100) + 7),
        fake_run(4, "vgg16", poor, seed=5, indices=np.arange(100) + 500),
    ]
    html = report_html(records, tmp_path)
    assert '<tr data-test="mnist/Small CNN">' in html
    row = html[html.index('<tr data-test="mnist/Small CNN">') :].split("</tr>")[0]
    assert "<td>2 vs 3</td><td>1</td>" in row  # the runs of seed 1, the only shared seed
    row = html[html.index('<tr data-test="mnist/VGG-16">') :].split("</tr>")[0]
    assert "evaluated on different test images" in row
    assert "it cannot be tested against VGG-16 (their runs were evaluated on different " in (
        conclusions(html)
    )
    assert html.count('<span class="ci t">[') == 2  # ResNet-18's two runs: t, top-1 and top-5


def test_runs_trained_differently_are_separate_arms_never_pooled(tmp_path):
    from study.report import arm_names

    good = [True] * 90 + [False] * 10
    poor = [True] * 40 + [False] * 60
    fast = {"protocol": "fast", "lr": 0.1, "device": "cuda"}
    paper = {"protocol": "paper", "lr": 0.0002, "device": "cpu"}
    records = [
        fake_run(1, "resnet18", good, seed=0, config=fast),
        fake_run(2, "resnet18", good, seed=1, config={**fast, "device": "cpu"}),
        fake_run(3, "resnet18", poor, seed=0, config=paper),
        fake_run(4, "small_cnn", poor, seed=0, config=paper),
        fake_run(5, "small_cnn", poor, seed=1, config=paper),
    ]
    # Seed and device are repeats of one training; the protocol sets runs apart (and lr,
    # which the protocol already tells apart, is not named).
    assert arm_names(records) == ["resnet18 [fast]"] * 2 + ["resnet18 [paper]"] + ["small_cnn"] * 2
    html = report_html(records, tmp_path)
    assert 'data-cell="mnist/resnet18 [fast]/top1"' in html
    assert 'data-cell="mnist/resnet18 [paper]/top1"' in html
    assert "never pooled: ResNet-18 (fast), ResNet-18 (paper)" in html
    text = conclusions(html)
    assert "it is significantly better than ResNet-18 (paper) at seed 0" in text
    # Within one protocol, the further key that tells runs apart is named too.
    more = [
        fake_run(6, "resnet18", good, config={**fast, "lr": 0.05}),
        *records[:3],
    ]
    assert arm_names(more) == [
        "resnet18 [fast, learning rate 0.05]",
        "resnet18 [fast, learning rate 0.1]",
        "resnet18 [fast, learning rate 0.1]",
        "resnet18 [paper, learning rate 0.0002]",
    ]  # fmt: skip


def _pair_of_runs(b: int, c: int):
    """Two one-run cells on 100 images: ResNet-18 right where Small CNN is wrong on b images,
    the reverse on c."""
    right, wrong = pairs(b, c, both_right=60, both_wrong=100 - 60 - b - c)
    return [fake_run(1, "resnet18", right), fake_run(2, "small_cnn", wrong)]


def test_the_report_calls_p_0_039_a_difference(tmp_path):
    html = report_html(_pair_of_runs(8, 1), tmp_path)  # exact p = 2 * 10 / 512 = 0.0391
    row = html[html.index('<tr data-test="mnist/Small CNN">') :].split("</tr>")[0]
    assert "<td>differs</td>" in row and "p = 0.0391" in row
    text = conclusions(html)
    assert "it is significantly better than Small CNN at seed 0 (p = 0.0391)" in text
    assert "does not differ significantly" not in text


def test_the_report_calls_p_0_065_no_difference(tmp_path):
    html = report_html(_pair_of_runs(9, 2), tmp_path)  # exact p = 2 * 67 / 2048 = 0.0654
    row = html[html.index('<tr data-test="mnist/Small CNN">') :].split("</tr>")[0]
    assert "<td>no significant difference</td>" in row and "p = 0.0654" in row
    text = conclusions(html)
    assert (
        "it does not differ significantly from Small CNN at seed 0 (p = 0.0654 by McNemar's test)"
        in text
    )
    assert "significantly better" not in text
