"""Whether a model learned anything: one rule, used by the run after each evaluation, by
`study runs` and by the report (a flagged cell is never ranked).

A run is flagged
- *stuck* when its mean training loss over the epoch's last quarter of steps (the engine's
  `train_loss_end`), after the warm-up, is still at least
  STUCK_LOSS_SHARE of the loss of a uniform guess (ln C, times 1 + the auxiliary head's weight
  where one trains): it has not left chance;
- *collapsed* when its test predictions pile onto few classes: one class takes at least
  COLLAPSE_TOP_SHARE of them and at least COLLAPSE_TOP_RATIO times its share of the test
  images; or, with at most FEW_CLASSES classes, a class present in the test images is never
  predicted; or, with more, the predicted-class histogram's entropy over ln C is below
  MIN_PREDICTION_ENTROPY;
- *non-finite* when a loss or accuracy it reports is nan or infinite.

The thresholds are starting values (issue 19); change them with measurements, and say so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STUCK_LOSS_SHARE = 0.95
COLLAPSE_TOP_SHARE = 0.5
COLLAPSE_TOP_RATIO = 3.0
FEW_CLASSES = 20
MIN_PREDICTION_ENTROPY = 0.5

FLAGS = ("stuck", "collapsed", "non-finite")


@dataclass(frozen=True)
class Health:
    flags: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()  # one phrase per flag, with its numbers

    @property
    def ok(self) -> bool:
        return not self.flags

    def line(self) -> str:
        """`stuck (train loss 2.30 >= 0.95 ln 10); collapsed (...)`, or `healthy`."""
        return "; ".join(self.reasons) if self.flags else "healthy"

    def as_record(self) -> dict:
        return {"flags": list(self.flags), "reasons": list(self.reasons)}


def assess(
    *,
    num_classes: int,
    predicted_counts: Sequence[int] | None = None,
    true_counts: Sequence[int] | None = None,
    train_loss: float | None = None,
    past_warmup: bool = True,
    aux_weight: float = 0.0,
    values: Iterable[float] = (),
) -> Health:
    """The rule on one evaluation: `predicted_counts[c]` test images predicted as class c,
    `true_counts[c]` test images of class c (the confusion matrix's column and row sums),
    `train_loss` the mean training loss over the epoch's last steps (judged only
    `past_warmup`), `values` the losses and accuracies the run reports."""
    flags, reasons = [], []
    bad = [v for v in values if v is not None and not math.isfinite(v)]
    if bad or (train_loss is not None and not math.isfinite(train_loss)):
        flags.append("non-finite")
        reasons.append("non-finite (a loss or accuracy is nan or infinite)")
    elif train_loss is not None and past_warmup and num_classes > 1:
        chance = math.log(num_classes) * (1 + aux_weight)
        if train_loss >= STUCK_LOSS_SHARE * chance:
            reasons.append(
                f"stuck (train loss {train_loss:.3f} >= {STUCK_LOSS_SHARE:g} x chance's "
                f"{chance:.3f})"
            )
            flags.append("stuck")
    why = collapse(num_classes, predicted_counts, true_counts)
    if why:
        flags.append("collapsed")
        reasons.append(f"collapsed ({why})")
    return Health(tuple(flags), tuple(reasons))


def collapse(
    num_classes: int, predicted: Sequence[int] | None, true: Sequence[int] | None
) -> str | None:
    """Why these predictions count as collapsed, or None."""
    if predicted is None or true is None or num_classes < 2:
        return None
    n = sum(predicted)
    total_true = sum(true)
    if n <= 0 or total_true <= 0:
        return None
    top = max(range(len(predicted)), key=lambda c: predicted[c])
    share = predicted[top] / n
    expected = true[top] / total_true
    if share >= COLLAPSE_TOP_SHARE and share >= COLLAPSE_TOP_RATIO * expected:
        return (
            f"class {top} takes {share:.0%} of the predictions, {share / expected:.1f}x its "
            f"{expected:.0%} of the test images"
            if expected
            else f"class {top} takes {share:.0%} of the predictions and none of the test images"
        )
    if num_classes <= FEW_CLASSES:
        never = [c for c in range(len(true)) if true[c] > 0 and predicted[c] == 0]
        if never:
            names = ", ".join(str(c) for c in never[:5]) + (" ..." if len(never) > 5 else "")
            return f"{len(never)} of {num_classes} classes never predicted: {names}"
        return None
    entropy = -sum(p / n * math.log(p / n) for p in predicted if p > 0) / math.log(num_classes)
    if entropy < MIN_PREDICTION_ENTROPY:
        return (
            f"the predicted classes' entropy is {entropy:.2f} of the maximum, below "
            f"{MIN_PREDICTION_ENTROPY:g}"
        )
    return None


def of_confusion(confusion, **kwargs) -> Health:
    """The rule on a confusion matrix (rows: true classes, columns: predicted)."""
    import numpy as np

    confusion = np.asarray(confusion)
    return assess(
        num_classes=confusion.shape[0],
        predicted_counts=confusion.sum(axis=0).tolist(),
        true_counts=confusion.sum(axis=1).tolist(),
        **kwargs,
    )
