"""The health rule (study.health) at its thresholds, and on real runs that collapse or learn."""

from __future__ import annotations

import math

import pytest
from conftest import run_study

from study import health
from study.stores import read_file_store

LN10 = math.log(10)
TEN = [100] * 10  # ten classes, 100 test images each


def test_stuck_at_its_threshold_and_only_after_the_warm_up():
    at = health.STUCK_LOSS_SHARE * LN10
    assert health.assess(num_classes=10, train_loss=at).flags == ("stuck",)
    assert health.assess(num_classes=10, train_loss=at - 1e-9).ok
    # During the warm-up a loss at chance says nothing yet.
    assert health.assess(num_classes=10, train_loss=LN10, past_warmup=False).ok
    # An auxiliary head adds its weighted loss: chance is (1 + 0.4) ln C then.
    assert health.assess(num_classes=10, train_loss=LN10, aux_weight=0.4).ok
    assert not health.assess(num_classes=10, train_loss=1.4 * LN10, aux_weight=0.4).ok


def test_one_class_taking_half_the_predictions_and_three_times_its_share():
    # Class 0 takes exactly half of 1,000 predictions: 5x its 10% share.
    predicted = [500] + [56] * 8 + [52]
    assert sum(predicted) == 1000
    verdict = health.assess(num_classes=10, predicted_counts=predicted, true_counts=TEN)
    assert verdict.line() == (
        "collapsed (class 0 takes 50% of the predictions, 5.0x its 10% of the test images)"
    )
    # One prediction fewer is below the share (every class still predicted): healthy.
    below = [499] + [56] * 8 + [53]
    assert health.assess(num_classes=10, predicted_counts=below, true_counts=TEN).ok
    # Half the predictions on a class that is half the test images: no collapse.
    true = [500] + [56] * 8 + [52]
    assert health.assess(num_classes=10, predicted_counts=predicted, true_counts=true).ok
    # Exactly 3x its share counts; just under does not.
    true3 = [167] + [104] * 8 + [1]
    pred3 = [500] + [62] * 8 + [4]
    assert sum(true3) == sum(pred3) == 1000
    ratio = 500 / 167
    assert ratio < health.COLLAPSE_TOP_RATIO
    assert health.assess(num_classes=10, predicted_counts=pred3, true_counts=true3).ok
    true3[0], true3[-1] = 166, 2  # 500 / 166 >= 3
    assert not health.assess(num_classes=10, predicted_counts=pred3, true_counts=true3).ok


def test_a_class_never_predicted_with_few_classes_and_entropy_with_many():
    predicted = [112] * 9 + [0]
    predicted[0] += 1000 - sum(predicted)
    verdict = health.assess(num_classes=10, predicted_counts=predicted, true_counts=TEN)
    assert (
        verdict.flags == ("collapsed",) and "1 of 10 classes never predicted: 9" in verdict.line()
    )
    # A class with no test images may go unpredicted.
    true = [111] * 9 + [0]
    true[0] += 1
    assert health.assess(num_classes=10, predicted_counts=predicted, true_counts=true).ok
    # 21 classes: a never-predicted class alone is no collapse; a low entropy is.
    classes = health.FEW_CLASSES + 1
    true = [10] * classes
    spread = [10] * (classes - 1) + [0]
    spread[0] += 10
    assert health.assess(num_classes=classes, predicted_counts=spread, true_counts=true).ok
    # Four classes of 200, equally predicted: entropy ln 4 / ln 200 = 0.26 < 0.5.
    many = [0] * 200
    many[:4] = [25, 25, 25, 25]
    verdict = health.assess(num_classes=200, predicted_counts=many, true_counts=[1] * 200)
    assert verdict.flags == ("collapsed",) and "entropy is 0.26" in verdict.line()
    # 2 ** 0.5 * ... : 15 classes of 200 give ln 15 / ln 200 = 0.511 >= 0.5: healthy.
    many = [0] * 200
    many[:15] = [1] * 15
    assert math.log(15) / math.log(200) >= health.MIN_PREDICTION_ENTROPY
    assert health.assess(num_classes=200, predicted_counts=many, true_counts=[1] * 200).ok
    many = [0] * 200
    many[:14] = [1] * 14
    assert not health.assess(num_classes=200, predicted_counts=many, true_counts=[1] * 200).ok


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values(bad):
    assert health.assess(num_classes=10, values=[0.5, bad]).flags == ("non-finite",)
    assert health.assess(num_classes=10, train_loss=bad).flags == ("non-finite",)


def test_of_confusion_reads_rows_as_true_and_columns_as_predicted():
    import numpy as np

    confusion = np.zeros((10, 10), dtype=int)
    confusion[:, 3] = 100  # every image predicted as class 3
    verdict = health.of_confusion(confusion)
    assert "class 3 takes 100%" in verdict.line()
    assert health.of_confusion(np.eye(10, dtype=int) * 100).ok


def test_stuck_with_an_auxiliary_head_at_its_own_threshold():
    # chance is (1 + 0.4) ln 10 = 3.224, so the threshold is 0.95 of that: 3.063 (a power
    # in place of the product, ln 10 ** 1.4 = 3.214, would flag a loss just under it)
    at = 0.95 * 1.4 * LN10
    assert health.assess(num_classes=10, train_loss=at, aux_weight=0.4).flags == ("stuck",)
    assert health.assess(num_classes=10, train_loss=at - 1e-9, aux_weight=0.4).ok


@pytest.mark.parametrize("classes", [2, 10])
def test_stuck_is_judged_from_two_classes_on_and_never_with_one(classes):
    assert health.assess(num_classes=classes, train_loss=math.log(classes)).flags == ("stuck",)
    # One class: chance's loss is ln 1 = 0, so every loss would be "stuck"; there is no chance.
    assert health.assess(num_classes=1, train_loss=0.3).ok
    assert health.assess(num_classes=0, train_loss=0.3).ok  # a hostile record's 0 x 0 matrix


def test_finite_values_are_no_flag():
    assert health.assess(num_classes=10, values=[0.5, 0.91, None], train_loss=0.2).ok


def test_collapse_reasons_word_for_word():
    # 75% of the predictions on class 0, three times its 25% of the test images: at the ratio
    true = [250] + [750 // 9] * 9
    true[1] += 1000 - sum(true)
    predicted = [750] + [25] * 9
    predicted[1] += 1000 - sum(predicted)
    verdict = health.assess(num_classes=10, predicted_counts=predicted, true_counts=true)
    assert verdict.line() == (
        "collapsed (class 0 takes 75% of the predictions, 3.0x its 25% of the test images)"
    )
    # the top class has no test images at all
    true = [0] + [111] * 9
    verdict = health.assess(num_classes=10, predicted_counts=[600] + [44] * 9, true_counts=true)
    assert verdict.line() == (
        "collapsed (class 0 takes 60% of the predictions and none of the test images)"
    )


@pytest.mark.parametrize(
    ("never", "names"),
    [(4, "6, 7, 8, 9"), (5, "5, 6, 7, 8, 9"), (6, "4, 5, 6, 7, 8 ..."), (7, "3, 4, 5, 6, 7 ...")],
)
def test_never_predicted_classes_are_named_up_to_five(never, names):
    predicted = [100] * (10 - never) + [0] * never
    verdict = health.assess(num_classes=10, predicted_counts=predicted, true_counts=TEN)
    assert verdict.line() == f"collapsed ({never} of 10 classes never predicted: {names})"


def test_a_class_with_a_single_test_image_must_be_predicted():
    true = [1] + [111] * 9
    predicted = [0] + [112] * 9
    verdict = health.assess(num_classes=10, predicted_counts=predicted, true_counts=true)
    assert verdict.line() == "collapsed (1 of 10 classes never predicted: 0)"


@pytest.mark.parametrize(("classes", "flagged"), [(20, True), (21, False)])
def test_twenty_classes_is_the_last_judged_by_classes_never_predicted(classes, flagged):
    # Literal counts, not health.FEW_CLASSES + 1: a changed threshold must fail here.
    predicted = [20] + [10] * (classes - 2) + [0]
    verdict = health.assess(
        num_classes=classes, predicted_counts=predicted, true_counts=[10] * classes
    )
    assert verdict.ok is not flagged


def test_entropy_exactly_at_half_is_not_collapsed():
    # 16 of 256 classes, equally predicted: ln 16 / ln 256 is exactly 0.5 in floating point
    predicted = [10] * 16 + [0] * 240
    assert -sum(p / 160 * math.log(p / 160) for p in predicted if p) / math.log(256) == 0.5
    assert health.assess(num_classes=256, predicted_counts=predicted, true_counts=[1] * 256).ok


def test_two_classes_collapse_and_missing_counts_judge_nothing():
    verdict = health.assess(num_classes=2, predicted_counts=[100, 0], true_counts=[50, 50])
    assert verdict.line() == "collapsed (1 of 2 classes never predicted: 1)"
    # A single prediction on a class with no test images is still a pile-up.
    verdict = health.assess(
        num_classes=10, predicted_counts=[1] + [0] * 9, true_counts=[0, 1] + [0] * 8
    )
    assert verdict.flags == ("collapsed",)
    # Either count missing, or no test images or predictions at all: nothing to judge.
    assert health.assess(num_classes=10, predicted_counts=[0] * 10, true_counts=TEN).ok
    assert health.assess(num_classes=10, true_counts=TEN).ok
    assert health.assess(num_classes=10, predicted_counts=[100] + [0] * 9).ok
    assert health.assess(num_classes=10, predicted_counts=[100] + [0] * 9, true_counts=[0] * 10).ok


def _run(tmp_path, data_root, *updates, store="runs"):
    proc = run_study(
        "run", "with", "fast", "model=small_cnn", "dataset=mnist", f"data_root={data_root}",
        "device=cpu", "gallery=0", *updates, "-F", tmp_path / store, cwd=tmp_path,
    )  # fmt: skip
    (rec,) = read_file_store(tmp_path / store)
    return proc, rec


@pytest.mark.realdata
def test_a_run_at_lr_1_says_it_collapsed_at_the_epoch_and_in_its_record(tmp_path, real_data):
    """A real collapsing run: SGD at lr 1.0 without clipping on real MNIST."""
    proc, rec = _run(
        tmp_path, real_data, "epochs=2", "train_limit=1024", "test_limit=500", "lr=1.0",
        "grad_clip=0", "warmup=0", "warmup_min_steps=0", "precise_bn=0",
    )  # fmt: skip
    assert "warning: epoch 1: " in proc.stdout
    flags = rec.info["health"]["flags"]
    assert flags and set(flags) <= set(health.FLAGS)
    assert [e["epoch"] for e in rec.info["health"]["epochs"]] == [1, 2]
    assert rec.status == "COMPLETED" and rec.info["health"]["stopped"] is None
    listing = run_study("runs", "--runs", tmp_path / "runs", cwd=tmp_path).stdout
    (line,) = [x for x in listing.splitlines() if x.split()[:2] == [rec.id, "small_cnn"]]
    assert line.endswith(", ".join(f.upper() for f in flags))


@pytest.mark.realdata
def test_health_stop_ends_a_hopeless_run_completed(tmp_path, real_data):
    proc, rec = _run(
        tmp_path, real_data, "epochs=3", "train_limit=512", "test_limit=300", "lr=1.0",
        "grad_clip=0", "warmup=0", "warmup_min_steps=0", "precise_bn=0", "health_stop=true",
    )  # fmt: skip
    assert rec.status == "COMPLETED"
    stopped = rec.info["health"]["stopped"]
    assert stopped.startswith("epoch 1: ") and "health_stop" in proc.stdout
    assert [e for e, _ in rec.metric("test_top1")] == [1]


@pytest.mark.realdata
def test_a_healthy_run_is_not_flagged(tmp_path, real_data):
    proc, rec = _run(tmp_path, real_data, "epochs=1", "train_limit=4096", "test_limit=1000")
    assert "warning: epoch" not in proc.stdout
    assert rec.info["health"]["flags"] == [] and rec.result["top1"] > 0.8
