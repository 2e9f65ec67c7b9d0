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
    assert stats.accuracy_interval([0.8], 10) == stats.wilson_interval(8, 10)
    assert stats.accuracy_interval([0.8], None) is None


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
# Against scipy / statsmodels


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 29, 100])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_t_quantile_matches_scipy(df, p):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)
    assert stats.t_cdf(1.7, df) == pytest.approx(scipy_stats.t.cdf(1.7, df), rel=1e-9)


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


@pytest.mark.parametrize("b, c", [(0, 0), (1, 5), (7, 2), (0, 24), (13, 12), (30, 10), (9, 60),
                                  (140, 170)])  # fmt: skip
def test_mcnemar_matches_statsmodels(b, c):
    tables = pytest.importorskip("statsmodels.stats.contingency_tables")
    ours = stats.mcnemar(*pairs(b, c, both_right=100, both_wrong=7))
    table = [[100, b], [c, 7]]
    exact = ours.method == "exact binomial"
    theirs = tables.mcnemar(table, exact=exact, correction=True)
    assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-9, abs=1e-300)
    if not exact:
        assert ours.statistic == pytest.approx(float(theirs.statistic), rel=1e-12)
