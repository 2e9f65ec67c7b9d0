"""The learning-rate schedules `study run` steps every batch (study.build.make_scheduler)."""

from __future__ import annotations

import math

import pytest
import torch

from study.build import make_scheduler


def _lrs(
    schedule: str, epochs: int, steps_per_epoch: int, lr=0.1, warmup=0.0, warmup_min=0
) -> list[float]:
    """The learning rate in force before each step, and after the last."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    config = {"schedule": schedule, "epochs": epochs, "lr": lr, "warmup": warmup,
              "warmup_min_steps": warmup_min}  # fmt: skip
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    seen = [optimizer.param_groups[0]["lr"]]
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


def test_cosine_anneals_over_the_whole_run_to_zero():
    seen = _lrs("cosine", epochs=3, steps_per_epoch=4)  # 12 steps in all, not per epoch
    expected = [0.05 * (1 + math.cos(math.pi * k / 12)) for k in range(13)]
    assert seen == pytest.approx(expected, abs=1e-12)
    assert seen[6] == pytest.approx(0.05) and seen[-1] == pytest.approx(0.0, abs=1e-12)


def test_constant_and_onecycle():
    assert _lrs("constant", epochs=2, steps_per_epoch=3) == [0.1] * 7
    onecycle = _lrs("onecycle", epochs=2, steps_per_epoch=50, warmup=0.1, warmup_min=30)
    assert max(onecycle) == pytest.approx(0.1)  # its peak is `lr`
    assert onecycle[0] < 0.01 and onecycle[-1] < 1e-4
