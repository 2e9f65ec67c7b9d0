"""The training and evaluation loop: plain functions, callable and testable without Sacred.

Metrics accumulate on the device and are read once per epoch, so the loop never waits for the
device inside an epoch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from study import distributed, health
from study.atomic import TEMP_SUFFIX, temp_prefix, write_atomic
from study.errors import StudyError, TrainingFailed
from study.loader import BatchTransform, Split, batch_slices

# 2: random states per rank, one CUDA state each. Version 1 checkpoints still load.
CHECKPOINT_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class Evaluation:
    loss: float
    top1: float
    top5: float
    labels: np.ndarray  # (N,) int64
    topk: np.ndarray  # (N, k) int64: the k most probable classes, best first
    topk_prob: np.ndarray  # (N, k) float32: their softmax probabilities
    confusion: np.ndarray  # (C, C) int64: rows are true classes, columns predicted

    @property
    def predicted(self) -> np.ndarray:
        return self.topk[:, 0]

    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(axis=1)
        return [
            float(self.confusion[c, c] / totals[c]) if totals[c] else None
            for c in range(len(totals))
        ]

    def most_confident_errors(self, k: int) -> list[int]:
        """Positions (in evaluation order) of the k wrong predictions made most confidently."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        order = np.argsort(-self.topk_prob[wrong, 0], kind="stable")
        return wrong[order[:k]].tolist()


@dataclass
class TrainState:
    """What a checkpoint holds besides the weights: where training is and what it saw."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    train_seconds: float = 0.0
    stopped_by_budget: bool = False  # training ended because the time budget was spent
    compile_seconds: float = 0.0  # torch.compile's warm-up, outside train_seconds
    config: dict = field(default_factory=dict)  # what was trained; a resume must match it
    # Why training ended before its schedule did, by the health rule (health_stop), or None.
    stopped_by_health: str | None = None
    # Where an unfinished epoch stood (a mid-epoch checkpoint), or None: {"epoch", "step",
    # "generator": the epoch generator's state, "sums": the epoch's running totals, "seconds"}.
    partial: dict | None = None
    # The machines that trained it, in order (record.machine_taking_over): a resumed run may
    # continue on another machine, and its training seconds then span both.
    machines: list[dict] = field(default_factory=list)


@dataclass
class TrainingSetup:
    """Everything `fit` needs, built from a config by `study.experiment.build_setup` (which
    `benchmarks/benchmark.py` calls too, so the benchmark times what `study run` trains)."""

    model: nn.Module  # as trained: possibly wrapped by DistributedDataParallel / torch.compile
    optimizer: torch.optim.Optimizer
    criterion: nn.Module  # the test loss
    train: Split
    test: Split
    train_transform: BatchTransform
    test_transform: BatchTransform
    epochs: int
    batch_size: int  # per process
    num_classes: int
    seed: int  # each epoch's data order and augmentation derive from (seed, epoch)
    train_criterion: nn.Module | None = None  # what training minimises (default: criterion)
    scheduler: object | None = None  # stepped every batch
    aux_weight: float = 0.4
    precise_bn: int = 0  # training images that re-estimate BatchNorm statistics before a test
    autocast_dtype: torch.dtype | None = None
    time_budget: float | None = None  # seconds of training steps, over epochs and resumes
    stop_after: int | None = None  # train epochs 1..stop_after of the `epochs` schedule only
    checkpoint: Path | None = None
    progress: bool = True
    compiled: str | None = None  # the torch.compile mode the model was compiled with
    grad_clip: float = 0.0  # the gradients' global norm is clipped to this; 0: never
    drop_last: bool = False  # the epoch's last, smaller training batch is dropped
    warmup_steps: int = 0  # the schedule's warm-up: the health rule judges the loss after it
    aux_logits: bool = False  # the model trains an auxiliary head (its loss adds aux_weight x)
    health_stop: bool = False  # training ends at the first evaluation the health rule flags
    checkpoint_every: float | None = None  # seconds between mid-epoch checkpoints; None: never

    @property
    def device(self) -> torch.device:
        return self.train.device

    @property
    def plain_model(self) -> nn.Module:
        """The module inside the wrappers: evaluation and precise BatchNorm run on it, so
        compiled graphs are never re-traced for no-grad or BatchNorm's cumulative mode."""
        return unwrap(self.model)


def split_outputs(outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main logits, auxiliary logits or None) from a model's forward output."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    main, aux = outputs[0], (outputs[1] if len(outputs) > 1 else None)
    return main, aux


def train_step(setup: TrainingSetup, inputs: torch.Tensor, labels: torch.Tensor):
    """One optimisation step on one batch; returns (loss, logits), both still on the device.
    Nothing here waits for the device."""
    device_type = inputs.device.type
    dtype = setup.autocast_dtype
    criterion = setup.train_criterion or setup.criterion
    with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
        logits, aux = split_outputs(setup.model(inputs))
        loss = criterion(logits, labels)
        if aux is not None:
            loss = loss + setup.aux_weight * criterion(aux, labels)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if setup.grad_clip > 0:  # on the device: no host read of the norm
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.grad_clip, foreach=True)
    setup.optimizer.step()
    if setup.scheduler is not None:  # per-step schedules (one-cycle, cosine)
        setup.scheduler.step()
    return loss, logits


# A process's first steps choose cuDNN's kernels and load them: the epoch's images/s leaves
# them out (one device read after them, in the first epoch a process trains), and
# `startup_seconds` records their time apart.
UNTIMED_STEPS = 5

# Under torchrun, the ranks agree on a time budget every this many steps (one all-reduce and a
# read of its result: a sync); a single process reads its own clock every step, which costs none.
BUDGET_CHECK_EVERY = 16
# train_loss_end: the mean training loss over this share of the epoch's last steps (at least one).
# A one-epoch run at 0.58 test top-1 had an epoch mean of 2.25, at chance's 0.95 x ln 10 (its
# first half was spent leaving chance): the health rule judged it stuck (issue 19).
END_LOSS_SHARE = 0.25


class Preempted(KeyboardInterrupt):
    """Training stopped after a step because the run was asked to stop (a scheduler's
    preemption signal, study.cli): the checkpoint holds that step, and resuming continues from
    it. A KeyboardInterrupt: the run is recorded INTERRUPTED, as after Ctrl-C."""


# Set by the signal handler (study.cli) while a run trains (TRAINING, set by fit): the next
# step writes a checkpoint and training stops with Preempted.
PREEMPT = threading.Event()
TRAINING = threading.Event()


def train_one_epoch(
    setup: TrainingSetup,
    generator: torch.Generator,
    *,
    progress: str | None = None,
    time_limit: float | None = None,
    untimed_steps: int = 0,
    resume: dict | None = None,
    save_partial: Callable[[dict], None] | None = None,
) -> dict:
    """One pass over the training split (or less: with `time_limit`, it stops after the first
    step that ends that many seconds after the epoch began, checked every step in one process
    and every BUDGET_CHECK_EVERY steps under torchrun; `stopped_early` then says so).

    `resume` (a TrainState.partial): continue the epoch where a mid-epoch checkpoint left it,
    to the same metrics as had it not stopped (on the CPU, bit for bit). `save_partial` is
    given where the epoch stands every `setup.checkpoint_every` seconds, and when PREEMPT is
    set, after which the epoch stops with Preempted."""
    setup.model.train()
    data = setup.train
    device = data.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    # The loss over the epoch's last END_LOSS_SHARE of steps: where the model stands as the
    # epoch ends, which the health rule judges (the epoch's mean also averages its first steps).
    end_loss_sum = torch.zeros((), device=device)
    end_seen = 0
    # Steps whose loss was nan or inf, and the first of them: kept on the device and read with
    # the epoch's metrics, so no step waits to check.
    nonfinite = torch.zeros((), device=device)
    first_nonfinite = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    done, earlier = 0, 0.0  # steps and seconds of this epoch before a resume
    if resume is not None:
        done, earlier = int(resume["step"]), float(resume["seconds"])
        sums = resume["sums"].tolist()  # float64: every float32 sum and int count exactly
        loss_sum.fill_(sums[0])
        correct.fill_(int(sums[1]))
        end_loss_sum.fill_(sums[2])
        nonfinite.fill_(sums[4])
        first_nonfinite.fill_(int(sums[5]))
        end_seen, seen = int(sums[3]), int(sums[6])
    batches = data.batches(
        setup.batch_size,
        setup.train_transform,
        train=True,
        generator=generator,
        drop_last=setup.drop_last,
        resume=None if resume is None else (done, resume["generator"]),
    )
    total = data.num_batches(setup.batch_size, train=True, drop_last=setup.drop_last)
    end_from = total - max(1, int(total * END_LOSS_SHARE))  # the steps after this one
    timed_from, timed_seen = None, 0
    check_every = BUDGET_CHECK_EVERY if distributed.active() else 1
    stopped_early = False
    start = time.perf_counter() - earlier
    last_saved = time.perf_counter()

    def snapshot(step: int) -> dict:
        sums = [loss_sum, correct, end_loss_sum, end_seen, nonfinite, first_nonfinite, seen]
        return {
            "step": step,
            "generator": generator.get_state(),
            "sums": torch.tensor([float(v) for v in sums], dtype=torch.float64),
            "seconds": time.perf_counter() - start,
        }

    for step, (inputs, labels) in enumerate(
        # A bar only where someone watches: on a terminal. Elsewhere (a log, Sacred's
        # cout.txt, a cluster job) the line fit prints after each epoch says it all.
        tqdm(
            batches,
            total=total,
            initial=done,
            desc=progress,
            disable=progress is None or not on_terminal(),
        ),
        start=done + 1,
    ):
        loss, logits = train_step(setup, inputs, labels)
        loss_sum += loss.detach() * len(labels)
        if step > end_from:
            end_loss_sum += loss.detach() * len(labels)
            end_seen += len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        bad = ~torch.isfinite(loss.detach())
        first_nonfinite = torch.where(bad & (nonfinite == 0), step, first_nonfinite)
        nonfinite += bad
        seen += len(labels)
        if step == untimed_steps and step < total:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            timed_from, timed_seen = time.perf_counter(), seen
        if (
            time_limit is not None
            and step < total
            and step % check_every == 0
            and _past(start, time_limit, device)
        ):
            stopped_early = True
            break
        if step < total and step % check_every == 0:
            preempted = _agreed(PREEMPT.is_set(), device)
            every = setup.checkpoint_every
            due = every is not None and _past(last_saved, every, device)
            if save_partial is not None and (preempted or due):
                save_partial(snapshot(step))
                last_saved = time.perf_counter()
            if preempted:
                raise Preempted(f"stopped after step {step} of {total}")
    # One read of the device per epoch (and, under torchrun, one sum over the ranks).
    seen_t = torch.full((), float(seen), device=device)
    end_seen_t = torch.full((), float(end_seen), device=device)
    totals = distributed.sum_(
        torch.stack(
            [loss_sum, correct.to(loss_sum.dtype), seen_t, nonfinite, end_loss_sum, end_seen_t]
        )
    )
    loss_total, correct_total, seen_total, nonfinite_total, end_total, end_seen_total = (
        totals.tolist()
    )
    if nonfinite_total:
        first = int(first_nonfinite)  # this process's first; 0: it happened on another process
        where = f" from step {first} of {total}" if first else ""
        raise TrainingFailed(
            f"the training loss was not finite (nan or inf) in {int(nonfinite_total)} step(s) "
            f"of this epoch{where}; training stopped. Lower lr, or check the data "
            "(constant images give a zero standard deviation)"
        )
    # Rank 0's time on every rank: a time budget then ends training at the same epoch on all.
    end = time.perf_counter()
    seconds = distributed.broadcast(end - start)
    rate = seen_total / seconds
    startup = 0.0
    if timed_from is not None:  # the steps after the first untimed_steps (this rank's share)
        startup = timed_from - start
        rate = (seen - timed_seen) * (seen_total / seen) / max(end - timed_from, 1e-9)
    return {
        "train_loss": loss_total / seen_total,
        # A time budget that ended the epoch before its last quarter: the whole epoch's mean.
        "train_loss_end": end_total / end_seen_total if end_seen_total else loss_total / seen_total,
        "train_top1": correct_total / seen_total,
        "train_seconds": seconds,
        "images_per_s": distributed.broadcast(rate),
        "startup_seconds": distributed.broadcast(startup),
        "train_images": int(seen_total),
        "stopped_early": stopped_early,
    }


def on_terminal() -> bool:
    """Whether progress bars have a terminal to draw on (tqdm writes to stderr), as it was
    before Sacred captured the run's output."""
    import study

    return study.STDERR_IS_TERMINAL


def _past(start: float, limit: float, device: torch.device) -> bool:
    """Whether `limit` seconds have passed since `start`, agreed by all ranks (under torchrun
    they must stop at the same step). On CUDA the host clock may run a few queued steps ahead
    of the device; the epoch's recorded time is measured after the device finished (the
    epoch's one read), so the record stays exact."""
    return _agreed(time.perf_counter() - start >= limit, device)


def _agreed(flag: bool, device: torch.device) -> bool:
    """`flag` on any rank (under torchrun every rank must act at the same step)."""
    if distributed.active():
        flag = bool(distributed.sum_(torch.tensor([float(flag)], device=device)).item() > 0)
    return flag


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    data: Split,
    transform: BatchTransform,
    *,
    batch_size: int,
    num_classes: int,
    autocast_dtype: torch.dtype | None = None,
) -> Evaluation:
    model.eval()
    device = data.device
    k = min(5, num_classes)
    loss_sum = torch.zeros((), device=device)
    topk, topk_prob, labels_all = [], [], []
    for inputs, labels in data.batches(batch_size, transform, train=False):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, _ = split_outputs(model(inputs))
        logits = logits.float()
        loss_sum += criterion(logits, labels) * len(labels)
        prob, idx = logits.softmax(1).topk(k, dim=1)
        topk.append(idx)
        topk_prob.append(prob)
        labels_all.append(labels)
    # Under torchrun each rank evaluated its shard: every rank gets all of them, in rank order.
    shards = distributed.gather(
        (
            loss_sum.item(),
            torch.cat(labels_all).cpu().numpy(),
            torch.cat(topk).cpu().numpy(),
            torch.cat(topk_prob).float().cpu().numpy(),
        )
    )
    labels = np.concatenate([s[1] for s in shards])
    top = np.concatenate([s[2] for s in shards])
    n = len(labels)
    hits = top == labels[:, None]
    confusion = np.bincount(
        labels * num_classes + top[:, 0], minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    return Evaluation(
        loss=float(sum(s[0] for s in shards) / n),
        top1=float(hits[:, 0].sum() / n),
        top5=float(hits.any(1).sum() / n),
        labels=labels,
        topk=top,
        topk_prob=np.concatenate([s[3] for s in shards]),
        confusion=confusion,
    )


def evaluate_setup(setup: TrainingSetup) -> Evaluation:
    """The test split's evaluation of the model as it stands (on the plain module)."""
    return evaluate(
        setup.plain_model,
        setup.criterion,
        setup.test,
        setup.test_transform,
        batch_size=setup.batch_size,
        num_classes=setup.num_classes,
        autocast_dtype=setup.autocast_dtype,
    )


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module,
    data: Split,
    transform: BatchTransform,
    *,
    batch_size: int,
    images: int,
    generator: torch.Generator,
    autocast_dtype: torch.dtype | None = None,
) -> None:
    """Precise BatchNorm: re-estimate every BatchNorm layer's statistics from `images` training
    images (a seeded random sample, test-time transform) with the current weights.

    The running averages kept during training lag behind weights that change fast, which makes
    a short run's evaluation much worse than its weights (Wu & Johnson 2021, "Rethinking Batch
    in BatchNorm"). torch's own update_bn does the averaging. Give it the plain module, not a
    compiled one: update_bn's cumulative mode reads num_batches_tracked on the host.
    """
    if images <= 0:
        return
    n_batches = math.ceil(min(images, len(data)) / batch_size)
    batches = data.batches(batch_size, transform, train=True, generator=generator)
    with torch.autocast(data.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        update_bn(itertools.islice(batches, n_batches), model)


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The shuffling/augmentation randomness of one epoch depends on (seed, epoch) alone,
    so a resumed run draws exactly what the uninterrupted run drew. It is a generator of the
    training device, so drawing never copies from the host."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


@torch.no_grad()
def warm_up_compiled(setup: TrainingSetup) -> float:
    """Compile (and autotune) before training, so training time is training: one forward and
    backward per batch shape the epoch will see (three under CUDA graphs), then every buffer,
    gradient and random state is put back as it was. Returns the seconds it took."""
    start = time.perf_counter()
    device = setup.device
    buffers = [b.clone() for b in setup.model.buffers()]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    generator = torch.Generator(device=device).manual_seed(0)
    batch = setup.train.batches(
        setup.batch_size, setup.train_transform, train=True, generator=generator
    )
    inputs, labels = next(iter(batch))
    slices = batch_slices(len(setup.train), setup.batch_size, train=True, drop_last=setup.drop_last)
    sizes = {b - a for a, b in slices}
    repeats = 3 if setup.compiled == "reduce-overhead" else 1
    setup.model.train()
    criterion = setup.train_criterion or setup.criterion
    for size in sorted(sizes, reverse=True):
        for _ in range(repeats):
            with (
                torch.enable_grad(),
                torch.autocast(
                    device.type,
                    dtype=setup.autocast_dtype,
                    enabled=setup.autocast_dtype is not None,
                ),
            ):
                logits, aux = split_outputs(setup.model(inputs[:size]))
                loss = criterion(logits, labels[:size])
                if aux is not None:
                    loss = loss + setup.aux_weight * criterion(aux, labels[:size])
                loss.backward()
    setup.optimizer.zero_grad(set_to_none=True)
    for saved, buffer in zip(buffers, setup.model.buffers(), strict=True):
        buffer.copy_(saved)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state(cuda_rng, device)
    distributed.barrier()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def fit(
    setup: TrainingSetup,
    state: TrainState | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> tuple[TrainState, Evaluation]:
    """Train from `state` (a fresh or resumed one) to `setup.epochs`, evaluating after each.

    `setup.time_budget` (seconds) caps the time spent in training steps, summed over epochs
    and resumes: training ends after the first step past it, mid-epoch if need be, and that
    partial epoch is evaluated and recorded like the others (its `train_images` says how far
    it got). Evaluation, precise BatchNorm and compilation are outside the budget.

    After each epoch: BatchNorm statistics are re-estimated from `setup.precise_bn` training
    images (0: the running averages as trained), the test split is evaluated, `on_epoch(epoch,
    metrics)` is called, then the checkpoint is written. Returns the final state and the
    evaluation of the final weights (evaluated here when a resumed run had no epoch left).
    """
    PREEMPT.clear()  # a signal before training began ended the run then (study.cli)
    TRAINING.set()
    try:
        return _fit(setup, state, on_epoch)
    finally:
        TRAINING.clear()


def _fit(setup: TrainingSetup, state: TrainState | None, on_epoch) -> tuple:
    state = state or TrainState()
    evaluation = None
    epochs, budget = setup.epochs, setup.time_budget
    last = epochs if setup.stop_after is None else min(epochs, setup.stop_after)
    if setup.compiled and state.epoch < last and not state.stopped_by_budget:
        state.compile_seconds += warm_up_compiled(setup)
    first = True  # the first epoch this process trains: its first steps are untimed
    steps_per_epoch = setup.train.num_batches(
        setup.batch_size, train=True, drop_last=setup.drop_last
    )
    for epoch in range(state.epoch + 1, last + 1):
        if state.stopped_by_health:
            break
        if budget is not None and state.train_seconds >= budget:
            state.stopped_by_budget = True
            break
        tick = time.perf_counter()
        resume = _partial_of(state, epoch)
        state.partial = None

        def save_partial(snapshot: dict, epoch: int = epoch) -> None:
            # Every rank's place in the epoch and random states: each continues its own.
            state.partial = {"epoch": epoch, "ranks": distributed.gather(snapshot)}
            rng = distributed.gather(_rng_states(setup.device))
            if distributed.from_environment().is_main:
                save_checkpoint(
                    setup.checkpoint, setup.model, setup.optimizer, state, setup.scheduler, rng=rng
                )
            state.partial = None

        try:
            metrics = train_one_epoch(
                setup,
                epoch_generator(setup.seed, epoch, setup.device),
                progress=f"epoch {epoch}/{epochs}" if setup.progress else None,
                time_limit=None if budget is None else budget - state.train_seconds,
                untimed_steps=UNTIMED_STEPS if first and resume is None else 0,
                resume=resume,
                save_partial=save_partial if setup.checkpoint is not None else None,
            )
            first = False
        except TrainingFailed as exc:
            raise TrainingFailed(f"epoch {epoch}: {exc}") from None
        # The learning rate in force when the epoch ended (a float: reading it never syncs).
        metrics["lr"] = float(setup.optimizer.param_groups[0]["lr"])
        if hasattr(os, "getloadavg"):  # other work on the machine explains a slow epoch
            metrics["load_avg"] = os.getloadavg()[0]
        recompute_batchnorm(
            setup.plain_model,
            setup.train,
            setup.test_transform,
            batch_size=setup.batch_size,
            images=setup.precise_bn,
            generator=torch.Generator(setup.device).manual_seed(setup.seed * 1_000_003 - epoch),
            autocast_dtype=setup.autocast_dtype,
        )
        distributed.average_buffers(setup.plain_model)
        evaluation = evaluate_setup(setup)
        metrics.update(
            test_loss=evaluation.loss,
            test_top1=evaluation.top1,
            test_top5=evaluation.top5,
            epoch_seconds=time.perf_counter() - tick,
        )
        verdict = health.of_confusion(
            evaluation.confusion,
            train_loss=metrics["train_loss_end"],
            past_warmup=epoch * steps_per_epoch >= setup.warmup_steps,
            aux_weight=setup.aux_weight if setup.aux_logits else 0.0,
            values=[metrics["train_loss"], evaluation.loss, evaluation.top1, evaluation.top5],
        )
        metrics["health"] = verdict.as_record()
        past_warmup = epoch * steps_per_epoch > setup.warmup_steps
        if not verdict.ok and setup.health_stop and past_warmup and epoch < last:
            state.stopped_by_health = f"epoch {epoch}: {verdict.line()}"
        state.epoch = epoch
        state.history.append({"epoch": epoch, **metrics})
        state.train_seconds += metrics["train_seconds"]
        state.stopped_by_budget = metrics["stopped_early"]
        if setup.progress:
            print(
                f"epoch {epoch}/{epochs}: {metrics['epoch_seconds']:.1f} s, "
                f"train loss {metrics['train_loss']:.4f}, train top-1 {metrics['train_top1']:.4f}, "
                f"test top-1 {metrics['test_top1']:.4f}, test top-5 {metrics['test_top5']:.4f}"
                + (" (time budget spent)" if metrics["stopped_early"] else ""),
                flush=True,
            )
            if not verdict.ok:
                print(f"warning: epoch {epoch}: {verdict.line()}", flush=True)
            if state.stopped_by_health:
                print(f"health_stop: training ends after epoch {epoch}", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        # Every rank's random states, so each continues its own stream on resume.
        rng = distributed.gather(_rng_states(setup.device))
        if setup.checkpoint is not None and distributed.from_environment().is_main:
            save_checkpoint(
                setup.checkpoint, setup.model, setup.optimizer, state, setup.scheduler, rng=rng
            )
    if evaluation is None:
        evaluation = evaluate_setup(setup)
    return state, evaluation


def _partial_of(state: TrainState, epoch: int) -> dict | None:
    """This rank's place in `epoch` from a mid-epoch checkpoint, or None (none, another epoch's,
    or written by another number of processes: the epoch then starts over)."""
    partial = state.partial
    if not partial or partial.get("epoch") != epoch:
        return None
    ranks = partial.get("ranks") or []
    world = distributed.from_environment()
    if len(ranks) != world.size:
        print(
            f"note: epoch {epoch} was checkpointed mid-way by {len(ranks)} process(es), not "
            f"{world.size}: it starts over",
            flush=True,
        )
        return None
    return ranks[world.rank]


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _rng_states(device: torch.device) -> dict:
    """This process's random states: CPU, NumPy, Python, and the training device's own CUDA
    state (only that one, so a checkpoint written where 8 GPUs were visible resumes on 1).
    Plain types and tensors only, so the checkpoint loads with weights_only=True."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.device(device).type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if isinstance(cuda, list | tuple):  # version 1 saved every visible GPU's state
        cuda = cuda[0] if cuda else None
    if cuda is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def save_checkpoint(
    path: Path, model: nn.Module, optimizer, state: TrainState, scheduler=None, rng=None
) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact. `rng` is
    every rank's random states in rank order (default: this process's)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    device = next(unwrap(model).parameters()).device
    payload = {
        "version": CHECKPOINT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": state.epoch,
        "history": state.history,
        "train_seconds": state.train_seconds,
        "compile_seconds": state.compile_seconds,
        "stopped_by_budget": state.stopped_by_budget,
        "stopped_by_health": state.stopped_by_health,
        "partial": state.partial,
        "machines": state.machines,
        "config": state.config,
        "rng": rng if rng is not None else [_rng_states(device)],
    }
    digests = _digest_path(path)
    previous = _listed_digests(digests)[:1]
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path), suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(tmp)
        # The digest file lists the new digest and the one it replaces until the checkpoint
        # itself is replaced: a crash in between leaves a pair that still verifies.
        write_atomic(digests, "\n".join([digest, *previous]) + "\n")
        os.replace(tmp, path)
        write_atomic(digests, digest + "\n")
    finally:
        tmp.unlink(missing_ok=True)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _listed_digests(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose bytes differ from the digest written with it (a flipped bit
    would otherwise load and train on silently). Checkpoints from before digests have none."""
    listed = _listed_digests(_digest_path(path))
    if listed and _sha256(path) not in listed:
        raise TrainingFailed(
            f"{path}: the file does not match its digest ({_digest_path(path).name}): it changed "
            "after it was written; it cannot be resumed (start a new run, or restore the file)"
        )


def load_checkpoint(path: Path, model: nn.Module, optimizer, scheduler=None) -> TrainState:
    """Restore weights, optimizer and this rank's random states in place; return where
    training stood. A checkpoint from a CUDA run loads on the CPU and the other way round.
    Resumed with as many processes as wrote it, every rank continues its own random streams
    (an exact resume); with more, the new ranks are seeded afresh (rank and epoch), so no two
    ranks share a stream."""
    verify_checkpoint(path)
    try:
        # weights_only: a checkpoint is a file like any other and must not run code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StudyError(f"{path}: not a readable study checkpoint ({exc})") from None
    if payload.get("version") not in READABLE_VERSIONS:
        raise StudyError(f"{path}: checkpoint version {payload.get('version')} is not supported")
    plain = unwrap(model)
    device = next(plain.parameters()).device
    plain.load_state_dict(payload["model"])
    # The saved param groups carry `fused`: keep what this optimizer was built with (fused on
    # CUDA), whichever device wrote the checkpoint.
    built_with = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(payload["optimizer"])
    for group, fused in zip(optimizer.param_groups, built_with, strict=True):
        if "fused" in group:
            group["fused"] = fused
    if scheduler is not None and payload.get("scheduler") is not None:
        scheduler.load_state_dict(payload["scheduler"])
    states = payload["rng"]
    states = states if isinstance(states, list) else [states]  # version 1: one dict
    rank = distributed.from_environment().rank
    if rank < len(states):
        _set_rng_states(states[rank], device)
    else:
        fresh = 1_000_003 * (payload["epoch"] + 1) + rank
        torch.manual_seed(fresh)  # and every CUDA device's
        np.random.seed(fresh % 2**32)
        random.seed(fresh)
    return TrainState(
        epoch=payload["epoch"],
        history=list(payload["history"]),
        train_seconds=payload["train_seconds"],
        compile_seconds=payload.get("compile_seconds", 0.0),
        stopped_by_budget=payload.get("stopped_by_budget", False),
        config=dict(payload["config"]),
        stopped_by_health=payload.get("stopped_by_health"),
        partial=payload.get("partial"),
        # A checkpoint from before study kept them: a machine not recorded trained until now.
        machines=list(payload.get("machines", [{}])),
    )
