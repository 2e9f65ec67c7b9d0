"""`study reproduce`'s verdict (study.reproduce.compare) on fixed records: identical,
equivalent at a small gap, different at a clear one, and the exit status of each."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_stats import fake_run, pairs

from study import stats
from study.reproduce import Verdict, compare, differences, render


def run(run_id, correct, top1_by_epoch, *, seconds=(1.0, 1.0), loss=(2.0, 1.0)):
    """A COMPLETED two-epoch run with these per-image outcomes (last epoch) and metrics."""
    record = fake_run(run_id, "small_cnn", correct)
    metrics = {
        "test_top1": list(enumerate(top1_by_epoch, start=1)),
        "train_loss": list(enumerate(loss, start=1)),
        "epoch_seconds": list(enumerate(seconds, start=1)),  # a timing: never compared
    }
    return dataclasses.replace(record, metrics=metrics)


def correct_count(count, n):
    return np.arange(n) < count


def test_the_same_metrics_and_predictions_are_identical():
    outcome = correct_count(900, 1000)
    a = run(1, outcome, (0.8, 0.9))
    b = run(2, outcome, (0.8, 0.9), seconds=(7.0, 9.0))  # another machine's speed
    verdict = compare(a, b)
    assert verdict.kind == "identical" and verdict.exit_status == 0
    assert verdict.evidence == [
        "equal: every per-epoch metric (2 metrics over 2 epochs) and all 1,000 per-image "
        "predictions"
    ]


def test_one_changed_prediction_is_not_identical():
    outcome = correct_count(900, 1000)
    other = outcome.copy()
    other[0] = False  # the same metrics, one image predicted otherwise
    verdict = compare(run(1, outcome, (0.8, 0.9)), run(2, other, (0.8, 0.9)))
    assert verdict.kind == "equivalent"
    assert verdict.evidence[0] == "not identical: per-image predictions differ"


def test_a_small_gap_is_equivalent():
    a, b = pairs(10, 5, both_right=885, both_wrong=100)  # top-1 0.895 vs 0.890
    verdict = compare(run(1, a, (0.8, 0.895)), run(2, b, (0.8, 0.890)))
    assert (verdict.kind, verdict.exit_status) == ("equivalent", 0)
    ia, ib = stats.wilson_interval(895, 1000), stats.wilson_interval(890, 1000)
    assert verdict.evidence == [
        "not identical: test_top1 differ",
        "top-1 after epoch 2: 0.8950 (run 1) vs 0.8900 (run 2), 1,000 test images",
        f"95% Wilson intervals [{ia.low:.4f}, {ia.high:.4f}] and [{ib.low:.4f}, {ib.high:.4f}]: "
        "each top-1 lies in the other's",
        "McNemar on per-image correctness (exact binomial): b = 10, c = 5, p = 0.302, "
        "not significant",
    ]


def test_a_clear_gap_is_different():
    # The case: top-1 1.00 against 0.49 on 100 images, McNemar p = 2.5e-12.
    a, b = pairs(51, 0, both_right=49)
    verdict = compare(run(1, a, (0.9, 1.0)), run(2, b, (0.4, 0.49)))
    assert (verdict.kind, verdict.exit_status) == ("different", 1)
    assert verdict.evidence[0] == "not identical: test_top1 differ"
    assert verdict.evidence[1] == (
        "top-1 after epoch 2: 1.0000 (run 1) vs 0.4900 (run 2), 100 test images"
    )
    assert verdict.evidence[2].endswith("a top-1 lies outside the other's")
    assert verdict.evidence[3] == (
        "McNemar on per-image correctness (chi-square with continuity correction): b = 51, "
        "c = 0, p = 2.53e-12, significant"
    )
    text = render(verdict, *(run(1, a, (0.9, 1.0)), run(2, b, (0.4, 0.49))))
    assert text.splitlines()[0] == "verdict: different (run 2 reproducing run 1)"


def test_mcnemar_alone_can_make_a_difference():
    # 0.900 vs 0.893: each lies in the other's Wilson interval, but the 7 changed images all
    # went one way (exact p = 2 / 2^7 = 0.0156 < 0.05).
    a, b = pairs(7, 0, both_right=893, both_wrong=100)
    verdict = compare(run(1, a, (0.8, 0.9)), run(2, b, (0.8, 0.893)))
    assert verdict.evidence[2].endswith("each top-1 lies in the other's")
    assert "p = 0.0156, significant" in verdict.evidence[3]
    assert (verdict.kind, verdict.exit_status) == ("different", 1)
    # One image back the other way: p = 2 * 9 / 2^8 = 0.0703, no longer a difference.
    a, b = pairs(7, 1, both_right=892, both_wrong=100)
    verdict = compare(run(1, a, (0.8, 0.899)), run(2, b, (0.8, 0.893)))
    assert "p = 0.0703, not significant" in verdict.evidence[3]
    assert (verdict.kind, verdict.exit_status) == ("equivalent", 0)


def test_each_top1_must_lie_in_the_others_interval():
    # 1.000 lies outside 0.985's interval [0.9568, 0.9949] on 200 images, while 0.985 lies in
    # 1.000's [0.9812, 1]; McNemar (b = 3, c = 0, p = 0.25) finds nothing: still different.
    a, b = pairs(3, 0, both_right=197)
    verdict = compare(run(1, a, (0.9, 1.0)), run(2, b, (0.9, 0.985)))
    assert verdict.evidence[2] == (
        "95% Wilson intervals [0.9812, 1.0000] and [0.9568, 0.9949]: a top-1 lies outside the "
        "other's"
    )
    assert "p = 0.25, not significant" in verdict.evidence[3]
    assert (verdict.kind, verdict.exit_status) == ("different", 1)


def test_a_prefix_is_judged_by_its_epoch_and_the_intervals():
    outcome = correct_count(900, 1000)
    a = run(1, outcome, (0.80, 0.90))
    same = compare(a, run(2, ~outcome, (0.80,), loss=(2.0,)), prefix=1)
    assert same.kind == "identical"  # the final predictions are not the prefix's
    assert same.evidence == [
        "equal: every per-epoch metric (2 metrics over 1 epoch): the first 1 of run 1's 2 epochs"
    ]
    close = compare(a, run(2, outcome, (0.79,), loss=(2.0,)), prefix=1)
    assert close.kind == "equivalent"
    assert close.evidence[0] == "not identical: test_top1 differ within the first 1 epochs"
    assert close.evidence[1].startswith("top-1 after epoch 1: 0.8000 (run 1) vs 0.7900 (run 2)")
    assert close.evidence[3].startswith("McNemar needs per-image predictions of the same epoch")
    far = compare(a, run(2, outcome, (0.70,), loss=(2.0,)), prefix=1)
    assert (far.kind, far.exit_status) == ("different", 1)
    assert far.evidence[2].endswith("a top-1 lies outside the other's")


def test_only_different_exits_1():
    assert [Verdict(kind, []).exit_status for kind in ("identical", "equivalent", "different")] == [
        0,
        0,
        1,
    ]


def test_differences_name_config_given_with_and_the_code():
    outcome = correct_count(90, 100)
    a = run(1, outcome, (0.8, 0.9))
    b = run(2, outcome, (0.8, 0.9))
    b = dataclasses.replace(b, config={**b.config, "lr": 0.01, "data_root": "/elsewhere"})
    a.info["provenance"] = {"study": "0.1", "git": {"commit": "abc", "dirty": False}}
    b.info["provenance"] = {"study": "0.1", "git": {"commit": "def", "dirty": False}}
    lines = differences(a, b, {"lr": 0.01}, None)
    assert "config: lr not in the original (a key added since) -> 0.01 (given with `with`)" in lines
    assert "code: commit 'abc' -> 'def'" in lines
    assert not any("data_root" in line for line in lines)  # a place, not given with `with`
    assert differences(a, a, {}, None) == []


@pytest.mark.parametrize("kind", ["identical", "equivalent", "different"])
def test_render_names_the_verdict_first(kind):
    a = run(1, correct_count(9, 10), (0.8, 0.9))
    text = render(Verdict(kind, ["why"]), a, dataclasses.replace(a, id="5"))
    assert text.splitlines()[:2] == [f"verdict: {kind} (run 5 reproducing run 1)", "  why"]


# -- pinned: the interval check on each side, fallbacks, and what differences list ------------


@pytest.mark.parametrize(
    ("top_a", "top_b", "kind"),
    [
        (0.015, 0.0, "different"),  # 0.0 below [0.0051, 0.0432]; 0.015 inside [0, 0.0188]
        (0.0, 0.015, "different"),
        (0.985, 1.0, "different"),  # 1.0 above [0.9568, 0.9949]; 0.985 inside [0.9812, 1]
        (1.0, 0.985, "different"),
        (1.0, 1.0, "equivalent"),  # on the intervals' closed ends: within
        (0.0, 0.0, "equivalent"),
    ],
)
def test_each_side_of_each_interval_decides_a_prefix(top_a, top_b, kind):
    # 200 test images; a prefix has no McNemar, so the intervals alone decide. The losses
    # differ, so the runs are never identical.
    outcome = correct_count(100, 200)
    a = run(1, outcome, (top_a, 0.5))
    b = run(2, outcome, (top_b,), loss=(2.5,))
    verdict = compare(a, b, prefix=1)
    assert (verdict.kind, verdict.exit_status) == (kind, 1 if kind == "different" else 0)
    assert verdict.evidence[2].endswith(
        "a top-1 lies outside the other's"
        if kind == "different"
        else "each top-1 lies in the other's"
    )


def test_without_a_test_count_no_interval_is_drawn_and_top1_falls_back_to_the_result():
    outcome = correct_count(90, 100)
    a, b = run(1, outcome, (0.8,)), run(2, outcome, (0.8,), loss=(2.0, 0.5))
    a.info["dataset"], b.info["dataset"] = {}, {"test_count": "100"}
    a = dataclasses.replace(a, result={"top1": 0.9})
    b = dataclasses.replace(b, result=None)
    verdict = compare(a, b, prefix=2)  # epoch 2 is in no test_top1 series
    assert verdict.kind == "equivalent"
    assert verdict.evidence[:2] == [
        "not identical: train_loss differ within the first 2 epochs",
        "top-1 after epoch 2: 0.9000 (run 1) vs 0.0000 (run 2), 0 test images",
    ]
    assert not any("Wilson" in line for line in verdict.evidence)


def test_predictions_compared_only_when_both_runs_kept_the_same_images():
    outcome = correct_count(90, 100)
    a = run(1, outcome, (0.8, 0.9))
    # Predictions one class lower where they can be, the same metrics: not identical.
    lower = run(2, outcome, (0.8, 0.9))
    ev = lower.evaluation()
    ev["topk"][ev["topk"] > 0] -= 1
    assert compare(a, lower).evidence[0] == "not identical: per-image predictions differ"
    # A higher training loss is a difference too (not only a lower one).
    higher = compare(a, run(2, outcome, (0.8, 0.9), loss=(2.0, 1.5)))
    assert higher.evidence[0] == "not identical: train_loss differ"
    # Fewer test images kept, or none: no McNemar, and no claim on the predictions.
    fewer = run(2, correct_count(90, 99), (0.8, 0.9), loss=(2.0, 1.5))
    none = dataclasses.replace(fewer, artifacts=[])
    for one, other in ((a, fewer), (fewer, a), (a, none), (none, a)):
        verdict = compare(one, other)
        assert verdict.kind == "equivalent"
        assert verdict.evidence[0] == "not identical: train_loss differ"
        assert not any("McNemar" in line for line in verdict.evidence)


def test_differences_skip_a_prefixs_own_stop_and_read_every_key_after_it():
    import json

    outcome = correct_count(90, 100)
    a = run(1, outcome, (0.8, 0.9))
    config = {**a.config, "lr": 0.1, "stop_after": None, "weight_decay": 0.05,
              "data_root": "/data"}  # fmt: skip
    a = dataclasses.replace(a, config=json.loads(json.dumps(config)))
    provenance = '{"study": "0.1.0", "determinism": {"deterministic": true, "seed": 12345}}'
    a.info["provenance"] = json.loads(provenance)
    # The same values parsed apart (other objects), a prefix's stop, keys before and after it.
    again = {**json.loads(json.dumps(config)), "stop_after": 1, "weight_decay": 0.1}
    b = dataclasses.replace(a, id="2", config=again, info={**a.info})
    b.info["provenance"] = json.loads(provenance)
    assert differences(a, b, {}, None) == ["config: weight_decay 0.05 -> 0.1"]
    assert differences(a, b, {"stop_after": 1}, None) == [
        "config: stop_after None -> 1 (given with `with`)",
        "config: weight_decay 0.05 -> 0.1",
    ]
    slower = dataclasses.replace(b, config={**again, "lr": 0.01})
    assert differences(a, slower, {}, None) == [
        "config: lr 0.1 -> 0.01",
        "config: weight_decay 0.05 -> 0.1",
    ]
    back = dataclasses.replace(b, config={**again, "data_root": "/a"})  # sorts before /data
    assert differences(a, back, {"data_root": "/a"}, None)[-1] == (
        "place: data_root '/data' -> '/a' (where it ran, not what it trained)"
    )
    moved = dataclasses.replace(b, config={**again, "data_root": "/elsewhere"})
    assert differences(a, moved, {"data_root": "/elsewhere"}, "data: note")[-1] == (
        "place: data_root '/data' -> '/elsewhere' (where it ran, not what it trained)"
    )
    assert differences(a, moved, {"data_root": "/elsewhere"}, "data: note")[0] == "data: note"
    assert not any("place" in line for line in differences(a, b, {"data_root": "/data"}, None))


def test_render_says_when_nothing_differs():
    a = run(1, correct_count(9, 10), (0.8, 0.9))
    text = render(Verdict("identical", ["why"]), a, a)
    assert text.splitlines()[-1] == (
        "differences between the two runs: none in config, data, code, versions, plugins, "
        "device or determinism settings"
    )
    text = render(Verdict("identical", ["why"], ["config: lr 1 -> 2"]), a, a)
    assert text.splitlines()[-2:] == ["differences between the two runs:", "  config: lr 1 -> 2"]


def test_differences_name_the_device_and_its_vector_instructions():
    outcome = correct_count(90, 100)
    a, b = run(1, outcome, (0.8, 0.9)), run(2, outcome, (0.8, 0.9))
    a.info["provenance"] = b.info["provenance"] = {"study": "0.1"}
    here = {"device_name": "AMD EPYC", "processes": 1, "torch_threads": 2}
    a.info["training"] = {**here, "cpu_capability": "AVX512"}
    b.info["training"] = {**here, "cpu_capability": "AVX2"}
    assert differences(a, b, {}, None) == ["device: cpu_capability 'AVX512' -> 'AVX2'"]
    # An original recorded before study kept the instructions: no difference.
    a.info["training"] = dict(here)
    assert differences(a, b, {}, None) == []
    b.info["training"] = {**here, "torch_threads": 1, "cpu_capability": "AVX2"}
    assert differences(a, b, {}, None) == ["device: torch_threads 2 -> 1"]
