"""The training loop without Sacred: it learns, checkpoints atomically and resumes exactly."""

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from study import engine
from study.errors import StudyError, TrainingFailed
from study.loader import BatchTransform, DeviceSplit


def _task(n=240, seed=0):
    """Two classes a small net separates easily: bright vs dark 8x8 images, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    base = np.where(labels[:, None, None, None] == 1, 170, 80)
    images = np.clip(base + rng.normal(0, 40, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
    return images, labels


def _setup(seed=0):
    torch.manual_seed(seed)
    images, labels = _task()
    train = DeviceSplit(images[:200], labels[:200], torch.device("cpu"))
    test = DeviceSplit(images[200:], labels[200:], torch.device("cpu"))
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(144, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    t = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1, augment="flip")
    return model, opt, train, test, t


def _setup_for(model, opt, train, test, t, epochs, **kw):
    return engine.TrainingSetup(
        model=model, optimizer=opt, criterion=nn.CrossEntropyLoss(), train=train, test=test,
        train_transform=t, test_transform=t, epochs=epochs, batch_size=32, num_classes=2, seed=7,
        progress=False, **kw,
    )  # fmt: skip


def _fit(model, opt, train, test, t, epochs, state=None, on_epoch=None, **kw):
    return engine.fit(_setup_for(model, opt, train, test, t, epochs, **kw), state, on_epoch)


def test_fit_learns_and_reports_each_epoch():
    model, opt, train, test, t = _setup()
    logged = []
    state, ev = _fit(model, opt, train, test, t, 3, on_epoch=lambda e, m: logged.append((e, m)))
    assert [e for e, _ in logged] == [1, 2, 3]
    assert state.epoch == 3 and len(state.history) == 3
    assert ev.top1 > 0.9 and ev.top5 == 1.0
    assert logged[-1][1]["test_top1"] == ev.top1
    assert ev.confusion.sum() == 40 and ev.confusion.trace() == round(ev.top1 * 40)
    assert logged[0][1]["images_per_s"] > 0


def test_evaluation_top_k_and_most_confident_errors():
    ev = engine.Evaluation(
        loss=0.0, top1=0.5, top5=1.0,
        labels=np.array([0, 1, 2, 1]),
        topk=np.array([[0, 1], [2, 1], [2, 0], [0, 1]]),
        topk_prob=np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2], [0.95, 0.05]], dtype=np.float32),
        confusion=np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1]]),
    )  # fmt: skip
    assert ev.most_confident_errors(5) == [3, 1]
    assert ev.per_class_accuracy() == [1.0, 0.0, 1.0]


def _onecycle(opt):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.02, total_steps=3 * 7)  # 7/epoch


def test_resume_from_checkpoint_gives_the_uninterrupted_result(tmp_path):
    model, opt, train, test, t = _setup()
    _, straight = _fit(model, opt, train, test, t, 3, scheduler=_onecycle(opt))

    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    _fit(model, opt, train, test, t, 2, checkpoint=ckpt, scheduler=_onecycle(opt))
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    model, opt, train, test, t = _setup(seed=99)  # fresh weights, to be overwritten
    scheduler = _onecycle(opt)
    state = engine.load_checkpoint(ckpt, model, opt, scheduler)
    assert state.epoch == 2
    assert scheduler.last_epoch == 14  # the schedule continues where it stopped
    state, resumed = _fit(model, opt, train, test, t, 3, state=state, scheduler=scheduler)
    assert state.epoch == 3 and len(state.history) == 3
    assert resumed.loss == straight.loss
    assert np.array_equal(resumed.topk_prob, straight.topk_prob)
    # Resumed with no epoch left (killed after the last checkpoint): the final weights are
    # evaluated, and give the same result.
    state, again = _fit(model, opt, train, test, t, 3, state=state, scheduler=scheduler)
    assert state.epoch == 3 and again.loss == straight.loss


def test_a_checkpoint_keeps_the_machines_that_trained_it(tmp_path):
    """The machines that trained a run travel with its checkpoint, so a resume on another
    machine adds to the list rather than replacing it; a checkpoint written before study kept
    them was trained until then by a machine not recorded ({})."""
    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    first = {"device": "cpu", "device_name": "A", "cpu_gflops": 200.0, "from_epoch": 0}
    state = engine.TrainState(machines=[first])
    _fit(model, opt, train, test, t, 1, state=state, checkpoint=ckpt)
    model, opt, train, test, t = _setup()
    assert engine.load_checkpoint(ckpt, model, opt).machines == [first]

    payload = torch.load(ckpt, weights_only=True)
    del payload["machines"]
    torch.save(payload, ckpt)
    ckpt.with_name(ckpt.name + ".sha256").unlink()  # as before checkpoints had digests
    assert engine.load_checkpoint(ckpt, model, opt).machines == [{}]


class _StopAt(BatchTransform):
    """The training transform, calling `action` when it prepares training batch `n` (counted
    over the run): a signal or a crash arriving mid-epoch, at a known step."""

    def __init__(self, n: int, action, **kw):
        super().__init__(8, mean=(0.5,), std=(0.25,), out_channels=1, augment="flip", **kw)
        self.n, self.action, self.calls = n, action, 0

    def __call__(self, images, train, generator):
        if train:
            self.calls += 1
            if self.calls == self.n:
                self.action()
        return super().__call__(images, train, generator)


def _same_history(a, b):
    keys = ("train_loss", "train_loss_end", "train_top1", "test_loss", "test_top1", "train_images")
    for x, y in zip(a.history, b.history, strict=True):
        assert {k: x[k] for k in keys} == {k: y[k] for k in keys}, (x["epoch"], x, y)


def test_a_preempted_epoch_resumes_from_its_step_to_the_uninterrupted_result(tmp_path):
    """The scheduler's signal (PREEMPT, set by study.cli's handler) mid-way through epoch 2:
    the step in progress ends, a checkpoint of that step is written, training stops; resuming
    from it gives, on the CPU, exactly the metrics of a run that was never stopped."""
    model, opt, train, test, t = _setup()
    straight, final = _fit(model, opt, train, test, t, 3, scheduler=_onecycle(opt))

    model, opt, train, test, _ = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    stopping = _StopAt(7 + 3, engine.PREEMPT.set)  # epoch 2's 3rd batch (7 a epoch)
    setup = _setup_for(model, opt, train, test, stopping, 3, checkpoint=ckpt,
                       scheduler=_onecycle(opt))  # fmt: skip
    setup.test_transform = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1)
    with pytest.raises(engine.Preempted, match="stopped after step 3 of 7"):
        engine.fit(setup)
    assert not engine.TRAINING.is_set()

    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    model, opt, train, test, t = _setup(seed=99)
    scheduler = _onecycle(opt)
    state = engine.load_checkpoint(ckpt, model, opt, scheduler)
    assert state.epoch == 1 and state.partial["epoch"] == 2
    assert state.partial["ranks"][0]["step"] == 3 and scheduler.last_epoch == 7 + 3
    state, resumed = _fit(model, opt, train, test, t, 3, state=state, scheduler=scheduler)
    _same_history(state, straight)
    assert resumed.loss == final.loss and np.array_equal(resumed.topk_prob, final.topk_prob)
    assert state.partial is None


def test_checkpoint_every_writes_mid_epoch_checkpoints_a_crash_resumes_from(tmp_path):
    """checkpoint_every=0.0: a checkpoint after every step. A crash in epoch 3 loses only the
    step in progress, and the resumed run ends where the uninterrupted one does."""
    model, opt, train, test, t = _setup()
    straight, final = _fit(model, opt, train, test, t, 3, scheduler=_onecycle(opt))

    def crash():
        raise RuntimeError("the machine went away")

    model, opt, train, test, _ = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    crashing = _StopAt(2 * 7 + 5, crash)
    setup = _setup_for(model, opt, train, test, crashing, 3, checkpoint=ckpt,
                       scheduler=_onecycle(opt), checkpoint_every=1e-9)  # fmt: skip
    setup.test_transform = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1)
    with pytest.raises(RuntimeError, match="went away"):
        engine.fit(setup)

    model, opt, train, test, t = _setup(seed=99)
    scheduler = _onecycle(opt)
    state = engine.load_checkpoint(ckpt, model, opt, scheduler)
    assert state.partial["epoch"] == 3 and state.partial["ranks"][0]["step"] == 4
    state, resumed = _fit(model, opt, train, test, t, 3, state=state, scheduler=scheduler)
    _same_history(state, straight)
    assert resumed.loss == final.loss and np.array_equal(resumed.topk_prob, final.topk_prob)


def test_without_checkpoint_every_only_epochs_are_checkpointed(tmp_path):
    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    setup = _setup_for(model, opt, train, test, _StopAt(10, lambda: None), 2, checkpoint=ckpt)
    setup.test_transform = t
    writes = []
    real = engine.save_checkpoint
    try:
        engine.save_checkpoint = lambda *a, **k: (writes.append(a[3].partial), real(*a, **k))
        engine.fit(setup)
    finally:
        engine.save_checkpoint = real
    assert writes == [None, None]  # one per epoch, none mid-epoch


def test_a_time_budget_ends_training_mid_epoch_and_evaluates_what_was_trained(tmp_path):
    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    logged = []
    # A budget far below one step's time: exactly one step (32 images), then evaluation.
    state, ev = _fit(
        model, opt, train, test, t, 3, time_budget=1e-9, checkpoint=ckpt,
        on_epoch=lambda e, m: logged.append(m),
    )  # fmt: skip
    assert state.epoch == 1 and state.stopped_by_budget
    assert [m["train_images"] for m in logged] == [32]  # of 200
    assert logged[0]["stopped_early"] and ev.confusion.sum() == 40
    assert logged[0]["test_top1"] == ev.top1
    # The budget holds across a resume: nothing is left to train, the weights are evaluated.
    model, opt, train, test, t = _setup(seed=99)
    state = engine.load_checkpoint(ckpt, model, opt)
    assert state.stopped_by_budget and state.train_seconds == logged[0]["train_seconds"]
    state, again = _fit(model, opt, train, test, t, 3, state=state, time_budget=1e-9)
    assert state.epoch == 1 and len(state.history) == 1
    assert np.array_equal(again.topk_prob, ev.topk_prob)


def test_a_time_budget_counts_the_training_time_already_spent():
    model, opt, train, test, t = _setup()
    spent = engine.TrainState(epoch=1, train_seconds=100.0)
    # 100 s spent of a 100.000000001 s budget: the next epoch gets a single step.
    state, _ = _fit(model, opt, train, test, t, 3, state=spent, time_budget=100 + 1e-9)
    assert state.epoch == 2 and [h["train_images"] for h in state.history] == [32]
    # A budget that is not reached changes nothing: every epoch sees every image.
    model, opt, train, test, t = _setup()
    state, _ = _fit(model, opt, train, test, t, 2, time_budget=1e6)
    assert not state.stopped_by_budget
    assert [h["train_images"] for h in state.history] == [200, 200]


def test_checkpoint_is_written_atomically_and_loaded_safely(tmp_path):
    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    engine.save_checkpoint(ckpt, model, opt, engine.TrainState(epoch=1, config={"lr": 0.01}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]
    good = ckpt.read_bytes()
    ckpt.write_bytes(good[:100])  # a truncated file
    with pytest.raises(TrainingFailed, match="checkpoint.pt: the file does not match its digest"):
        engine.load_checkpoint(ckpt, model, opt)
    (tmp_path / "checkpoint.pt.sha256").unlink()  # a checkpoint from before digests
    with pytest.raises(StudyError, match="checkpoint.pt: not a readable study checkpoint"):
        engine.load_checkpoint(ckpt, model, opt)


def test_a_flipped_bit_in_a_checkpoint_is_refused_in_one_line(tmp_path):
    model, opt, train, test, t = _setup()
    ckpt = tmp_path / "checkpoint.pt"
    engine.save_checkpoint(ckpt, model, opt, engine.TrainState(epoch=1))
    first = ckpt.read_bytes()
    engine.save_checkpoint(ckpt, model, opt, engine.TrainState(epoch=2))
    assert engine.load_checkpoint(ckpt, model, opt).epoch == 2
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone would not notice
    ckpt.write_bytes(bytes(data))
    with pytest.raises(TrainingFailed) as info:
        engine.load_checkpoint(ckpt, model, opt)
    assert "\n" not in str(info.value) and "does not match its digest" in str(info.value)
    # A crash between replacing the checkpoint and rewriting its digest: the digest file still
    # lists the one it replaced, so the previous checkpoint verifies.
    ckpt.write_bytes(first)
    digests = tmp_path / "checkpoint.pt.sha256"
    digests.write_text("0" * 64 + "\n" + hashlib.sha256(first).hexdigest() + "\n")
    assert engine.load_checkpoint(ckpt, model, opt).epoch == 1


def test_a_non_finite_loss_stops_training_with_one_line_naming_epoch_and_step(tmp_path):
    model, opt, train, test, t = _setup()
    for group in opt.param_groups:
        group["lr"] = 1e30  # the first step overflows the weights; the next losses are nan
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingFailed) as info:
        _fit(model, opt, train, test, t, 3, checkpoint=ckpt)
    message = str(info.value)
    assert message.startswith("epoch 1: the training loss was not finite (nan or inf) in ")
    assert "from step 2 of 7" in message and "\n" not in message
    assert not ckpt.exists()  # nothing of the broken epoch is kept


def test_precise_bn_re_estimates_statistics_from_training_images():
    images, labels = _task(n=64)
    data = DeviceSplit(images, labels, torch.device("cpu"))
    bn = nn.BatchNorm2d(1)
    model = nn.Sequential(bn).eval()
    bn.running_mean.fill_(5.0)  # stale, as after fast-changing weights
    t = BatchTransform(8, mean=(0.5,), std=(0.25,), out_channels=1)
    kw = dict(batch_size=16, generator=torch.Generator().manual_seed(0))
    engine.recompute_batchnorm(model, data, t, images=0, **kw)
    assert bn.running_mean.item() == 5.0  # 0 images: off
    engine.recompute_batchnorm(model, data, t, images=64, **kw)
    x = torch.cat([xb for xb, _ in data.batches(64, t, train=False)])
    torch.testing.assert_close(bn.running_mean, x.mean(dim=(0, 2, 3)))
    assert not model.training and bn.momentum == 0.1  # the model is left as it was


def test_the_first_steps_a_process_trains_are_timed_apart():
    """images_per_s of the first epoch counts the images after the first UNTIMED_STEPS steps
    over their time; those steps' time is startup_seconds. Later epochs time every step."""
    model, opt, train, test, t = _setup()
    state, _ = _fit(model, opt, train, test, t, 2, drop_last=True)
    first, second = state.history
    assert first["train_images"] == second["train_images"] == 192  # 6 batches of 32; 8 dropped
    assert 0 < first["startup_seconds"] < first["train_seconds"]
    timed = first["train_seconds"] - first["startup_seconds"]
    untimed_images = engine.UNTIMED_STEPS * 32
    assert first["images_per_s"] == pytest.approx((192 - untimed_images) / timed, rel=1e-6)
    assert second["startup_seconds"] == 0
    assert second["images_per_s"] == pytest.approx(192 / second["train_seconds"])


def test_train_loss_end_is_the_mean_over_the_epochs_last_quarter_of_steps():
    """The health rule judges where the model stands as the epoch ends, not the epoch's mean
    (which averages in the steps spent leaving chance)."""
    model, opt, train, test, t = _setup()
    losses = []

    class Recording(nn.CrossEntropyLoss):
        def forward(self, logits, labels):
            loss = super().forward(logits, labels)
            losses.append(float(loss.detach()))
            return loss

    setup = engine.TrainingSetup(
        model=model, optimizer=opt, criterion=Recording(), train=train, test=test,
        train_transform=t, test_transform=t, epochs=1, batch_size=16, num_classes=2, seed=7,
        progress=False, drop_last=True,
    )  # fmt: skip
    metrics = engine.train_one_epoch(setup, torch.Generator().manual_seed(0))
    assert len(losses) == 12  # 200 images, 12 batches of 16
    assert metrics["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert metrics["train_loss_end"] == pytest.approx(np.mean(losses[-3:]), rel=1e-5)
    assert metrics["train_loss_end"] < metrics["train_loss"]  # it learned during the epoch
