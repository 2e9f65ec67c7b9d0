"""Numbers and words as the report prints them, and Stat: one value over the runs of a cell."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from study import stats
from study.stores import RunRecord


def plural(n: int, noun: str) -> str:
    """`1 run`, `2 runs`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


NUMBER_WORDS = ("No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten")


def sentence_start(n: int, noun: str) -> str:
    """`Two cells`, `One cell`, `12 cells`: a sentence does not begin with a small numeral."""
    count = NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)
    return f"{count} {noun}{'' if n == 1 else 's'}"


def fmt_num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits == 0:  # counts (parameters, images): thousands separators
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def count_text(value: Any) -> str:
    """An integer count as printed: `138,367,554`; anything else as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "–" if value is None else str(value)


def no_break(value: Any):
    """A name whose hyphenated words never break at the hyphen ("Inception-V3",
    "Tiny-ImageNet"); it may still wrap between words. Escaped like any run string."""
    from markupsafe import Markup, escape

    words = str(value).split(" ")
    return Markup(" ").join(
        Markup('<span class="nb">{}</span>').format(w) if "-" in w else escape(w) for w in words
    )


@dataclass
class Stat:
    """A value over the runs of one cell: mean, sample std (n > 1), n."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if self.n > 1 else None

    def text(self, digits: int = 4, spread: bool = True) -> str:
        """The value as printed: one run's value, or mean ± std over several (spread=False:
        the value alone where every run has the same one)."""
        if not self.values:
            return "–"
        if self.n == 1 or (not spread and len(set(self.values)) == 1):
            return fmt_num(self.values[0], digits)
        return f"{fmt_num(self.mean, digits)} ± {fmt_num(self.std, digits)}"


def stat(records: list[RunRecord], get) -> Stat:
    values = []
    for r in records:
        try:
            v = get(r)
        except (KeyError, TypeError, AttributeError):
            v = None
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            values.append(float(v))
    return Stat(values)


def span_text(values) -> str:
    """`28`, `28–64`: the range of some numbers, with thousands separators."""
    values = sorted(set(values))
    low, high = values[0], values[-1]
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def epochs_text(values) -> str:
    """`2`, `1–25`, `0.083`: whole epochs as integers, a fraction to two figures."""

    def one(e: float) -> str:
        if abs(e - round(e)) < 1e-9:
            return str(round(e))
        return f"{e:.1f}" if e >= 1 else f"{e:.2g}"

    values = sorted(set(values))
    low, high = one(values[0]), one(values[-1])
    return low if low == high else f"{low}–{high}"


def value_text(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def interval_text(interval: stats.Interval | None) -> str | None:
    """`[low, high]`: which interval it is (Wilson or t) Table 1's caption says, once."""
    if interval is None:
        return None
    return f"[{fmt_num(interval.low)}, {fmt_num(interval.high)}]"


def p_text(p: float) -> str:
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}"


def epochs_label(text: str) -> str:
    return f"{text} epoch{'' if text == '1' else 's'}"


def ratio(images, seconds) -> float | None:
    return images / seconds if images is not None and seconds else None


def version_text(value) -> str:
    return value if isinstance(value, str) else "not recorded"


def signed(value: float, digits: int) -> str:
    """`+0.0180`, `−0.0370`: a difference with its sign, the minus a typographic one."""
    text = f"{value:+.{digits}f}"
    return "−" + text[1:] if text.startswith("-") else text
