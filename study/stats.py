"""The statistics of a study, in plain numpy (and the standard library's math).

- `mean_interval`: mean, sample standard deviation and a t-distribution confidence interval of
  a value over several runs (seeds) of one model x data set cell.
- `wilson_interval`: the Wilson score interval of an accuracy measured once, on n test images.
- `mcnemar`: the paired McNemar test on per-sample correctness of two models on the same test
  images: exact binomial when the discordant count is below `MCNEMAR_EXACT_BELOW`, otherwise
  chi-square with continuity correction (1 degree of freedom).
- `expected_calibration_error` and `reliability_bins`: calibration of the top-1 confidence,
  in `ECE_BINS` equal-width bins.
- `correctness`, `top1_confidence`: per-sample values from a run's evaluation
  (`evaluation.npz`: labels, topk, topk_prob, test_indices).

The t and normal quantiles are computed here (regularised incomplete beta by continued
fraction, inverted by bisection) so that study needs no scipy; the test suite checks them
against scipy and statsmodels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
ECE_BINS = 15
# Below this many discordant pairs (b + c) McNemar's test is the exact binomial one; from it on,
# the chi-square approximation with continuity correction (the usual rule of thumb).
MCNEMAR_EXACT_BELOW = 25
SIGNIFICANCE = 0.05


# ---------------------------------------------------------------------------------------------
# Distributions


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):  # fmt: skip
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )  # fmt: skip
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def _bisect(f, lo: float, hi: float, target: float) -> float:
    """x in [lo, hi] with f(x) = target, for increasing f (to double precision)."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (scipy.stats.t.ppf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    hi = 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    return _bisect(lambda t: t_cdf(t, df), 0.0, hi, p)


def normal_quantile(p: float) -> float:
    """The p-quantile of the standard normal distribution."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} must lie strictly between 0 and 1")
    return _bisect(lambda z: 0.5 * math.erfc(-z / math.sqrt(2.0)), -40.0, 40.0, p)


# ---------------------------------------------------------------------------------------------
# Intervals


@dataclass(frozen=True)
class Interval:
    """An estimate with a confidence interval; `method` says how the interval was made."""

    estimate: float
    low: float
    high: float
    method: str  # "t" (over runs) or "wilson" (one run, from the test-set size)
    n: int  # runs (t) or test images (wilson)
    std: float | None = None  # sample standard deviation over runs (t only)
    confidence: float = CONFIDENCE


def mean_interval(values, confidence: float = CONFIDENCE) -> Interval:
    """Mean ± t_{(1+c)/2, n-1} · s / √n over n >= 2 values (s: the sample std, ddof=1)."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    if n < 2:
        raise ValueError("a t interval needs at least two values")
    mean, std = float(x.mean()), float(x.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, "t", n, std, confidence)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson's score interval for a proportion successes / n:
    (p + z²/2n ± z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n), z the normal (1+c)/2 quantile."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} / {n}")
    z = normal_quantile(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), "wilson", n, None,
                    confidence)  # fmt: skip


def accuracy_interval(accuracies, test_count: int | None) -> Interval | None:
    """The interval Table 1 shows: over runs (t, clipped to [0, 1]) when there are several,
    else Wilson from the test-set size; None when neither is possible."""
    values = [float(v) for v in accuracies]
    if len(values) >= 2:  # an accuracy lies in [0, 1]: so does the interval shown for it
        ci = mean_interval(values)
        return Interval(ci.estimate, max(0.0, ci.low), min(1.0, ci.high), "t", ci.n, ci.std)
    if len(values) == 1 and test_count:
        return wilson_interval(round(values[0] * test_count), test_count)
    return None


# ---------------------------------------------------------------------------------------------
# McNemar


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two models on the same samples.

    b: samples model A got right and B wrong; c: the reverse; n: samples compared."""

    b: int
    c: int
    n: int
    statistic: float | None  # chi-square statistic (None for the exact test)
    p_value: float
    method: str  # "exact binomial" or "chi-square with continuity correction"

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def mcnemar_counts(correct_a, correct_b) -> tuple[int, int]:
    """(b, c): discordant pairs, A right and B wrong / A wrong and B right."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in shape: {a.shape} vs {b.shape}")
    return int(np.sum(a & ~b)), int(np.sum(~a & b))


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact p: 2 · P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), at most 1."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    # log-space sum: exact for any n without overflow
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in
             range(k + 1)]  # fmt: skip
    top = max(terms)
    tail = math.exp(top + math.log(sum(math.exp(t - top) for t in terms)) - n * math.log(2))
    return min(1.0, 2.0 * tail)


def mcnemar_chi2(b: int, c: int) -> tuple[float, float]:
    """(statistic, p): (|b - c| - 1)² / (b + c) against chi-square with 1 degree of freedom
    (p = erfc(√(x/2))); the correction is not allowed to overshoot when b = c."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    stat = max(0.0, abs(b - c) - 1.0) ** 2 / n
    return stat, math.erfc(math.sqrt(stat / 2.0))


def mcnemar(correct_a, correct_b, exact_below: int = MCNEMAR_EXACT_BELOW) -> McNemar:
    """McNemar's test on per-sample correctness (booleans, same samples in the same order):
    exact binomial when b + c < exact_below, otherwise chi-square with continuity correction."""
    b, c = mcnemar_counts(correct_a, correct_b)
    n = int(np.asarray(correct_a).size)
    if b + c < exact_below:
        return McNemar(b, c, n, None, mcnemar_exact_p(b, c), "exact binomial")
    stat, p = mcnemar_chi2(b, c)
    return McNemar(b, c, n, stat, p, "chi-square with continuity correction")


# ---------------------------------------------------------------------------------------------
# Per-sample values and calibration


def correctness(evaluation: dict, k: int = 1) -> np.ndarray:
    """Per test image: was the label among the top-k predictions (from evaluation.npz)."""
    topk, labels = np.asarray(evaluation["topk"]), np.asarray(evaluation["labels"])
    return (topk[:, :k] == labels[:, None]).any(axis=1)


def top1_confidence(evaluation: dict) -> np.ndarray:
    """Per test image: the probability of the top-1 prediction (float64)."""
    return np.asarray(evaluation["topk_prob"], dtype=np.float64)[:, 0]


def _bin_index(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Bins ((m-1)/M, m/M], m = 1..M; a confidence of exactly 0 goes to the first."""
    return np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)


@dataclass(frozen=True)
class Reliability:
    """Per equal-width confidence bin: sample count, accuracy and mean confidence (NaN when
    empty); `edges` has bins + 1 entries."""

    edges: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def reliability_bins(confidence, correct, bins: int = ECE_BINS) -> Reliability:
    conf = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    idx = _bin_index(conf, bins)
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(idx, weights=right, minlength=bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
    return Reliability(np.linspace(0.0, 1.0, bins + 1), count, accuracy, mean_conf)


def expected_calibration_error(confidence, correct, bins: int = ECE_BINS) -> float:
    """ECE = Σ_m (|B_m| / N) · |accuracy(B_m) - confidence(B_m)| over equal-width bins of the
    top-1 confidence (empty bins add nothing)."""
    rel = reliability_bins(confidence, correct, bins)
    total = rel.count.sum()
    if total == 0:
        return float("nan")
    full = rel.count > 0
    gaps = np.abs(rel.accuracy[full] - rel.confidence[full])
    return float(np.sum(rel.count[full] / total * gaps))
